"""Readers of a cell's own files, the ones :mod:`rsgrpo.analysis.cell_index` points to: the graded
samples ``graded.parquet`` (read as per-problem :class:`Counts`; a group's replicates stacked as
:class:`SeedCounts`), ``passk.csv`` (:func:`read_passk`) and the training ``metrics.csv``
(:func:`read_metrics`).

Each reader checks the columns the analysis needs, so a file from another run or an older version
fails with a message naming the file and the missing columns instead of a KeyError deep in a table.
The column lists are those of the stages that write the files: ``passk.csv`` as
:mod:`rsgrpo.evaluate.score` writes it, and of ``metrics.csv`` the subset :data:`METRICS_READ` of
:data:`rsgrpo.train.metrics.METRIC_COLUMNS` that the figures draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rsgrpo.evaluate.passk import pass_at_k
from rsgrpo.evaluate.score import PASSK_COLUMNS

__all__ = ["GRADED_COLUMNS", "PASSK_COLUMNS", "METRICS_READ", "read_table", "Counts", "SeedCounts",
           "load_counts", "read_passk", "read_metrics"]

GRADED_COLUMNS = ["benchmark", "problem_id", "sample_idx", "correct"]
# the metrics.csv columns the analysis reads: a subset of what training writes, so a run trained before
# a column was added to rsgrpo.train.metrics.METRIC_COLUMNS can still be analysed
METRICS_READ = ["step", "beta", "reward_mean", "solved_frac", "cumulative_solve_rate", "entropy",
                "response_len_mean"]


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


@dataclass(frozen=True)
class Counts:
    """Per-problem sample and correct counts of one cell on one benchmark, sorted by problem id: all
    the analysis needs of a graded file to recompute pass@k at any k."""

    problem_ids: np.ndarray
    n: np.ndarray
    c: np.ndarray

    def per_problem(self, k: int) -> np.ndarray:
        """Unbiased pass@k of each problem."""
        return pass_at_k(self.n, self.c, k)


@dataclass(frozen=True)
class SeedCounts:
    """Per-problem counts of a group's replicates on one benchmark: ``n`` and ``c`` are ``[seeds,
    problems]`` (rows in the order of ``cells``, i.e. by seed), the problems the same for every seed,
    so that the bootstrap can resample problems and seeds together."""

    cells: tuple[str, ...]
    problem_ids: np.ndarray
    n: np.ndarray
    c: np.ndarray

    def per_problem(self, k: int) -> np.ndarray:
        """Unbiased pass@k of each (seed, problem): ``[seeds, problems]``."""
        return pass_at_k(self.n, self.c, k)

    def pooled(self) -> Counts:
        """One :class:`Counts` with ``n`` and ``c`` summed over the seeds (all samples of all replicates)."""
        return Counts(self.problem_ids, self.n.sum(axis=0), self.c.sum(axis=0))

    def subset(self, problem_ids: np.ndarray) -> SeedCounts:
        """The same counts restricted to ``problem_ids`` (a sorted subset of :attr:`problem_ids`)."""
        idx = np.searchsorted(self.problem_ids, problem_ids)
        return SeedCounts(self.cells, np.asarray(problem_ids), self.n[:, idx], self.c[:, idx])


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
    """``passk.csv`` with ``benchmark`` as text and ``k`` as int, so rows can be selected by both."""
    df = read_table(path, "passk", PASSK_COLUMNS)
    return df.assign(benchmark=df["benchmark"].astype(str), k=df["k"].astype(int))


def read_metrics(path: str | Path) -> pd.DataFrame:
    """``metrics.csv`` sorted by step, so a curve is drawn left to right whatever the row order."""
    df = read_table(path, "metrics", METRICS_READ)
    return df.sort_values("step", kind="stable").reset_index(drop=True)
