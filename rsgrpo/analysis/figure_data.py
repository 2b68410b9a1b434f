"""The numbers behind the result figures of :mod:`rsgrpo.analysis.figures`, computed from the results
index (:class:`rsgrpo.analysis.cell_index.CellIndex`) without matplotlib: which groups a figure
shows, their pass@k curves, test curves over training steps, accuracy transitions and unique correct
answers. The figures module draws them, writes the CSVs beside the figures and documents each
figure; keeping the numbers here lets them be checked against hand-made cases without drawing.

Groups are selected by ``estimator`` (the registry name of a method's advantage function), as in
the tables; a group's ``method`` (the config key) is one more name a user may pick it by
(:func:`transition_pairs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from rsgrpo.analysis.aggregate import table_k
from rsgrpo.analysis.cell_files import read_passk, read_table
from rsgrpo.analysis.cell_index import BASE_ESTIMATOR, GRPO_ESTIMATOR, RS_GRPO_ESTIMATOR, CellIndex
from rsgrpo.evaluate.passk import seed_bootstrap_ci
from rsgrpo.layout import LAYOUT

__all__ = ["BAND_BOOT", "ACCURACY_BINS", "PASSK_CURVE_COLUMNS", "accuracy_bins", "transition_matrix",
           "normalize_text", "unique_correct_ratio", "seed_curve", "group_passk", "passk_curve_table",
           "ablation_settings", "base_cell", "eval_curve", "unique_answer_table", "transition_pairs",
           "group_transitions"]

BAND_BOOT = 1000  # bootstrap resamples of a pooled group's pass@k band (seed 0)
ACCURACY_BINS = ("0", "(0,0.2]", "(0.2,0.4]", "(0.4,0.6]", "(0.6,0.8]", "(0.8,1]")
PASSK_CURVE_COLUMNS = ["setting", "group", "label", "n_seeds", "benchmark", "k", "pass_at_k", "ci_low", "ci_high"]


# ------------------------------------------------------------------------------ per-problem numbers
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


# ------------------------------------------------------------------------------ curves
def seed_curve(curves: Sequence[pd.Series]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, min, max) over the replicates' curves (Series indexed by step) at the steps all of them
    have, so a replicate that stopped early does not bend the mean."""
    joined = pd.concat(list(curves), axis=1, join="inner").sort_index()
    return (joined.index.to_numpy(), joined.mean(axis=1).to_numpy(), joined.min(axis=1).to_numpy(),
            joined.max(axis=1).to_numpy())


def group_passk(index: CellIndex) -> dict[str, pd.DataFrame]:
    """Per group, ``passk.csv``-like rows: the cell's own ``passk.csv`` for one seed, else
    :func:`_pooled_passk` (a replicate's file covers its own samples only)."""
    curves = {}
    for _, g in index.groups.drop_duplicates("group").iterrows():
        curves[g["group"]] = (read_passk(index.cells.loc[g["cells"][0], "passk"]) if g["n_seeds"] == 1
                              else _pooled_passk(index, g["group"]))
    return curves


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


def passk_curve_table(index: CellIndex, curves: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``passk_curves.csv``: the curves of :func:`group_passk` for every (setting, group), so every line
    and band of the figure can be read as numbers (a base model repeats in each setting of its model)."""
    table = pd.concat([curves[g["group"]][["benchmark", "k", "pass_at_k", "ci_low", "ci_high"]].assign(
        setting=g["setting"], group=g["group"], label=g["label"], n_seeds=g["n_seeds"])
        for _, g in index.groups.iterrows()], ignore_index=True)
    return table[PASSK_CURVE_COLUMNS]


def _passk_at(passk: pd.DataFrame, bench: str, k_target: int | None) -> tuple[int, float] | None:
    """(k, pass@k) on ``bench``: k = 1 when ``k_target`` is None, else the largest k <= k_target."""
    rows = passk[passk["benchmark"] == bench]
    if rows.empty:
        return None
    k = 1 if k_target is None else table_k(rows["k"].tolist(), int(rows["k"].max()), k_target)
    return k, float(rows.loc[rows["k"] == k, "pass_at_k"].iloc[0])


def _benchmark_average(passk: pd.DataFrame, benches: Sequence[str], k_target: int | None) -> float:
    """pass@k (%) averaged over the benchmarks, unweighted like the tables' AVG."""
    vals = [v for b in benches if (v := _passk_at(passk, b, k_target)) is not None]
    return float(np.mean([v[1] for v in vals])) * 100 if vals else math.nan


def ablation_settings(index: CellIndex) -> list[tuple[str, pd.DataFrame]]:
    """Settings with >= 2 RS-GRPO groups (betas), each with its RS-GRPO and GRPO groups (by estimator):
    one beta, however many seeds, is no ablation."""
    out = []
    for setting, g in index.groups.groupby("setting", sort=False):
        runs = index.with_estimator(g, RS_GRPO_ESTIMATOR, GRPO_ESTIMATOR)
        if (runs["estimator"] == RS_GRPO_ESTIMATOR).sum() >= 2:
            out.append((setting, runs))
    return out


def base_cell(index: CellIndex, model: str) -> str | None:
    """The base model's cell of ``model`` (its step 0 in the test curves), None when the grid has none."""
    members = index.memberships
    base = members[(members["model"] == model) & (members["estimator"] == BASE_ESTIMATOR)]
    return base["cell"].iloc[0] if len(base) else None


def eval_curve(index: CellIndex, cell: str, base: str | None, k_target: int | None) -> pd.Series:
    """Benchmark-averaged test pass@k (%) of one cell at its evaluated checkpoints, indexed by step;
    step 0 is the ``base`` cell's unless the cell evaluated a step 0 itself."""
    evals = index.step_evals(cell)
    benches = list(index.benchmarks["benchmark"])
    points = [(s, _benchmark_average(read_passk(LAYOUT.passk(d)), benches, k_target)) for s, d in evals]
    if base is not None and not any(s == 0 for s, _ in evals):
        points.insert(0, (0, _benchmark_average(read_passk(index.cells.loc[base, "passk"]), benches, k_target)))
    return pd.Series([p[1] for p in points], index=[p[0] for p in points], dtype=float)


# ------------------------------------------------------------------------------ Fig. 7
def unique_answer_table(index: CellIndex) -> pd.DataFrame:
    """Per (setting, group, benchmark): mean unique-correct ratio over the problems with >= 1 correct
    completion -- for a group with several seeds over its (seed, problem) pairs with >= 1 correct, and
    ``n_problems_with_correct``, ``n_correct``, ``n_unique`` summed over the seeds. ``cell`` is the group
    id and ``method`` the config key, as in the tables of :mod:`rsgrpo.analysis.aggregate`."""
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


def _matches(m: pd.Series, key: str) -> bool:
    """Whether a group is the one ``key`` names: by estimator, method key, label, group id or cell id."""
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


def group_transitions(index: CellIndex, source: str, target: str) -> tuple[np.ndarray, int]:
    """(:func:`transition_matrix` of two groups over the problems of all benchmarks both evaluated, the
    number of those problems); a group's accuracy pools its replicates' samples."""
    joined = _pooled_counts(index, source).merge(_pooled_counts(index, target), on=["benchmark", "problem_id"],
                                                 suffixes=("_from", "_to"))
    return transition_matrix(joined["c_from"], joined["n_from"], joined["c_to"], joined["n_to"]), len(joined)
