"""pass@k vs exact rational arithmetic; bootstrap intervals and paired differences."""

import math
from fractions import Fraction

import numpy as np
import pytest

from rsgrpo.passk import bootstrap_ci, mean_pass_at_k, paired_difference, pass_at_k, powers_of_two


def exact(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_matches_exact_fractions_for_all_small_cases():
    for n in range(1, 25):
        c = np.arange(n + 1)
        ks = list(range(1, n + 1))
        got = pass_at_k(n, c, ks)
        assert got.shape == (n + 1, n)
        for ci in range(n + 1):
            for j, k in enumerate(ks):
                assert got[ci, j] == pytest.approx(float(exact(n, ci, k)), abs=1e-13), (n, ci, k)


def test_stable_at_n_4096():
    n = 4096
    c = np.array([0, 1, 2, 7, 100, 2048, 4000, 4095, 4096])
    ks = [1, 2, 16, 256, 1024, 4096]
    got = pass_at_k(n, c, ks)
    assert np.all(np.isfinite(got))
    for i, ci in enumerate(c):
        for j, k in enumerate(ks):
            assert got[i, j] == pytest.approx(float(exact(n, int(ci), k)), rel=1e-10, abs=1e-13)


def test_edge_cases():
    assert pass_at_k(10, np.array([0]), 5)[0] == 0.0
    assert pass_at_k(10, np.array([10]), 1)[0] == 1.0
    assert pass_at_k(10, np.array([1]), 10)[0] == 1.0  # k = n: any correct sample counts
    assert pass_at_k(10, np.array([0]), 10)[0] == 0.0
    assert pass_at_k(8, np.array([3]), 1)[0] == pytest.approx(3 / 8)  # pass@1 = c/n
    assert not np.signbit(pass_at_k(4, np.array([0]), 2)).any()


def test_scalar_k_and_per_problem_n():
    got = pass_at_k(np.array([4, 10]), np.array([1, 1]), 2)
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx([float(exact(4, 1, 2)), float(exact(10, 1, 2))])


@pytest.mark.parametrize(
    "n, c, k, message",
    [
        (10, [11], 1, "c=11, n=10"),
        (10, [-1], 1, "c=-1"),
        (10, [3], 11, "k=11"),
        (10, [3], 0, "k=0"),
        (10, [1.5], 1, "whole numbers"),
        (10, ["a"], 1, "integer counts"),
    ],
)
def test_bad_input(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, np.array(c), k)


def test_powers_of_two():
    assert powers_of_two(1) == [1]
    assert powers_of_two(32) == [1, 2, 4, 8, 16, 32]
    assert powers_of_two(1024)[-1] == 1024 and len(powers_of_two(1024)) == 11
    assert powers_of_two(24) == [1, 2, 4, 8, 16, 24]


def test_bootstrap_deterministic_and_brackets_mean():
    rng = np.random.default_rng(0)
    values = rng.random((200, 3))
    a = bootstrap_ci(values, seed=4)
    b = bootstrap_ci(values, seed=4)
    assert np.array_equal(a.low, b.low) and np.array_equal(a.high, b.high)
    assert np.all(a.low < a.mean) and np.all(a.mean < a.high)
    assert np.allclose(a.mean, values.mean(axis=0))
    # width ~ 2 * 1.96 * sd / sqrt(P)
    expected = 2 * 1.96 * values.std(axis=0) / np.sqrt(200)
    assert np.allclose(a.high - a.low, expected, rtol=0.15)


def test_bootstrap_covers_truth_at_nominal_rate():
    """Problems with known pass@1; repeated draws; the 90% interval should cover ~90% of the time."""
    rng = np.random.default_rng(1)
    p = rng.beta(0.5, 0.8, size=2000)  # population of problems; truth = its mean pass@1
    truth = p.mean()
    hits = 0
    trials = 200
    for t in range(trials):
        idx = rng.integers(0, p.size, size=80)
        c = rng.binomial(16, p[idx])
        ci = bootstrap_ci(pass_at_k(16, c, 1), alpha=0.1, n_boot=1000, seed=t)
        hits += ci.low <= truth <= ci.high
    assert 0.82 <= hits / trials <= 0.96


def test_paired_difference_is_tighter_than_unpaired():
    rng = np.random.default_rng(2)
    difficulty = rng.random(300)
    a = np.clip(difficulty + 0.05 + rng.normal(0, 0.02, 300), 0, 1)
    b = difficulty
    paired = paired_difference(a, b, seed=0)
    assert paired.mean == pytest.approx((a - b).mean())
    assert paired.low > 0  # the paired test sees the improvement
    unpaired_width = (bootstrap_ci(a).high - bootstrap_ci(a).low) + (bootstrap_ci(b).high - bootstrap_ci(b).low)
    assert paired.high - paired.low < unpaired_width / 4
    with pytest.raises(ValueError, match="same problems"):
        paired_difference(a, b[:10])


def test_mean_pass_at_k_dict():
    out = mean_pass_at_k(4, np.array([0, 4]), [1, 4])
    assert out[1].mean == pytest.approx(0.5) and out[4].mean == pytest.approx(0.5)
