"""Where a training run's per-step metrics go: ``metrics.csv`` (always), TensorBoard (optional), and
a progress bar (or a log line per step) on stderr.

One row per step with :data:`METRIC_COLUMNS`. The CSV is rewritten from the checkpoint's rows when a
run resumes (dropping rows a killed process wrote after its last checkpoint, which the resumed run
recomputes identically) and appended to, one flushed line per step, afterwards.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from .io import atomic_path
from .layout import METRICS

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
    for and ``torch.utils.tensorboard`` works, plus a tqdm bar over ``steps`` (``progress``; else one
    log line per step)."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = False, progress: bool = False,
                 steps: int = 0, start_step: int = 0, columns: Sequence[str] = METRIC_COLUMNS):
        self.path = Path(run_dir) / METRICS
        self.columns = list(columns)
        self.writer = self._open_tensorboard(Path(run_dir) / "tensorboard") if tensorboard else None
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=start_step, desc="train", unit="step", file=sys.stderr,
                            dynamic_ncols=True)

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
        """Add one step's row to the CSV (flushed), to TensorBoard and to the progress display."""
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([_format(row[c]) for c in self.columns])
            fh.flush()
        if self.writer is not None:
            for column in self.columns[1:]:
                value = row[column]
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"train/{column}", value, row["step"])
            self.writer.flush()
        if self.bar is not None:
            self.bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kept=row["groups_kept"],
                                 ent=f"{row['entropy']:.3f}")
            self.bar.update(1)
        else:
            log.info("step %d reward %.4f kept %d", row["step"], row["reward_mean"], row["groups_kept"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
