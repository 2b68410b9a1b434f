"""The registries' one rule: a name is registered once, and the refusal names who holds it."""

import pytest

from rsgrpo.registry import refuse_taken


def held():
    pass


def test_a_taken_name_is_refused_naming_its_holder():
    refuse_taken({}, "free", "reward")  # a free name passes
    with pytest.raises(ValueError, match=r"^reward 'x' is already registered \(by test_registry\.held\)$"):
        refuse_taken({"x": held}, "x", "reward")
    with pytest.raises(ValueError, match=r"\(by test_registry\.held\)"):
        refuse_taken({"x": {"build": held}}, "x", "model source", owner=lambda entry: entry["build"])
