"""pass@k vs exact rational arithmetic; bootstrap intervals and paired differences; the seeds x problems
bootstrap against brute force (an explicit loop over the same draws, and plain index resampling)."""

import math
from fractions import Fraction

import numpy as np
import pytest

from rsgrpo.evaluate.passk import (
    SEED_STREAM,
    bootstrap_ci,
    mean_pass_at_k,
    paired_difference,
    paired_seed_difference,
    pass_at_k,
    powers_of_two,
    seed_bootstrap_ci,
    stratified_bootstrap,
    stratified_paired_difference,
)


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


# ------------------------------------------------------------------------- seeds x problems
def _values(seeds: int, problems: int, spread: float, rng_seed: int = 0) -> np.ndarray:
    """[seeds, problems] pass@1-like values: a per-problem difficulty plus a per-seed offset."""
    rng = np.random.default_rng(rng_seed)
    difficulty = rng.random(problems)
    offsets = np.linspace(-spread, spread, seeds) if seeds > 1 else np.zeros(1)
    return np.clip(difficulty[None, :] + offsets[:, None] + rng.normal(0, 0.03, (seeds, problems)), 0, 1)


def test_one_seed_is_exactly_the_problem_bootstrap():
    """[1, problems] values give bit for bit today's numbers (unseeded results unchanged)."""
    v = _values(1, 40, 0.0)
    for got, want in ((seed_bootstrap_ci(v, n_boot=300, seed=3), bootstrap_ci(v[0], n_boot=300, seed=3)),
                      (seed_bootstrap_ci(np.stack([v, v ** 2], axis=-1), n_boot=300, seed=3),
                       bootstrap_ci(np.stack([v[0], v[0] ** 2], axis=-1), n_boot=300, seed=3)),
                      (paired_seed_difference(v, v ** 2, n_boot=300, seed=1),
                       paired_difference(v[0], v[0] ** 2, n_boot=300, seed=1)),
                      (stratified_bootstrap([v, v[:, :7]], n_boot=300, seed=2),
                       stratified_bootstrap([v[0], v[0, :7]], n_boot=300, seed=2)),
                      (stratified_paired_difference([v, v[:, :7]], [v ** 2, v[:, :7] ** 2], n_boot=300, seed=2),
                       stratified_bootstrap([v[0] - v[0] ** 2, v[0, :7] - v[0, :7] ** 2], n_boot=300, seed=2))):
        for x, y in zip(got, want):
            np.testing.assert_array_equal(x, y)


def test_seed_bootstrap_matches_an_explicit_loop_over_the_same_draws():
    """Replicate b: sum_s sum_p U[b,s] W[b,p] v[s,p] / (S P), with W the problem draw of bootstrap_ci
    (one for all seeds) and U the seed draw; recomputed with plain loops."""
    s_, p_, boot, seed = 3, 7, 60, 5
    v = _values(s_, p_, 0.2)
    w = np.random.default_rng(seed).multinomial(p_, np.full(p_, 1 / p_), size=boot)
    u = np.random.default_rng([seed, SEED_STREAM, 0]).multinomial(s_, np.full(s_, 1 / s_), size=boot)
    stats = []
    for b in range(boot):
        total = 0.0
        for i in range(s_):
            for j in range(p_):
                total += u[b, i] * w[b, j] * v[i, j]
        stats.append(total / (s_ * p_))
    got = seed_bootstrap_ci(v, n_boot=boot, seed=seed)
    assert got.mean == pytest.approx(v.mean())
    assert (got.low, got.high) == pytest.approx(tuple(np.quantile(stats, [0.025, 0.975])), abs=1e-12)


def test_seed_bootstrap_is_resampling_seeds_and_problems_with_replacement():
    """Same distribution as drawing P problem indices and S seed indices with replacement."""
    s_, p_, boot = 4, 30, 20000
    v = _values(s_, p_, 0.15, rng_seed=1)
    rng = np.random.default_rng(9)
    pi = rng.integers(0, p_, size=(boot, p_))
    si = rng.integers(0, s_, size=(boot, s_))
    brute = v[si[:, :, None], pi[:, None, :]].mean(axis=(1, 2))
    got = seed_bootstrap_ci(v, n_boot=boot, seed=0)
    width = got.high - got.low
    assert got.low == pytest.approx(np.quantile(brute, 0.025), abs=0.03 * width)
    assert got.high == pytest.approx(np.quantile(brute, 0.975), abs=0.03 * width)
    # ignoring the seeds (problems only, on the seed-averaged values) is far too narrow here
    problems_only = bootstrap_ci(v.mean(axis=0), n_boot=2000)
    assert problems_only.high - problems_only.low < 0.7 * width


def test_identical_seeds_give_the_problem_only_ci_and_disagreeing_seeds_widen_it():
    x = _values(1, 50, 0.0, rng_seed=2)[0]
    same = seed_bootstrap_ci(np.tile(x, (3, 1)), n_boot=1000, seed=4)
    ref = bootstrap_ci(x, n_boot=1000, seed=4)
    assert tuple(same) == pytest.approx(tuple(ref), abs=1e-12)
    widths = []
    for spread in (0.0, 0.05, 0.1, 0.2):
        v = np.clip(x[None, :] + np.array([-spread, 0.0, spread])[:, None], -1, 2)
        ci = seed_bootstrap_ci(v, n_boot=1000, seed=4)
        assert ci.mean == pytest.approx(v.mean())  # closed form: mean over seeds and problems
        widths.append(ci.high - ci.low)
    assert widths == sorted(widths) and widths[-1] > 1.5 * widths[0]
    # vector statistics: each column is its own seeds x problems bootstrap
    vec = seed_bootstrap_ci(np.stack([np.tile(x, (3, 1)), np.tile(x, (3, 1)) * 2], axis=-1), n_boot=1000, seed=4)
    assert vec.low.shape == (2,) and vec.low[1] == pytest.approx(2 * vec.low[0])


def test_paired_seed_difference_matches_an_explicit_loop():
    """One problem draw for both methods; independent seed draws (Sa = 3, Sb = 2)."""
    pa, boot, seed = 9, 50, 7
    a, b = _values(3, pa, 0.1, rng_seed=3), _values(2, pa, 0.3, rng_seed=4)
    w = np.random.default_rng(seed).multinomial(pa, np.full(pa, 1 / pa), size=boot)
    ua = np.random.default_rng([seed, SEED_STREAM, 0]).multinomial(3, np.full(3, 1 / 3), size=boot)
    ub = np.random.default_rng([seed, SEED_STREAM, 1]).multinomial(2, np.full(2, 1 / 2), size=boot)
    stats = []
    for r in range(boot):
        ma = sum(ua[r, i] * w[r, j] * a[i, j] for i in range(3) for j in range(pa)) / (3 * pa)
        mb = sum(ub[r, i] * w[r, j] * b[i, j] for i in range(2) for j in range(pa)) / (2 * pa)
        stats.append(ma - mb)
    got = paired_seed_difference(a, b, n_boot=boot, seed=seed)
    assert got.mean == pytest.approx(a.mean() - b.mean())
    assert (got.low, got.high) == pytest.approx(tuple(np.quantile(stats, [0.025, 0.975])), abs=1e-12)
    # identical seeds on both sides: the plain paired problem bootstrap
    x, y = a[0], b[0]
    same = paired_seed_difference(np.tile(x, (3, 1)), np.tile(y, (2, 1)), n_boot=500, seed=1)
    assert tuple(same) == pytest.approx(tuple(paired_difference(x, y, n_boot=500, seed=1)), abs=1e-12)
    with pytest.raises(ValueError, match="same problems"):
        paired_seed_difference(a, b[:, :4])
    with pytest.raises(ValueError, match=r"\[seeds, problems\]"):
        seed_bootstrap_ci(np.ones(5))


def test_stratified_seed_draw_is_shared_by_the_benchmarks():
    """Seeds that are uniformly better or worse on every benchmark (no problem variance): with one
    seed draw per replicate shared by the benchmarks, the AVG moves as much as one benchmark does, so
    its CI is [-d, +d]; independent draws per benchmark would average that away."""
    d = 0.1
    strata = [np.array([[-d] * 5, [d] * 5]) for _ in range(4)]
    ci = stratified_bootstrap(strata, n_boot=2000, seed=0)
    assert ci.mean == pytest.approx(0.0, abs=1e-15)
    assert (ci.low, ci.high) == pytest.approx((-d, d))
    # problems are resampled within each benchmark as without seeds: identical seeds give that CI
    rng = np.random.default_rng(3)
    one = [rng.random(12), rng.random(5)]
    same = stratified_bootstrap([np.tile(x, (3, 1)) for x in one], n_boot=800, seed=6)
    assert tuple(same) == pytest.approx(tuple(stratified_bootstrap(one, n_boot=800, seed=6)), abs=1e-12)
    paired = stratified_paired_difference([np.tile(x, (3, 1)) for x in one], [np.tile(x / 2, (2, 1)) for x in one],
                                          n_boot=800, seed=6)
    assert tuple(paired) == pytest.approx(tuple(stratified_bootstrap([x / 2 for x in one], n_boot=800, seed=6)),
                                          abs=1e-12)
    with pytest.raises(ValueError, match="same seeds"):
        stratified_bootstrap([np.ones((3, 4)), np.ones((2, 4))])
    with pytest.raises(ValueError, match="same problems: stratum 1"):
        stratified_paired_difference([np.ones((3, 4)), np.ones((3, 4))], [np.ones((2, 4)), np.ones((2, 3))])
