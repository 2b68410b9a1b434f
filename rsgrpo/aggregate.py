"""``python -m rsgrpo aggregate``: the paper's Table 2 from our results, with bootstrap CIs, the paired
RS-GRPO - GRPO differences, and a side-by-side comparison with the published numbers.

Inputs: the results index ``cells.csv`` + ``benchmarks.csv`` (format and reader:
:mod:`rsgrpo.cell_index`) and, per cell, the final checkpoint's ``graded.parquet`` (``benchmark,
problem_id, sample_idx, correct``) and ``passk.csv``. Methods are known by their ``estimator``
(registry name, :data:`rsgrpo.advantages.ESTIMATORS`), never by their config key: rows follow the
registry order (Base first), and RS-GRPO - GRPO pairs every estimator-``rs_grpo`` cell with every
estimator-``grpo`` cell of a setting.

Every number is recomputed from the per-problem correct counts of ``graded.parquet`` with the
unbiased estimator (:func:`rsgrpo.passk.pass_at_k`); ``passk.csv`` is only cross-checked (pass@1 must
agree, else the two files are from different runs and we refuse to mix them).

Outputs in ``--out`` (percent points everywhere, like the paper):

* ``table2.csv`` (tidy) / ``table2.md`` (paper layout): per setting and method, pass@1 and pass@32 per
  benchmark and their unweighted mean ``AVG`` (the paper's AVG). "pass@32" is pass@k at the largest
  k <= 32 that both ``benchmarks.csv`` ``ks`` and the samples allow; column ``k`` says which (the
  Markdown marks any k != 32). CIs: 95% percentile bootstrap over problems
  (:func:`rsgrpo.passk.bootstrap_ci`); for ``AVG`` a *stratified* bootstrap resamples problems within
  each benchmark independently in every replicate and averages the benchmark means, so every
  benchmark keeps its size and weight, as in the point estimate.
* ``rsgrpo_vs_grpo.csv`` / ``.md``: every (RS-GRPO cell, GRPO cell) pair of a setting, the difference
  per benchmark and AVG with a *paired* bootstrap CI (:func:`rsgrpo.passk.paired_difference`: the
  same problems resampled for both methods; stratified the same way for AVG), plus the mean over
  settings of the AVG difference next to the published one (paper headline: +1.29 pass@1,
  +3.64 pass@32 over its 7 settings).
* ``published_comparison.csv`` / ``.md``: ours vs ``rsgrpo/reference/table2_published.csv`` for every
  cell whose (setting, ``published_method``) is in that table and every benchmark metric present in
  both (pass@32 only where our k is exactly 32; AVG only where our benchmarks are exactly the
  paper's six).
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rsgrpo.cell_index import (
    GRPO_ESTIMATOR,
    RS_GRPO_ESTIMATOR,
    CellIndex,
    Counts,
    load_index,
    read_passk,
)
from rsgrpo.io import atomic_path
from rsgrpo.layout import AGGREGATE_TABLES
from rsgrpo.passk import Interval, bootstrap_ci, paired_difference

__all__ = [
    "TABLE_K", "AVG", "load_published_table", "table_k", "stratified_bootstrap",
    "build_table2", "build_rsgrpo_vs_grpo", "build_published_comparison", "aggregate",
]

TABLE_K = 32  # the paper's Table 2 reports pass@1 and pass@32
AVG = "AVG"
PUBLISHED_RESOURCE = "reference/table2_published.csv"


def load_published_table() -> pd.DataFrame:
    """The paper's Table 2 shipped as package data (percent points), indexed by (setting, method)."""
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


def stratified_bootstrap(strata: Sequence[np.ndarray], *, n_boot: int = 2000, alpha: float = 0.05,
                         seed: int = 0) -> Interval:
    """Unweighted mean over strata of each stratum's mean, with a stratified percentile bootstrap CI.

    Every replicate resamples problems with replacement *within* each stratum (benchmark), keeping its
    size, so the CI reflects the AVG column's actual estimator (equal weight per benchmark). Strata
    are ``[problems]`` arrays; per-stratum generators are seeded ``(seed, index)``, so reruns agree.
    """
    if not strata or any(len(s) == 0 for s in strata):
        raise ValueError("need at least one stratum, each with >= 1 problem")
    boot = np.zeros(n_boot)
    for i, values in enumerate(strata):
        v = np.asarray(values, dtype=np.float64)
        p = len(v)
        counts = np.random.default_rng([seed, i]).multinomial(p, np.full(p, 1.0 / p), size=n_boot)
        boot += counts @ v / p
    boot /= len(strata)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    mean = np.mean([np.mean(s) for s in strata])
    return Interval(np.float64(mean), np.float64(low), np.float64(high))


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


def _cell_stats(index: CellIndex, cell: str, n_boot: int, seed: int) -> list[dict]:
    """pass@1 and pass@K (K = :func:`table_k`) per benchmark and AVG for one cell, with CIs."""
    counts = index.counts(cell)
    _cross_check_passk(index, cell, counts)
    rows, per_metric = [], {"pass@1": [], f"pass@{TABLE_K}": []}
    ks_used = []
    for bench in index.benchmarks["benchmark"]:
        cnt = counts[bench]
        n_min = int(cnt.n.min())
        big_k = table_k(index.ks_for(bench, n_min), n_min)
        ks_used.append(big_k)
        for metric, k in (("pass@1", 1), (f"pass@{TABLE_K}", big_k)):
            values = cnt.per_problem(k)
            per_metric[metric].append(values)
            ci = bootstrap_ci(values, n_boot=n_boot, seed=seed)
            rows.append({"benchmark": bench, "benchmark_name": index.benchmark_name(bench), "metric": metric,
                         "k": k, "pass_at_k_pct": _pct(ci.mean), "ci_low_pct": _pct(ci.low),
                         "ci_high_pct": _pct(ci.high), "n_problems": len(values), "n_samples": n_min})
    for metric, strata in per_metric.items():
        ci = stratified_bootstrap(strata, n_boot=n_boot, seed=seed)
        ks = [1] * len(strata) if metric == "pass@1" else ks_used
        rows.append({"benchmark": AVG, "benchmark_name": AVG, "metric": metric,
                     "k": ks[0] if len(set(ks)) == 1 else pd.NA, "pass_at_k_pct": _pct(ci.mean),
                     "ci_low_pct": _pct(ci.low), "ci_high_pct": _pct(ci.high),
                     "n_problems": int(sum(len(s) for s in strata)), "n_samples": pd.NA})
    return rows


TABLE2_COLUMNS = ["setting", "model_name", "train_set", "cell", "method", "label", "beta", "published_method",
                  "benchmark", "benchmark_name", "metric", "k", "pass_at_k_pct", "ci_low_pct", "ci_high_pct",
                  "n_problems", "n_samples"]


def build_table2(index: CellIndex, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Tidy Table 2: one row per (setting, cell, benchmark or AVG, metric)."""
    cache, rows = {}, []
    for _, m in index.memberships.iterrows():
        cell = index.cells.loc[m["cell"]]
        if m["cell"] not in cache:
            cache[m["cell"]] = _cell_stats(index, m["cell"], n_boot, seed)
        for stat in cache[m["cell"]]:
            rows.append({"setting": m["setting"], "model_name": m["model_display"], "train_set": m["train_set"],
                         "cell": m["cell"], "method": cell["method"], "label": cell["label"],
                         "beta": cell["beta"], "published_method": cell["published_method"], **stat})
    df = pd.DataFrame(rows, columns=TABLE2_COLUMNS)
    df["k"] = df["k"].astype("Int64")
    df["n_samples"] = df["n_samples"].astype("Int64")
    return df


RS_VS_GRPO_COLUMNS = ["setting", "model_name", "train_set", "rs_cell", "rs_label", "beta", "rs_published_method",
                      "grpo_cell",
                      "grpo_label", "benchmark", "benchmark_name", "metric", "k", "rs_grpo_pct", "grpo_pct",
                      "diff_pct", "ci_low_pct", "ci_high_pct", "n_problems"]


def _aligned(a: Counts, b: Counts, where: str) -> tuple[Counts, Counts]:
    """Restrict two cells' counts to their common problems (a paired comparison needs the same ones)."""
    common, ia, ib = np.intersect1d(a.problem_ids, b.problem_ids, return_indices=True)
    if len(common) == 0:
        raise ValueError(f"{where}: the two cells share no problem ids")
    if len(common) != len(a.problem_ids) or len(common) != len(b.problem_ids):
        print(f"aggregate: warning: {where}: pairing on the {len(common)} common problems "
              f"({len(a.problem_ids)} vs {len(b.problem_ids)})", file=sys.stderr)
    return (Counts(common, a.n[ia], a.c[ia]), Counts(common, b.n[ib], b.c[ib]))


def build_rsgrpo_vs_grpo(index: CellIndex, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """RS-GRPO - GRPO per benchmark and AVG for every (RS-GRPO cell, GRPO cell) pair of a setting, paired
    CIs; the two methods are the cells of estimator ``rs_grpo`` and of estimator ``grpo``."""
    rows = []
    for setting, g in index.memberships.groupby("setting", sort=False):
        rs_cells = index.with_estimator(g, RS_GRPO_ESTIMATOR)
        grpo_cells = index.with_estimator(g, GRPO_ESTIMATOR)
        for _, rs in rs_cells.iterrows():
            for _, gr in grpo_cells.iterrows():
                diffs = {"pass@1": [], f"pass@{TABLE_K}": []}
                means = {m: ([], []) for m in diffs}  # per-benchmark means of (rs, grpo)
                ks_used = []
                for bench in index.benchmarks["benchmark"]:
                    where = f"setting {setting!r}, {rs['cell']!r} vs {gr['cell']!r}, benchmark {bench!r}"
                    a, b = _aligned(index.counts(rs["cell"])[bench], index.counts(gr["cell"])[bench], where)
                    n_min = int(min(a.n.min(), b.n.min()))
                    big_k = table_k(index.ks_for(bench, n_min), n_min)
                    ks_used.append(big_k)
                    for metric, k in (("pass@1", 1), (f"pass@{TABLE_K}", big_k)):
                        va, vb = a.per_problem(k), b.per_problem(k)
                        diffs[metric].append(va - vb)
                        means[metric][0].append(va.mean())
                        means[metric][1].append(vb.mean())
                        ci = paired_difference(va, vb, n_boot=n_boot, seed=seed)
                        rows.append(_diff_row(setting, rs, gr, bench, index.benchmark_name(bench), metric, k,
                                              va.mean(), vb.mean(), ci, len(va)))
                for metric, strata in diffs.items():
                    ci = stratified_bootstrap(strata, n_boot=n_boot, seed=seed)
                    ks = [1] * len(strata) if metric == "pass@1" else ks_used
                    rows.append(_diff_row(setting, rs, gr, AVG, AVG, metric,
                                          ks[0] if len(set(ks)) == 1 else pd.NA, np.mean(means[metric][0]),
                                          np.mean(means[metric][1]), ci, int(sum(len(s) for s in strata))))
    df = pd.DataFrame(rows, columns=RS_VS_GRPO_COLUMNS)
    df["k"] = df["k"].astype("Int64")
    return df


def _diff_row(setting, rs, gr, bench, bench_name, metric, k, rs_mean, grpo_mean, ci, n_problems) -> dict:
    model_display, _, train_set = setting.partition("/")
    return {"setting": setting, "model_name": model_display, "train_set": train_set, "rs_cell": rs["cell"],
            "rs_label": rs["label"], "beta": rs["beta"], "rs_published_method": rs["published_method"],
            "grpo_cell": gr["cell"], "grpo_label": gr["label"],
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
    benches = list(dict.fromkeys(df["benchmark"]))
    return [(b, m) for b in benches for m in ("pass@1", f"pass@{TABLE_K}")]


def _k_header(df: pd.DataFrame, bench: str, metric: str, notes: list[str]) -> str:
    """Column header such as ``AIME24 p@32``; a dagger (and a note) where some k is not 32."""
    name = df.loc[df["benchmark"] == bench, "benchmark_name"].iloc[0]
    if metric == "pass@1":
        return f"{name} p@1"
    ks = df.loc[(df["benchmark"] == bench) & (df["metric"] == metric), "k"]
    if ks.isna().any() or set(ks.astype(int)) != {TABLE_K}:
        if bench != AVG:
            notes.append(f"{name}: k = {', '.join(map(str, sorted(set(ks.dropna().astype(int)))))}")
        return f"{name} p@{TABLE_K}†"
    return f"{name} p@{TABLE_K}"


def table2_markdown(table2: pd.DataFrame) -> str:
    out = ["# Table 2 (reproduction): pass@1 and pass@32 in %, 95% bootstrap CI over problems", "",
           "AVG = unweighted mean over the benchmarks (its CI: problems resampled within each benchmark).",
           f"† pass@k at the largest k <= {TABLE_K} the samples allow, where that is not {TABLE_K}.", ""]
    for setting, g in table2.groupby("setting", sort=False):
        notes: list[str] = []
        cols = _column_order(g)
        header = ["Method"] + [_k_header(g, b, m, notes) for b, m in cols]
        body = []
        for _cell, c in g.groupby("cell", sort=False):
            idx = c.set_index(["benchmark", "metric"])
            body.append([c["label"].iloc[0]] + [
                _fmt_ci(*idx.loc[(b, m), ["pass_at_k_pct", "ci_low_pct", "ci_high_pct"]]) for b, m in cols])
        out += [f"## {setting}", "", _md_table(header, body), ""]
        if notes:
            out += ["† " + "; ".join(notes), ""]
    return "\n".join(out)


def rsgrpo_vs_grpo_markdown(diff: pd.DataFrame, published: pd.DataFrame | None = None) -> str:
    out = ["# RS-GRPO - GRPO (percent points), paired 95% bootstrap CI over the same problems", ""]
    if diff.empty:
        return "\n".join(out + ["No setting of this grid has both an RS-GRPO and a GRPO cell.", ""])
    for setting, g in diff.groupby("setting", sort=False):
        notes: list[str] = []
        cols = _column_order(g)
        header = ["Comparison"] + [_k_header(g, b, m, notes) for b, m in cols]
        body = []
        for (_rs, _gr), c in g.groupby(["rs_cell", "grpo_cell"], sort=False):
            idx = c.set_index(["benchmark", "metric"])
            body.append([f"{c['rs_label'].iloc[0]} - {c['grpo_label'].iloc[0]}"] + [
                _fmt_ci(*idx.loc[(b, m), ["diff_pct", "ci_low_pct", "ci_high_pct"]], signed=True) for b, m in cols])
        out += [f"## {setting}", "", _md_table(header, body), ""]
        if notes:
            out += ["† " + "; ".join(notes), ""]
    out += ["## Mean over settings of the AVG difference (the paper's headline statistic)", ""]
    published = load_published_table() if published is None else published
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
    return "\n".join(out)


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
