"""Benchmarks of the pure core, each against a baseline measured in the same run.

1. Bandit (paper Fig. 3): the vectorised 7-beta x 10-seed run vs a straightforward reference loop
   (one update at a time, one (beta, seed) run after another, as the authors' script does).
   Target: >= 20x. The reference costs the same for every update, so by default it is timed on the
   first --reference-updates updates of all 70 runs and extrapolated to the full 25,000 (printed as
   such); --full-reference times it completely (~5-10 minutes).
2. pass@k: 500 problems x 1024 samples, k = 1..1024 (powers of two), median of repeats, vs a plain
   per-problem math.comb loop. Target: < 20 ms.

Usage: python perf/bench_core.py [--full-reference] [--reference-updates N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from rsgrpo.bandit.simulation import BanditSpec, simulate, simulate_reference
from rsgrpo.evaluate.passk import pass_at_k, powers_of_two

BETAS = [0, 2, 4, 8, 16, 32, 64]
SEEDS = 10


def bench_bandit(reference_updates: int | None) -> None:
    spec = BanditSpec()
    t0 = time.perf_counter()
    result = simulate(BETAS, SEEDS, spec)
    vectorised = time.perf_counter() - t0

    ref_spec = BanditSpec(updates=reference_updates or spec.updates)
    t0 = time.perf_counter()
    for beta in BETAS:
        for seed in range(SEEDS):
            simulate_reference(beta, seed, ref_spec)
    measured = time.perf_counter() - t0
    reference = measured * spec.updates / ref_spec.updates
    how = ("measured" if ref_spec.updates == spec.updates
           else f"extrapolated from {ref_spec.updates} updates ({measured:.1f} s)")
    print(f"bandit  7 betas x 10 seeds x {spec.updates} updates")
    print(f"  vectorised (one array program): {vectorised:8.2f} s")
    print(f"  reference loop                : {reference:8.2f} s  [{how}]")
    print(f"  speed-up                      : {reference / vectorised:8.1f}x   (target >= 20x)")
    crossing = dict(zip(BETAS, result.crossing_samples(0.9)))
    print("  reward_ma > 0.9 first reached at (samples): " + ", ".join(
        f"b{b}={'never' if c != c else f'{int(c) // 1000}k'}" for b, c in crossing.items()))


def bench_passk(repeats: int = 50) -> None:
    rng = np.random.default_rng(0)
    n = 1024
    c = rng.binomial(n, rng.beta(0.3, 1.0, size=500))
    ks = powers_of_two(n)
    pass_at_k(n, c, ks)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pass_at_k(n, c, ks)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    baseline = [[1 - math.comb(n - int(ci), k) / math.comb(n, k) for k in ks] for ci in c]
    loop = time.perf_counter() - t0
    assert np.allclose(np.array(baseline), pass_at_k(n, c, ks), atol=1e-12)
    med = statistics.median(times)
    print(f"pass@k  500 problems x {n} samples, k = 1..{n} ({len(ks)} values)")
    print(f"  vectorised: median {med * 1e3:6.2f} ms over {repeats} runs "
          f"(min {min(times) * 1e3:.2f}, max {max(times) * 1e3:.2f})  target < 20 ms")
    print(f"  math.comb loop (exact big integers): {loop * 1e3:8.1f} ms  -> {loop / med:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-reference", action="store_true", help="time the reference loop on all 25,000 updates")
    parser.add_argument("--reference-updates", type=int, default=2500, help="updates to time the reference on")
    parser.add_argument("--skip-bandit", action="store_true")
    args = parser.parse_args()
    bench_passk()
    if not args.skip_bandit:
        bench_bandit(None if args.full_reference else args.reference_updates)


if __name__ == "__main__":
    main()
