"""The workflow schema's enums equal their Python twins, so neither can change without the other.

workflow/schemas/config.schema.yaml restates the fixed choices of the code (answer formats, prompt
templates, engines) so that a config error shows before any job runs. Every enum in the schema must be
listed in :data:`TWINS` with the tuple it restates; a new enum without a twin fails
:func:`test_every_schema_enum_has_a_python_twin`. Registries that other modules add to (model and data
sources, generators) have no enum: rsgrpo.prepare.config_specs checks specs against them when the
config loads (tests/test_config_specs.py), and :func:`test_no_enum_freezes_a_registry` keeps it so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
MODEL = ("properties", "models", "additionalProperties", "properties")


def _twin(path: tuple[str, ...]) -> list:
    """The Python registry or tuple an enum of the schema restates, in its order."""
    if path == (*MODEL, "template"):
        from rsgrpo.prepare.prompts import PROMPT_TEMPLATES

        return list(PROMPT_TEMPLATES)
    if path == ("definitions", "dataset_spec", "properties", "answer_format"):
        from rsgrpo.grading.answer_format import ANSWER_FORMATS

        return list(ANSWER_FORMATS)
    if path == ("properties", "evaluation", "properties", "engine"):
        from rsgrpo.train.engines import ENGINE_KINDS

        return list(ENGINE_KINDS)
    raise KeyError(path)


TWINS = [
    (*MODEL, "template"),
    ("definitions", "dataset_spec", "properties", "answer_format"),
    ("properties", "evaluation", "properties", "engine"),
]


def _enums(node, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], list]:
    """Every ``enum`` of the schema, by the path of the node that holds it."""
    found = {}
    if isinstance(node, dict):
        if "enum" in node:
            found[path] = node["enum"]
        for key, child in node.items():
            found.update(_enums(child, (*path, str(key))))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found.update(_enums(child, (*path, str(index))))
    return found


def test_every_schema_enum_has_a_python_twin():
    assert sorted(_enums(SCHEMA)) == sorted(TWINS)


@pytest.mark.parametrize("path", TWINS, ids=lambda path: ".".join(path[-3:]))
def test_schema_enum_equals_its_python_twin(path):
    assert _enums(SCHEMA)[path] == _twin(path)


def test_the_train_configs_engine_choices_are_the_engine_kinds():
    """TrainConfig validates `engine` without importing the engines (and torch) at import time: its
    list of choices is a copy, held equal here."""
    from rsgrpo.train import config
    from rsgrpo.train.engines import ENGINE_KINDS

    assert config._CHOICES["engine"] == ENGINE_KINDS


def test_no_enum_freezes_a_registry():
    """A source (or policy loss, loss aggregation) registered by the user's own module must pass the
    schema: no enum lists them."""
    sources = [(*MODEL, "spec", "properties", "source"), ("definitions", "dataset_spec", "properties", "source"),
               ("properties", "training", "properties", "policy_loss"),
               ("properties", "training", "properties", "loss_agg")]
    node = SCHEMA
    for path in sources:
        node = SCHEMA
        for key in path:
            node = node[key]
        assert "enum" not in node and node["type"] == "string", path
