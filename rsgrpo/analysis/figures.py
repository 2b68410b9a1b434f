"""``python -m rsgrpo figures`` (rule ``figures``): the paper's result figures (arXiv 2509.24261, Figs. 4,
5, 7 and an entropy plot) from the results index.

Inputs are ``cells.csv`` and ``benchmarks.csv`` as documented in :mod:`rsgrpo.analysis.cell_index`.
A group's advantage function is its ``estimator`` (registry name), and its ``method`` only the config
key, one more name ``--transition-from`` / ``--transition-to`` accept: RS-GRPO = estimator
``rs_grpo``, GRPO = estimator ``grpo``, Base = no estimator, whatever the config calls them.

Every figure shows one line / bar / matrix per *group*
(:attr:`rsgrpo.analysis.cell_index.CellIndex.groups`): the replicates of a configuration trained with
several seeds are pooled, and the legend names each group once, with "(n seeds)" where it has
several. Figures, each written as PNG + PDF (house style of :mod:`rsgrpo.plotting`, atomic writes),
into ``--out``:

* ``passk_curves`` (Fig. 4): pass@k (%) against k on a log2 axis, one row per setting, one column per
  benchmark, one line per group (Base, GRPO, RS-GRPO betas, other estimators) with its 95% bootstrap
  band: from the cell's final ``passk.csv`` for a group with one seed; for a group with several,
  recomputed from the replicates' graded counts: the mean over seeds and problems, the band the
  bootstrap over problems and seeds (:func:`rsgrpo.evaluate.passk.seed_bootstrap_ci`,
  :data:`rsgrpo.analysis.figure_data.BAND_BOOT` resamples), at the benchmark's ``ks``. The numbers of
  every line and band in ``passk_curves.csv`` (``setting, group, label, n_seeds, benchmark, k,
  pass_at_k, ci_low, ci_high``; fractions).
* ``beta_ablation`` (Fig. 5): for every setting with at least two RS-GRPO groups (betas): cumulative
  solve rate and training reward over steps (``metrics.csv``; the reward as a moving average), and
  test pass@1 and pass@32 (largest k <= 32) averaged over the benchmarks at every evaluated
  checkpoint (``step_evals``; step 0 is the model's base cell when there is one). GRPO is drawn when
  present. A group with several seeds: the mean over its seeds at the steps every seed has, with a
  shaded band from the lowest to the highest seed (min-max over seeds, not a CI).
* ``unique_answers`` (Fig. 7 left): the unique-correct-answer ratio, see
  :func:`rsgrpo.analysis.figure_data.unique_correct_ratio`; numbers in ``unique_answers.csv`` (a
  group's ratio: mean over its (seed, problem) pairs with >= 1 correct completion; counts summed over
  seeds; ``cell`` the group id, ``method`` the config key).
* ``transition_heatmap`` (Fig. 7 right): problems counted by (accuracy bin under group A, bin under
  group B), bins ``0, (0,.2], (.2,.4], (.4,.6], (.6,.8], (.8,1]``, default A = estimator ``grpo``,
  B = estimator ``rs_grpo`` (``--transition-from`` / ``--transition-to`` take an estimator, method
  key, label, group or cell id); a group's per-problem accuracy pools its replicates (``n`` and ``c``
  summed over seeds); numbers in ``transition_matrix.csv`` (``from_cell`` / ``to_cell``: group ids).
* ``entropy``: policy entropy over training steps per group (``metrics.csv``), one panel per setting;
  several seeds: mean with a min-max band, as in ``beta_ablation``.

A figure whose inputs are absent (e.g. no beta ablation in the grid) is skipped with a line on stderr
and a ``# skipped`` line in the index ``figures.txt``; no empty figure is ever written. ``figures.txt``
lists one written figure per line: ``name<TAB>file<TAB>file...``. The numbers each figure draws are
computed by :mod:`rsgrpo.analysis.figure_data`; this module draws them and writes the CSVs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rsgrpo.analysis.aggregate import TABLE_K  # noqa: E402
from rsgrpo.analysis.cell_files import read_metrics  # noqa: E402
from rsgrpo.analysis.cell_index import (  # noqa: E402
    BASE_ESTIMATOR,
    GRPO_ESTIMATOR,
    RS_GRPO_ESTIMATOR,
    CellIndex,
    load_index,
)
from rsgrpo.analysis.figure_data import (  # noqa: E402
    ACCURACY_BINS,
    ablation_settings,
    base_cell,
    eval_curve,
    group_passk,
    group_transitions,
    passk_curve_table,
    seed_curve,
    transition_pairs,
    unique_answer_table,
)
from rsgrpo.io import atomic_path  # noqa: E402
from rsgrpo.plotting import house_style, save_figure  # noqa: E402

__all__ = ["FIGURES", "Skip", "plot_passk_curves", "plot_beta_ablation", "plot_unique_answers",
           "plot_transition_heatmap", "plot_entropy", "make_figures", "add_arguments", "main"]

# the figures in the order make_figures renders them and lists them in figures.txt
FIGURES = ("passk_curves", "beta_ablation", "unique_answers", "transition_heatmap", "entropy")
# colour per estimator (registry name; "" = the base model); RS-GRPO cells get reds by beta
FIXED_COLORS = {BASE_ESTIMATOR: "#7f7f7f", GRPO_ESTIMATOR: "#1f77b4", "passk_chen": "#2ca02c",
                "passk_mahdavi": "#9467bd", "pkpo_walder": "#8c564b"}
OTHER_COLORS = ("#17becf", "#bcbd22", "#e377c2", "#ff7f0e", "#393b79")


class Skip(Exception):
    """A figure's inputs are absent from this grid; the message says which."""


# ------------------------------------------------------------------------------------ helpers
def _colors(members: pd.DataFrame) -> dict[str, object]:
    """Group -> colour: fixed per known estimator, reds by beta for RS-GRPO, a cycle for the rest.

    Pass the whole index's memberships (or groups), so a group keeps its colour in every panel and
    figure; the replicates of a group share it.
    """
    colors, other = {}, iter(OTHER_COLORS * 10)
    rs = members[members["estimator"] == RS_GRPO_ESTIMATOR].drop_duplicates("group")
    betas = sorted(set(rs["beta"].fillna(-1.0)))  # one shade per beta, the same in every setting
    reds = plt.get_cmap("Reds")
    shade = {b: reds(0.55 + 0.4 * i / (len(betas) - 1)) if len(betas) > 1 else "#d62728"
             for i, b in enumerate(betas)}
    for group, beta in zip(rs["group"], rs["beta"].fillna(-1.0)):
        colors[group] = shade[beta]
    for _, m in members.drop_duplicates("group").iterrows():
        if m["group"] not in colors:
            colors[m["group"]] = FIXED_COLORS.get(m["estimator"]) or next(other)
    return colors


def _label(g: pd.Series) -> str:
    """Legend entry of a group: its label, with "(n seeds)" where it pools several replicates."""
    return f"{g['label']} ({g['n_seeds']} seeds)" if g["n_seeds"] > 1 else g["label"]


def _plot_seeds(ax, curves: Sequence[pd.Series], color, label: str, **kw) -> None:
    """One line (the mean over seeds) and, for several seeds, a min-max band (the spread of training runs)."""
    x, mean, lo, hi = seed_curve(curves)
    ax.plot(x, mean, color=color, lw=1.5, label=label, **kw)
    if len(curves) > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)


def _log2_axis(ax, ks: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _grid_axes(nrows: int, ncols: int, w: float, h: float):
    """A figure of ``w`` x ``h`` inch panels whose axes are always 2-D (``squeeze=False``), so a figure
    with one row or column is indexed like any other."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    return fig, axes


# ------------------------------------------------------------------------------------ figures
def plot_passk_curves(index: CellIndex, out: Path, formats: Sequence[str]) -> list[Path]:
    """Fig. 4: pass@k vs k (log2), rows = settings, columns = benchmarks, bands = bootstrap CIs."""
    curves = group_passk(index)
    with atomic_path(out / "passk_curves.csv") as tmp:
        passk_curve_table(index, curves).to_csv(tmp, index=False, float_format="%.6g")
    settings = list(dict.fromkeys(index.groups["setting"]))
    benches = list(index.benchmarks["benchmark"])
    colors = _colors(index.memberships)
    fig, axes = _grid_axes(len(settings), len(benches), 3.3, 2.9)
    for r, setting in enumerate(settings):
        members = index.groups[index.groups["setting"] == setting]
        for col, bench in enumerate(benches):
            ax = axes[r, col]
            _passk_panel(ax, members, curves, bench, colors)
            ax.set_title(f"{setting}\n{index.benchmark_name(bench)}" if col == 0 else index.benchmark_name(bench),
                         fontsize=9)
            if col == 0:
                ax.set_ylabel("pass@k (%)")
            if r == len(settings) - 1:
                ax.set_xlabel("k")
        axes[r, -1].legend(fontsize=7, loc="lower right")
    several = (index.groups["n_seeds"] > 1).any()
    fig.suptitle("pass@k (95% bootstrap band over problems" + ("; over problems and seeds for a method with "
                 "several seeds)" if several else ")"), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out / "passk_curves.png", formats)


def _passk_panel(ax, members: pd.DataFrame, curves: dict[str, pd.DataFrame], bench: str, colors: dict) -> None:
    """One benchmark of one setting: a line and band per group, the x axis at the ks the groups have."""
    ks_all = set()
    for _, m in members.iterrows():
        d = curves[m["group"]]
        d = d[d["benchmark"] == bench].sort_values("k")
        if d.empty:
            continue
        ks_all |= set(d["k"])
        ax.plot(d["k"], d["pass_at_k"] * 100, color=colors[m["group"]], lw=1.5, marker="o", ms=2.5, label=_label(m))
        ax.fill_between(d["k"], d["ci_low"] * 100, d["ci_high"] * 100, color=colors[m["group"]], alpha=0.15, lw=0)
    if ks_all:
        _log2_axis(ax, sorted(ks_all))


def plot_beta_ablation(index: CellIndex, out: Path, formats: Sequence[str]) -> list[Path]:
    """Fig. 5: training and test curves for every setting with several RS-GRPO betas (a group with several
    seeds: mean over seeds, min-max band)."""
    ablations = ablation_settings(index)
    if not ablations:
        raise Skip("no setting has two or more RS-GRPO runs (betas)")
    fig, axes = _grid_axes(len(ablations), 4, 3.4, 2.9)
    titles = ["cumulative solve rate (train)", "training reward (moving avg.)", "test pass@1 (%)",
              f"test pass@{TABLE_K} (%, largest k ≤ {TABLE_K})"]
    colors = _colors(index.memberships)
    for r, (setting, runs) in enumerate(ablations):
        base = base_cell(index, runs["model"].iloc[0])
        for _, m in runs.iterrows():
            _ablation_lines(index, axes[r], m, base, color=colors[m["group"]], label=_label(m))
        for col, title in enumerate(titles):
            axes[r, col].set_title(f"{setting}\n{title}" if col == 0 else title, fontsize=9)
            axes[r, col].set_xlabel("training step")
        axes[r, 0].legend(fontsize=7)
    several = (pd.concat([runs for _, runs in ablations])["n_seeds"] > 1).any()
    fig.suptitle("β ablation: training curves and test pass@k averaged over benchmarks (step 0 = base model)"
                 + ("; several seeds: mean, band = min-max over seeds" if several else ""), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out / "beta_ablation.png", formats)


def _ablation_lines(index: CellIndex, axes, m: pd.Series, base: str | None, **kw) -> None:
    """One group's lines in the four panels of its ablation row: solve rate and smoothed reward from
    ``metrics.csv``, test pass@1 and pass@32 at the evaluated checkpoints."""
    rows = [index.cells.loc[c] for c in m["cells"]]
    mets = [read_metrics(row["metrics"]) for row in rows if row["metrics"] is not None]
    if mets:
        _plot_seeds(axes[0], [met.set_index("step")["cumulative_solve_rate"] for met in mets], **kw)
        window = max(1, len(mets[0]) // 20)
        _plot_seeds(axes[1], [met.set_index("step")["reward_mean"].rolling(window, min_periods=1).mean()
                              for met in mets], **kw)
    evaluated = [row["cell"] for row in rows if row["step_evals"]]
    if evaluated:
        for col, k_target in ((2, None), (3, TABLE_K)):
            _plot_seeds(axes[col], [eval_curve(index, c, base, k_target) for c in evaluated], marker="o", ms=3, **kw)


def plot_unique_answers(index: CellIndex, out: Path, formats: Sequence[str]) -> list[Path]:
    """Fig. 7 left: grouped bars of the unique-correct ratio, one panel per setting."""
    table = unique_answer_table(index)
    if table["unique_ratio"].isna().all():
        raise Skip("no cell has a correct completion")
    with atomic_path(out / "unique_answers.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    settings = list(dict.fromkeys(table["setting"]))
    colors = _colors(index.memberships)
    fig, axes = _grid_axes(1, len(settings), max(4.0, 1.1 * len(index.benchmarks) + 1.5), 3.2)
    for ax, setting in zip(axes[0], settings):
        t = table[table["setting"] == setting]
        groups = list(dict.fromkeys(t["cell"]))
        names = [index.benchmark_name(b) for b in index.benchmarks["benchmark"]]
        width = 0.8 / len(groups)
        for i, group in enumerate(groups):
            tc = t[t["cell"] == group]
            x = np.arange(len(names)) + (i - (len(groups) - 1) / 2) * width
            ax.bar(x, tc["unique_ratio"], width=width, color=colors[group], label=_label(tc.iloc[0]))
        ax.set_xticks(np.arange(len(names)), names, fontsize=8)
        ax.set(title=setting, ylabel="unique correct / correct", ylim=(0, 1.05))
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Ratio of unique correct solutions (per problem, whitespace-normalised text; "
                 "mean over problems with >= 1 correct" + (", and over seeds" if (table["n_seeds"] > 1).any() else "")
                 + ")", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out / "unique_answers.png", formats)


def plot_transition_heatmap(index: CellIndex, out: Path, formats: Sequence[str], source: str = GRPO_ESTIMATOR,
                            target: str = RS_GRPO_ESTIMATOR) -> list[Path]:
    """Fig. 7 right: per-problem accuracy bins source -> target over all benchmarks' problems."""
    pairs = transition_pairs(index, source, target)
    if not pairs:
        raise Skip(f"no setting has both a {source!r} and a {target!r} cell")
    labels = {g["group"]: _label(g) for _, g in index.groups.iterrows()}  # axes: "(n seeds)" where pooled
    plain = dict(zip(index.groups["group"], index.groups["label"]))  # titles: short
    fig, axes = _grid_axes(1, len(pairs), 4.3, 3.9)
    rows = []
    for ax, (setting, a, b) in zip(axes[0], pairs):
        m, n_problems = group_transitions(index, a, b)
        _heatmap_panel(ax, m)
        rows += [{"setting": setting, "from_cell": a, "to_cell": b, "from_bin": ACCURACY_BINS[i],
                  "to_bin": ACCURACY_BINS[j], "count": int(m[i, j])} for i, j in np.ndindex(m.shape)]
        ax.set(xlabel=f"accuracy under {labels[b]}", ylabel=f"accuracy under {labels[a]}",
               title=f"{setting}\n{plain[a]} → {plain[b]} ({n_problems} problems)")
    with atomic_path(out / "transition_matrix.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    fig.suptitle("Per-problem accuracy transitions (counts of problems"
                 + ("; accuracy over all seeds' samples" if (index.groups["n_seeds"] > 1).any() else "") + ")",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out / "transition_heatmap.png", formats)


def _heatmap_panel(ax, m: np.ndarray) -> None:
    """A transition matrix as a heatmap with its counts written in, dark cells in white to stay legible."""
    ax.imshow(m, cmap="Blues", origin="upper")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xticks(range(6), ACCURACY_BINS, rotation=45, fontsize=7)
    ax.set_yticks(range(6), ACCURACY_BINS, fontsize=7)
    ax.grid(False)


def plot_entropy(index: CellIndex, out: Path, formats: Sequence[str]) -> list[Path]:
    """Policy entropy over training steps, one panel per setting, one line per trained group (several
    seeds: mean over seeds, min-max band)."""
    per_setting = []
    for setting, g in index.groups.groupby("setting", sort=False):
        trained = []
        for _, m in g.iterrows():
            paths = [index.cells.loc[c, "metrics"] for c in m["cells"]]
            if any(p is not None for p in paths):
                trained.append((m, [p for p in paths if p is not None]))
        if trained:
            per_setting.append((setting, trained))
    if not per_setting:
        raise Skip("no cell has a metrics.csv")
    colors = _colors(index.memberships)
    fig, axes = _grid_axes(1, len(per_setting), 4.2, 3.2)
    for ax, (setting, trained) in zip(axes[0], per_setting):
        for m, paths in trained:
            _plot_seeds(ax, [read_metrics(p).set_index("step")["entropy"] for p in paths], color=colors[m["group"]],
                        label=_label(m))
        ax.set(title=setting, xlabel="training step", ylabel="policy entropy (nats / token)")
        ax.legend(fontsize=7)
    several = any(len(paths) > 1 for _, trained in per_setting for _, paths in trained)
    fig.suptitle("Policy entropy during training" + (" (several seeds: mean, band = min-max over seeds)" if several
                                                     else ""), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out / "entropy.png", formats)


def make_figures(cells: str | Path, benchmarks: str | Path, out_dir: str | Path, *,
                 formats: Sequence[str] = ("pdf",), transition_from: str = GRPO_ESTIMATOR,
                 transition_to: str = RS_GRPO_ESTIMATOR) -> dict[str, list[Path]]:
    """Render every figure whose inputs exist; write ``figures.txt``; return ``{name: files}``."""
    house_style()
    index = load_index(cells, benchmarks)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    makers = {
        "passk_curves": lambda: plot_passk_curves(index, out, formats),
        "beta_ablation": lambda: plot_beta_ablation(index, out, formats),
        "unique_answers": lambda: plot_unique_answers(index, out, formats),
        "transition_heatmap": lambda: plot_transition_heatmap(index, out, formats, transition_from, transition_to),
        "entropy": lambda: plot_entropy(index, out, formats),
    }
    written, listing = {}, []
    for name in FIGURES:
        try:
            written[name] = makers[name]()
            listing.append("\t".join([name] + [p.name for p in written[name]]))
        except Skip as why:
            plt.close("all")
            print(f"figures: skipped {name}: {why}", file=sys.stderr)
            listing.append(f"# skipped {name}: {why}")
    with atomic_path(out / "figures.txt") as tmp:
        tmp.write_text("\n".join(listing) + "\n")
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cells", required=True, type=Path, help="cells.csv of the evaluated grid")
    parser.add_argument("--benchmarks", required=True, type=Path, help="benchmarks.csv")
    parser.add_argument("--out", required=True, type=Path, help="output folder (PNG + PDF per figure, figures.txt)")
    parser.add_argument("--formats", nargs="+", default=["pdf"],
                        help="formats besides PNG (default: pdf)")
    parser.add_argument("--transition-from", default=GRPO_ESTIMATOR,
                        help="source of the transition heatmap: an estimator, method key, label, group or cell id "
                        f"(default {GRPO_ESTIMATOR})")
    parser.add_argument("--transition-to", default=RS_GRPO_ESTIMATOR,
                        help="target of the transition heatmap: an estimator, method key, label, group or cell id "
                        f"(default {RS_GRPO_ESTIMATOR})")


def main(args: argparse.Namespace) -> int:
    written = make_figures(args.cells, args.benchmarks, args.out, formats=args.formats,
                           transition_from=args.transition_from, transition_to=args.transition_to)
    for paths in written.values():
        for p in paths:
            print(p)
    print(args.out / "figures.txt")
    return 0
