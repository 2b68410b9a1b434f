"""The unbiased pass@k estimator (Chen et al. 2021) with bootstrap confidence intervals.

``pass@k = 1 - C(n-c, k) / C(n, k)`` for ``n`` samples of which ``c`` are correct. Computed as
``1 - prod_{i=n-c+1..n} (1 - k/i)`` in log space through a per-k cumulative table, so it is exact to
~1e-12 for any ``n`` (tested up to 4096) and vectorised over problems and k. Pure numpy, no I/O.

Confidence intervals are percentile bootstraps over *problems* (:func:`bootstrap_ci`,
:func:`paired_difference`) and, where a configuration was trained with several seeds, over problems
*and* training seeds (:func:`seed_bootstrap_ci`, :func:`paired_seed_difference`, and the stratified
:func:`stratified_bootstrap` / :func:`stratified_paired_difference` for an unweighted mean over
benchmarks). Values of one configuration are then a ``[seeds, problems]`` array (the same problems
for every seed); the point estimate is the mean over seeds and problems, and every bootstrap replicate

* resamples problems with replacement, one draw shared by all seeds (and by both sides of a paired
  difference: the problems are the same), drawn exactly as :func:`bootstrap_ci` draws them;
* resamples seeds with replacement, independently of the problems and, in a paired difference,
  independently for each side (the two methods' seeds are unrelated training runs); in the stratified
  versions one seed draw per replicate is shared by every benchmark (a seed is one trained model).

With one seed on every side each function returns exactly (bit for bit) what its problem-only
counterpart returns on the 1-D values; when all seeds hold identical values the seed draw cancels and
the interval equals the problem-only one (up to rounding). Seed draws come from their own generator,
``default_rng([seed, SEED_STREAM, side])``, so they never change the problem draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["pass_at_k", "Interval", "bootstrap_ci", "paired_difference", "powers_of_two", "mean_pass_at_k",
           "seed_bootstrap_ci", "paired_seed_difference", "stratified_bootstrap", "stratified_paired_difference",
           "SEED_STREAM"]

SEED_STREAM = 0x5EED  # entropy tag of the seed-resampling generators (distinct from the problem draws')


class Interval(NamedTuple):
    """A point estimate with a two-sided confidence interval (arrays for vector statistics)."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def powers_of_two(n: int) -> list[int]:
    """1, 2, 4, ... up to n (and n itself when it is not a power of two)."""
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    return ks if ks[-1] == n else ks + [n]


def _as_counts(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold whole numbers, got {arr[~(arr == np.round(arr))][:3]}")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must be integer counts, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def pass_at_k(n, c, k) -> np.ndarray:
    """Unbiased pass@k per problem.

    ``n``: samples per problem (scalar or array), ``c``: correct counts (array over problems),
    ``k``: an int (returns shape ``[problems]``) or a list of ints (returns ``[problems, len(k)]``).
    Raises ValueError when ``c`` is outside ``[0, n]`` or some ``k`` is outside ``[1, n]``.
    """
    c_arr = _as_counts(c, "c")
    n_arr = np.broadcast_to(_as_counts(n, "n"), c_arr.shape)
    scalar_k = np.ndim(k) == 0
    ks = [int(k)] if scalar_k else [int(x) for x in k]
    if c_arr.size and (c_arr.min() < 0 or np.any(c_arr > n_arr)):
        bad = int(np.flatnonzero((c_arr.ravel() < 0) | (c_arr.ravel() > n_arr.ravel()))[0])
        raise ValueError(
            f"correct counts must lie in [0, n]; problem {bad} has c={c_arr.ravel()[bad]}, n={n_arr.ravel()[bad]}"
        )
    n_min = int(n_arr.min()) if n_arr.size else 0
    n_max = int(n_arr.max()) if n_arr.size else 0
    for kk in ks:
        if kk < 1 or (n_arr.size and kk > n_min):
            raise ValueError(f"k must lie in [1, n] for every problem; got k={kk} with smallest n={n_min}")
    out = np.empty(c_arr.shape + (len(ks),), dtype=np.float64)
    i = np.arange(n_max + 1, dtype=np.float64)
    wrong = n_arr - c_arr
    for j, kk in enumerate(ks):
        # table[m] = sum_{i=k+1..m} log(1 - k/i), and 0 for m <= k
        terms = np.zeros_like(i)
        terms[kk + 1 :] = np.log1p(-kk / i[kk + 1 :])
        table = np.cumsum(terms)
        # log(C(n-c,k)/C(n,k)) = sum_{i=n-c+1..n} log(1-k/i) = table[n] - table[n-c], valid when n-c >= k
        enough_wrong = wrong >= kk
        log_ratio = table[n_arr] - table[np.where(enough_wrong, wrong, 0)]
        out[..., j] = np.where(enough_wrong, -np.expm1(log_ratio), 1.0) + 0.0  # + 0.0 turns -0.0 into 0.0
    return out[..., 0] if scalar_k else out


def bootstrap_ci(
    values, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> Interval:
    """Mean over problems (axis 0) with a percentile bootstrap CI resampling problems.

    ``values``: ``[problems]`` or ``[problems, stats]``; returns an :class:`Interval` of scalars or
    ``[stats]`` arrays. Deterministic for a fixed ``seed``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim not in (1, 2) or v.shape[0] == 0:
        raise ValueError(f"values must be [problems] or [problems, stats] with >= 1 problem, got {v.shape}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    p = v.shape[0]
    rng = np.random.default_rng(seed)
    # resampling problems with replacement == multinomial counts per problem; means are a matmul
    counts = rng.multinomial(p, np.full(p, 1.0 / p), size=n_boot).astype(np.float64)
    boot = counts @ v.reshape(p, -1) / p
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    mean = v.mean(axis=0)
    if v.ndim == 1:
        return Interval(np.float64(mean), np.float64(low[0]), np.float64(high[0]))
    return Interval(mean, low, high)


def paired_difference(a, b, **kwargs) -> Interval:
    """Mean of ``a - b`` over problems with a paired bootstrap CI (same problems resampled for both)."""
    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired comparison needs the same problems: shapes {a_arr.shape} vs {b_arr.shape}")
    return bootstrap_ci(a_arr - b_arr, **kwargs)


def mean_pass_at_k(n, c, ks: Sequence[int], **kwargs) -> dict[int, Interval]:
    """Convenience: mean pass@k over problems with bootstrap CI, one Interval per k."""
    per_problem = pass_at_k(n, c, list(ks))
    ci = bootstrap_ci(per_problem, **kwargs)
    return {k: Interval(ci.mean[j], ci.low[j], ci.high[j]) for j, k in enumerate(ks)}


# ------------------------------------------------------------------------- seeds x problems
def _check_boot(n_boot: int, alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def _seeds_problems(values, name: str) -> np.ndarray:
    """``values`` as a float ``[seeds, problems(, stats)]`` array with >= 1 seed and >= 1 problem."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim not in (2, 3) or v.shape[0] == 0 or v.shape[1] == 0:
        raise ValueError(f"{name} must be [seeds, problems] or [seeds, problems, stats] with >= 1 seed and "
                         f">= 1 problem, got shape {v.shape}")
    return v


def _problem_draws(p: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, p]`` multinomial counts: how often each problem is drawn (as :func:`bootstrap_ci`)."""
    return rng.multinomial(p, np.full(p, 1.0 / p), size=n_boot).astype(np.float64)


def _seed_draws(s: int, n_boot: int, seed: int, side: int) -> np.ndarray:
    """``[n_boot, s]`` multinomial counts of the seeds, from the seed stream ``side``."""
    rng = np.random.default_rng([seed, SEED_STREAM, side])
    return rng.multinomial(s, np.full(s, 1.0 / s), size=n_boot).astype(np.float64)


def _resampled_means(problem_w: np.ndarray, v: np.ndarray, seed_w: np.ndarray) -> np.ndarray:
    """Replicate means ``sum_s sum_p seed_w[b,s] problem_w[b,p] v[s,p] / (S P)`` -> ``[n_boot, stats]``."""
    s, p = v.shape[:2]
    flat = v.reshape(s, p, -1)
    per_seed = np.stack([problem_w @ flat[i] for i in range(s)], axis=1) / p  # [n_boot, seeds, stats]
    return np.einsum("bs,bsk->bk", seed_w, per_seed) / s


def _interval(mean: np.ndarray, boot: np.ndarray, alpha: float, vector: bool) -> Interval:
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    if not vector:
        return Interval(np.float64(np.ravel(mean)[0]), np.float64(low[0]), np.float64(high[0]))
    return Interval(np.asarray(mean), low, high)


def seed_bootstrap_ci(values, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """Mean over seeds and problems of ``values`` (``[seeds, problems]`` or ``[seeds, problems, stats]``)
    with a percentile bootstrap CI resampling problems (one draw for all seeds) and seeds.

    One seed: exactly :func:`bootstrap_ci` of ``values[0]``.
    """
    v = _seeds_problems(values, "values")
    _check_boot(n_boot, alpha)
    if v.shape[0] == 1:
        return bootstrap_ci(v[0], n_boot=n_boot, alpha=alpha, seed=seed)
    w = _problem_draws(v.shape[1], n_boot, np.random.default_rng(seed))
    boot = _resampled_means(w, v, _seed_draws(v.shape[0], n_boot, seed, 0))
    return _interval(v.mean(axis=(0, 1)), boot, alpha, v.ndim == 3)


def _paired_arrays(a, b) -> tuple[np.ndarray, np.ndarray]:
    a_arr, b_arr = _seeds_problems(a, "a"), _seeds_problems(b, "b")
    if a_arr.shape[1:] != b_arr.shape[1:]:
        raise ValueError(f"paired comparison needs the same problems: shapes {a_arr.shape} vs {b_arr.shape} "
                         "([seeds, problems(, stats)])")
    return a_arr, b_arr


def paired_seed_difference(a, b, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """Mean of ``a`` minus mean of ``b`` (each over seeds and problems; ``a``: ``[Sa, problems(, stats)]``,
    ``b``: ``[Sb, problems(, stats)]``, the same problems) with a bootstrap CI: one problem draw for
    both, independent seed draws for each.

    ``Sa = Sb = 1``: exactly :func:`paired_difference` of ``a[0]`` and ``b[0]``.
    """
    a_arr, b_arr = _paired_arrays(a, b)
    _check_boot(n_boot, alpha)
    if a_arr.shape[0] == b_arr.shape[0] == 1:
        return paired_difference(a_arr[0], b_arr[0], n_boot=n_boot, alpha=alpha, seed=seed)
    w = _problem_draws(a_arr.shape[1], n_boot, np.random.default_rng(seed))
    boot = (_resampled_means(w, a_arr, _seed_draws(a_arr.shape[0], n_boot, seed, 0))
            - _resampled_means(w, b_arr, _seed_draws(b_arr.shape[0], n_boot, seed, 1)))
    return _interval(a_arr.mean(axis=(0, 1)) - b_arr.mean(axis=(0, 1)), boot, alpha, a_arr.ndim == 3)


def _strata_arrays(strata: Sequence, name: str) -> list[np.ndarray]:
    """Strata as ``[seeds, problems]`` arrays (a 1-D stratum is one seed) with one seed count for all."""
    if not strata or any(np.size(s) == 0 for s in strata):
        raise ValueError("need at least one stratum, each with >= 1 problem")
    out = []
    for i, s in enumerate(strata):
        v = np.asarray(s, dtype=np.float64)
        if v.ndim == 1:
            v = v[None, :]
        if v.ndim != 2:
            raise ValueError(f"{name}[{i}] must be [problems] or [seeds, problems], got shape {v.shape}")
        out.append(v)
    seeds = {v.shape[0] for v in out}
    if len(seeds) > 1:
        raise ValueError(f"every stratum of {name} needs the same seeds (a seed is one trained model), "
                         f"got {[v.shape[0] for v in out]} seeds")
    return out


def stratified_bootstrap(strata: Sequence, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """Unweighted mean over strata of each stratum's mean, with a stratified percentile bootstrap CI.

    Every replicate resamples problems with replacement *within* each stratum (benchmark), keeping its
    size, so the CI reflects the AVG column's actual estimator (equal weight per benchmark). Strata
    are ``[problems]`` arrays, or ``[seeds, problems]`` arrays with the same seeds in every stratum:
    then each replicate also resamples the seeds, one draw shared by all strata. Per-stratum problem
    generators are seeded ``(seed, index)``, so reruns agree.
    """
    return stratified_paired_difference(strata, None, n_boot=n_boot, alpha=alpha, seed=seed)


def stratified_paired_difference(a_strata: Sequence, b_strata: Sequence | None, *, n_boot: int = 2000,
                                 alpha: float = 0.05, seed: int = 0) -> Interval:
    """Unweighted mean over strata of (mean of ``a`` - mean of ``b``), stratified bootstrap CI.

    Stratum ``i`` of ``a`` and of ``b`` hold the same problems (``[problems]`` or ``[seeds, problems]``;
    ``a``'s seeds may differ in number from ``b``'s): one problem draw per stratum for both, one seed
    draw per side shared by all strata. ``b_strata`` None: the stratified mean of ``a`` alone. With one
    seed everywhere it is exactly the problem-only stratified bootstrap of the per-problem differences.
    """
    _check_boot(n_boot, alpha)
    a = _strata_arrays(a_strata, "a_strata")
    b = None if b_strata is None else _strata_arrays(b_strata, "b_strata")
    if b is not None:
        if len(b) != len(a):
            raise ValueError(f"paired strata need the same benchmarks: {len(a)} vs {len(b)} strata")
        for i, (x, y) in enumerate(zip(a, b)):
            if x.shape[1] != y.shape[1]:
                raise ValueError(f"paired comparison needs the same problems: stratum {i} has {x.shape[1]} "
                                 f"vs {y.shape[1]}")
    if a[0].shape[0] == 1 and (b is None or b[0].shape[0] == 1):
        diffs = [x[0] if b is None else x[0] - y[0] for x, y in zip(a, b or a)]
        return _stratified_problems(diffs, n_boot, alpha, seed)
    seed_a = _seed_draws(a[0].shape[0], n_boot, seed, 0)
    seed_b = None if b is None else _seed_draws(b[0].shape[0], n_boot, seed, 1)
    boot = np.zeros(n_boot)
    means = []
    for i, x in enumerate(a):
        w = _problem_draws(x.shape[1], n_boot, np.random.default_rng([seed, i]))
        boot += _resampled_means(w, x, seed_a)[:, 0]
        means.append(x.mean())
        if b is not None:
            boot -= _resampled_means(w, b[i], seed_b)[:, 0]
            means[-1] -= b[i].mean()
    boot /= len(a)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Interval(np.float64(np.mean(means)), np.float64(low), np.float64(high))


def _stratified_problems(strata: list[np.ndarray], n_boot: int, alpha: float, seed: int) -> Interval:
    """The problem-only stratified bootstrap of 1-D strata."""
    boot = np.zeros(n_boot)
    for i, v in enumerate(strata):
        p = len(v)
        counts = np.random.default_rng([seed, i]).multinomial(p, np.full(p, 1.0 / p), size=n_boot)
        boot += counts @ v / p
    boot /= len(strata)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    mean = np.mean([np.mean(s) for s in strata])
    return Interval(np.float64(mean), np.float64(low), np.float64(high))
