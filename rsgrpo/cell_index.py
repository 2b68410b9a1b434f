"""The results index: ``cells.csv`` + ``benchmarks.csv``, written by the ``cell-index`` verb (rule
``cell_index``) from the workflow config and read by the analysis (:mod:`rsgrpo.aggregate`,
:mod:`rsgrpo.figures`) as a :class:`CellIndex`.

Format (both files CSV with a header; an empty field means "none"):

* ``cells.csv`` -- one row per evaluated cell: ``cell, model, model_name, train_set, method, estimator,
  beta, label, published_method, published_model, passk, graded, metrics, step_evals``.

  - ``cell`` is the cell id ``<model>/<run>`` (unique), ``method`` the config's method key (free
    text, shown nowhere but the tidy tables), ``estimator`` the advantage estimator's registry name
    (:data:`rsgrpo.advantages.ESTIMATORS`; empty for the untrained base model). The analysis knows
    methods only by ``estimator``: rows are ordered base first, then in registry order (the paper's:
    GRPO, the pass@k baselines, RS-GRPO last), then by ``beta`` and ``label``; the RS-GRPO - GRPO
    table pairs estimator ``rs_grpo`` with estimator ``grpo``. Renaming a method key changes nothing.
  - A *setting* is ``<display model>/<train_set>``, the display model being the first non-empty
    ``published_model`` among the model's cells, else its ``model_name`` (so it matches the
    published Table 2). A cell with an empty ``train_set`` (the base model) belongs to every setting
    of its model and is the Base row of each.
  - ``passk`` / ``graded``: the final checkpoint's ``passk.csv`` and ``graded.parquet``; ``metrics``
    the training ``metrics.csv`` (empty for base); ``step_evals`` the evaluated checkpoints as
    ``step:folder;step:folder`` (each folder holding a ``passk.csv`` and ``graded.parquet``, see
    :class:`rsgrpo.layout.Layout`). Relative paths are taken as given, else relative to the folder
    of ``cells.csv``.
* ``benchmarks.csv`` -- ``benchmark, published_name, n, ks`` (``ks`` ``;``-separated; empty = powers
  of two up to the samples per problem).

The cells' own files: ``graded.parquet`` (``benchmark, problem_id, sample_idx, correct``, read as
per-problem :class:`Counts`), ``passk.csv`` and ``metrics.csv`` (:func:`read_passk`,
:func:`read_metrics`).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rsgrpo import advantages
from rsgrpo.grid import Cell, expand, step_number
from rsgrpo.io import atomic_path
from rsgrpo.layout import FINAL, LAYOUT, Layout, fmt_beta
from rsgrpo.passk import pass_at_k, powers_of_two

__all__ = [
    "CELL_COLUMNS", "BENCHMARK_COLUMNS", "GRADED_COLUMNS", "PASSK_COLUMNS", "METRICS_COLUMNS",
    "BASE_ESTIMATOR", "GRPO_ESTIMATOR", "RS_GRPO_ESTIMATOR", "estimator_rank",
    "cells_table", "benchmarks_table", "write_index",
    "Counts", "CellIndex", "read_table", "load_index", "load_counts", "read_passk", "read_metrics",
    "parse_step_evals",
]

CELL_COLUMNS = ["cell", "model", "model_name", "train_set", "method", "estimator", "beta", "label",
                "published_method", "published_model", "passk", "graded", "metrics", "step_evals"]
BENCHMARK_COLUMNS = ["benchmark", "published_name", "n", "ks"]
GRADED_COLUMNS = ["benchmark", "problem_id", "sample_idx", "correct"]
PASSK_COLUMNS = ["benchmark", "k", "pass_at_k", "ci_low", "ci_high", "n_problems", "n_samples"]
METRICS_COLUMNS = ["step", "beta", "reward_mean", "solved_frac", "cumulative_solve_rate", "entropy",
                   "response_len_mean"]

# Methods as the analysis knows them: registry names of advantage estimators.
BASE_ESTIMATOR = ""  # the untrained model
GRPO_ESTIMATOR = "grpo"
RS_GRPO_ESTIMATOR = "rs_grpo"
for _name in (GRPO_ESTIMATOR, RS_GRPO_ESTIMATOR):
    if _name not in advantages.ESTIMATORS:  # pragma: no cover - a renamed estimator must be renamed here too
        raise ImportError(f"rsgrpo.cell_index: estimator {_name!r} is not registered in rsgrpo.advantages")


def estimator_rank(estimator: str) -> int:
    """Row order of a method: 0 for the base model, then the registry order of
    :data:`rsgrpo.advantages.ESTIMATORS` (the paper's table order); an estimator the registry does
    not know (a hand-written index) comes last."""
    if estimator == BASE_ESTIMATOR:
        return 0
    order = list(advantages.ESTIMATORS)
    return 1 + (order.index(estimator) if estimator in order else len(order))


# ------------------------------------------------------------------------------------ writing
def cells_table(config: dict, cells: Iterable[Cell], layout: Layout = LAYOUT) -> list[dict]:
    """Rows of ``cells.csv`` for the grid's cells (columns: see the module docstring)."""
    rows = []
    for cell in cells:
        model = config["models"][cell.model]
        method = config["methods"][cell.method]
        label = method.get("label", cell.method)
        if cell.beta is not None:
            label = f"{label} (β={fmt_beta(cell.beta)})"
        published = method.get("published", "")
        if published and cell.beta is not None and cell.beta != method.get("published_beta", cell.beta):
            published = ""  # the paper reports this method at one beta only
        final_dir = layout.eval_dir(cell.id, FINAL)
        rows.append(
            {
                "cell": cell.id,
                "model": cell.model,
                "model_name": model.get("name", cell.model),
                "train_set": cell.train_set or "",
                "method": cell.method,
                "estimator": method.get("estimator") or BASE_ESTIMATOR,
                "beta": "" if cell.beta is None else cell.beta,
                "label": label,
                "published_method": published,
                "published_model": model.get("published_name", ""),
                "passk": layout.passk(final_dir),
                "graded": layout.graded(final_dir),
                "metrics": "" if cell.is_base else layout.metrics(layout.cell_dir(cell.id)),
                "step_evals": "" if cell.is_base else ";".join(
                    f"{step_number(config, s, cell)}:{layout.eval_dir(cell.id, s)}" for s in cell.eval_steps
                ),
            }
        )
    return rows


def benchmarks_table(config: dict) -> list[dict]:
    """Rows of ``benchmarks.csv``."""
    return [
        {"benchmark": key, "published_name": b.get("published_name", ""), "n": b["n"],
         "ks": ";".join(map(str, b["ks"]))}
        for key, b in config["benchmarks"].items()
    ]


def write_index(config: dict, out_cells: str | Path, out_benchmarks: str | Path) -> int:
    """Expand the (validated) config and write ``cells.csv`` and ``benchmarks.csv``; returns the cell count."""
    cells = expand(config)
    for rows, target in ((cells_table(config, cells), out_cells), (benchmarks_table(config), out_benchmarks)):
        with atomic_path(target) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
    return len(cells)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-json", required=True, help="the workflow's effective config as JSON")
    parser.add_argument("--out-cells", required=True, help="cells.csv to write")
    parser.add_argument("--out-benchmarks", required=True, help="benchmarks.csv to write")


def main(args: argparse.Namespace) -> int:
    config = json.loads(args.config_json)
    n_cells = write_index(config, args.out_cells, args.out_benchmarks)
    print(f"{n_cells} cells, {len(config['benchmarks'])} benchmarks")
    return 0


# ------------------------------------------------------------------------------------ reading
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


@dataclass
class CellIndex:
    """The validated ``cells.csv`` + ``benchmarks.csv``.

    ``cells``: one row per cell, indexed by cell id (paths resolved, ``beta`` float or NaN).
    ``memberships``: one row per (setting, cell) -- columns ``setting, model, model_display,
    train_set, cell, method, estimator, beta, label, published_method, rank`` -- the base model
    repeated in each setting of its model, in display order (see the module docstring).
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

    def step_evals(self, cell: str) -> list[tuple[int, Path]]:
        """(step, evaluation folder) of every evaluated checkpoint of a cell, by step ([] for base)."""
        return parse_step_evals(self.cells.loc[cell, "step_evals"], self.cells_path.parent, where=f"cell {cell!r}")

    def with_estimator(self, members: pd.DataFrame, *estimators: str) -> pd.DataFrame:
        """The rows of ``members`` (a slice of :attr:`memberships`) whose estimator is one of ``estimators``."""
        return members[members["estimator"].isin(estimators)]

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


def load_index(cells_path: str | Path, benchmarks_path: str | Path) -> CellIndex:
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
    return CellIndex(cells, _memberships(cells), benchmarks.reset_index(drop=True), cells_path, benchmarks_path)


def _method_rank(estimator: str, beta: float) -> tuple:
    return (estimator_rank(estimator), 0.0 if math.isnan(beta) else beta)


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
                             "estimator": row["estimator"], "beta": row["beta"], "label": row["label"],
                             "published_method": row["published_method"],
                             "rank": _method_rank(row["estimator"], row["beta"])})
    df = pd.DataFrame(rows)
    setting_order = {s: i for i, s in enumerate(dict.fromkeys(df["setting"]))}
    df["setting_rank"] = df["setting"].map(setting_order)
    df = df.sort_values(["setting_rank", "rank", "label"], key=None, kind="stable")
    return df.drop(columns=["setting_rank"]).reset_index(drop=True)
