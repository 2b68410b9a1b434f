"""``python -m rsgrpo bandit`` (rule ``bandit``): run the 100-armed bandit of arXiv 2509.24261 (Fig. 3)
and write ``bandit.csv`` + ``bandit.png``.

The simulation is pure math in :mod:`rsgrpo.bandit`; this module holds the verb, the CSV layout and
the figure (:func:`plot_bandit`: reward moving average and policy entropy vs samples, one colour per
beta, the line the mean over seeds and the band the min-max over seeds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402

from rsgrpo.bandit.simulation import BanditSpec, simulate  # noqa: E402
from rsgrpo.io import atomic_path  # noqa: E402
from rsgrpo.layout import BANDIT_CSV, BANDIT_PNG  # noqa: E402
from rsgrpo.plotting import beta_colors, house_style, save_figure  # noqa: E402

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


def plot_bandit(result, path: str | Path) -> list[Path]:
    """Fig. 3: reward moving average (left) and entropy (right) vs samples for every beta."""
    house_style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = result.samples
    for beta, color, rew, ent in zip(result.betas, beta_colors(len(result.betas)), result.reward_ma, result.entropy):
        for ax, y in ((axes[0], rew), (axes[1], ent)):
            ax.plot(x, y.mean(axis=0), color=color, lw=1.6, label=f"β={beta:g}")
            ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=color, alpha=0.18, lw=0)
    axes[0].axhline(1.0, color="grey", ls=":", lw=1)
    axes[0].axhline(0.6, color="grey", ls="--", lw=1)
    for ax in axes:
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
    axes[0].set(xlabel="samples", ylabel="reward (moving average)", title="Bandit: reward", ylim=(0.2, 1.05))
    axes[1].set(xlabel="samples", ylabel="policy entropy (nats)", title="Bandit: entropy")
    axes[0].legend(loc="lower right", ncol=2, fontsize=8)
    n_seeds = result.reward_ma.shape[1]
    fig.suptitle("100-armed bandit, global optimum 1.0 (arm 40), local 0.6 (arm 75); "
                 f"mean and min-max of {n_seeds} seeds", fontsize=9)
    return save_figure(fig, path)


def main(args: argparse.Namespace) -> int:
    spec = BanditSpec(updates=args.updates, record_every=args.record_every)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    runs = len(args.betas) * args.seeds
    print(f"bandit: {len(args.betas)} betas x {args.seeds} seeds = {runs} runs, {spec.updates} updates each",
          file=sys.stderr)
    t0 = time.perf_counter()
    result = simulate(args.betas, args.seeds, spec)
    print(f"bandit: simulated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / BANDIT_CSV) as tmp:
        to_frame(result).to_csv(tmp, index=False)
    plot_bandit(result, args.out / BANDIT_PNG)
    for beta, crossing, final in zip(result.betas, result.crossing_samples(0.9), result.final_expected_reward.mean(1)):
        shown = "never" if crossing != crossing else f"{int(crossing):,} samples"
        print(f"  beta={beta:g}: final E[r]={final:.3f}, reward_ma > 0.9 after {shown}", file=sys.stderr)
    return 0
