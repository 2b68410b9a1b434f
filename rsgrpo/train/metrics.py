"""Where a training run's per-step metrics go: ``metrics.csv`` (always), the sinks of the config key
``logging`` (:mod:`rsgrpo.sinks`: TensorBoard, W&B, MLflow), and a progress bar (or a log line per
step) on stderr.

One row per step with :data:`METRIC_COLUMNS`. The CSV is rewritten from the checkpoint's rows when a
run resumes (dropping rows a killed process wrote after its last checkpoint, which the resumed run
recomputes identically) and appended to, one flushed line per step, afterwards. Rows of checkpoints
written before a column existed leave it empty.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from rsgrpo.io import atomic_path
from rsgrpo.layout import METRICS

__all__ = ["METRIC_COLUMNS", "TIMING_COLUMNS", "MetricsLog"]

log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "step", "beta", "reward_mean", "solved_frac", "cumulative_solve_rate", "groups_kept", "gen_rounds",
    "prompts_drawn", "no_answer_frac", "truncated_frac", "adv_abs_correct", "adv_abs_wrong", "entropy",
    "response_len_mean", "response_len_p50", "response_len_p95", "clip_frac", "kl", "grad_norm", "loss", "lr",
    "time_generate", "time_grade", "time_update", "tokens_per_s",
]
# Wall-clock columns: the only ones that differ between a resumed and an uninterrupted run.
TIMING_COLUMNS = ["time_generate", "time_grade", "time_update", "tokens_per_s"]


def _format(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class MetricsLog:
    """``metrics.csv`` of a run directory, plus ``sinks`` (:mod:`rsgrpo.sinks`, opened by the caller),
    plus a tqdm bar over ``steps`` (``progress``; else one log line per step)."""

    def __init__(self, run_dir: str | Path, *, sinks: Sequence = (), progress: bool = False,
                 steps: int = 0, start_step: int = 0, columns: Sequence[str] = METRIC_COLUMNS):
        self.path = Path(run_dir) / METRICS
        self.columns = list(columns)
        self.sinks = list(sinks)
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=start_step, desc="train", unit="step", file=sys.stderr,
                            dynamic_ncols=True)

    def rewrite(self, rows: Sequence[dict]) -> None:
        """Replace the CSV with ``rows`` (atomically)."""
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(self.columns)
            for row in rows:
                out.writerow([_format(row.get(c, "")) for c in self.columns])

    def append(self, row: dict) -> None:
        """Add one step's row to the CSV (flushed), to the sinks and to the progress display."""
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([_format(row[c]) for c in self.columns])
            fh.flush()
        values = {c: row[c] for c in self.columns[1:]
                  if isinstance(row[c], (int, float)) and math.isfinite(row[c])}
        for sink in self.sinks:
            sink.scalars(row["step"], values)
        if self.bar is not None:
            self.bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kept=row["groups_kept"],
                                 ent=f"{row['entropy']:.3f}")
            self.bar.update(1)
        else:
            log.info("step %d reward %.4f kept %d", row["step"], row["reward_mean"], row["groups_kept"])

    def text(self, step: int, tag: str, markdown: str) -> None:
        """A text record (a rollout sample) for the sinks."""
        for sink in self.sinks:
            sink.text(step, tag, markdown)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for sink in self.sinks:
            sink.close()
        self.sinks = []
