"""Figures in the paper's style (matplotlib, headless). ``python -m rsgrpo plot-advantages`` lives here.

* :func:`plot_bandit` -- Fig. 3: reward moving average and policy entropy vs samples, one colour per
  beta, the line the mean over seeds and the band the min-max over seeds.
* :func:`plot_advantages` -- Fig. 2: the RS-GRPO advantage vs a continuous reward, and for binary
  rewards the advantage of a correct (A+) and a wrong (A-) sample and the mean |A| per sample, all vs
  the prompt's accuracy, for beta in {0, 2, 4, 8}. Every curve is computed by
  :func:`rsgrpo.advantages.compute` on an actual group of rewards, not by a separate formula.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from rsgrpo.advantages import compute  # noqa: E402
from rsgrpo.io import atomic_path  # noqa: E402

DEFAULT_BETAS = (0.0, 2.0, 4.0, 8.0)


def _style():
    plt.rcParams.update(
        {
            "figure.dpi": 120,
            "savefig.dpi": 150,
            "font.size": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "legend.frameon": False,
        }
    )


def _beta_colors(n: int):
    cmap = plt.get_cmap("viridis")
    return [cmap(x) for x in np.linspace(0.0, 0.9, n)]


def save_figure(fig, path: str | Path, formats: Sequence[str] | None = None) -> list[Path]:
    """Save ``fig`` atomically to ``path`` (and to the same stem with each extra format), then close it."""
    path = Path(path)
    written = []
    for fmt in [path.suffix.lstrip(".")] + [f for f in (formats or []) if f != path.suffix.lstrip(".")]:
        target = path.with_suffix("." + fmt)
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight")
        written.append(target)
    plt.close(fig)
    return written


def plot_bandit(result, path: str | Path) -> list[Path]:
    """Reward moving average (left) and entropy (right) vs samples for every beta."""
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = result.samples
    for beta, color, rew, ent in zip(result.betas, _beta_colors(len(result.betas)), result.reward_ma, result.entropy):
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
    fig.suptitle(f"100-armed bandit, global optimum 1.0 (arm 40), local 0.6 (arm 75); mean and min-max of {n_seeds} seeds", fontsize=9)
    return save_figure(fig, path)


def advantage_curves(betas: Sequence[float] = DEFAULT_BETAS, group_size: int = 200) -> dict:
    """Numbers behind Fig. 2, computed from actual groups of rewards.

    Continuous: one group of ``group_size`` rewards spread uniformly over [0, 1] (a stand-in for a
    continuous reward distribution). Binary: for each accuracy ``c/group_size`` a group with ``c``
    correct samples; A+ / A- are the advantages of a correct / wrong sample, mean |A| the average
    absolute advantage per sample (the "cumulative" signal a prompt receives).
    """
    rewards = torch.linspace(0.0, 1.0, group_size, dtype=torch.float64)
    continuous = {b: compute("rs_grpo", rewards[None, :], beta=b)[0].numpy() for b in betas}
    counts = np.arange(1, group_size)
    groups = (torch.arange(group_size)[None, :] < torch.as_tensor(counts)[:, None]).to(torch.float64)
    binary = {}
    for b in betas:
        adv = compute("rs_grpo", groups, beta=b).numpy()
        binary[b] = {"pos": adv[:, 0], "neg": adv[:, -1], "mean_abs": np.abs(adv).mean(axis=1)}
    return {"reward": rewards.numpy(), "continuous": continuous, "accuracy": counts / group_size, "binary": binary}


def plot_advantages(out_dir: str | Path, betas: Sequence[float] = DEFAULT_BETAS, formats=("pdf",)) -> list[Path]:
    """Write ``advantages.png`` (+ PDF): 4 panels as in the paper's Fig. 2."""
    _style()
    curves = advantage_curves(betas)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    colors = _beta_colors(len(betas))
    for b, color in zip(betas, colors):
        label = f"β={b:g}" + (" (GRPO, mean-centred)" if b == 0 else "")
        axes[0].plot(curves["reward"], curves["continuous"][b], color=color, label=label)
        acc = curves["accuracy"]
        axes[1].plot(acc, curves["binary"][b]["pos"], color=color, label=label)
        axes[2].plot(acc, curves["binary"][b]["neg"], color=color, label=label)
        axes[3].plot(acc, curves["binary"][b]["mean_abs"], color=color, label=label)
    axes[0].set(xlabel="reward r", ylabel="advantage", title="Continuous reward (uniform group)")
    axes[1].set(xlabel="prompt accuracy p", ylabel="A+ (correct sample)", title="Binary: positive advantage")
    axes[2].set(xlabel="prompt accuracy p", ylabel="A- (wrong sample)", title="Binary: negative advantage")
    axes[3].set(xlabel="prompt accuracy p", ylabel="mean |A| per sample", title="Binary: cumulative |A|")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("RS-GRPO advantage for β ∈ {" + ", ".join(f"{b:g}" for b in betas) + "}", fontsize=10)
    return save_figure(fig, Path(out_dir) / "advantages.png", formats)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory (advantages.png, advantages.pdf)")
    parser.add_argument("--betas", type=float, nargs="+", default=list(DEFAULT_BETAS), help="betas to draw")


def main(args: argparse.Namespace) -> int:
    if any(b < 0 for b in args.betas):
        raise SystemExit(f"--betas must be >= 0, got {args.betas}")
    for path in plot_advantages(args.out, args.betas):
        print(path)
    return 0
