"""``python -m rsgrpo aggregate``: the paper's Table 2 from our results, with bootstrap CIs, the paired
RS-GRPO - GRPO differences, and a side-by-side comparison with the published numbers.

Inputs (written by the workflow):

* ``cells.csv`` -- one row per evaluated cell: ``cell, model, model_name, train_set, method, estimator,
  beta, label, published_method, published_model, passk, graded, metrics, step_evals``. A *setting*
  is ``<display model>/<train_set>``, the display model being the first non-empty ``published_model``
  among the model's cells, else its ``model_name`` (so it matches ``table2_published.csv``). A cell
  with an empty ``train_set`` (the base model) belongs to every setting of its model and is the Base
  row of each. Relative paths are taken as given, else relative to the folder of ``cells.csv``.
* ``benchmarks.csv`` -- ``benchmark, published_name, n, ks``.
* per cell, the final checkpoint's ``graded.parquet`` (``benchmark, problem_id, sample_idx, correct``)
  and ``passk.csv``.

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
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from rsgrpo.io import atomic_path
from rsgrpo.passk import Interval, bootstrap_ci, paired_difference, pass_at_k, powers_of_two

__all__ = [
    "CELL_COLUMNS", "BENCHMARK_COLUMNS", "GRADED_COLUMNS", "PASSK_COLUMNS", "METRICS_COLUMNS",
    "TABLE_K", "AVG", "Counts", "Grid", "read_table", "load_grid", "load_published_table", "load_counts",
    "read_passk", "read_metrics", "parse_step_evals", "table_k", "stratified_bootstrap",
    "build_table2", "build_rsgrpo_vs_grpo", "build_published_comparison", "aggregate",
]

CELL_COLUMNS = ["cell", "model", "model_name", "train_set", "method", "estimator", "beta", "label",
                "published_method", "published_model", "passk", "graded", "metrics", "step_evals"]
BENCHMARK_COLUMNS = ["benchmark", "published_name", "n", "ks"]
GRADED_COLUMNS = ["benchmark", "problem_id", "sample_idx", "correct"]
PASSK_COLUMNS = ["benchmark", "k", "pass_at_k", "ci_low", "ci_high", "n_problems", "n_samples"]
METRICS_COLUMNS = ["step", "beta", "reward_mean", "solved_frac", "cumulative_solve_rate", "entropy",
                   "response_len_mean"]
TABLE_K = 32  # the paper's Table 2 reports pass@1 and pass@32
AVG = "AVG"
PUBLISHED_RESOURCE = "reference/table2_published.csv"
# row order inside a setting: the paper's order (Base, GRPO, baselines, RS-GRPO), unknown keys before RS-GRPO
METHOD_ORDER = {"base": 0, "grpo": 1, "walder": 2, "mahdavi": 3, "chen": 4, "rs_grpo": 9}


# ----------------------------------------------------------------------------------------- reading
def read_table(path: str | Path, what: str, required: Sequence[str], **kwargs) -> pd.DataFrame:
    """Read a CSV or parquet; ValueError naming the file (and columns) when missing, incomplete, empty."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {str(path)!r} does not exist")
    if path.suffix == ".parquet":
        # read only the needed columns: graded files carry every completion's full text
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        missing = [c for c in required if c not in names]
        if missing:
            raise ValueError(f"{what} file {str(path)!r} lacks column(s) {missing}; it has {names}")
        df = pd.read_parquet(path, columns=list(required))
    else:
        df = pd.read_csv(path, **kwargs)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what} file {str(path)!r} lacks column(s) {missing}; it has {list(df.columns)}")
    if df.empty:
        raise ValueError(f"{what} file {str(path)!r} holds no rows")
    return df


def _text_table(path: str | Path, what: str, required: Sequence[str]) -> pd.DataFrame:
    """A CSV of strings where an empty field is "" (not NaN), so "empty" keeps its meaning."""
    df = read_table(path, what, required, dtype=str, keep_default_na=False)
    return df.apply(lambda col: col.str.strip())


@dataclass(frozen=True)
class Counts:
    """Per-problem sample and correct counts of one cell on one benchmark, sorted by problem id."""

    problem_ids: np.ndarray
    n: np.ndarray
    c: np.ndarray

    def per_problem(self, k: int) -> np.ndarray:
        """Unbiased pass@k of each problem."""
        return pass_at_k(self.n, self.c, k)

    @property
    def accuracy(self) -> np.ndarray:
        return self.c / self.n


def load_counts(path: str | Path) -> dict[str, Counts]:
    """``graded.parquet`` -> ``{benchmark: Counts}``."""
    df = read_table(path, "graded", GRADED_COLUMNS)
    if df["correct"].isna().any():
        raise ValueError(f"graded file {str(path)!r}: column 'correct' has missing values")
    df = df.assign(problem_id=df["problem_id"].astype(str), benchmark=df["benchmark"].astype(str),
                   correct=df["correct"].astype(bool))
    out = {}
    for bench, g in df.groupby("benchmark", sort=False):
        agg = g.groupby("problem_id", sort=True)["correct"].agg(["size", "sum"])
        out[str(bench)] = Counts(agg.index.to_numpy(dtype=str), agg["size"].to_numpy(np.int64),
                                 agg["sum"].to_numpy(np.int64))
    return out


def read_passk(path: str | Path) -> pd.DataFrame:
    df = read_table(path, "passk", PASSK_COLUMNS)
    return df.assign(benchmark=df["benchmark"].astype(str), k=df["k"].astype(int))


def read_metrics(path: str | Path) -> pd.DataFrame:
    df = read_table(path, "metrics", METRICS_COLUMNS)
    return df.sort_values("step", kind="stable").reset_index(drop=True)


def parse_step_evals(spec: str, base_dir: Path, *, where: str) -> list[tuple[int, Path]]:
    """``"50:dir;100:dir"`` -> ``[(50, dir), (100, dir)]`` sorted by step."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        step, sep, folder = part.partition(":")
        if not sep or not step.strip().isdigit() or not folder.strip():
            raise ValueError(f"{where}: column 'step_evals' entry {part!r} is not 'step:dir'")
        out.append((int(step), _resolve(folder.strip(), base_dir)))
    return sorted(out)


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    alt = base_dir / p
    return alt if alt.exists() else p


def load_published_table() -> pd.DataFrame:
    """The paper's Table 2 shipped as package data (percent points), indexed by (setting, method)."""
    ref = importlib.resources.files("rsgrpo").joinpath(PUBLISHED_RESOURCE)
    with importlib.resources.as_file(ref) as path:
        df = pd.read_csv(path)
    return df.set_index(["setting", "method"])


# ------------------------------------------------------------------------------------------ grid
@dataclass
class Grid:
    """The validated ``cells.csv`` + ``benchmarks.csv``.

    ``cells``: one row per cell (paths resolved, ``beta`` float or NaN). ``memberships``: one row per
    (setting, cell), the base model repeated in each setting of its model, in display order.
    ``benchmarks``: with ``ks`` parsed to a list of ints (empty = powers of two up to n).
    """

    cells: pd.DataFrame
    memberships: pd.DataFrame
    benchmarks: pd.DataFrame
    cells_path: Path
    benchmarks_path: Path
    _counts: dict | None = None

    def counts(self, cell: str) -> dict[str, Counts]:
        """Per-problem counts of a cell's final checkpoint (read once, cached)."""
        if self._counts is None:
            self._counts = {}
        if cell not in self._counts:
            row = self.cells.loc[cell]
            counts = load_counts(row["graded"])
            missing = [b for b in self.benchmarks["benchmark"] if b not in counts]
            if missing:
                raise ValueError(f"graded file {str(row['graded'])!r} (cells file {str(self.cells_path)!r}, "
                                 f"column 'graded', cell {cell!r}) has no rows for benchmark(s) {missing}; "
                                 f"it has {sorted(counts)}")
            self._counts[cell] = counts
        return self._counts[cell]

    def benchmark_name(self, bench: str) -> str:
        name = self.benchmarks.set_index("benchmark").loc[bench, "published_name"]
        return name or bench

    def ks_for(self, bench: str, n: int) -> list[int]:
        ks = self.benchmarks.set_index("benchmark").loc[bench, "ks"]
        ks = [k for k in ks if k <= n] if ks else powers_of_two(n)
        if not ks:
            raise ValueError(f"benchmarks file {str(self.benchmarks_path)!r}: column 'ks' of {bench!r} has no "
                             f"k <= {n}, the samples per problem")
        return ks


def _parse_beta(value: str, where: str) -> float:
    if value == "":
        return math.nan
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{where}: column 'beta' must be a number or empty, got {value!r}") from None


def _parse_ks(value: str, where: str) -> list[int]:
    parts = [p.strip() for p in value.split(";") if p.strip()]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"{where}: column 'ks' must be ';'-separated positive integers, got {value!r}")
    return sorted({int(p) for p in parts})


def load_grid(cells_path: str | Path, benchmarks_path: str | Path) -> Grid:
    """Read and validate ``cells.csv`` and ``benchmarks.csv``; ValueError names file, column and row."""
    cells_path, benchmarks_path = Path(cells_path), Path(benchmarks_path)
    base_dir = cells_path.parent
    cells = _text_table(cells_path, "cells", CELL_COLUMNS)
    dup = cells["cell"][cells["cell"].duplicated()]
    if len(dup):
        raise ValueError(f"cells file {str(cells_path)!r}: column 'cell' repeats {dup.iloc[0]!r}")
    for col in ("cell", "model", "model_name", "method", "label", "passk", "graded"):
        empty = cells.index[cells[col] == ""]
        if len(empty):
            raise ValueError(f"cells file {str(cells_path)!r}: column {col!r} is empty in row {int(empty[0]) + 2}")
    betas, resolved = [], {c: [] for c in ("passk", "graded", "metrics")}
    for _, row in cells.iterrows():
        where = f"cells file {str(cells_path)!r}, cell {row['cell']!r}"
        betas.append(_parse_beta(row["beta"], where))
        for col in resolved:
            if row[col] == "":
                resolved[col].append(None)
                continue
            p = _resolve(row[col], base_dir)
            if not p.is_file():
                raise ValueError(f"{where}: column {col!r} names {row[col]!r}, which does not exist")
            resolved[col].append(p)
        parse_step_evals(row["step_evals"], base_dir, where=where)  # validate the syntax early
    cells = cells.assign(beta=betas, **resolved).set_index("cell", drop=False)

    benchmarks = _text_table(benchmarks_path, "benchmarks", BENCHMARK_COLUMNS)
    dup = benchmarks["benchmark"][benchmarks["benchmark"].duplicated()]
    if len(dup):
        raise ValueError(f"benchmarks file {str(benchmarks_path)!r}: column 'benchmark' repeats {dup.iloc[0]!r}")
    if (benchmarks["benchmark"] == "").any():
        raise ValueError(f"benchmarks file {str(benchmarks_path)!r}: column 'benchmark' has an empty entry")
    benchmarks = benchmarks.assign(
        ks=[_parse_ks(v, f"benchmarks file {str(benchmarks_path)!r}, benchmark {b!r}")
            for b, v in zip(benchmarks["benchmark"], benchmarks["ks"])])
    return Grid(cells, _memberships(cells), benchmarks.reset_index(drop=True), cells_path, benchmarks_path)


def _method_rank(method: str, beta: float) -> tuple:
    return (METHOD_ORDER.get(method, 5), 0.0 if math.isnan(beta) else beta)


def _memberships(cells: pd.DataFrame) -> pd.DataFrame:
    """(setting, cell) pairs: a cell with an empty train set joins every setting of its model."""
    display = {}
    for model, g in cells.groupby("model", sort=False):
        published = [p for p in g["published_model"] if p]
        display[model] = published[0] if published else g["model_name"].iloc[0]
    rows = []
    for model, g in cells.groupby("model", sort=False):
        train_sets = [t for t in dict.fromkeys(g["train_set"]) if t]
        for _, row in g.iterrows():
            targets = [row["train_set"]] if row["train_set"] else (train_sets or [""])
            for ts in targets:
                setting = f"{display[model]}/{ts}" if ts else display[model]
                rows.append({"setting": setting, "model": model, "model_display": display[model],
                             "train_set": ts, "cell": row["cell"], "method": row["method"],
                             "beta": row["beta"], "label": row["label"],
                             "published_method": row["published_method"],
                             "rank": _method_rank(row["method"], row["beta"])})
    df = pd.DataFrame(rows)
    setting_order = {s: i for i, s in enumerate(dict.fromkeys(df["setting"]))}
    df["setting_rank"] = df["setting"].map(setting_order)
    df = df.sort_values(["setting_rank", "rank", "label"], key=None, kind="stable")
    return df.drop(columns=["setting_rank"]).reset_index(drop=True)


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
def _cross_check_passk(grid: Grid, cell: str, counts: dict[str, Counts]) -> None:
    """pass@1 of passk.csv must equal the graded counts', else the two files come from different runs."""
    path = grid.cells.loc[cell, "passk"]
    passk = read_passk(path)
    for bench, cnt in counts.items():
        row = passk[(passk["benchmark"] == bench) & (passk["k"] == 1)]
        if row.empty:
            continue
        ours = float(cnt.per_problem(1).mean())
        if abs(float(row["pass_at_k"].iloc[0]) - ours) > 1e-6:
            raise ValueError(f"passk file {str(path)!r} (cell {cell!r}) says pass@1 = "
                             f"{float(row['pass_at_k'].iloc[0]):.6f} on {bench!r} but its graded file "
                             f"{str(grid.cells.loc[cell, 'graded'])!r} gives {ours:.6f}: stale results?")


def _cell_stats(grid: Grid, cell: str, n_boot: int, seed: int) -> list[dict]:
    """pass@1 and pass@K (K = :func:`table_k`) per benchmark and AVG for one cell, with CIs."""
    counts = grid.counts(cell)
    _cross_check_passk(grid, cell, counts)
    rows, per_metric = [], {"pass@1": [], f"pass@{TABLE_K}": []}
    ks_used = []
    for bench in grid.benchmarks["benchmark"]:
        cnt = counts[bench]
        n_min = int(cnt.n.min())
        big_k = table_k(grid.ks_for(bench, n_min), n_min)
        ks_used.append(big_k)
        for metric, k in (("pass@1", 1), (f"pass@{TABLE_K}", big_k)):
            values = cnt.per_problem(k)
            per_metric[metric].append(values)
            ci = bootstrap_ci(values, n_boot=n_boot, seed=seed)
            rows.append({"benchmark": bench, "benchmark_name": grid.benchmark_name(bench), "metric": metric,
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


def build_table2(grid: Grid, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Tidy Table 2: one row per (setting, cell, benchmark or AVG, metric)."""
    cache, rows = {}, []
    for _, m in grid.memberships.iterrows():
        cell = grid.cells.loc[m["cell"]]
        if m["cell"] not in cache:
            cache[m["cell"]] = _cell_stats(grid, m["cell"], n_boot, seed)
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


def build_rsgrpo_vs_grpo(grid: Grid, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """RS-GRPO - GRPO per benchmark and AVG for every (rs_grpo, grpo) pair of a setting, paired CIs."""
    rows = []
    for setting, g in grid.memberships.groupby("setting", sort=False):
        rs_cells = g[g["method"] == "rs_grpo"]
        grpo_cells = g[g["method"] == "grpo"]
        for _, rs in rs_cells.iterrows():
            for _, gr in grpo_cells.iterrows():
                diffs = {"pass@1": [], f"pass@{TABLE_K}": []}
                means = {m: ([], []) for m in diffs}  # per-benchmark means of (rs, grpo)
                ks_used = []
                for bench in grid.benchmarks["benchmark"]:
                    where = f"setting {setting!r}, {rs['cell']!r} vs {gr['cell']!r}, benchmark {bench!r}"
                    a, b = _aligned(grid.counts(rs["cell"])[bench], grid.counts(gr["cell"])[bench], where)
                    n_min = int(min(a.n.min(), b.n.min()))
                    big_k = table_k(grid.ks_for(bench, n_min), n_min)
                    ks_used.append(big_k)
                    for metric, k in (("pass@1", 1), (f"pass@{TABLE_K}", big_k)):
                        va, vb = a.per_problem(k), b.per_problem(k)
                        diffs[metric].append(va - vb)
                        means[metric][0].append(va.mean())
                        means[metric][1].append(vb.mean())
                        ci = paired_difference(va, vb, n_boot=n_boot, seed=seed)
                        rows.append(_diff_row(setting, rs, gr, bench, grid.benchmark_name(bench), metric, k,
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


def build_published_comparison(table2: pd.DataFrame, grid: Grid,
                               published: pd.DataFrame | None = None) -> pd.DataFrame:
    """Ours vs the paper for every (setting, published_method) in the shipped Table 2.

    pass@1 is compared on every benchmark with a ``published_name``; pass@32 only where our k is
    exactly 32 (a pass@16 is not a pass@32); AVG only where our benchmarks are exactly the paper's six
    (its AVG is their unweighted mean), so both averages are over the same benchmarks.
    """
    published = load_published_table() if published is None else published
    paper_benches = {c[: -len("_p1")] for c in published.columns if c.endswith("_p1")} - {AVG}
    ours_names = set(grid.benchmarks["published_name"])
    avg_comparable = ours_names == paper_benches and len(grid.benchmarks) == len(paper_benches)
    rows = []
    for _, r in table2.iterrows():
        key = (r["setting"], r["published_method"])
        if not r["published_method"] or key not in published.index:
            continue
        name = AVG if r["benchmark"] == AVG else grid.benchmark_name(r["benchmark"])
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
        for cell, c in g.groupby("cell", sort=False):
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
        for (rs, gr), c in g.groupby(["rs_cell", "grpo_cell"], sort=False):
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
        for m, suffix in (("pass@1", "AVG_p1"), (f"pass@{TABLE_K}", "AVG_p32")):
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
        for (cell, metric), c in g.groupby(["cell", "metric"], sort=False):
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
    grid = load_grid(cells, benchmarks)
    out = Path(out_dir)
    table2 = build_table2(grid, n_boot=n_boot, seed=seed)
    diff = build_rsgrpo_vs_grpo(grid, n_boot=n_boot, seed=seed)
    published = load_published_table()
    comp = build_published_comparison(table2, grid, published)
    written = {}
    for name, df, md in (("table2", table2, table2_markdown(table2)),
                         ("rsgrpo_vs_grpo", diff, rsgrpo_vs_grpo_markdown(diff, published)),
                         ("published_comparison", comp, published_comparison_markdown(comp))):
        _write_csv(out / f"{name}.csv", df)
        _write_text(out / f"{name}.md", md)
        written[name + ".csv"] = out / f"{name}.csv"
        written[name + ".md"] = out / f"{name}.md"
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cells", required=True, type=Path, help="cells.csv of the evaluated grid")
    parser.add_argument("--benchmarks", required=True, type=Path, help="benchmarks.csv (benchmark, published_name, n, ks)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for table2 / rsgrpo_vs_grpo / "
                        "published_comparison (.csv and .md)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples per CI (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def main(args: argparse.Namespace) -> int:
    for name, path in aggregate(args.cells, args.benchmarks, args.out, n_boot=args.bootstrap,
                                seed=args.seed).items():
        print(path)
    return 0
