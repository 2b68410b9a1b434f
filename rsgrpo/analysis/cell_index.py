"""The results index: ``cells.csv`` + ``benchmarks.csv``, written by the ``cell-index`` verb (rule
``cell_index``) from the workflow config and read by the analysis (:mod:`rsgrpo.analysis.aggregate`,
:mod:`rsgrpo.analysis.figures`) as a :class:`CellIndex`.

Format (both files CSV with a header; an empty field means "none"):

* ``cells.csv`` -- one row per evaluated cell: ``cell, model, model_name, train_set, method, estimator,
  beta, seed, group, label, published_method, published_model, passk, graded, metrics, step_evals,
  regime``.

  - ``cell`` is the cell id ``<model>/<run>`` (unique). ``method`` is the key of the cell's method in
    the config (``methods.<key>``: a label, an estimator and its params) and ``estimator`` the
    registry name of that method's advantage function (:data:`rsgrpo.estimators.ESTIMATORS`; empty
    for the untrained base model): the analysis selects and orders by ``estimator`` and uses
    ``method`` only as the config key it is (a table column, a ``--transition-from`` choice). Rows
    are ordered base first, then in registry order (the paper's: GRPO, the pass@k baselines, RS-GRPO
    last), then by ``beta`` and ``label``; the RS-GRPO - GRPO table pairs estimator ``rs_grpo`` with
    estimator ``grpo``. Renaming a method key changes the cell ids and the ``method`` column, no
    number and no row order.
  - ``seed`` is the training seed of a cell of a sweep with a ``seeds`` axis (a non-negative integer;
    empty for the base model and for sweeps without seeds) and ``group`` the cell id without its
    ``-seed<s>`` suffix (:attr:`rsgrpo.grid.Cell.group`; the cell id itself when there is no seed).
    The cells of one group are *replicates* of one configuration: they must agree in every column
    that defines it (``model, model_name, train_set, method, estimator, beta, label,
    published_method, published_model``), hold distinct seeds and evaluate the same problems. The
    analysis shows one row / line per group, pooled over its replicates (:attr:`CellIndex.groups`).
    A cell without a seed that shares its group with seeded ones counts as one more replicate, ordered
    first (only a hand-written index has one: :func:`rsgrpo.grid.expand` refuses such a grid). Both
    columns are required: the index is always written by the ``cell-index`` verb.
  - ``regime`` is the evaluation regime a base cell was sampled under (a key of the config's
    ``regimes``, :func:`rsgrpo.grid.sample_settings`; its ``label`` then says the sampling, e.g.
    ``Base (T 0.6, top-p 0.95, plain, max_tokens 3072)``), empty for every other cell; an index
    without the column reads as all empty (:mod:`rsgrpo.analysis.regime_comparison` compares the regimes).
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

The cells' own files (``graded.parquet``, ``passk.csv``, ``metrics.csv``) are read by
:mod:`rsgrpo.analysis.cell_files`; :meth:`CellIndex.counts` and :meth:`CellIndex.group_counts` cache
and stack their per-problem counts.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rsgrpo import estimators
from rsgrpo.analysis.cell_files import Counts, SeedCounts, load_counts, read_table
from rsgrpo.evaluate.passk import powers_of_two
from rsgrpo.grid import Cell, expand, sampling_label, step_number
from rsgrpo.io import atomic_path
from rsgrpo.layout import FINAL, LAYOUT, Layout, fmt_beta

__all__ = [
    "CELL_COLUMNS", "GROUP_COLUMNS", "BENCHMARK_COLUMNS",
    "BASE_ESTIMATOR", "GRPO_ESTIMATOR", "RS_GRPO_ESTIMATOR", "estimator_rank",
    "cells_table", "benchmarks_table", "write_index", "add_arguments", "main",
    "CellIndex", "load_index", "parse_step_evals",
]

CELL_COLUMNS = ["cell", "model", "model_name", "train_set", "method", "estimator", "beta", "seed", "group", "label",
                "published_method", "published_model", "passk", "graded", "metrics", "step_evals", "regime"]
OPTIONAL_CELL_COLUMNS = ("regime",)  # read as empty where an index lacks them
# the columns that define a configuration: every replicate (cell) of a group has the same values
GROUP_COLUMNS = ["model", "model_name", "train_set", "method", "estimator", "beta", "label", "published_method",
                 "published_model"]
BENCHMARK_COLUMNS = ["benchmark", "published_name", "n", "ks"]

# The estimators (registry names of advantage functions) the analysis singles out; a cell's method
# key never decides what it is.
BASE_ESTIMATOR = ""  # the untrained model has none
GRPO_ESTIMATOR = "grpo"
RS_GRPO_ESTIMATOR = "rs_grpo"
for _name in (GRPO_ESTIMATOR, RS_GRPO_ESTIMATOR):
    if _name not in estimators.ESTIMATORS:  # pragma: no cover - a renamed estimator must be renamed here too
        raise ImportError(f"{__name__}: estimator {_name!r} is not registered in rsgrpo.estimators")


def estimator_rank(estimator: str) -> int:
    """Row order of an estimator: 0 for the base model, then the registry order of
    :data:`rsgrpo.estimators.ESTIMATORS` (the paper's table order); an estimator the registry does
    not know (a hand-written index) comes last."""
    if estimator == BASE_ESTIMATOR:
        return 0
    order = list(estimators.ESTIMATORS)
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
        if cell.regime is not None:
            label = f"{label} ({sampling_label(config, cell)})"
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
                "seed": "" if cell.seed is None else cell.seed,
                "group": cell.group,
                "label": label,
                "published_method": published,
                "published_model": model.get("published_name", ""),
                "passk": layout.passk(final_dir),
                "graded": layout.graded(final_dir),
                "metrics": "" if cell.is_base else layout.metrics(layout.cell_dir(cell.id)),
                "step_evals": "" if cell.is_base else ";".join(
                    f"{step_number(config, s, cell)}:{layout.eval_dir(cell.id, s)}" for s in cell.eval_steps
                ),
                "regime": cell.regime or "",
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
def _text_table(path: str | Path, what: str, required: list[str]) -> pd.DataFrame:
    """A CSV of strings where an empty field is "" (not NaN), so "empty" keeps its meaning."""
    df = read_table(path, what, required, dtype=str, keep_default_na=False)
    return df.apply(lambda col: col.str.strip())


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
    """A path as given when it exists (the workflow writes paths relative to its working directory),
    else relative to the folder of ``cells.csv`` (an index moved together with its results)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    alt = base_dir / p
    return alt if alt.exists() else p


@dataclass
class CellIndex:
    """The validated ``cells.csv`` + ``benchmarks.csv``.

    ``cells``: one row per cell, indexed by cell id (paths resolved, ``beta`` float or NaN, ``seed``
    nullable ``Int64``).
    ``memberships``: one row per (setting, cell) -- columns ``setting, model, model_display,
    train_set, cell, group, seed, method, estimator, beta, label, published_method, rank`` -- the base
    model repeated in each setting of its model, in display order (see the module docstring), a
    group's replicates next to each other, by seed.
    ``groups``: one row per (setting, group), in the same order -- the columns of ``memberships``
    without ``cell`` and ``seed``, plus ``cells`` and ``seeds`` (tuples of the replicates' ids and
    seeds, by seed; a seed is None where the cell has none) and ``n_seeds``. Iterate over it to show
    one row / line per configuration; :meth:`group_counts` stacks a group's counts.
    ``benchmarks``: with ``ks`` parsed to a list of ints (empty = powers of two up to n).
    """

    cells: pd.DataFrame
    memberships: pd.DataFrame
    benchmarks: pd.DataFrame
    cells_path: Path
    benchmarks_path: Path
    groups: pd.DataFrame = field(init=False)
    _counts: dict[str, dict[str, Counts]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        self.groups = _groups(self.memberships)

    def replicates(self, group: str) -> list[str]:
        """The cell ids of a group, by seed."""
        cells = self.groups.loc[self.groups["group"] == group, "cells"]
        if cells.empty:
            raise KeyError(f"cells file {str(self.cells_path)!r}: no group {group!r}")
        return list(cells.iloc[0])

    def group_counts(self, group: str) -> dict[str, SeedCounts]:
        """Per benchmark, the replicates' per-problem counts stacked ``[seeds, problems]``; ValueError
        naming both graded files when two replicates did not evaluate the same problems."""
        cells = self.replicates(group)
        out = {}
        for bench in self.benchmarks["benchmark"]:
            per_cell = [self.counts(cell)[bench] for cell in cells]
            first = per_cell[0]
            for cell, cnt in zip(cells[1:], per_cell[1:]):
                if not np.array_equal(cnt.problem_ids, first.problem_ids):
                    only = sorted(str(p) for p in set(cnt.problem_ids) ^ set(first.problem_ids))[:3]
                    raise ValueError(
                        f"graded files {str(self.cells.loc[cells[0], 'graded'])!r} and "
                        f"{str(self.cells.loc[cell, 'graded'])!r} (cells file {str(self.cells_path)!r}, group "
                        f"{group!r}) hold different problems on benchmark {bench!r} (e.g. {only}): the "
                        "replicates of a group must evaluate the same problems")
            out[bench] = SeedCounts(tuple(cells), first.problem_ids, np.stack([c.n for c in per_cell]),
                                    np.stack([c.c for c in per_cell]))
        return out

    def counts(self, cell: str) -> dict[str, Counts]:
        """Per-problem counts of a cell's final checkpoint, read once: every table and figure needs them."""
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
        """The rows of ``members`` (a slice of :attr:`memberships` or :attr:`groups`) whose estimator is one of
        ``estimators``."""
        return members[members["estimator"].isin(estimators)]

    def benchmark_name(self, bench: str) -> str:
        """The paper's name of a benchmark where it has one (tables and figures compare with the paper)."""
        name = self.benchmarks.set_index("benchmark").loc[bench, "published_name"]
        return name or bench

    def ks_for(self, bench: str, n: int) -> list[int]:
        """The ks of pass@k on ``bench`` that ``n`` samples per problem allow: the unbiased estimator
        needs k <= n."""
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


def _parse_seed(value: str, where: str) -> int | None:
    if value == "":
        return None
    if not value.isdigit():
        raise ValueError(f"{where}: column 'seed' must be a non-negative integer or empty, got {value!r}")
    return int(value)


def _check_groups(cells: pd.DataFrame, cells_path: Path) -> None:
    """The replicates of a group agree on the configuration and hold distinct seeds."""
    for group, g in cells.groupby("group", sort=False):
        if len(g) == 1:
            continue
        first = g.iloc[0]
        for col in GROUP_COLUMNS:
            other = g[g[col] != first[col]]
            if len(other):
                raise ValueError(f"cells file {str(cells_path)!r}: cells {first['cell']!r} and "
                                 f"{other['cell'].iloc[0]!r} share group {group!r} but differ in column "
                                 f"{col!r} ({first[col]!r} vs {other[col].iloc[0]!r})")
        seeds = [None if s == "" else int(s) for s in g["seed"]]  # validated by _parse_seed
        dup = [s for s in seeds if seeds.count(s) > 1]
        if dup:
            shown = "empty" if dup[0] is None else repr(dup[0])
            raise ValueError(f"cells file {str(cells_path)!r}: column 'seed' repeats {shown} in group {group!r}: "
                             "the replicates of a group need distinct seeds")


def _parse_ks(value: str, where: str) -> list[int]:
    parts = [p.strip() for p in value.split(";") if p.strip()]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"{where}: column 'ks' must be ';'-separated positive integers, got {value!r}")
    return sorted({int(p) for p in parts})


def load_index(cells_path: str | Path, benchmarks_path: str | Path) -> CellIndex:
    """Read and validate ``cells.csv`` and ``benchmarks.csv``; ValueError names file, column and row, so
    a hand-edited or stale index fails before any result file is opened."""
    cells_path, benchmarks_path = Path(cells_path), Path(benchmarks_path)
    cells = _read_cells(cells_path)
    benchmarks = _read_benchmarks(benchmarks_path)
    return CellIndex(cells, _memberships(cells), benchmarks, cells_path, benchmarks_path)


def _read_cells(cells_path: Path) -> pd.DataFrame:
    """``cells.csv`` indexed by cell id: ``beta`` parsed, ``seed`` nullable Int64, paths resolved and
    checked to exist (None where empty)."""
    base_dir = cells_path.parent
    cells = _text_table(cells_path, "cells", [c for c in CELL_COLUMNS if c not in OPTIONAL_CELL_COLUMNS])
    cells = cells.assign(**{c: "" for c in OPTIONAL_CELL_COLUMNS if c not in cells.columns})
    dup = cells["cell"][cells["cell"].duplicated()]
    if len(dup):
        raise ValueError(f"cells file {str(cells_path)!r}: column 'cell' repeats {dup.iloc[0]!r}")
    for col in ("cell", "group", "model", "model_name", "method", "label", "passk", "graded"):
        empty = cells.index[cells[col] == ""]
        if len(empty):
            raise ValueError(f"cells file {str(cells_path)!r}: column {col!r} is empty in row {int(empty[0]) + 2}")
    betas, seeds, resolved = [], [], {c: [] for c in ("passk", "graded", "metrics")}
    for _, row in cells.iterrows():
        where = f"cells file {str(cells_path)!r}, cell {row['cell']!r}"
        betas.append(_parse_beta(row["beta"], where))
        seeds.append(_parse_seed(row["seed"], where))
        for col in resolved:
            resolved[col].append(_existing(row[col], base_dir, f"{where}: column {col!r}"))
        parse_step_evals(row["step_evals"], base_dir, where=where)  # validate the syntax early
    _check_groups(cells, cells_path)
    return cells.assign(beta=betas, seed=pd.array(seeds, dtype="Int64"), **resolved).set_index("cell", drop=False)


def _existing(path: str, base_dir: Path, where: str) -> Path | None:
    """The resolved path of a file column (None where empty); a missing file is named here rather than
    by the table that would read it."""
    if path == "":
        return None
    resolved = _resolve(path, base_dir)
    if not resolved.is_file():
        raise ValueError(f"{where} names {path!r}, which does not exist")
    return resolved


def _read_benchmarks(benchmarks_path: Path) -> pd.DataFrame:
    """``benchmarks.csv`` with ``ks`` parsed to sorted lists of ints."""
    benchmarks = _text_table(benchmarks_path, "benchmarks", BENCHMARK_COLUMNS)
    dup = benchmarks["benchmark"][benchmarks["benchmark"].duplicated()]
    if len(dup):
        raise ValueError(f"benchmarks file {str(benchmarks_path)!r}: column 'benchmark' repeats {dup.iloc[0]!r}")
    if (benchmarks["benchmark"] == "").any():
        raise ValueError(f"benchmarks file {str(benchmarks_path)!r}: column 'benchmark' has an empty entry")
    benchmarks = benchmarks.assign(
        ks=[_parse_ks(v, f"benchmarks file {str(benchmarks_path)!r}, benchmark {b!r}")
            for b, v in zip(benchmarks["benchmark"], benchmarks["ks"])])
    return benchmarks.reset_index(drop=True)


def _row_rank(estimator: str, beta: float) -> tuple:
    """Sort key of a configuration within a setting: by estimator (:func:`estimator_rank`), then beta."""
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
                             "train_set": ts, "cell": row["cell"], "group": row["group"], "seed": row["seed"],
                             "method": row["method"],
                             "estimator": row["estimator"], "beta": row["beta"], "label": row["label"],
                             "published_method": row["published_method"],
                             "rank": _row_rank(row["estimator"], row["beta"])})
    df = pd.DataFrame(rows)
    df["seed"] = df["seed"].astype("Int64")
    setting_order = {s: i for i, s in enumerate(dict.fromkeys(df["setting"]))}
    group_order = {g: i for i, g in enumerate(dict.fromkeys(df["group"]))}
    df["setting_rank"] = df["setting"].map(setting_order)
    df["group_rank"] = df["group"].map(group_order)
    df["seed_rank"] = df["seed"].fillna(-1).astype(np.int64)  # a replicate without a seed first
    df = df.sort_values(["setting_rank", "rank", "label", "group_rank", "seed_rank"], key=None, kind="stable")
    return df.drop(columns=["setting_rank", "group_rank", "seed_rank"]).reset_index(drop=True)


def _groups(memberships: pd.DataFrame) -> pd.DataFrame:
    """(setting, group) rows of :attr:`CellIndex.groups`, in the order of ``memberships``."""
    rows = []
    for (_setting, _group), g in memberships.groupby(["setting", "group"], sort=False):
        first = g.iloc[0].drop(["cell", "seed"]).to_dict()
        seeds = tuple(None if pd.isna(s) else int(s) for s in g["seed"])
        rows.append({**first, "cells": tuple(g["cell"]), "seeds": seeds, "n_seeds": len(g)})
    columns = [c for c in memberships.columns if c not in ("cell", "seed")] + ["cells", "seeds", "n_seeds"]
    return pd.DataFrame(rows, columns=columns).reset_index(drop=True)
