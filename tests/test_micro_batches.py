"""Planning the update's micro-batches (rsgrpo.train.micro_batches): without a budget today's contiguous
chunks; with one, every row exactly once, the budget and the row cap respected (a single over-long row
alone), rows in index order within a micro-batch, and less padding than the contiguous chunks."""

from __future__ import annotations

import math
import random

import pytest

from rsgrpo.train.micro_batches import padded_slots, padding_fraction, plan


def _log_uniform_lengths(rng: random.Random, n: int, low: int = 8, high: int = 512) -> list[int]:
    return [round(math.exp(rng.uniform(math.log(low), math.log(high)))) for _ in range(n)]


def _check_plan(lengths, batches, max_rows, max_tokens):
    """What every budgeted plan must satisfy, checked row by row."""
    rows = [row for batch in batches for row in batch]
    assert sorted(rows) == list(range(len(lengths)))  # every row exactly once
    for batch in batches:
        assert batch and batch == sorted(batch)
        assert len(batch) <= max_rows
        width = max(lengths[row] for row in batch)
        assert len(batch) * width <= max_tokens or len(batch) == 1  # an over-long row runs alone


def test_without_a_budget_the_plan_is_the_contiguous_chunks():
    assert plan([5, 1, 9, 2, 7, 3, 3], max_rows=3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert plan([4] * 6, max_rows=2) == [[0, 1], [2, 3], [4, 5]]
    assert plan([], max_rows=4) == [] == plan([], max_rows=4, max_tokens=100)


def test_a_budget_packs_the_longest_first_and_keeps_index_order_within_a_micro_batch():
    lengths = [10, 50, 12, 48, 11, 200, 49]
    # longest first: 200 alone (2 x 200 > 120), 50 with 49 (a third row: 3 x 50 = 150 > 120), 48 with 12
    # (2 x 48 = 96; a third row: 144), then 11 with 10
    assert plan(lengths, max_rows=8, max_tokens=120) == [[5], [1, 6], [2, 3], [0, 4]]
    # the row cap binds before the budget
    assert plan(lengths, max_rows=2, max_tokens=10**6) == [[1, 5], [3, 6], [2, 4], [0]]
    # one micro-batch: the rows in index order, the batch of the contiguous plan
    assert plan(lengths, max_rows=7, max_tokens=10**6) == plan(lengths, max_rows=7) == [list(range(7))]
    # a budget below every row: one row per micro-batch, longest first
    assert plan(lengths, max_rows=8, max_tokens=1) == [[5], [1], [6], [3], [2], [4], [0]]


@pytest.mark.parametrize("seed", range(40))
def test_random_plans_hold_every_row_once_within_budget_and_cap(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 120)
    lengths = _log_uniform_lengths(rng, n)
    max_rows = rng.choice([1, 2, 3, 8, 16, 64])
    max_tokens = rng.choice([1, 64, 500, 1024, 4096, 10**6])
    batches = plan(lengths, max_rows=max_rows, max_tokens=max_tokens)
    _check_plan(lengths, batches, max_rows, max_tokens)
    # packed greedily: no two consecutive micro-batches could have been one
    for a, b in zip(batches, batches[1:]):
        merged = len(a) + len(b)
        width = max(lengths[row] for row in a + b)
        assert merged > max_rows or merged * width > max_tokens


def test_sorted_packing_pads_less_than_the_contiguous_chunks():
    """On groups of completions whose lengths spread 8..512 tokens, as the benchmark's are."""
    rng = random.Random(0)
    for _ in range(50):
        lengths = [40 + n for n in _log_uniform_lengths(rng, rng.choice([64, 128, 256]))]
        max_rows = rng.choice([4, 8, 16])
        contiguous = plan(lengths, max_rows=max_rows)
        for budget in (max_rows * max(lengths), 2048, 4096):
            packed = plan(lengths, max_rows=max_rows, max_tokens=budget)
            assert padded_slots(lengths, packed) < padded_slots(lengths, contiguous)
            assert padding_fraction(lengths, packed) < padding_fraction(lengths, contiguous)


def test_padding_fraction_counts_rows_times_the_longest_row():
    lengths = [4, 2, 3, 1]
    assert padded_slots(lengths, [[0, 1], [2, 3]]) == 2 * 4 + 2 * 3
    assert padding_fraction(lengths, [[0, 1], [2, 3]]) == pytest.approx(1 - 10 / 14)
    assert padding_fraction(lengths, [[0], [1], [2], [3]]) == 0.0
    assert padding_fraction([], []) == 0.0


def test_bad_caps_are_refused():
    with pytest.raises(ValueError, match="max_rows"):
        plan([1, 2], max_rows=0)
    with pytest.raises(ValueError, match="max_tokens"):
        plan([1, 2], max_rows=2, max_tokens=0)
