"""Stop requests of ``python -m rsgrpo train``: a preempted or timed-out job loses no finished step.

SLURM warns a job before its time limit with a signal of the user's choice (``sbatch
--signal=URG@300``: SIGURG 300 s ahead, set in ``profiles/slurm``) and ends it with SIGTERM (SIGKILL
follows after the cluster's ``KillWait``). Each of :data:`STOP_SIGNALS` is a *stop request*: the
trainer finishes the step in progress, the ranks agree to stop at the same step (a request seen by
any rank stops all of them), rank 0 writes a complete checkpoint of that step, and the process exits
with :data:`EXIT_PREEMPTED`. The manifest is not written, so Snakemake counts the job as failed and
its retry (profile key ``retries``) runs it again, which resumes from that checkpoint.

Why SIGURG in the profile: SLURM sends the warning to every process of the job's steps, and under
Snakemake's SLURM executor one of them is the jobstep's own ``snakemake``, which SIGUSR1 (default
action: terminate) would end at once, and the job with it, before the ranks have checkpointed.
SIGURG's default action is to ignore it, so only the ranks, which install a handler, act on it.
SIGUSR1 stays a stop request for jobs that run the train verb under ``srun`` themselves.

Without a launcher the trainer is the signalled process. With several ranks
(:func:`rsgrpo.train.distributed.launch.relaunch`) SLURM signals the ranks directly; the launcher also forwards
the signals it receives to ``torch.distributed.run`` and its ranks, and starts every
``torch.distributed.run`` with SIGUSR1 ignored (:data:`rsgrpo.train.distributed.launch.IGNORING_USR1`; the ranks
install their own handler), so that signal never kills the launch before the ranks have
checkpointed. ``torch.distributed.run`` passes SIGTERM on to the ranks and kills them after its own
grace period: a step that cannot finish within it is lost, and training resumes from the last
checkpoint. Give the warning signal a lead time longer than one training step plus a checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence

__all__ = ["STOP_SIGNALS", "EXIT_PREEMPTED", "StopRequest", "Preempted"]

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGURG)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): stopped on request with a checkpoint; run it again


class Preempted(Exception):
    """Training stopped on a stop request after ``step`` steps, checkpoint written."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped by {signal_name} after step {step}: checkpoint written; "
                         "the same command resumes from it")
        self.step = step
        self.signal_name = signal_name


class StopRequest:
    """Records the first of ``signals`` received (from :meth:`install` to :meth:`restore`); a handler
    only sets a flag, the training loop decides when to stop (at the end of a step)."""

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        """Install the handlers (only the main thread may; elsewhere, e.g. a trainer run in a thread of
        a test or notebook, nothing is installed and no request is ever recorded)."""
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, _frame) -> None:
        if self.received is None:
            self.received = signum
            log.warning("received %s: finishing the current step, then writing a checkpoint and stopping",
                        signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a stop request on another rank"
