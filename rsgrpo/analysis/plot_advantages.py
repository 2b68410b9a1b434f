"""``python -m rsgrpo plot-advantages`` (rule ``plot_advantages``): the advantage figure, Fig. 2 of
arXiv 2509.24261.

:func:`plot_advantages` draws the RS-GRPO advantage vs a continuous reward, and for binary rewards
the advantage of a correct (A+) and a wrong (A-) sample and the mean |A| per sample, all vs the
prompt's accuracy, for beta in {0, 2, 4, 8}. Every curve is computed by
:func:`rsgrpo.estimators.compute` (estimator ``rs_grpo``, the registry name the analysis knows
RS-GRPO by) on an actual group of rewards (:func:`advantage_curves`), not by a separate formula.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from rsgrpo.analysis.cell_index import RS_GRPO_ESTIMATOR  # noqa: E402
from rsgrpo.estimators import compute  # noqa: E402
from rsgrpo.layout import ADVANTAGES  # noqa: E402
from rsgrpo.plotting import beta_colors, house_style, save_figure  # noqa: E402

DEFAULT_BETAS = (0.0, 2.0, 4.0, 8.0)


def advantage_curves(betas: Sequence[float] = DEFAULT_BETAS, group_size: int = 200) -> dict:
    """Numbers behind Fig. 2, computed from actual groups of rewards.

    Continuous: one group of ``group_size`` rewards spread uniformly over [0, 1] (a stand-in for a
    continuous reward distribution). Binary: for each accuracy ``c/group_size`` a group with ``c``
    correct samples; A+ / A- are the advantages of a correct / wrong sample, mean |A| the average
    absolute advantage per sample (the "cumulative" signal a prompt receives).
    """
    rewards = torch.linspace(0.0, 1.0, group_size, dtype=torch.float64)
    continuous = {b: compute(RS_GRPO_ESTIMATOR, rewards[None, :], beta=b)[0].numpy() for b in betas}
    counts = np.arange(1, group_size)
    groups = (torch.arange(group_size)[None, :] < torch.as_tensor(counts)[:, None]).to(torch.float64)
    binary = {}
    for b in betas:
        adv = compute(RS_GRPO_ESTIMATOR, groups, beta=b).numpy()
        binary[b] = {"pos": adv[:, 0], "neg": adv[:, -1], "mean_abs": np.abs(adv).mean(axis=1)}
    return {"reward": rewards.numpy(), "continuous": continuous, "accuracy": counts / group_size, "binary": binary}


def plot_advantages(out_dir: str | Path, betas: Sequence[float] = DEFAULT_BETAS, formats=("pdf",)) -> list[Path]:
    """Write ``advantages.png`` (+ PDF): 4 panels as in the paper's Fig. 2."""
    house_style()
    curves = advantage_curves(betas)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    colors = beta_colors(len(betas))
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
    return save_figure(fig, Path(out_dir) / f"{ADVANTAGES}.png", formats)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory (advantages.png, advantages.pdf)")
    parser.add_argument("--betas", type=float, nargs="+", default=list(DEFAULT_BETAS), help="betas to draw")


def main(args: argparse.Namespace) -> int:
    if any(b < 0 for b in args.betas):
        raise SystemExit(f"--betas must be >= 0, got {args.betas}")
    for path in plot_advantages(args.out, args.betas):
        print(path)
    return 0
