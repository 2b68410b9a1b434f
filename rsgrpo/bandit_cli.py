"""``python -m rsgrpo bandit``: run the bandit experiment and write ``bandit.csv`` + ``bandit.png``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from rsgrpo.bandit import BanditSpec, simulate
from rsgrpo.io import atomic_path

CSV_COLUMNS = ["beta", "seed", "samples", "reward_ma", "entropy"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    spec = BanditSpec()
    parser.add_argument("--betas", type=float, nargs="+", default=[0, 2, 4, 8, 16, 32, 64], help="risk-seeking betas")
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds (0..seeds-1)")
    parser.add_argument("--updates", type=int, default=spec.updates, help="policy updates per run (paper: 25000)")
    parser.add_argument("--record-every", type=int, default=spec.record_every, help="record curves every N updates")
    parser.add_argument("--out", type=Path, required=True, help="output directory for bandit.csv and bandit.png")


def to_frame(result) -> pd.DataFrame:
    """Long table: one row per (beta, seed, record point)."""
    frames = []
    for b, beta in enumerate(result.betas):
        for s, seed in enumerate(result.seeds):
            frames.append(
                pd.DataFrame(
                    {
                        "beta": beta,
                        "seed": seed,
                        "samples": result.samples,
                        "reward_ma": result.reward_ma[b, s],
                        "entropy": result.entropy[b, s],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)[CSV_COLUMNS]


def main(args: argparse.Namespace) -> int:
    from rsgrpo.plots import plot_bandit

    spec = BanditSpec(updates=args.updates, record_every=args.record_every)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    runs = len(args.betas) * args.seeds
    print(f"bandit: {len(args.betas)} betas x {args.seeds} seeds = {runs} runs, {spec.updates} updates each", file=sys.stderr)
    t0 = time.perf_counter()
    result = simulate(args.betas, args.seeds, spec)
    print(f"bandit: simulated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "bandit.csv") as tmp:
        to_frame(result).to_csv(tmp, index=False)
    plot_bandit(result, args.out / "bandit.png")
    for beta, crossing, final in zip(result.betas, result.crossing_samples(0.9), result.final_expected_reward.mean(1)):
        shown = "never" if crossing != crossing else f"{int(crossing):,} samples"
        print(f"  beta={beta:g}: final E[r]={final:.3f}, reward_ma > 0.9 after {shown}", file=sys.stderr)
    return 0
