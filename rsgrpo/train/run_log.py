"""The run directory's log: everything a train job prints, kept across attempts.

Why: Snakemake empties a rule's log before it retries a job, so the output of a failed attempt (a
killed rank's traceback, a preemption) would be gone when someone looks. The train verb therefore
copies what it, and every process it starts (the ranks under torch.distributed.run, the launchers
that srun starts on other nodes), writes to standard output and error into ``<run_dir>/train.log``,
after a header line per attempt, ``== <ISO date> train job on <host>``. The copying runs in threads of
the verb's own process: a SIGTERM that the verb turns into a checkpoint does not stop the log.
When the verb ends, what is still in the pipes is copied, and the copying stops without waiting for
processes or libraries that still hold a copy of the pipes (they would otherwise keep the verb's
process alive until a timeout).
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


def _copy(chunk: bytes, console: int, log_fd: int) -> None:
    for fd in (console, log_fd):
        with contextlib.suppress(OSError):  # a closed console must not stop the log, nor the reverse
            os.write(fd, chunk)


def _partial_end(data: bytes, end: bytes) -> int:
    """Length of the longest tail of ``data`` that is a beginning of ``end`` (0 for ordinary output,
    which is then copied at once)."""
    return next((n for n in range(min(len(end) - 1, len(data)), 0, -1) if data.endswith(end[:n])), 0)


def _pump(source: int, console: int, log_fd: int, end: bytes) -> None:
    """Copy ``source`` to the console and the log until ``end`` (or end of file) comes through it."""
    tail = b""
    while chunk := os.read(source, 65536):
        data = tail + chunk
        cut = data.find(end)
        if cut >= 0:
            _copy(data[:cut], console, log_fd)
            break
        keep = len(data) - _partial_end(data, end)  # the marker may straddle two reads
        _copy(data[:keep], console, log_fd)
        tail = data[keep:]
    else:
        _copy(tail, console, log_fd)
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
    saved, ends, pumps = {}, {}, []
    end = b"\0rsgrpo-run-log-end-" + os.urandom(16).hex().encode()
    for fd in (1, 2):
        read_end, write_end = os.pipe()
        saved[fd] = os.dup(fd)
        os.dup2(write_end, fd)
        ends[fd] = write_end
        pumps.append(threading.Thread(target=_pump, args=(read_end, saved[fd], log_fd, end), daemon=True))
        pumps[-1].start()
    try:
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in saved.items():
            os.dup2(original, fd)
        # A copy of fd 2 that a library keeps for the rest of the process (torch.distributed's gloo
        # init makes one) would keep the pipe open, so end of file never comes: the end marker, written
        # after everything this process wrote to the pipe, ends each pump instead.
        for write_end in ends.values():
            os.write(write_end, end)
            os.close(write_end)
        for pump in pumps:
            pump.join(timeout=10)
        for original in saved.values():
            os.close(original)
        os.close(log_fd)
