"""Offline generators: exact answers at every arithmetic level, seeded and prefix-stable problems, and
the generator registry (a new generator is one decorated function)."""

import re
from fractions import Fraction

import pytest

from rsgrpo.prepare.data_sources import load_records
from rsgrpo.prepare.generators import GENERATORS, generate, generate_arithmetic, register
from rsgrpo.prepare.synthetic import carry_addition_problems


def expected_value(problem: str) -> Fraction:
    """Recompute a generated problem's answer from its text, independently of the generator."""
    m = re.fullmatch(r"What is (\d+) \+ (\d+)\?", problem)
    if m:
        return Fraction(int(m[1]) + int(m[2]))
    m = re.fullmatch(r"What is (\d+) - (\d+)\?", problem)
    if m:
        return Fraction(int(m[1]) - int(m[2]))
    m = re.fullmatch(r"What is (\d+) times (\d+)\?", problem)
    if m:
        return Fraction(int(m[1]) * int(m[2]))
    m = re.fullmatch(r"What is (\d+) \+ (\d+) times (\d+)\?", problem)
    if m:
        return Fraction(int(m[1]) + int(m[2]) * int(m[3]))
    m = re.fullmatch(r"(\w+) has (\d+) (\w+)\. \1 gets (\d+) more \3 and then gives away (\d+)\. "
                     r"How many \3 does \1 have now\?", problem)
    if m:
        return Fraction(int(m[2]) + int(m[4]) - int(m[5]))
    m = re.fullmatch(r"What is (\d+)/(\d+) \+ (\d+)/(\d+)\? Give the answer as a fraction in lowest terms\.",
                     problem)
    if m:
        return Fraction(int(m[1]), int(m[2])) + Fraction(int(m[3]), int(m[4]))
    raise AssertionError(f"unrecognised generated problem: {problem!r}")


def answer_value(answer: str) -> Fraction:
    m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", answer)
    if m:
        value = Fraction(int(m[2]), int(m[3]))
        assert value.denominator == int(m[3]), f"{answer} is not in lowest terms"
        return -value if m[1] else value
    assert re.fullmatch(r"-?\d+", answer), answer
    return Fraction(int(answer))


def test_generator_answers_are_exact_at_every_level():
    records = load_records({"source": "generator", "name": "arithmetic", "n": 250, "seed": 3})
    assert len(records) == 250
    assert {tuple(sorted(r)) for r in records} == {("answer", "id", "problem")}
    for record in records:
        assert answer_value(record["answer"]) == expected_value(record["problem"]), record
        assert answer_value(record["answer"]) >= 0
    # level 1 is the easy single-digit addition the 135M demo model needs
    assert re.fullmatch(r"What is \d \+ \d\?", records[0]["problem"])
    assert any("/" in r["problem"] for r in records) and any("has" in r["problem"] for r in records)


def test_generator_is_deterministic_and_seeded():
    spec = {"source": "generator", "name": "arithmetic", "n": 60, "seed": 7, "difficulty": [1, 2, 3]}
    assert load_records(spec) == load_records(dict(spec))
    other = load_records({**spec, "seed": 8})
    assert [r["problem"] for r in other] != [r["problem"] for r in load_records(spec)]
    # prefix-stable: the first problems do not depend on n
    assert load_records({**spec, "n": 10}) == load_records(spec)[:10]
    assert len({r["id"] for r in load_records(spec)}) == 60


def test_generator_single_level_and_errors():
    records = generate_arithmetic(n=20, seed=0, difficulty=1)
    assert all(re.fullmatch(r"What is \d \+ \d\?", r["problem"]) for r in records)
    with pytest.raises(ValueError, match="difficulty 9"):
        generate_arithmetic(n=5, difficulty=9)
    with pytest.raises(ValueError, match="unknown generator 'geometry'"):
        load_records({"source": "generator", "name": "geometry", "n": 3})
    with pytest.raises(ValueError, match="'n' must be a positive integer"):
        load_records({"source": "generator", "name": "arithmetic", "n": 0})


def test_built_in_generators_are_registered():
    assert GENERATORS == {"arithmetic": generate_arithmetic, "carry_addition": carry_addition_problems}
    assert generate("arithmetic", {"n": 3, "seed": 2}) == generate_arithmetic(n=3, seed=2)
    with pytest.raises(ValueError, match="generator 'arithmetic': bad options \\['digits', 'n'\\]"):
        generate("arithmetic", {"n": 3, "digits": 2})


def test_a_new_generator_is_one_decorated_function():
    """Register a generator, load a dataset spec from it, remove it again."""

    @register("squares")
    def squares(n: int = 3, seed: int = 0):
        return [{"id": f"squares-{i}", "problem": f"What is {i + seed} squared?", "answer": str((i + seed) ** 2)}
                for i in range(n)]

    try:
        records = load_records({"source": "generator", "name": "squares", "n": 2, "seed": 3, "limit": 1,
                                "answer_format": "integer"})
        assert records == [{"id": "squares-0", "problem": "What is 3 squared?", "answer": "9",
                            "answer_format": "integer"}]
    finally:
        GENERATORS.pop("squares", None)
    with pytest.raises(ValueError, match="unknown generator 'squares'"):
        load_records({"source": "generator", "name": "squares"})


def test_a_duplicate_generator_is_refused_and_unknown_ones_list_the_registered():
    with pytest.raises(ValueError, match="generator 'arithmetic' is already registered "
                                         "\\(by rsgrpo.prepare.generators.generate_arithmetic\\)"):
        register("arithmetic")(lambda **options: [])
    assert GENERATORS["arithmetic"] is generate_arithmetic
    with pytest.raises(ValueError, match="unknown generator 'geometry'; known generators: arithmetic, carry_addition$"):
        generate("geometry", {})
