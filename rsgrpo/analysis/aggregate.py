"""``python -m rsgrpo aggregate``: the paper's Table 2 from our results, with bootstrap CIs, the paired
RS-GRPO - GRPO differences, and a side-by-side comparison with the published numbers.

Inputs: the results index ``cells.csv`` + ``benchmarks.csv`` (format and reader:
:mod:`rsgrpo.analysis.cell_index`) and, per cell, the final checkpoint's ``graded.parquet``
(``benchmark, problem_id, sample_idx, correct``) and ``passk.csv``. A row's advantage function is
its ``estimator`` (registry name, :data:`rsgrpo.estimators.ESTIMATORS`) and its ``method`` the
config key, written as a column and never used to select or order: rows follow the registry order
(Base first), and RS-GRPO - GRPO pairs every estimator-``rs_grpo`` group with every
estimator-``grpo`` group of a setting.

Rows are per *group* (:attr:`rsgrpo.analysis.cell_index.CellIndex.groups`): the replicates of one
configuration trained with different seeds (``seeds`` axis of a sweep) are pooled into one row whose
``cell`` column is the group id (the cell id when there is no seed) and ``n_seeds`` their number.
A pooled number is the mean over seeds and problems; its CI resamples problems (one draw shared by
all seeds) *and* seeds (:mod:`rsgrpo.evaluate.passk`, "seeds x problems"), so it covers the
seed-to-seed variation of training as well as the finite benchmark. A group with one seed gives
exactly the numbers of the problem-only bootstrap.

Every number is recomputed from the per-problem correct counts of ``graded.parquet`` with the
unbiased estimator (:func:`rsgrpo.evaluate.passk.pass_at_k`); ``passk.csv`` is only cross-checked
(pass@1 must agree, else the two files are from different runs and we refuse to mix them).

Outputs in ``--out`` (percent points everywhere, like the paper):

* ``table2.csv`` (tidy) / ``table2.md`` (paper layout): per setting and group, pass@1 and
  pass@32 per benchmark and their unweighted mean ``AVG`` (the paper's AVG). "pass@32" is pass@k at
  the largest k <= 32 that both ``benchmarks.csv`` ``ks`` and the samples allow; column ``k`` says
  which (the Markdown marks any k != 32). CIs: 95% percentile bootstrap over problems
  (:func:`rsgrpo.evaluate.passk.bootstrap_ci`; over problems and seeds for a group with several:
  :func:`rsgrpo.evaluate.passk.seed_bootstrap_ci`); for ``AVG`` a *stratified* bootstrap resamples
  problems within each benchmark independently in every replicate (and the seeds once per replicate,
  shared by the benchmarks) and averages the benchmark means, so every benchmark keeps its size and
  weight, as in the point estimate (:func:`rsgrpo.evaluate.passk.stratified_bootstrap`). Column
  ``n_seeds``: the replicates pooled in the row (the Markdown adds "(n seeds)" to the label where
  n > 1); column ``method``: the config key, as in ``cells.csv``.
* ``rsgrpo_vs_grpo.csv`` / ``.md``: every (RS-GRPO group, GRPO group) pair of a setting, the
  difference per benchmark and AVG with a *paired* bootstrap CI
  (:func:`rsgrpo.evaluate.passk.paired_seed_difference`: the same problems resampled for both
  methods, each method's seeds resampled independently; stratified the same way for AVG,
  :func:`rsgrpo.evaluate.passk.stratified_paired_difference`), plus the mean over settings of the
  AVG difference next to the published one (paper headline: +1.29 pass@1, +3.64 pass@32 over its 7
  settings). Besides pass@1 and pass@32 the table holds metric ``pass@<K>`` at the largest k the
  samples allow, K = the largest ``ks`` entry <= the samples per problem, on every benchmark where
  K > 32 (e.g. ``pass@64`` with 64 samples), and its AVG where every benchmark has the same K.
  Columns ``rs_n_seeds`` / ``grpo_n_seeds``: the replicates on each side.
* ``published_comparison.csv`` / ``.md``: ours vs ``rsgrpo/reference/table2_published.csv`` for every
  group whose (setting, ``published_method``) is in that table and every benchmark metric present in
  both (pass@32 only where our k is exactly 32; AVG only where our benchmarks are exactly the
  paper's six).
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from rsgrpo.analysis.cell_files import Counts, SeedCounts, read_passk
from rsgrpo.analysis.cell_index import GRPO_ESTIMATOR, RS_GRPO_ESTIMATOR, CellIndex, load_index
from rsgrpo.evaluate.passk import (
    paired_seed_difference,
    seed_bootstrap_ci,
    stratified_bootstrap,
    stratified_paired_difference,
)
from rsgrpo.io import atomic_path
from rsgrpo.layout import AGGREGATE_TABLES

__all__ = [
    "TABLE_K", "AVG", "load_published_table", "table_k", "largest_k",
    "build_table2", "build_rsgrpo_vs_grpo", "build_published_comparison", "aggregate",
]

TABLE_K = 32  # the paper's Table 2 reports pass@1 and pass@32
AVG = "AVG"
PUBLISHED_RESOURCE = "reference/table2_published.csv"


def load_published_table() -> pd.DataFrame:
    """The paper's Table 2 shipped as package data (percent points), indexed by (setting, method), where
    ``method`` is the paper's name of a method (a cell's ``published_method``), so rows are found by name."""
    ref = importlib.resources.files("rsgrpo").joinpath(PUBLISHED_RESOURCE)
    with importlib.resources.as_file(ref) as path:
        df = pd.read_csv(path)
    return df.set_index(["setting", "method"])


# ------------------------------------------------------------------------------------ statistics
def table_k(ks: Iterable[int], n: int, target: int = TABLE_K) -> int:
    """The largest k <= min(target, n) among ``ks`` (the paper's pass@32 when samples allow it)."""
    ok = [k for k in ks if k <= min(target, n)]
    if not ok:
        raise ValueError(f"no k <= {min(target, n)} among {list(ks)}")
    return max(ok)


def largest_k(ks: Iterable[int], n: int) -> int:
    """The largest k <= n among ``ks``: the pass@k of ``rsgrpo_vs_grpo``'s extra metric when above 32."""
    return table_k(ks, n, target=n)


def _pct(x) -> float:
    return float(x) * 100.0


# --------------------------------------------------------------------------------------- tables
def _cross_check_passk(index: CellIndex, cell: str, counts: dict[str, Counts]) -> None:
    """pass@1 of passk.csv must equal the graded counts', else the two files come from different runs."""
    path = index.cells.loc[cell, "passk"]
    passk = read_passk(path)
    for bench, cnt in counts.items():
        row = passk[(passk["benchmark"] == bench) & (passk["k"] == 1)]
        if row.empty:
            continue
        ours = float(cnt.per_problem(1).mean())
        if abs(float(row["pass_at_k"].iloc[0]) - ours) > 1e-6:
            raise ValueError(f"passk file {str(path)!r} (cell {cell!r}) says pass@1 = "
                             f"{float(row['pass_at_k'].iloc[0]):.6f} on {bench!r} but its graded file "
                             f"{str(index.cells.loc[cell, 'graded'])!r} gives {ours:.6f}: stale results?")


def _group_stats(index: CellIndex, group: str, n_boot: int, seed: int) -> list[dict]:
    """pass@1 and pass@K (K = :func:`table_k`) per benchmark and AVG for one group (pooled over its
    replicates), with CIs over problems and seeds."""
    for cell in index.replicates(group):
        _cross_check_passk(index, cell, index.counts(cell))
    counts = index.group_counts(group)
    rows, per_metric = [], {"pass@1": [], f"pass@{TABLE_K}": []}
    ks_used = []
    for bench in index.benchmarks["benchmark"]:
        cnt = counts[bench]
        n_min = int(cnt.n.min())
        big_k = table_k(index.ks_for(bench, n_min), n_min)
        ks_used.append(big_k)
        for metric, k in (("pass@1", 1), (f"pass@{TABLE_K}", big_k)):
            values = cnt.per_problem(k)  # [seeds, problems]
            per_metric[metric].append(values)
            ci = seed_bootstrap_ci(values, n_boot=n_boot, seed=seed)
            rows.append({"benchmark": bench, "benchmark_name": index.benchmark_name(bench), "metric": metric,
                         "k": k, "pass_at_k_pct": _pct(ci.mean), "ci_low_pct": _pct(ci.low),
                         "ci_high_pct": _pct(ci.high), "n_problems": values.shape[1], "n_samples": n_min})
    for metric, strata in per_metric.items():
        ci = stratified_bootstrap(strata, n_boot=n_boot, seed=seed)
        ks = [1] * len(strata) if metric == "pass@1" else ks_used
        rows.append({"benchmark": AVG, "benchmark_name": AVG, "metric": metric,
                     "k": ks[0] if len(set(ks)) == 1 else pd.NA, "pass_at_k_pct": _pct(ci.mean),
                     "ci_low_pct": _pct(ci.low), "ci_high_pct": _pct(ci.high),
                     "n_problems": int(sum(np.shape(s)[-1] for s in strata)), "n_samples": pd.NA})
    return rows


TABLE2_COLUMNS = ["setting", "model_name", "train_set", "cell", "n_seeds", "method", "label", "beta",
                  "published_method", "benchmark", "benchmark_name", "metric", "k", "pass_at_k_pct", "ci_low_pct",
                  "ci_high_pct", "n_problems", "n_samples"]


def build_table2(index: CellIndex, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Tidy Table 2: one row per (setting, group, benchmark or AVG, metric); ``cell`` is the group id."""
    cache, rows = {}, []
    for _, g in index.groups.iterrows():
        if g["group"] not in cache:
            cache[g["group"]] = _group_stats(index, g["group"], n_boot, seed)
        for stat in cache[g["group"]]:
            rows.append({"setting": g["setting"], "model_name": g["model_display"], "train_set": g["train_set"],
                         "cell": g["group"], "n_seeds": g["n_seeds"], "method": g["method"], "label": g["label"],
                         "beta": g["beta"], "published_method": g["published_method"], **stat})
    df = pd.DataFrame(rows, columns=TABLE2_COLUMNS)
    df["k"] = df["k"].astype("Int64")
    df["n_samples"] = df["n_samples"].astype("Int64")
    return df


RS_VS_GRPO_COLUMNS = ["setting", "model_name", "train_set", "rs_cell", "rs_n_seeds", "rs_label", "beta",
                      "rs_published_method", "grpo_cell", "grpo_n_seeds", "grpo_label", "benchmark", "benchmark_name",
                      "metric", "k", "rs_grpo_pct", "grpo_pct", "diff_pct", "ci_low_pct", "ci_high_pct", "n_problems"]


def _aligned(a: SeedCounts, b: SeedCounts, where: str) -> tuple[SeedCounts, SeedCounts]:
    """Restrict two groups' counts to their common problems (a paired comparison needs the same ones)."""
    common = np.intersect1d(a.problem_ids, b.problem_ids)
    if len(common) == 0:
        raise ValueError(f"{where}: the two groups share no problem ids")
    if len(common) != len(a.problem_ids) or len(common) != len(b.problem_ids):
        print(f"aggregate: warning: {where}: pairing on the {len(common)} common problems "
              f"({len(a.problem_ids)} vs {len(b.problem_ids)})", file=sys.stderr)
    return a.subset(common), b.subset(common)


def build_rsgrpo_vs_grpo(index: CellIndex, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """RS-GRPO - GRPO per benchmark and AVG for every (RS-GRPO group, GRPO group) pair of a setting, paired
    CIs (problems paired, each side's seeds resampled independently). The two sides are chosen by
    estimator (``rs_grpo``, ``grpo``), so the table holds whatever the config calls the methods.
    Metrics pass@1, pass@32 and, where the samples allow a larger k, ``pass@<K>`` at the largest (see
    the module docstring)."""
    rows = []
    for setting, g in index.groups.groupby("setting", sort=False):
        for _, rs in index.with_estimator(g, RS_GRPO_ESTIMATOR).iterrows():
            for _, gr in index.with_estimator(g, GRPO_ESTIMATOR).iterrows():
                rows += _pair_rows(index, setting, rs, gr, n_boot, seed)
    df = pd.DataFrame(rows, columns=RS_VS_GRPO_COLUMNS)
    df["k"] = df["k"].astype("Int64")
    return df


def _pair_rows(index: CellIndex, setting: str, rs: pd.Series, gr: pd.Series, n_boot: int, seed: int) -> list[dict]:
    """The rows of one (RS-GRPO group, GRPO group) pair: per benchmark and metric, then the AVG of each
    metric every benchmark has (a stratified paired bootstrap, so each benchmark keeps its weight)."""
    # per metric: the benchmarks' [seeds, problems] values of (rs, grpo), and each benchmark's k
    strata: dict[str, tuple[list, list]] = {"pass@1": ([], []), f"pass@{TABLE_K}": ([], [])}
    ks_used: dict[str, list] = {m: [] for m in strata}
    rs_counts, gr_counts = index.group_counts(rs["group"]), index.group_counts(gr["group"])
    rows = []
    for bench in index.benchmarks["benchmark"]:
        where = f"setting {setting!r}, {rs['group']!r} vs {gr['group']!r}, benchmark {bench!r}"
        a, b = _aligned(rs_counts[bench], gr_counts[bench], where)
        n_min = int(min(a.n.min(), b.n.min()))
        ks = index.ks_for(bench, n_min)
        metrics = [("pass@1", 1), (f"pass@{TABLE_K}", table_k(ks, n_min))]
        if (top := largest_k(ks, n_min)) > TABLE_K:  # RS-GRPO is meant to raise pass@k at large k
            metrics.append((f"pass@{top}", top))
        for metric, k in metrics:
            va, vb = a.per_problem(k), b.per_problem(k)
            strata.setdefault(metric, ([], []))[0].append(va)
            strata[metric][1].append(vb)
            ks_used.setdefault(metric, []).append(k)
            ci = paired_seed_difference(va, vb, n_boot=n_boot, seed=seed)
            rows.append(_diff_row(setting, rs, gr, bench, index.benchmark_name(bench), metric, k,
                                  va.mean(), vb.mean(), ci, va.shape[1]))
    for metric, (sa, sb) in strata.items():
        if len(sa) != len(index.benchmarks):  # a pass@<K> some benchmark lacks: no AVG over all of them
            continue
        ci = stratified_paired_difference(sa, sb, n_boot=n_boot, seed=seed)
        ks = ks_used[metric]
        rows.append(_diff_row(setting, rs, gr, AVG, AVG, metric, ks[0] if len(set(ks)) == 1 else pd.NA,
                              np.mean([v.mean() for v in sa]), np.mean([v.mean() for v in sb]), ci,
                              int(sum(v.shape[1] for v in sa))))
    return rows


def _diff_row(setting, rs, gr, bench, bench_name, metric, k, rs_mean, grpo_mean, ci, n_problems) -> dict:
    model_display, _, train_set = setting.partition("/")
    return {"setting": setting, "model_name": model_display, "train_set": train_set, "rs_cell": rs["group"],
            "rs_n_seeds": rs["n_seeds"], "rs_label": rs["label"], "beta": rs["beta"],
            "rs_published_method": rs["published_method"],
            "grpo_cell": gr["group"], "grpo_n_seeds": gr["n_seeds"], "grpo_label": gr["label"],
            "benchmark": bench, "benchmark_name": bench_name, "metric": metric, "k": k,
            "rs_grpo_pct": _pct(rs_mean), "grpo_pct": _pct(grpo_mean), "diff_pct": _pct(ci.mean),
            "ci_low_pct": _pct(ci.low), "ci_high_pct": _pct(ci.high), "n_problems": n_problems}


PUBLISHED_COLUMNS = ["setting", "cell", "label", "method", "published_method", "benchmark", "benchmark_name",
                     "metric", "k", "ours_pct", "ci_low_pct", "ci_high_pct", "published_pct", "diff_pct",
                     "published_in_ci"]


def build_published_comparison(table2: pd.DataFrame, index: CellIndex,
                               published: pd.DataFrame | None = None) -> pd.DataFrame:
    """Ours vs the paper for every (setting, published_method) in the shipped Table 2.

    pass@1 is compared on every benchmark with a ``published_name``; pass@32 only where our k is
    exactly 32 (a pass@16 is not a pass@32); AVG only where our benchmarks are exactly the paper's six
    (its AVG is their unweighted mean), so both averages are over the same benchmarks.
    """
    published = load_published_table() if published is None else published
    paper_benches = {c[: -len("_p1")] for c in published.columns if c.endswith("_p1")} - {AVG}
    ours_names = set(index.benchmarks["published_name"])
    avg_comparable = ours_names == paper_benches and len(index.benchmarks) == len(paper_benches)
    rows = []
    for _, r in table2.iterrows():
        key = (r["setting"], r["published_method"])
        if not r["published_method"] or key not in published.index:
            continue
        name = AVG if r["benchmark"] == AVG else index.benchmark_name(r["benchmark"])
        if r["benchmark"] == AVG and not avg_comparable:
            continue
        if r["benchmark"] != AVG and name not in paper_benches:
            continue
        suffix = "_p1" if r["metric"] == "pass@1" else "_p32"
        if suffix == "_p32" and (pd.isna(r["k"]) or int(r["k"]) != TABLE_K):
            continue
        pub = float(published.loc[key, name + suffix])
        rows.append({"setting": r["setting"], "cell": r["cell"], "label": r["label"], "method": r["method"],
                     "published_method": r["published_method"], "benchmark": r["benchmark"],
                     "benchmark_name": name, "metric": r["metric"], "k": r["k"], "ours_pct": r["pass_at_k_pct"],
                     "ci_low_pct": r["ci_low_pct"], "ci_high_pct": r["ci_high_pct"], "published_pct": pub,
                     "diff_pct": r["pass_at_k_pct"] - pub,
                     "published_in_ci": bool(r["ci_low_pct"] <= pub <= r["ci_high_pct"])})
    df = pd.DataFrame(rows, columns=PUBLISHED_COLUMNS)
    df["k"] = df["k"].astype("Int64")
    return df


# ------------------------------------------------------------------------------------- markdown
def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _fmt_ci(mean: float, low: float, high: float, signed: bool = False) -> str:
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(mean)} [{f.format(low)}, {f.format(high)}]"


def _column_order(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(benchmark, metric) columns: per benchmark pass@1, pass@32, then any larger-k metric it has."""
    benches = list(dict.fromkeys(df["benchmark"]))
    extra = [m for m in dict.fromkeys(df["metric"]) if m not in ("pass@1", f"pass@{TABLE_K}")]
    present = set(zip(df["benchmark"], df["metric"]))
    return [(b, m) for b in benches for m in ("pass@1", f"pass@{TABLE_K}", *extra)
            if m in ("pass@1", f"pass@{TABLE_K}") or (b, m) in present]


def _k_header(df: pd.DataFrame, bench: str, metric: str, notes: list[str]) -> str:
    """Column header such as ``AIME24 p@32``; a dagger (and a note) where some k is not 32."""
    name = df.loc[df["benchmark"] == bench, "benchmark_name"].iloc[0]
    if metric != f"pass@{TABLE_K}":  # pass@1 and a largest-k metric name their k exactly
        return f"{name} p@{metric.removeprefix('pass@')}"
    ks = df.loc[(df["benchmark"] == bench) & (df["metric"] == metric), "k"]
    if ks.isna().any() or set(ks.astype(int)) != {TABLE_K}:
        if bench != AVG:
            notes.append(f"{name}: k = {', '.join(map(str, sorted(set(ks.dropna().astype(int)))))}")
        return f"{name} p@{TABLE_K}†"
    return f"{name} p@{TABLE_K}"


def _seeds_label(label: str, n_seeds) -> str:
    return f"{label} ({int(n_seeds)} seeds)" if int(n_seeds) > 1 else label


SEEDS_NOTE = ("Rows with several training seeds: the mean over seeds and problems; the CI resamples problems "
              "(one draw for all seeds) and seeds.")


def table2_markdown(table2: pd.DataFrame) -> str:
    out = ["# Table 2 (reproduction): pass@1 and pass@32 in %, 95% bootstrap CI over problems", "",
           "AVG = unweighted mean over the benchmarks (its CI: problems resampled within each benchmark).",
           f"† pass@k at the largest k <= {TABLE_K} the samples allow, where that is not {TABLE_K}.", ""]
    if (table2["n_seeds"] > 1).any():
        out[-1:-1] = [SEEDS_NOTE]
    for setting, g in table2.groupby("setting", sort=False):
        notes: list[str] = []
        cols = _column_order(g)
        header = ["Method"] + [_k_header(g, b, m, notes) for b, m in cols]
        body = []
        for _cell, c in g.groupby("cell", sort=False):
            idx = c.set_index(["benchmark", "metric"])
            body.append([_seeds_label(c["label"].iloc[0], c["n_seeds"].iloc[0])] + [
                _fmt_ci(*idx.loc[(b, m), ["pass_at_k_pct", "ci_low_pct", "ci_high_pct"]]) for b, m in cols])
        out += [f"## {setting}", "", _md_table(header, body), ""]
        if notes:
            out += ["† " + "; ".join(notes), ""]
    return "\n".join(out)


def rsgrpo_vs_grpo_markdown(diff: pd.DataFrame, published: pd.DataFrame | None = None) -> str:
    """``rsgrpo_vs_grpo.md``: per setting one row per (RS-GRPO, GRPO) pair, then the headline means;
    ``published`` is the shipped Table 2 unless given (aggregate passes the one it loaded once)."""
    out = ["# RS-GRPO - GRPO (percent points), paired 95% bootstrap CI over the same problems", ""]
    if diff.empty:
        return "\n".join(out + ["No setting of this grid has both an RS-GRPO and a GRPO cell.", ""])
    if ((diff["rs_n_seeds"] > 1) | (diff["grpo_n_seeds"] > 1)).any():
        out += ["Methods with several training seeds: the mean over seeds and problems; the CI resamples the "
                "problems (one draw for both methods) and each method's seeds independently.", ""]
    large = sorted({m for m in diff["metric"] if m not in ("pass@1", f"pass@{TABLE_K}")},
                   key=lambda m: int(m.removeprefix("pass@")))
    if large:
        out += [f"p@{', p@'.join(m.removeprefix('pass@') for m in large)}: pass@k at the largest k the samples "
                f"allow, where that exceeds {TABLE_K}.", ""]
    for setting, g in diff.groupby("setting", sort=False):
        notes: list[str] = []
        cols = _column_order(g)
        header = ["Comparison"] + [_k_header(g, b, m, notes) for b, m in cols]
        body = []
        for (_rs, _gr), c in g.groupby(["rs_cell", "grpo_cell"], sort=False):
            idx = c.set_index(["benchmark", "metric"])
            rs_label = _seeds_label(c["rs_label"].iloc[0], c["rs_n_seeds"].iloc[0])
            grpo_label = _seeds_label(c["grpo_label"].iloc[0], c["grpo_n_seeds"].iloc[0])
            body.append([f"{rs_label} - {grpo_label}"] + [
                _fmt_ci(*idx.loc[(b, m), ["diff_pct", "ci_low_pct", "ci_high_pct"]], signed=True)
                if (b, m) in idx.index else "" for b, m in cols])
        out += [f"## {setting}", "", _md_table(header, body), ""]
        if notes:
            out += ["† " + "; ".join(notes), ""]
    return "\n".join(out + _headline_markdown(diff, load_published_table() if published is None else published))


def _headline_markdown(diff: pd.DataFrame, published: pd.DataFrame) -> list[str]:
    """Lines of the mean over settings of each pair's AVG difference next to the paper's over the same
    settings: the statistic the paper's claim rests on."""
    out = ["## Mean over settings of the AVG difference (the paper's headline statistic)", ""]
    body = []
    avg = diff[diff["benchmark"] == AVG]
    for (rs_label, grpo_label), g in avg.groupby(["rs_label", "grpo_label"], sort=False):
        settings = list(dict.fromkeys(g["setting"]))
        cells = [f"{g.loc[g['metric'] == m, 'diff_pct'].mean():+.2f}" for m in ("pass@1", f"pass@{TABLE_K}")]
        pub = []
        if (g["rs_published_method"] != "RS-GRPO").any():  # the paper's headline is its beta = 2 run only
            body.append([f"{rs_label} - {grpo_label}", str(len(settings))] + cells + ["n/a", "n/a"])
            continue
        for _m, suffix in (("pass@1", "AVG_p1"), (f"pass@{TABLE_K}", "AVG_p32")):
            vals = [published.loc[(s, "RS-GRPO"), suffix] - published.loc[(s, "GRPO"), suffix] for s in settings
                    if (s, "RS-GRPO") in published.index and (s, "GRPO") in published.index]
            pub.append(f"{np.mean(vals):+.2f} ({len(vals)})" if vals else "n/a")
        body.append([f"{rs_label} - {grpo_label}", str(len(settings))] + cells + pub)
    out += [_md_table(["Comparison", "settings", "ours p@1", f"ours p@{TABLE_K}",
                       "paper p@1 (settings)", f"paper p@{TABLE_K} (settings)"], body), "",
            "Paper columns: published RS-GRPO (beta = 2) - GRPO AVG over the same settings, for the cells that are "
            "the published RS-GRPO run (n/a otherwise); "
            "over all 7 published settings the paper reports +1.29 pass@1 and +3.64 pass@32.", ""]
    return out


def published_comparison_markdown(comp: pd.DataFrame) -> str:
    out = ["# Ours vs published (Table 2 of arXiv 2509.24261), percent points", "",
           "Each entry: ours [95% CI] / published (ours - published); * = published value outside our CI.", ""]
    if comp.empty:
        return "\n".join(out + ["No cell of this grid has a published counterpart with a common metric "
                                "(pass@32 needs exactly 32 samples' worth of k; see published_comparison.csv).", ""])
    for setting, g in comp.groupby("setting", sort=False):
        benches = list(dict.fromkeys(g["benchmark_name"]))
        body = []
        for (_cell, metric), c in g.groupby(["cell", "metric"], sort=False):
            idx = c.set_index("benchmark_name")
            row = [c["label"].iloc[0], metric]
            for b in benches:
                if b not in idx.index:
                    row.append("")
                    continue
                r = idx.loc[b]
                star = "" if r["published_in_ci"] else "*"
                row.append(f"{r['ours_pct']:.1f} [{r['ci_low_pct']:.1f}, {r['ci_high_pct']:.1f}] / "
                           f"{r['published_pct']:.1f} ({r['diff_pct']:+.1f}){star}")
            body.append(row)
        out += [f"## {setting}", "", _md_table(["Method", "metric"] + benches, body), ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ main
def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text if text.endswith("\n") else text + "\n")


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")


def aggregate(cells: str | Path, benchmarks: str | Path, out_dir: str | Path, *, n_boot: int = 2000,
              seed: int = 0) -> dict[str, Path]:
    """Write the three tables (CSV + Markdown) to ``out_dir``; returns ``{name: path}``."""
    if n_boot < 1:
        raise ValueError(f"--bootstrap must be >= 1, got {n_boot}")
    index = load_index(cells, benchmarks)
    out = Path(out_dir)
    table2 = build_table2(index, n_boot=n_boot, seed=seed)
    diff = build_rsgrpo_vs_grpo(index, n_boot=n_boot, seed=seed)
    published = load_published_table()
    comp = build_published_comparison(table2, index, published)
    built = {"table2": (table2, table2_markdown(table2)),
             "rsgrpo_vs_grpo": (diff, rsgrpo_vs_grpo_markdown(diff, published)),
             "published_comparison": (comp, published_comparison_markdown(comp))}
    written = {}
    for name in AGGREGATE_TABLES:  # the file names the workflow declares (rsgrpo.layout)
        df, md = built[name]
        _write_csv(out / f"{name}.csv", df)
        _write_text(out / f"{name}.md", md)
        written[name + ".csv"] = out / f"{name}.csv"
        written[name + ".md"] = out / f"{name}.md"
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cells", required=True, type=Path, help="cells.csv of the evaluated grid")
    parser.add_argument("--benchmarks", required=True, type=Path,
                        help="benchmarks.csv (benchmark, published_name, n, ks)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for table2 / rsgrpo_vs_grpo / "
                        "published_comparison (.csv and .md)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples per CI (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def main(args: argparse.Namespace) -> int:
    for _name, path in aggregate(args.cells, args.benchmarks, args.out, n_boot=args.bootstrap,
                                seed=args.seed).items():
        print(path)
    return 0
