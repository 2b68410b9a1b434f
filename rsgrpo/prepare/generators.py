"""Offline dataset generators: seeded problem sets with exact answers, no download.

Why: the demo, the tests and the miniature experiment need datasets on machines without hub access,
and the same seed must give the same problems everywhere. A generator is a function
``fn(**options) -> [{"id", "problem", "answer", ...}]`` registered here under a name; a dataset spec
``{source: generator, name: <name>, ...options}`` (:mod:`rsgrpo.prepare.data_sources`) runs it.
A new generator is one function decorated with :func:`register` plus its test.

Built in: ``arithmetic`` (:func:`generate_arithmetic`, arithmetic and word problems at five levels,
level 1 easy enough for SmolLM2-135M) and ``carry_addition``
(:func:`rsgrpo.prepare.synthetic.carry_addition_problems`, the miniature experiment's task).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from fractions import Fraction

from rsgrpo.prepare.synthetic import carry_addition_problems
from rsgrpo.registry import refuse_taken

__all__ = ["GENERATORS", "ARITHMETIC_LEVELS", "register", "generator", "generate", "generate_arithmetic"]

GENERATORS: dict[str, Callable[..., list[dict]]] = {}


def register(name: str):
    """Decorator adding ``fn(**options) -> records`` to :data:`GENERATORS` as ``name`` (once: a second
    generator of the same name would change what existing dataset specs mean)."""

    def wrap(fn):
        refuse_taken(GENERATORS, name, "generator")
        GENERATORS[name] = fn
        return fn

    return wrap


def generator(name) -> Callable[..., list[dict]]:
    """The registered generator ``name``; ValueError listing the registered ones for another name."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known generators: {', '.join(sorted(GENERATORS))}")
    return GENERATORS[name]


def generate(name: str, options: dict) -> list[dict]:
    """The records of generator ``name`` called with ``options``; ValueError naming the generator for
    an unknown name (listing the registered ones) or options it does not take."""
    fn = generator(name)
    try:
        return fn(**options)
    except TypeError as exc:
        raise ValueError(f"generator {name!r}: bad options {sorted(options)} ({exc})") from exc


ARITHMETIC_LEVELS = (1, 2, 3, 4, 5)
_NAMES = ("Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo")
_ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "books")


def _fraction_latex(value: Fraction) -> str:
    """Exact answer as math-verify reads it: an integer, or ``\\frac{p}{q}`` in lowest terms."""
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _arithmetic_problem(level: int, rng: random.Random) -> tuple[str, Fraction]:
    """One problem of a difficulty level and its exact value.

    1: one-digit addition; 2: two-digit addition or subtraction (non-negative result);
    3: multiplication of a two-digit by a one-digit number; 4: a two-step word problem, or an
    expression needing operator precedence; 5: sum of two fractions (answer a reduced fraction).
    """
    if level == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"What is {a} + {b}?", Fraction(a + b)
    if level == 2:
        a, b = rng.randint(10, 99), rng.randint(1, 99)
        if rng.random() < 0.5:
            return f"What is {a} + {b}?", Fraction(a + b)
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", Fraction(a - b)
    if level == 3:
        a, b = rng.randint(11, 99), rng.randint(2, 9)
        return f"What is {a} times {b}?", Fraction(a * b)
    if level == 4:
        if rng.random() < 0.5:
            name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
            a, b = rng.randint(5, 40), rng.randint(2, 30)
            c = rng.randint(1, a + b)
            text = (f"{name} has {a} {item}. {name} gets {b} more {item} and then gives away {c}. "
                    f"How many {item} does {name} have now?")
            return text, Fraction(a + b - c)
        a, b, c = rng.randint(2, 20), rng.randint(2, 9), rng.randint(2, 9)
        return f"What is {a} + {b} times {c}?", Fraction(a + b * c)
    if level == 5:
        b, d = rng.randint(2, 9), rng.randint(2, 9)
        a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
        text = f"What is {a}/{b} + {c}/{d}? Give the answer as a fraction in lowest terms."
        return text, Fraction(a, b) + Fraction(c, d)
    raise ValueError(f"arithmetic difficulty level must be one of {ARITHMETIC_LEVELS}, got {level!r}")


@register("arithmetic")
def generate_arithmetic(n: int = 200, seed: int = 0, difficulty: int | str | list = "mixed") -> list[dict]:
    """``n`` arithmetic / word problems with exact answers, deterministic for ``seed``.

    ``difficulty``: a level 1..5, a list of levels (cycled), or ``"mixed"`` (= levels 1..5
    cycled). Problem ``i`` depends only on ``(seed, i, its level)``, so the first k problems are
    the same for any ``n``. Ids are ``arithmetic-<i>``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"generator 'arithmetic': 'n' must be a positive integer, got {n!r}")
    if difficulty == "mixed" or difficulty is None:
        levels = list(ARITHMETIC_LEVELS)
    elif isinstance(difficulty, (list, tuple)):
        levels = list(difficulty)
    else:
        levels = [difficulty]
    for level in levels:
        if level not in ARITHMETIC_LEVELS:
            raise ValueError(f"generator 'arithmetic': difficulty {level!r} is not one of "
                             f"{ARITHMETIC_LEVELS} or 'mixed'")
    width = max(4, len(str(n - 1)))
    records = []
    for i in range(n):
        level = levels[i % len(levels)]
        rng = random.Random(f"arithmetic/{seed}/{i}")
        problem, value = _arithmetic_problem(level, rng)
        records.append({"id": f"arithmetic-{i:0{width}d}", "problem": problem,
                        "answer": _fraction_latex(value), "level": level})
    return records


register("carry_addition")(carry_addition_problems)
