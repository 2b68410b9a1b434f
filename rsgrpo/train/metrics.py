"""Where a training run's per-step metrics go: ``metrics.csv`` (always), the sinks of the config key
``logging`` (:mod:`rsgrpo.train.sinks`: TensorBoard, W&B, MLflow), and a progress bar (or a log line per
step) on stderr.

One row per step: a :class:`MetricsRow`, whose fields are the columns (:data:`METRIC_COLUMNS`), built
from the step's rollout by :func:`step_row`. The CSV is rewritten from the checkpoint's rows when a
run resumes (dropping rows a killed process wrote after its last checkpoint, which the resumed run
recomputes identically) and appended to, one flushed line per step, afterwards. Rows of checkpoints
written before a column existed leave it empty.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsgrpo.io import atomic_path
from rsgrpo.layout import METRICS
from rsgrpo.train.actor import UpdateStats
from rsgrpo.train.distributed import collectives
from rsgrpo.train.rollout import Rollout

__all__ = ["METRIC_COLUMNS", "TIMING_COLUMNS", "MetricsRow", "MetricsLog", "step_row"]

log = logging.getLogger(__name__)


def _timing():
    return field(metadata={"timing": True})


@dataclass(frozen=True)
class MetricsRow:
    """One step's metrics over every rank: the columns of metrics.csv and what the sinks receive."""

    step: int
    beta: float                  # nan for an estimator without beta
    reward_mean: float
    solved_frac: float           # share of the step's drawn prompts solved by some completion
    cumulative_solve_rate: float
    groups_kept: int
    gen_rounds: int
    prompts_drawn: int
    no_answer_frac: float        # nan when the reward extracts no answers
    truncated_frac: float
    adv_abs_correct: float
    adv_abs_wrong: float
    entropy: float
    response_len_mean: float
    response_len_p50: float
    response_len_p95: float
    clip_frac: float
    kl: float
    grad_norm: float
    loss: float
    lr: float
    # the rollout engine's token log-probs against the trainer's (rsgrpo.train.mismatch)
    mismatch_k3: float
    mismatch_abs_mean: float
    mismatch_abs_max: float
    correction_frac: float       # tis: share of tokens whose weight was capped; mis: of completions masked
    time_generate: float = _timing()
    time_grade: float = _timing()
    time_update: float = _timing()
    tokens_per_s: float = _timing()

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


METRIC_COLUMNS = [f.name for f in dataclasses.fields(MetricsRow)]
# Wall-clock columns: the only ones that differ between a resumed and an uninterrupted run.
TIMING_COLUMNS = [f.name for f in dataclasses.fields(MetricsRow) if f.metadata.get("timing")]


def step_row(rollout: Rollout, update: UpdateStats, *, solved_at: float, cumulative_solve_rate: float,
             prompts_drawn: int, prompts_per_step: int, skip_truncated: bool) -> MetricsRow:
    """The step's row over every generated completion of every rank and round (the trained-on ones
    for the advantage columns; ``skip_truncated`` as in the update); the slowest rank's times. A
    collective: every rank calls it."""
    flat = rollout.flat
    scores = rollout.scores.reshape(-1).tolist()
    adv = rollout.advantages.reshape(-1).tolist()
    trained = rollout.kept_rows(skip_truncated=skip_truncated)
    correct = [abs(adv[i]) for i in trained if scores[i] >= solved_at]
    wrong = [abs(adv[i]) for i in trained if scores[i] < solved_at]
    answers = [a for group in rollout.answers for a in group] if rollout.answers is not None else None
    (reward_sum, solved, entropy_sum, entropy_tokens, sequences, no_answer, truncated, correct_sum, correct_n,
     wrong_sum, wrong_n) = collectives.all_reduce(
        [sum(scores), float(rollout.solved.sum()), update.entropy_sum, update.entropy_tokens, len(flat),
         0 if answers is None else sum(a is None for a in answers), sum(not c.finished for c in flat),
         sum(correct), len(correct), sum(wrong), len(wrong)])
    lengths = [n for part in collectives.all_gather_json([len(c.token_ids) for c in flat]) for n in part]
    t_generate, t_grade, t_update = collectives.all_reduce(
        [rollout.timings["generate"], rollout.timings["grade"], rollout.timings["update"]], "max")
    nan = float("nan")
    return MetricsRow(
        step=rollout.step + 1, beta=nan if rollout.beta is None else float(rollout.beta),
        reward_mean=reward_sum / sequences, solved_frac=solved / (rollout.gen_rounds * prompts_per_step),
        cumulative_solve_rate=cumulative_solve_rate, groups_kept=len(rollout.selected),
        gen_rounds=rollout.gen_rounds, prompts_drawn=prompts_drawn,
        no_answer_frac=nan if answers is None else no_answer / sequences, truncated_frac=truncated / sequences,
        adv_abs_correct=correct_sum / correct_n if correct_n else nan,
        adv_abs_wrong=wrong_sum / wrong_n if wrong_n else nan,
        entropy=entropy_sum / entropy_tokens if entropy_tokens else nan,
        response_len_mean=sum(lengths) / sequences, response_len_p50=float(np.percentile(lengths, 50)),
        response_len_p95=float(np.percentile(lengths, 95)), clip_frac=update.clip_frac, kl=update.kl,
        grad_norm=update.grad_norm, loss=update.loss, lr=update.lr, mismatch_k3=update.mismatch_k3,
        mismatch_abs_mean=update.mismatch_abs_mean, mismatch_abs_max=update.mismatch_abs_max,
        correction_frac=update.correction_frac, time_generate=t_generate, time_grade=t_grade,
        time_update=t_update, tokens_per_s=sum(lengths) / max(t_generate, 1e-9))


def _format(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class MetricsLog:
    """``metrics.csv`` of a run directory, plus ``sinks`` (:mod:`rsgrpo.train.sinks`, opened by the caller),
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

    @classmethod
    def open(cls, cfg, run_dir: str | Path, *, start_step: int, rows: Sequence[dict]) -> MetricsLog:
        """The log of a run of config ``cfg`` (a TrainConfig) that starts at ``start_step``: its sinks
        opened, its CSV rewritten with the ``rows`` of the steps before (a resumed run's)."""
        from rsgrpo.train import sinks
        from rsgrpo.train.config import to_dict

        opened = sinks.open_sinks(cfg.logging, run_dir, run_name=sinks.run_name(run_dir), config=to_dict(cfg),
                                  start_step=start_step)
        metrics_log = cls(run_dir, sinks=opened, progress=cfg.progress, steps=cfg.steps, start_step=start_step)
        metrics_log.rewrite(rows)
        return metrics_log

    def rewrite(self, rows: Sequence[dict]) -> None:
        """Replace the CSV with ``rows`` (atomically)."""
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(self.columns)
            for row in rows:
                out.writerow([_format(row.get(c, "")) for c in self.columns])

    def append(self, row: MetricsRow) -> None:
        """Add one step's row to the CSV (flushed), to the sinks and to the progress display."""
        row = row.as_dict()
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
