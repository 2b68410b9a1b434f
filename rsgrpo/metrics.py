"""Where a training run's per-step metrics go: ``metrics.csv`` (always) and TensorBoard (optional).

One row per step with :data:`METRIC_COLUMNS`. The CSV is rewritten from the checkpoint's rows when a
run resumes (dropping rows a killed process wrote after its last checkpoint, which the resumed run
recomputes identically) and appended to, one flushed line per step, afterwards.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Sequence

from .io import atomic_path

__all__ = ["METRIC_COLUMNS", "TIMING_COLUMNS", "MetricsLog"]

log = logging.getLogger("rsgrpo.metrics")

METRIC_COLUMNS = [
    "step", "beta", "reward_mean", "solved_frac", "cumulative_solve_rate", "groups_kept", "entropy",
    "response_len_mean", "clip_frac", "kl", "grad_norm", "loss", "lr", "time_generate", "time_grade",
    "time_update", "tokens_per_s",
]
# Wall-clock columns: the only ones that differ between a resumed and an uninterrupted run.
TIMING_COLUMNS = ["time_generate", "time_grade", "time_update", "tokens_per_s"]


def _format(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class MetricsLog:
    """``metrics.csv`` of a run directory, plus TensorBoard scalars under ``tensorboard/`` when asked
    for and ``torch.utils.tensorboard`` works."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = False,
                 columns: Sequence[str] = METRIC_COLUMNS):
        self.path = Path(run_dir) / "metrics.csv"
        self.columns = list(columns)
        self.writer = self._open_tensorboard(Path(run_dir) / "tensorboard") if tensorboard else None

    @staticmethod
    def _open_tensorboard(folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(str(folder))
        except Exception as exc:  # tensorboard is an optional extra
            log.warning("tensorboard logging disabled: %s", exc)
            return None

    def rewrite(self, rows: Sequence[dict]) -> None:
        """Replace the CSV with ``rows`` (atomically)."""
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(self.columns)
            for row in rows:
                out.writerow([_format(row[c]) for c in self.columns])

    def append(self, row: dict) -> None:
        """Add one step's row to the CSV (flushed) and to TensorBoard."""
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([_format(row[c]) for c in self.columns])
            fh.flush()
        if self.writer is not None:
            for column in self.columns[1:]:
                value = row[column]
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"train/{column}", value, row["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
