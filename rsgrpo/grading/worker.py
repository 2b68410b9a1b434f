"""The verifying side: the grading worker process, and the in-process loop for ``workers=0``.

A worker (:func:`_worker_main`, started by :mod:`rsgrpo.grading.pool`) caps its own address space
with ``RLIMIT_AS``, switches to fast parsing, warms its parser up and then serves chunks of gold
groups, sending verdicts back in batches. The step it is running (a gold's parse or one item), and
since when, sits in a shared integer (:func:`_pack_progress`), so the parent can time that step
and, if needed, kill exactly it without a message per item.

:func:`_grade_in_process` grades the same tasks in the caller's process, with an interval timer
(``SIGALRM``) in place of the parent's kill: it cannot interrupt C code such as huge integer
powers, so workers >= 1 are the setting for untrusted output.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable

from .fastparse import _LRU, _enable_fast_parsing, _parse, _quiet_math_verify, _verify, _warm_up
from .report import CRASH, GOLD_FAILED, OK, TIMEOUT

ItemHook = Callable[[str, str], None]

# Worker -> parent progress without a message per item: each worker owns one shared 64-bit
# integer and stores ``(step << 32) | (start in ms, low 32 bits)`` before every step of its chunk
# (a step is a gold parse or one item). One aligned 8-byte store, so the parent never reads a
# step with another step's start time. The parent reads it to time the running step, and, when it
# kills or loses a worker, to know exactly which step was running.
_STEP_SHIFT = 32
_MS_MASK = (1 << 32) - 1
# A worker sends the verdicts it has collected when this many seconds passed since its last
# message (and at the end of each chunk); they travel in batches, not one message per item.
_FLUSH_S = 0.05
# Parses a worker keeps (golds and answers share the cache).
_PARSE_CACHE_SIZE = 4096


def _address_space_bytes() -> int:
    """Virtual memory size of this process (what RLIMIT_AS limits), 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _pack_progress(step: int, now: float) -> int:
    return (step << _STEP_SHIFT) | (int(now * 1000.0) & _MS_MASK)


def _unpack_progress(value: int, now: float) -> tuple[int, float]:
    """``(step, start)`` from a progress value; ``start`` on the ``time.monotonic()`` clock
    (CLOCK_MONOTONIC, shared by all processes), to the millisecond."""
    now_ms = int(now * 1000.0)
    elapsed_ms = (now_ms - (value & _MS_MASK)) & _MS_MASK
    return value >> _STEP_SHIFT, (now_ms - elapsed_ms) / 1000.0


# --------------------------------------------------------------------------------------------
# Worker process
# --------------------------------------------------------------------------------------------


def _worker_main(conn, progress, memory_limit_bytes: int | None,
                 item_hook: ItemHook | None) -> None:
    """Serve chunks ``(chunk_id, [(gold, [(task_id, answer), ...]), ...])`` until ``None``.

    The steps of a chunk are, per gold group, the gold's parse and then its items. Before each
    step the worker stores its index and start time in ``progress`` (see ``_pack_progress``);
    verdicts go back in batches ``("results", chunk_id, [(task_id, verdict, seconds), ...],
    done)``, at least every ``_FLUSH_S`` seconds and at the end of the chunk. Out of memory, it
    sends what it has and exits: the parent reads the failed step from ``progress``.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    if memory_limit_bytes:
        _cap_address_space(memory_limit_bytes)
    _quiet_math_verify()
    _enable_fast_parsing()
    _warm_up()  # before the handshake, i.e. before any deadline runs
    conn.send(("ready", os.getpid()))
    # one cache for golds and answers: they go through the same parse, so an answer spelled
    # exactly like its gold (the usual correct answer) reuses the gold's parse
    parse_cache = _LRU(_PARSE_CACHE_SIZE)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        chunk_id, groups = message
        if not _serve_chunk(conn, progress, chunk_id, groups, parse_cache, item_hook):
            return


def _cap_address_space(memory_limit_bytes: int) -> None:
    """Limit this process's address space to what it has now plus ``memory_limit_bytes``."""
    import resource

    # the cap is headroom over the worker's start-up address space (small from the forkserver,
    # but a 'fork' from a process holding torch may start at several GB)
    limit = _address_space_bytes() + memory_limit_bytes
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _cached_parse(parse_cache: _LRU, latex: str):
    parsed = parse_cache.get(latex)
    if parsed is None:
        parsed = _parse(latex)
        parse_cache.put(latex, parsed)
    return parsed


def _serve_chunk(conn, progress, chunk_id: int, groups, parse_cache: _LRU,
                 item_hook: ItemHook | None) -> bool:
    """Run one chunk's steps, sending verdicts in batches; False when the worker must exit
    (out of memory: what is done has been sent, the parent replaces the worker)."""
    clock = time.monotonic
    out: list[tuple[int, bool, float]] = []
    last_sent = clock()
    step = 0
    try:
        for gold, items in groups:
            progress.value = _pack_progress(step, clock())
            parsed_gold = _cached_parse(parse_cache, gold)
            step += 1
            for task_id, answer in items:
                started = clock()
                progress.value = _pack_progress(step, started)
                verdict = _verify_item(gold, parsed_gold, answer, parse_cache, item_hook)
                now = clock()
                out.append((task_id, verdict, now - started))
                step += 1
                if now - last_sent >= _FLUSH_S:
                    conn.send(("results", chunk_id, out, False))
                    out, last_sent = [], now
    except MemoryError:
        # the heap may be in a bad state: report what is done, let the parent replace us
        # whatever the send raises, the worker returns (as the former `return` in `finally` did)
        with contextlib.suppress(BaseException):
            conn.send(("results", chunk_id, out, False))
        return False
    conn.send(("results", chunk_id, out, True))
    return True


def _verify_item(gold: str, parsed_gold, answer: str, parse_cache: _LRU,
                 item_hook: ItemHook | None) -> bool:
    try:
        if item_hook is not None:
            item_hook(gold, answer)
        return _verify(parsed_gold, _cached_parse(parse_cache, answer))
    except MemoryError:
        raise
    except Exception:  # math-verify swallows its own errors; a last resort
        return False


# --------------------------------------------------------------------------------------------
# In-process grading (workers=0)
# --------------------------------------------------------------------------------------------


class _ItemTimeout(BaseException):
    """Raised by the in-process interval timer; BaseException so math-verify cannot swallow it."""


def _raise_item_timeout(signum, frame):
    raise _ItemTimeout()


class _InProcessRun:
    """State of one in-process grading call: where verdicts go, the counts, the parse cache."""

    def __init__(self, timeout: float, item_hook: ItemHook | None, results, on_done):
        self.timeout = timeout
        self.item_hook = item_hook
        self.results = results  # task_id -> (verdict, status, seconds)
        self.on_done = on_done
        self.stats = {"timeouts": 0, "crashes": 0, "gold_failures": 0}
        self.parse_cache: dict[str, list] = {}  # as in the workers: golds and answers share parses

    def cached_parse(self, latex: str):
        parsed = self.parse_cache.get(latex)
        if parsed is None:
            parsed = self.parse_cache[latex] = _parse(latex)
        return parsed

    def grade_group(self, gold: str, items) -> None:
        """Parse ``gold`` (all its items fail if that times out), then grade its items."""
        start = time.monotonic()
        try:
            signal.setitimer(signal.ITIMER_REAL, self.timeout)
            parsed_gold = self.cached_parse(gold)
            signal.setitimer(signal.ITIMER_REAL, 0)
        except _ItemTimeout:
            self.stats["gold_failures"] += 1
            for task_id, _ in items:
                self.results[task_id] = (False, GOLD_FAILED, time.monotonic() - start)
                self.on_done()
            return
        for task_id, answer in items:
            self.grade_item(gold, parsed_gold, task_id, answer)

    def grade_item(self, gold: str, parsed_gold, task_id: int, answer: str) -> None:
        start = time.monotonic()
        try:
            signal.setitimer(signal.ITIMER_REAL, self.timeout)
            if self.item_hook is not None:
                self.item_hook(gold, answer)
            verdict, status = _verify(parsed_gold, self.cached_parse(answer)), OK
            signal.setitimer(signal.ITIMER_REAL, 0)
        except _ItemTimeout:
            verdict, status = False, TIMEOUT
            self.stats["timeouts"] += 1
        except MemoryError:
            signal.setitimer(signal.ITIMER_REAL, 0)
            verdict, status = False, CRASH
            self.stats["crashes"] += 1
        self.results[task_id] = (verdict, status, time.monotonic() - start)
        self.on_done()


def _grade_in_process(gold_tasks, timeout, item_hook, results, on_done):
    """workers=0: same semantics as the pool with an interval timer instead of a kill (cannot
    interrupt C code such as huge integer powers; use workers >= 1 on untrusted output)."""
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("grading with workers=0 needs the main thread (it uses SIGALRM timers)")
    _quiet_math_verify()
    previous = signal.signal(signal.SIGALRM, _raise_item_timeout)
    run = _InProcessRun(timeout, item_hook, results, on_done)
    try:
        for gold, items in gold_tasks:
            run.grade_group(gold, items)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return run.stats
