"""The run directory's log: everything a train job prints, kept across attempts.

Why: Snakemake empties a rule's log before it retries a job, so the output of a failed attempt (a
killed rank's traceback, a preemption) would be gone when someone looks. The train verb therefore
copies what it, and every process it starts (the ranks under torch.distributed.run, the launchers
that srun starts on other nodes), writes to standard output and error into ``<run_dir>/train.log``,
after a header line per attempt, ``== <ISO date> train job on <host>``. The copying runs in threads of
the verb's own process: a SIGTERM that the verb turns into a checkpoint does not stop the log.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from rsgrpo.layout import RUN_LOG

__all__ = ["attempt_header", "teed_into_run_log"]


def attempt_header(host: str | None = None, now: datetime.datetime | None = None) -> str:
    when = (now or datetime.datetime.now()).astimezone().isoformat(timespec="seconds")
    return f"== {when} train job on {host or socket.gethostname()}\n"


def _pump(source: int, console: int, log_fd: int) -> None:
    while chunk := os.read(source, 65536):
        for fd in (console, log_fd):
            with contextlib.suppress(OSError):  # a closed console must not stop the log, nor the reverse
                os.write(fd, chunk)
    os.close(source)


@contextlib.contextmanager
def teed_into_run_log(run_dir: str | os.PathLike) -> Iterator[Path]:
    """While open, file descriptors 1 and 2 of this process (and of every child it starts) also go to
    ``<run_dir>/train.log``, appended after an attempt header."""
    path = Path(run_dir) / RUN_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(log_fd, attempt_header().encode())
    sys.stdout.flush()
    sys.stderr.flush()
    saved, pumps = {}, []
    for fd in (1, 2):
        read_end, write_end = os.pipe()
        saved[fd] = os.dup(fd)
        os.dup2(write_end, fd)
        os.close(write_end)
        pumps.append(threading.Thread(target=_pump, args=(read_end, saved[fd], log_fd), daemon=True))
        pumps[-1].start()
    try:
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in saved.items():  # the pipes' last writers close: the pumps drain and end
            os.dup2(original, fd)
        for pump in pumps:
            pump.join(timeout=10)
        for original in saved.values():
            os.close(original)
        os.close(log_fd)
