"""``python -m rsgrpo figures`` (rule ``figures``): the paper's result figures (arXiv 2509.24261, Figs. 4,
5, 7 and an entropy plot) from the results index.

Inputs are ``cells.csv`` and ``benchmarks.csv`` as documented in :mod:`rsgrpo.cell_index`. Methods are
known by their ``estimator`` (registry name), never by their config key: RS-GRPO = estimator
``rs_grpo``, GRPO = estimator ``grpo``, Base = no estimator.

Every figure shows one line / bar / matrix per *group* (:attr:`rsgrpo.cell_index.CellIndex.groups`):
the replicates of a configuration trained with several seeds are pooled, and the legend names each
group once, with "(n seeds)" where it has several. Figures, each written as PNG + PDF (house style of
:mod:`rsgrpo.plotting`, atomic writes), into ``--out``:

* ``passk_curves`` (Fig. 4): pass@k (%) against k on a log2 axis, one row per setting, one column per
  benchmark, one line per group (Base, GRPO, RS-GRPO betas, other methods) with its 95% bootstrap
  band: from the cell's final ``passk.csv`` for a group with one seed; for a group with several,
  recomputed from the replicates' graded counts: the mean over seeds and problems, the band the
  bootstrap over problems and seeds (:func:`rsgrpo.passk.seed_bootstrap_ci`, :data:`BAND_BOOT`
  resamples), at the benchmark's ``ks``. The numbers of every line and band in ``passk_curves.csv``
  (``setting, group, label, n_seeds, benchmark, k, pass_at_k, ci_low, ci_high``; fractions).
* ``beta_ablation`` (Fig. 5): for every setting with at least two RS-GRPO groups (betas): cumulative
  solve rate and training reward over steps (``metrics.csv``; the reward as a moving average), and
  test pass@1 and pass@32 (largest k <= 32) averaged over the benchmarks at every evaluated
  checkpoint (``step_evals``; step 0 is the model's base cell when there is one). GRPO is drawn when
  present. A group with several seeds: the mean over its seeds at the steps every seed has, with a
  shaded band from the lowest to the highest seed (min-max over seeds, not a CI).
* ``unique_answers`` (Fig. 7 left): the unique-correct-answer ratio, see :func:`unique_correct_ratio`;
  numbers in ``unique_answers.csv`` (a group's ratio: mean over its (seed, problem) pairs with >= 1
  correct completion; counts summed over seeds).
* ``transition_heatmap`` (Fig. 7 right): problems counted by (accuracy bin under method A, bin under
  method B), bins ``0, (0,.2], (.2,.4], (.4,.6], (.6,.8], (.8,1]``, default A = GRPO, B = RS-GRPO
  (``--transition-from`` / ``--transition-to`` take an estimator, method key, label, group or cell
  id); a group's per-problem accuracy pools its replicates (``n`` and ``c`` summed over seeds);
  numbers in ``transition_matrix.csv`` (``from_cell`` / ``to_cell``: group ids).
* ``entropy``: policy entropy over training steps per group (``metrics.csv``), one panel per setting;
  several seeds: mean with a min-max band, as in ``beta_ablation``.

A figure whose inputs are absent (e.g. no beta ablation in the grid) is skipped with a line on stderr
and a ``# skipped`` line in the index ``figures.txt``; no empty figure is ever written. ``figures.txt``
lists one written figure per line: ``name<TAB>file<TAB>file...``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rsgrpo.analysis.aggregate import TABLE_K, table_k  # noqa: E402
from rsgrpo.analysis.cell_index import (  # noqa: E402
    BASE_ESTIMATOR,
    GRPO_ESTIMATOR,
    RS_GRPO_ESTIMATOR,
    CellIndex,
    load_index,
    read_metrics,
    read_passk,
    read_table,
)
from rsgrpo.evaluate.passk import seed_bootstrap_ci  # noqa: E402
from rsgrpo.io import atomic_path  # noqa: E402
from rsgrpo.layout import LAYOUT  # noqa: E402
from rsgrpo.plotting import house_style, save_figure  # noqa: E402

__all__ = ["ACCURACY_BINS", "accuracy_bins", "transition_matrix", "normalize_text", "unique_correct_ratio",
           "plot_passk_curves", "plot_beta_ablation", "plot_unique_answers", "plot_transition_heatmap",
           "plot_entropy", "make_figures", "FIGURES"]

FIGURES = ("passk_curves", "beta_ablation", "unique_answers", "transition_heatmap", "entropy")
BAND_BOOT = 1000  # bootstrap resamples of a pooled group's pass@k band (seed 0)
ACCURACY_BINS = ("0", "(0,0.2]", "(0.2,0.4]", "(0.4,0.6]", "(0.6,0.8]", "(0.8,1]")
# colour per estimator (registry name; "" = the base model); RS-GRPO cells get reds by beta
FIXED_COLORS = {BASE_ESTIMATOR: "#7f7f7f", GRPO_ESTIMATOR: "#1f77b4", "passk_chen": "#2ca02c",
                "passk_mahdavi": "#9467bd", "pkpo_walder": "#8c564b"}
OTHER_COLORS = ("#17becf", "#bcbd22", "#e377c2", "#ff7f0e", "#393b79")


class Skip(Exception):
    """A figure's inputs are absent from this grid; the message says which."""


# ------------------------------------------------------------------------------------- numbers
def accuracy_bins(correct: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Bin index 0..5 of per-problem accuracy c/n: 0 for c = 0, else ceil(5 c / n) (so (0, .2] -> 1).

    Integer arithmetic, so an accuracy of exactly 0.2, 0.4, ... falls in its closed upper bin.
    """
    c, n = np.asarray(correct, dtype=np.int64), np.asarray(n, dtype=np.int64)
    if np.any(n < 1) or np.any(c < 0) or np.any(c > n):
        raise ValueError("need 0 <= correct <= n and n >= 1 for every problem")
    return np.where(c == 0, 0, (5 * c + n - 1) // n)


def transition_matrix(c_from, n_from, c_to, n_to) -> np.ndarray:
    """6x6 counts: row = accuracy bin under the source method, column = bin under the target method.

    Arrays are per problem and aligned (same problem at the same index); row sums are the number of
    problems in each source bin.
    """
    b_from, b_to = accuracy_bins(c_from, n_from), accuracy_bins(c_to, n_to)
    if b_from.shape != b_to.shape:
        raise ValueError(f"need the same problems for both methods: {b_from.shape} vs {b_to.shape}")
    m = np.zeros((len(ACCURACY_BINS), len(ACCURACY_BINS)), dtype=np.int64)
    np.add.at(m, (b_from, b_to), 1)
    return m


def normalize_text(text) -> str:
    """A completion's text with leading/trailing whitespace removed and inner whitespace runs as one space."""
    return " ".join(str(text).split()) if isinstance(text, str) else ""


def unique_correct_ratio(graded: pd.DataFrame) -> pd.DataFrame:
    """Per problem: ``n_correct`` correct completions and ``n_unique`` distinct ones among them.

    Two correct completions are the same solution when their texts are equal after
    :func:`normalize_text`. The figure's ratio for a benchmark is the mean over problems with at
    least one correct completion of ``n_unique / n_correct`` (1 = every correct solution differs,
    1/n_correct = one solution repeated), so a method that collapses onto one way of solving a
    problem scores low even when it solves it often. Returns ``benchmark, problem_id, n_correct,
    n_unique`` for every problem (0, 0 where nothing is correct).
    """
    missing = [c for c in ("benchmark", "problem_id", "text", "correct") if c not in graded.columns]
    if missing:
        raise ValueError(f"graded data lacks column(s) {missing}")
    df = pd.DataFrame({"benchmark": graded["benchmark"].astype(str), "problem_id": graded["problem_id"].astype(str),
                       "correct": graded["correct"].astype(bool),
                       "norm": [normalize_text(t) for t in graded["text"]]})
    keys = df[["benchmark", "problem_id"]].drop_duplicates()
    good = df[df["correct"]]
    stats = good.groupby(["benchmark", "problem_id"], sort=False)["norm"].agg(n_correct="size", n_unique="nunique")
    out = keys.merge(stats.reset_index(), on=["benchmark", "problem_id"], how="left").fillna(
        {"n_correct": 0, "n_unique": 0})
    return out.astype({"n_correct": np.int64, "n_unique": np.int64}).reset_index(drop=True)


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


def _seed_curve(curves: Sequence[pd.Series]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, min, max) over the replicates' curves (Series indexed by step) at the steps all of them have."""
    joined = pd.concat(list(curves), axis=1, join="inner").sort_index()
    return (joined.index.to_numpy(), joined.mean(axis=1).to_numpy(), joined.min(axis=1).to_numpy(),
            joined.max(axis=1).to_numpy())


def _plot_seeds(ax, curves: Sequence[pd.Series], color, label: str, **kw) -> None:
    """One line (the mean over seeds) and, for several seeds, a min-max band."""
    x, mean, lo, hi = _seed_curve(curves)
    ax.plot(x, mean, color=color, lw=1.5, label=label, **kw)
    if len(curves) > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)


def _log2_axis(ax, ks: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _grid_axes(nrows: int, ncols: int, w: float, h: float):
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    return fig, axes


def _passk_at(passk: pd.DataFrame, bench: str, k_target: int | None) -> tuple[int, float] | None:
    """(k, pass@k) on ``bench``: k = 1 when ``k_target`` is None, else the largest k <= k_target."""
    rows = passk[passk["benchmark"] == bench]
    if rows.empty:
        return None
    k = 1 if k_target is None else table_k(rows["k"].tolist(), int(rows["k"].max()), k_target)
    return k, float(rows.loc[rows["k"] == k, "pass_at_k"].iloc[0])


def _benchmark_average(passk: pd.DataFrame, benches: Sequence[str], k_target: int | None) -> float:
    vals = [v for b in benches if (v := _passk_at(passk, b, k_target)) is not None]
    return float(np.mean([v[1] for v in vals])) * 100 if vals else math.nan


# ------------------------------------------------------------------------------------ figures
def plot_passk_curves(index: CellIndex, out: Path, formats: Sequence[str]) -> list[Path]:
    """Fig. 4: pass@k vs k (log2), rows = settings, columns = benchmarks, bands = bootstrap CIs."""
    settings = list(dict.fromkeys(index.groups["setting"]))
    benches = list(index.benchmarks["benchmark"])
    colors = _colors(index.memberships)
    curves = {}
    for _, g in index.groups.drop_duplicates("group").iterrows():
        curves[g["group"]] = (read_passk(index.cells.loc[g["cells"][0], "passk"]) if g["n_seeds"] == 1
                              else _pooled_passk(index, g["group"]))
    table = pd.concat([curves[g["group"]][["benchmark", "k", "pass_at_k", "ci_low", "ci_high"]].assign(
        setting=g["setting"], group=g["group"], label=g["label"], n_seeds=g["n_seeds"])
        for _, g in index.groups.iterrows()], ignore_index=True)
    with atomic_path(out / "passk_curves.csv") as tmp:
        table[["setting", "group", "label", "n_seeds", "benchmark", "k", "pass_at_k", "ci_low", "ci_high"]].to_csv(
            tmp, index=False, float_format="%.6g")
    fig, axes = _grid_axes(len(settings), len(benches), 3.3, 2.9)
    for r, setting in enumerate(settings):
        members = index.groups[index.groups["setting"] == setting]
        for col, bench in enumerate(benches):
            ax = axes[r, col]
            ks_all = set()
            for _, m in members.iterrows():
                d = curves[m["group"]]
                d = d[d["benchmark"] == bench].sort_values("k")
                if d.empty:
                    continue
                ks_all |= set(d["k"])
                ax.plot(d["k"], d["pass_at_k"] * 100, color=colors[m["group"]], lw=1.5, marker="o", ms=2.5,
                        label=_label(m))
                ax.fill_between(d["k"], d["ci_low"] * 100, d["ci_high"] * 100, color=colors[m["group"]],
                                alpha=0.15, lw=0)
            if ks_all:
                _log2_axis(ax, sorted(ks_all))
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


def _pooled_passk(index: CellIndex, group: str) -> pd.DataFrame:
    """``passk.csv``-like rows (``benchmark, k, pass_at_k, ci_low, ci_high``) of a group pooled over its
    seeds: mean over seeds and problems, CI over problems and seeds, at each benchmark's ``ks``."""
    rows = []
    for bench, cnt in index.group_counts(group).items():
        n_min = int(cnt.n.min())
        ks = index.ks_for(bench, n_min)
        ci = seed_bootstrap_ci(cnt.per_problem(ks), n_boot=BAND_BOOT, seed=0)  # [seeds, problems, ks]
        rows.append(pd.DataFrame({"benchmark": bench, "k": ks, "pass_at_k": ci.mean, "ci_low": ci.low,
                                  "ci_high": ci.high}))
    return pd.concat(rows, ignore_index=True)


def _ablation_runs(index: CellIndex) -> list[tuple[str, pd.DataFrame]]:
    """Settings with >= 2 RS-GRPO groups (betas), each with its RS-GRPO and GRPO groups (by estimator)."""
    out = []
    for setting, g in index.groups.groupby("setting", sort=False):
        runs = index.with_estimator(g, RS_GRPO_ESTIMATOR, GRPO_ESTIMATOR)
        if (runs["estimator"] == RS_GRPO_ESTIMATOR).sum() >= 2:
            out.append((setting, runs))
    return out


def _eval_curve(index: CellIndex, cell: str, base_cell: str | None, k_target: int | None) -> pd.Series:
    """Benchmark-averaged test pass@k (%) of one cell at its evaluated checkpoints, indexed by step."""
    evals = index.step_evals(cell)
    benches = list(index.benchmarks["benchmark"])
    points = [(s, _benchmark_average(read_passk(LAYOUT.passk(d)), benches, k_target)) for s, d in evals]
    if base_cell is not None and not any(s == 0 for s, _ in evals):
        points.insert(0, (0, _benchmark_average(read_passk(index.cells.loc[base_cell, "passk"]), benches, k_target)))
    return pd.Series([p[1] for p in points], index=[p[0] for p in points], dtype=float)


def plot_beta_ablation(index: CellIndex, out: Path, formats: Sequence[str]) -> list[Path]:
    """Fig. 5: training and test curves for every setting with several RS-GRPO betas (a group with several
    seeds: mean over seeds, min-max band)."""
    ablations = _ablation_runs(index)
    if not ablations:
        raise Skip("no setting has two or more RS-GRPO runs (betas)")
    fig, axes = _grid_axes(len(ablations), 4, 3.4, 2.9)
    titles = ["cumulative solve rate (train)", "training reward (moving avg.)", "test pass@1 (%)",
              f"test pass@{TABLE_K} (%, largest k ≤ {TABLE_K})"]
    for r, (setting, runs) in enumerate(ablations):
        colors = _colors(index.memberships)
        model = runs["model"].iloc[0]
        base = index.memberships[(index.memberships["model"] == model)
                                & (index.memberships["estimator"] == BASE_ESTIMATOR)]
        base_cell = base["cell"].iloc[0] if len(base) else None
        for _, m in runs.iterrows():
            kw = dict(color=colors[m["group"]], label=_label(m))
            rows = [index.cells.loc[c] for c in m["cells"]]
            mets = [read_metrics(row["metrics"]) for row in rows if row["metrics"] is not None]
            if mets:
                _plot_seeds(axes[r, 0], [met.set_index("step")["cumulative_solve_rate"] for met in mets], **kw)
                window = max(1, len(mets[0]) // 20)
                _plot_seeds(axes[r, 1], [met.set_index("step")["reward_mean"].rolling(window, min_periods=1).mean()
                                         for met in mets], **kw)
            evaluated = [row["cell"] for row in rows if row["step_evals"]]
            if evaluated:
                for col, k_target in ((2, None), (3, TABLE_K)):
                    _plot_seeds(axes[r, col], [_eval_curve(index, c, base_cell, k_target) for c in evaluated],
                                marker="o", ms=3, **kw)
        for col, title in enumerate(titles):
            axes[r, col].set_title(f"{setting}\n{title}" if col == 0 else title, fontsize=9)
            axes[r, col].set_xlabel("training step")
        axes[r, 0].legend(fontsize=7)
    several = (pd.concat([runs for _, runs in ablations])["n_seeds"] > 1).any()
    fig.suptitle("β ablation: training curves and test pass@k averaged over benchmarks (step 0 = base model)"
                 + ("; several seeds: mean, band = min-max over seeds" if several else ""), fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out / "beta_ablation.png", formats)


def unique_answer_table(index: CellIndex) -> pd.DataFrame:
    """Per (setting, group, benchmark): mean unique-correct ratio over the problems with >= 1 correct
    completion -- for a group with several seeds over its (seed, problem) pairs with >= 1 correct, and
    ``n_problems_with_correct``, ``n_correct``, ``n_unique`` summed over the seeds. ``cell`` is the group id."""
    per_cell = {}
    for cell in index.memberships["cell"].unique():
        path = index.cells.loc[cell, "graded"]
        graded = read_table(path, "graded", ["benchmark", "problem_id", "text", "correct"])
        per_cell[cell] = unique_correct_ratio(graded)
    rows = []
    for _, m in index.groups.iterrows():
        stats = pd.concat([per_cell[c] for c in m["cells"]], ignore_index=True)
        for bench in index.benchmarks["benchmark"]:
            s = stats[(stats["benchmark"] == bench) & (stats["n_correct"] > 0)]
            rows.append({"setting": m["setting"], "cell": m["group"], "n_seeds": m["n_seeds"], "label": m["label"],
                         "method": m["method"], "benchmark": bench, "benchmark_name": index.benchmark_name(bench),
                         "unique_ratio": float((s["n_unique"] / s["n_correct"]).mean()) if len(s) else math.nan,
                         "n_problems_with_correct": len(s), "n_correct": int(s["n_correct"].sum()),
                         "n_unique": int(s["n_unique"].sum())})
    return pd.DataFrame(rows)


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


def _matches(m: pd.Series, key: str) -> bool:
    return key in (m["estimator"], m["method"], m["label"], m["group"]) or key in m["cells"]


def transition_pairs(index: CellIndex, source: str, target: str) -> list[tuple[str, str, str]]:
    """(setting, source group, target group) for every setting holding both; ``source`` / ``target``
    match a group by its estimator (so the defaults ``grpo`` / ``rs_grpo`` hold whatever the config
    calls the methods), its method key, its label, its group id or the id of one of its cells."""
    pairs = []
    for setting, g in index.groups.groupby("setting", sort=False):
        sources = [m["group"] for _, m in g.iterrows() if _matches(m, source)]
        targets = [m["group"] for _, m in g.iterrows() if _matches(m, target)]
        pairs += [(setting, a, b) for a in sources for b in targets if a != b]
    return pairs


def _pooled_counts(index: CellIndex, group: str) -> pd.DataFrame:
    """Per (benchmark, problem): ``n`` and ``c`` summed over the group's replicates."""
    rows = []
    for b, cnt in index.group_counts(group).items():
        pooled = cnt.pooled()
        rows.append(pd.DataFrame({"benchmark": b, "problem_id": pooled.problem_ids, "n": pooled.n, "c": pooled.c}))
    return pd.concat(rows, ignore_index=True)


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
        joined = _pooled_counts(index, a).merge(_pooled_counts(index, b), on=["benchmark", "problem_id"],
                                               suffixes=("_from", "_to"))
        m = transition_matrix(joined["c_from"], joined["n_from"], joined["c_to"], joined["n_to"])
        ax.imshow(m, cmap="Blues", origin="upper")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > m.max() / 2 else "black")
                rows.append({"setting": setting, "from_cell": a, "to_cell": b, "from_bin": ACCURACY_BINS[i],
                             "to_bin": ACCURACY_BINS[j], "count": int(m[i, j])})
        ax.set_xticks(range(6), ACCURACY_BINS, rotation=45, fontsize=7)
        ax.set_yticks(range(6), ACCURACY_BINS, fontsize=7)
        ax.grid(False)
        ax.set(xlabel=f"accuracy under {labels[b]}", ylabel=f"accuracy under {labels[a]}",
               title=f"{setting}\n{plain[a]} → {plain[b]} ({len(joined)} problems)")
    with atomic_path(out / "transition_matrix.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    fig.suptitle("Per-problem accuracy transitions (counts of problems"
                 + ("; accuracy over all seeds' samples" if (index.groups["n_seeds"] > 1).any() else "") + ")",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out / "transition_heatmap.png", formats)


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
    for name, make in makers.items():
        try:
            written[name] = make()
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
