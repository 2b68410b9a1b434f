"""A synthetic reasoning task with the paper's exploration dilemma built in: column addition.

Problems are ``a+b=`` with two ``digits``-digit numbers; half of them need no carry in any column
(``kind`` ``no_carry``), half need at least one (``carry``). Demonstrations solve them with one of
two strategies:

* **dominant** (``\\boxed{72}`` at once): every column's digit sum modulo 10, carries ignored. Short
  and easy to learn, right exactly on the ``no_carry`` problems.
* **rare** (``7+5=12 3+4+1=8 \\boxed{82}``: the columns from the right, each with its carry). Longer,
  right on every problem.

A model pretrained on mostly dominant demonstrations (:mod:`rsgrpo.pretrain`, ``rare_frac`` of
them rare) has high pass@1 on ``no_carry`` problems and low pass@1 but real pass@k on ``carry``
problems: the language-model analogue of the paper's bandit, a local optimum (the dominant
strategy) next to a global one (the rare strategy) that only exploration finds.

The answer is an integer; the policy's text is graded by the usual grader with ``answer_format:
integer`` (its final ``\\boxed{}`` must be a literal integer), never evaluated. Pure functions.
"""

from __future__ import annotations

import random

__all__ = ["KINDS", "STRATEGIES", "has_carry", "dominant_solution", "rare_solution", "solution",
           "carry_addition_problems", "demonstration"]

KINDS = ("no_carry", "carry")
STRATEGIES = ("dominant", "rare")


def _columns(a: int, b: int, digits: int) -> list[tuple[int, int]]:
    """Digit pairs of ``a`` and ``b``, rightmost column first."""
    return [((a // 10 ** i) % 10, (b // 10 ** i) % 10) for i in range(digits)]


def has_carry(a: int, b: int, digits: int = 2) -> bool:
    """Whether adding ``a`` and ``b`` column by column carries in some column."""
    carry = 0
    for x, y in _columns(a, b, digits):
        carry = (x + y + carry) // 10
        if carry:
            return True
    return False


def dominant_solution(a: int, b: int, digits: int = 2) -> str:
    """The dominant strategy's answer: each column's digit sum modulo 10, carries dropped."""
    value = sum(((x + y) % 10) * 10 ** i for i, (x, y) in enumerate(_columns(a, b, digits)))
    return f"\\boxed{{{value}}}"


def rare_solution(a: int, b: int, digits: int = 2) -> str:
    """The rare strategy's worked column addition: ``x+y+c=s`` per column (``+c`` only after the
    rightmost), then the boxed sum."""
    steps, carry = [], 0
    for i, (x, y) in enumerate(_columns(a, b, digits)):
        total = x + y + carry
        steps.append(f"{x}+{y}={total}" if i == 0 else f"{x}+{y}+{carry}={total}")
        carry = total // 10
    return " ".join(steps) + f" \\boxed{{{a + b}}}"


def solution(a: int, b: int, strategy: str, digits: int = 2) -> str:
    if strategy == "dominant":
        return dominant_solution(a, b, digits)
    if strategy == "rare":
        return rare_solution(a, b, digits)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def _operands(rng: random.Random, kind: str, digits: int) -> tuple[int, int]:
    low, high = 10 ** (digits - 1), 10 ** digits - 1
    while True:  # rejection sampling: both kinds are common for 2+ digits
        a, b = rng.randint(low, high), rng.randint(low, high)
        if has_carry(a, b, digits) == (kind == "carry"):
            return a, b


def carry_addition_problems(n: int = 200, seed: int = 0, digits: int = 2) -> list[dict]:
    """``n`` problems ``{id, problem: "a+b=", answer, kind}``, kinds alternating (``no_carry``
    first), deterministic for ``seed``: problem ``i`` depends only on ``(seed, i)``. Ids are
    ``carry_addition-<i>``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"generator 'carry_addition': 'n' must be a positive integer, got {n!r}")
    if not isinstance(digits, int) or not 2 <= digits <= 6:
        raise ValueError(f"generator 'carry_addition': 'digits' must be an integer in [2, 6], got {digits!r}")
    width = max(4, len(str(n - 1)))
    records = []
    for i in range(n):
        kind = KINDS[i % 2]
        a, b = _operands(random.Random(f"carry_addition/{seed}/{i}"), kind, digits)
        records.append({"id": f"carry_addition-{i:0{width}d}", "problem": f"{a}+{b}=", "answer": str(a + b),
                        "kind": kind})
    return records


def demonstration(rng: random.Random, rare_frac: float, digits: int = 2) -> tuple[str, str]:
    """One pretraining example ``(problem, completion)``: a problem of either kind (equally likely)
    solved by the rare strategy with probability ``rare_frac``, else by the dominant one."""
    a, b = _operands(rng, KINDS[rng.random() < 0.5], digits)
    strategy = "rare" if rng.random() < rare_frac else "dominant"
    return f"{a}+{b}=", solution(a, b, strategy, digits)
