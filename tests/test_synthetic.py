"""The synthetic column-addition task: the dominant strategy is right exactly on the problems
without a carry, the rare one on every problem (brute force over all operand pairs)."""

import random
import re

import pytest

from rsgrpo.prepare.data_sources import load_records
from rsgrpo.prepare.synthetic import (
    carry_addition_problems,
    demonstration,
    dominant_solution,
    has_carry,
    in_split,
    rare_solution,
    solution,
    strategy_of,
)


def _boxed(text):
    return int(re.fullmatch(r".*\\boxed\{(\d+)\}", text).group(1))


def _carries_by_digits(a, b):  # independent: a column carries when its digits (plus the carry in) reach 10
    return any((a % 10 ** (i + 1)) + (b % 10 ** (i + 1)) >= 10 ** (i + 1) for i in range(3))


@pytest.mark.parametrize("digits", [2, 3])
def test_dominant_is_right_exactly_without_a_carry_and_rare_always(digits):
    low, high = 10 ** (digits - 1), 10 ** digits
    pairs = [(a, b) for a in range(low, high) for b in range(low, high)]
    if digits == 3:
        pairs = random.Random(0).sample(pairs, 20000)
    for a, b in pairs:
        assert has_carry(a, b, digits) == _carries_by_digits(a, b)
        assert (_boxed(dominant_solution(a, b, digits)) == a + b) == (not has_carry(a, b, digits)), (a, b)
        assert _boxed(rare_solution(a, b, digits)) == a + b
    assert 0.2 < sum(not has_carry(a, b, 2) for a in range(10, 100) for b in range(10, 100)) / 8100 < 0.3


def test_the_rare_strategy_writes_each_column_with_its_carry():
    assert rare_solution(37, 45) == "7+5=12 3+4+1=8 \\boxed{82}"
    assert rare_solution(58, 67) == "8+7=15 5+6+1=12 \\boxed{125}"
    assert rare_solution(21, 22) == "1+2=3 2+2+0=4 \\boxed{43}"
    assert dominant_solution(58, 67) == "\\boxed{15}" and dominant_solution(21, 22) == "\\boxed{43}"
    assert dominant_solution(55, 55) == "\\boxed{0}"
    with pytest.raises(ValueError, match="strategy must be one of"):
        solution(1, 2, "guess")


def test_strategy_of_a_completion():
    assert [strategy_of(solution(37, 45, s)) for s in ("dominant", "rare")] == ["dominant", "rare"]
    assert strategy_of(" \\boxed{7}") == "dominant" and strategy_of("7+5=13 \\boxed{13}") == "rare"


def test_problems_alternate_kinds_are_seeded_and_prefix_stable():
    records = carry_addition_problems(n=40, seed=3)
    assert [r["kind"] for r in records[:4]] == ["no_carry", "carry", "no_carry", "carry"]
    for r in records:
        a, b = map(int, r["problem"].rstrip("=").split("+"))
        assert r["answer"] == str(a + b) and has_carry(a, b) == (r["kind"] == "carry")
    assert carry_addition_problems(n=10, seed=3) == records[:10]
    assert carry_addition_problems(n=10, seed=4) != records[:10]
    with pytest.raises(ValueError, match="'digits' must be an integer in \\[2, 6\\], got 1"):
        carry_addition_problems(n=3, digits=1)
    # as a dataset spec: integer answers, the kind kept when asked for
    loaded = load_records({"source": "generator", "name": "carry_addition", "n": 6, "seed": 3,
                           "answer_format": "integer", "extra_fields": {"kind": "kind"}})
    assert [r["answer"] for r in loaded] == [r["answer"] for r in records[:6]]
    assert {r["answer_format"] for r in loaded} == {"integer"} and loaded[1]["kind"] == "carry"


def test_demonstrations_use_the_rare_strategy_at_its_rate():
    rng = random.Random(0)
    demos = [demonstration(rng, 0.1) for _ in range(4000)]
    rare = [completion for _, completion in demos if not completion.startswith("\\boxed")]
    assert abs(len(rare) / len(demos) - 0.1) < 0.015
    kinds = [has_carry(*map(int, problem.rstrip("=").split("+"))) for problem, _ in demos]
    assert abs(sum(kinds) / len(kinds) - 0.5) < 0.03


def test_a_slipped_rare_demonstration_is_a_consistent_chain_to_a_wrong_answer():
    assert rare_solution(37, 45, slip_column=0) == "7+5=11 3+4+1=8 \\boxed{81}"
    assert rare_solution(37, 45, slip_column=1) == "7+5=12 3+4+1=7 \\boxed{72}"
    assert rare_solution(50, 50, slip_column=0) == "0+0=1 5+5+0=10 \\boxed{101}"  # a 0 sum slips up
    for a in range(10, 100):
        for b in range(10, 100):
            for column in (0, 1):
                text = rare_solution(a, b, slip_column=column)
                sums = [int(s) for s in re.findall(r"=(\d+)", text)]
                # the boxed value follows from the written column sums: units digit, tens digit, final carry
                assert _boxed(text) == sums[0] % 10 + (sums[1] % 10) * 10 + (sums[1] // 10) * 100, text
                assert _boxed(text) != a + b, text
    rng = random.Random(1)
    demos = [demonstration(rng, 1.0, rare_slip=0.5) for _ in range(4000)]
    wrong = sum(_boxed(c) != sum(_pair(p)) for p, c in demos)
    assert abs(wrong / len(demos) - 0.5) < 0.03


def _pair(problem):
    return tuple(int(x) for x in problem.rstrip("=").split("+"))


def test_train_and_test_splits_are_disjoint_and_kinds_can_be_chosen():
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    test = {p for p in pairs if in_split(*p, "test")}
    assert all(in_split(*p, "train") != (p in test) and in_split(*p, "all") for p in pairs)
    assert 0.18 < len(test) / len(pairs) < 0.22
    held_out = carry_addition_problems(n=200, seed=5, kind="carry", split="test")
    assert {r["kind"] for r in held_out} == {"carry"}
    assert all(_pair(r["problem"]) in test and has_carry(*_pair(r["problem"])) for r in held_out)
    train = carry_addition_problems(n=500, seed=5, split="train")
    assert not {_pair(r["problem"]) for r in train} & test
    rng = random.Random(2)
    assert not {_pair(demonstration(rng, 0.1, split="train")[0]) for _ in range(2000)} & test
    with pytest.raises(ValueError, match="'kind' must be one of \\['both', 'no_carry', 'carry'\\], got 'odd'"):
        carry_addition_problems(n=2, kind="odd")
    with pytest.raises(ValueError, match="'split' must be one of \\['all', 'train', 'test'\\], got 'dev'"):
        carry_addition_problems(n=2, split="dev")
