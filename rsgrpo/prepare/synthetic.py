"""A synthetic reasoning task with the paper's exploration dilemma built in: column addition.

Problems are ``a+b=`` with two ``digits``-digit numbers; half of them need no carry in any column
(``kind`` ``no_carry``), half need at least one (``carry``). Demonstrations solve them with one of
two strategies:

* **dominant** (``\\boxed{72}`` at once): every column's digit sum modulo 10, carries ignored. Short
  and easy to learn, right exactly on the ``no_carry`` problems.
* **rare** (``7+5=12 3+4+1=8 \\boxed{82}``: the columns from the right, each with its carry). Longer,
  right on every problem.

A model pretrained on mostly dominant demonstrations (:mod:`rsgrpo.prepare.pretrain`, ``rare_frac`` of
them rare) has high pass@1 on ``no_carry`` problems and low pass@1 but real pass@k on ``carry``
problems: the language-model analogue of the paper's bandit, a local optimum (the dominant
strategy) next to a global one (the rare strategy) that only exploration finds.

The answer is an integer; the policy's text is graded by the usual grader with ``answer_format:
integer`` (its final ``\\boxed{}`` must be a literal integer), never evaluated. Pure functions.
"""

from __future__ import annotations

import random
import zlib

__all__ = ["KINDS", "STRATEGIES", "SPLITS", "has_carry", "in_split", "dominant_solution", "rare_solution", "solution",
           "strategy_of", "carry_addition_problems", "demonstration"]

KINDS = ("no_carry", "carry")
STRATEGIES = ("dominant", "rare")
SPLITS = ("all", "train", "test")
TEST_SHARE = 5  # one operand pair in TEST_SHARE belongs to the test split


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


def in_split(a: int, b: int, split: str) -> bool:
    """Whether the pair ``(a, b)`` belongs to ``split``: ``test`` holds a fixed fifth of all pairs (by
    a stable hash), ``train`` the rest, ``all`` every pair; so train and test problems never meet."""
    if split == "all":
        return True
    is_test = zlib.crc32(f"{a}+{b}".encode()) % TEST_SHARE == 0
    return is_test == (split == "test")


def dominant_solution(a: int, b: int, digits: int = 2) -> str:
    """The dominant strategy's answer: each column's digit sum modulo 10, carries dropped."""
    value = sum(((x + y) % 10) * 10 ** i for i, (x, y) in enumerate(_columns(a, b, digits)))
    return f"\\boxed{{{value}}}"


def rare_solution(a: int, b: int, digits: int = 2, slip_column: int | None = None) -> str:
    """The rare strategy's worked column addition: ``x+y+c=s`` per column (``+c`` only after the
    rightmost), then the boxed sum. With ``slip_column`` that column's sum is off by one (one less,
    or one more when it is 0) and the rest follows from it consistently: a wrong answer reached by
    a plausible chain."""
    steps, carry, value = [], 0, 0
    for i, (x, y) in enumerate(_columns(a, b, digits)):
        total = x + y + carry
        if i == slip_column:
            total = total - 1 if total else 1
        steps.append(f"{x}+{y}={total}" if i == 0 else f"{x}+{y}+{carry}={total}")
        value += (total % 10) * 10 ** i
        carry = total // 10
    value += carry * 10 ** digits
    return " ".join(steps) + f" \\boxed{{{value}}}"


def solution(a: int, b: int, strategy: str, digits: int = 2) -> str:
    if strategy == "dominant":
        return dominant_solution(a, b, digits)
    if strategy == "rare":
        return rare_solution(a, b, digits)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def strategy_of(completion: str) -> str:
    """Which strategy a completion follows: ``dominant`` when it boxes an answer at once, else ``rare``
    (it writes column sums first, right or wrong)."""
    return "dominant" if completion.lstrip().startswith("\\boxed") else "rare"


def _operands(rng: random.Random, kind: str, digits: int, split: str = "all") -> tuple[int, int]:
    low, high = 10 ** (digits - 1), 10 ** digits - 1
    while True:  # rejection sampling: both kinds and both splits are common for 2+ digits
        a, b = rng.randint(low, high), rng.randint(low, high)
        if has_carry(a, b, digits) == (kind == "carry") and in_split(a, b, split):
            return a, b


def carry_addition_problems(n: int = 200, seed: int = 0, digits: int = 2, kind: str = "both",
                            split: str = "all") -> list[dict]:
    """``n`` problems ``{id, problem: "a+b=", answer, kind}``, deterministic for ``seed``: problem
    ``i`` depends only on ``(seed, i)``. Ids are ``carry_addition-<i>``.

    ``kind``: ``both`` alternates the kinds (``no_carry`` first), ``carry`` / ``no_carry`` gives only
    that kind (a benchmark per kind reports each kind's pass@k). ``split``: draw the operand pairs
    from the ``train`` or ``test`` split (:func:`in_split`), or from ``all`` pairs.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"generator 'carry_addition': 'n' must be a positive integer, got {n!r}")
    if not isinstance(digits, int) or not 2 <= digits <= 6:
        raise ValueError(f"generator 'carry_addition': 'digits' must be an integer in [2, 6], got {digits!r}")
    if kind not in ("both",) + KINDS:
        raise ValueError(f"generator 'carry_addition': 'kind' must be one of {['both', *KINDS]}, got {kind!r}")
    if split not in SPLITS:
        raise ValueError(f"generator 'carry_addition': 'split' must be one of {list(SPLITS)}, got {split!r}")
    width = max(4, len(str(n - 1)))
    records = []
    for i in range(n):
        kind_i = KINDS[i % 2] if kind == "both" else kind
        a, b = _operands(random.Random(f"carry_addition/{seed}/{i}"), kind_i, digits, split)
        records.append({"id": f"carry_addition-{i:0{width}d}", "problem": f"{a}+{b}=", "answer": str(a + b),
                        "kind": kind_i})
    return records


def demonstration(rng: random.Random, rare_frac: float, digits: int = 2, rare_slip: float = 0.0,
                  split: str = "all") -> tuple[str, str]:
    """One pretraining example ``(problem, completion)``: a problem of either kind (equally likely)
    solved by the rare strategy with probability ``rare_frac``, else by the dominant one. A rare
    demonstration slips in one column (uniformly chosen) with probability ``rare_slip``: the rare
    strategy is always right when executed, but the demonstrations execute it unreliably, so a
    pretrained model does too (on both kinds of problem). ``split``: as in :func:`carry_addition_problems`."""
    a, b = _operands(rng, KINDS[rng.random() < 0.5], digits, split)
    if rng.random() >= rare_frac:
        return f"{a}+{b}=", dominant_solution(a, b, digits)
    slip = rng.randrange(digits) if rare_slip > 0 and rng.random() < rare_slip else None
    return f"{a}+{b}=", rare_solution(a, b, digits, slip)
