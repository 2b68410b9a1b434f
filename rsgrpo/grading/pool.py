"""The parent side of the killable worker pool: processes, chunks, deadlines, shared pools.

Verification runs in worker *processes* (:mod:`rsgrpo.grading.worker`), started with
``forkserver`` by default: fork-safe even when the caller has initialised CUDA or threads, and
workers start with a small address space so a memory cap means something. The parent enforces a
hard wall-clock limit per item and SIGKILLs a worker that exceeds it; each worker caps its address
space with ``RLIMIT_AS``. A timed-out or crashed item is graded False, counted, its worker
replaced, and the batch goes on. Workers get chunks of several golds' items
(:func:`_make_chunks`) and send verdicts back in batches; the step each one is running (and since
when) sits in a shared integer, so the parent (:class:`_PoolRun`) times and, if needed, kills
exactly that step without a message per item.

Pools are kept between calls (:func:`_shared_pool`, :func:`shutdown_workers`): workers stay warm
(imported modules, parsed golds and answers, the LaTeX parser's prediction cache).
"""

from __future__ import annotations

import atexit
import ctypes
import math
import multiprocessing
import os
import threading
import time
from multiprocessing.connection import wait as _wait_ready

from rsgrpo.resources import allocated_cpus

from .report import CRASH, GOLD_FAILED, OK, TIMEOUT
from .worker import ItemHook, _pack_progress, _unpack_progress, _worker_main

# Seconds a new worker may take to import math-verify and answer the handshake.
_STARTUP_TIMEOUT_S = 120.0
# Modules the forkserver imports once, so that every worker forks with them loaded: the module of
# the worker's target function, the parsing module it calls, and math-verify itself.
_FORKSERVER_PRELOAD = ["rsgrpo.grading.worker", "rsgrpo.grading.fastparse", "math_verify"]


class _Chunk:
    """A chunk handed to one worker: gold groups, and its steps in the worker's order."""

    __slots__ = ("chunk_id", "groups", "steps", "reported")

    def __init__(self, chunk_id: int, groups):
        self.chunk_id = chunk_id
        self.groups = groups  # [(gold, [(task_id, answer), ...]), ...]
        # step -> (group index, item index or -1 for the gold's parse)
        self.steps: list[tuple[int, int]] = []
        for group_index, (_, items) in enumerate(groups):
            self.steps.append((group_index, -1))
            self.steps.extend((group_index, item_index) for item_index in range(len(items)))
        self.reported: set[int] = set()  # task ids whose verdict arrived


class _Worker:
    __slots__ = ("process", "conn", "progress", "ready", "started", "chunk")

    def __init__(self, process, conn, progress):
        self.process = process
        self.conn = conn
        self.progress = progress  # shared int64, see _pack_progress
        self.ready = False  # True once the worker's handshake arrived
        self.started = time.monotonic()
        self.chunk: _Chunk | None = None

    def running_step(self, now: float) -> tuple[int, float]:
        """``(step, start)`` of the step the worker is on (or last was on) in its chunk."""
        return _unpack_progress(self.progress.value, now)


def _startup_failure(worker: _Worker, why: str) -> RuntimeError:
    return RuntimeError(
        f"a grading worker process failed to start ({why}, exit code {worker.process.exitcode}); "
        "with start_method='forkserver' the caller's main script is re-imported by workers, so "
        "it must guard its entry point with `if __name__ == '__main__':` (or use start_method='fork')"
    )


class _Pool:
    """Worker processes driven by one parent loop that owns every deadline.

    Workers start asynchronously: a replacement for a killed worker answers its handshake while
    the parent keeps timing the others, so a slow start never delays another item's kill.
    """

    def __init__(self, n_workers: int, *, start_method: str, memory_limit_bytes: int | None,
                 item_hook: ItemHook | None):
        if start_method == "forkserver":
            ctx = multiprocessing.get_context("forkserver")
            # Workers fork from a server that has math-verify (and sympy) imported once; has no
            # effect when the caller already started the forkserver (workers then import it).
            ctx.set_forkserver_preload(_FORKSERVER_PRELOAD)
        elif start_method == "fork":
            ctx = multiprocessing.get_context("fork")
        else:
            raise ValueError(f"start_method must be 'forkserver' or 'fork', got {start_method!r}")
        self.ctx = ctx
        self.memory_limit_bytes = memory_limit_bytes
        self.item_hook = item_hook
        self.owner_pid = os.getpid()
        self.lock = threading.Lock()
        self.workers: list[_Worker] = [self._spawn() for _ in range(n_workers)]
        try:
            for worker in self.workers:  # they start in parallel; wait for every handshake
                self.await_ready(worker, _STARTUP_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def _spawn(self) -> _Worker:
        """Start a worker without waiting for it (see :meth:`read_ready`)."""
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        progress = self.ctx.RawValue(ctypes.c_int64, 0)
        process = self.ctx.Process(
            target=_worker_main,
            args=(child_conn, progress, self.memory_limit_bytes, self.item_hook),
            daemon=True,
            name="rsgrpo-grader",
        )
        process.start()
        child_conn.close()
        return _Worker(process, parent_conn, progress)

    def await_ready(self, worker: _Worker, seconds: float) -> None:
        if not worker.ready and worker.conn.poll(max(0.0, seconds)):
            self.read_ready(worker)
        if not worker.ready:
            raise _startup_failure(worker, f"no handshake within {seconds:.0f} s")

    def read_ready(self, worker: _Worker) -> None:
        """Consume the handshake of a starting worker; RuntimeError if it died instead."""
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            message = None
        if not message or message[0] != "ready":
            worker.process.join(timeout=5)
            raise _startup_failure(worker, "it exited before its handshake")
        worker.ready = True

    def replace(self, worker: _Worker) -> None:
        """SIGKILL ``worker`` (if alive) and put a fresh one in its slot."""
        try:
            worker.process.kill()
        except Exception:
            pass
        worker.process.join(timeout=5)
        worker.conn.close()
        self.workers[self.workers.index(worker)] = self._spawn()

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except Exception:
                pass
        deadline = time.monotonic() + 2
        for worker in self.workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()


def _make_chunks(gold_tasks, n_workers: int,
                 total_steps: float | None = None) -> list[list[tuple[str, list]]]:
    """Pack per-gold task lists into chunks (lists of gold groups) of about ``cap`` steps.

    A gold's items stay together (so a worker parses it once) unless the group is larger than
    ``cap``; ``cap`` gives every worker about 16 chunks of the whole job (``total_steps``, an
    estimate when the tasks arrive in slices; default: these tasks), small enough to balance the
    tail and large enough that the per-chunk round trip does not matter.
    """
    if total_steps is None:
        total_steps = sum(len(items) + 1 for _, items in gold_tasks)
    cap = max(8, math.ceil(total_steps / max(1, 16 * n_workers)))
    chunks: list[list[tuple[str, list]]] = []
    groups: list[tuple[str, list]] = []
    size = 0
    for gold, items in gold_tasks:
        for start in range(0, len(items), cap):
            part = items[start : start + cap]
            groups.append((gold, part))
            size += len(part) + 1
            if size >= cap:
                chunks.append(groups)
                groups, size = [], 0
    if groups:
        chunks.append(groups)
    return chunks


# --------------------------------------------------------------------------------------------
# The dispatch loop
# --------------------------------------------------------------------------------------------


class _PoolRun:
    """One :func:`_grade_in_pool` call: the chunks still to run and what came back.

    One loop (:meth:`run`) owns all deadlines: it hands chunks to idle workers and sleeps in
    ``wait()`` until a batch of verdicts, a death or the earliest deadline. The deadline of a busy
    worker is the start of the step it is running (read from its shared progress value) plus
    ``timeout``; a worker past it is SIGKILLed. The step it was running (a gold parse or one item)
    is graded False; the chunk's other unfinished items, including finished ones whose verdicts
    were still in the dead worker's batch, are requeued.
    """

    def __init__(self, pool: _Pool, chunk_batches, timeout: float, results, on_done):
        self.pool = pool
        self.timeout = timeout
        self.results = results  # task_id -> (verdict, status, seconds)
        self.on_done = on_done  # called once per finished task (the progress bar)
        self.queue: list[list[tuple[str, list]]] = []  # pop() from the end = next chunk
        self.source = iter(chunk_batches)
        self.source_done = False
        self.stats = {"timeouts": 0, "crashes": 0, "gold_failures": 0, "replaced": 0}
        self.failed_golds: set[str] = set()  # golds whose own parse timed out or crashed
        self.chunk_ids = iter(range(1 << 62))

    def run(self) -> dict[str, int]:
        """Grade every task; return the counts (timeouts, crashes, gold failures, replaced)."""
        try:
            while True:
                self.refill()
                if not self.queue and not any(w.chunk is not None for w in self.pool.workers):
                    break
                self.dispatch_all()
                self.refill()  # extract the next slice now, while the workers verify
                watched = [worker for worker in self.pool.workers
                           if worker.chunk is not None or not worker.ready]
                if watched:
                    self.wait_and_drain(watched)
                    self.enforce_deadlines()
        except BaseException:
            # interrupted mid-batch (e.g. KeyboardInterrupt): workers may hold stale work, drop them
            self.pool.close()
            raise
        return self.stats

    def refill(self) -> None:
        """Take batches from the source until two chunks per worker wait (or none is left)."""
        while not self.source_done and len(self.queue) < 2 * len(self.pool.workers):
            batch = next(self.source, None)
            if batch is None:
                self.source_done = True
            else:
                self.queue[:0] = reversed(batch)  # behind requeued remainders and earlier chunks

    def finish(self, task_id: int, verdict: bool, status: str, seconds: float) -> None:
        self.results[task_id] = (verdict, status, seconds)
        self.on_done()

    def replace(self, worker: _Worker) -> None:
        self.pool.replace(worker)
        self.stats["replaced"] += 1

    def dispatch_all(self) -> None:
        """Give work to every idle worker (replacing idle ones that died meanwhile)."""
        for worker in list(self.pool.workers):
            if (worker.ready and worker.chunk is None and self.queue
                    and not worker.process.is_alive()):
                self.replace(worker)  # died while idle (e.g. killed from outside)
                continue
            self.dispatch(worker)

    def dispatch(self, worker: _Worker) -> None:
        while worker.ready and worker.chunk is None and self.queue:
            groups = []
            for gold, items in self.queue.pop():
                if gold in self.failed_golds:  # do not burn another timeout on a bad gold
                    for task_id, _ in items:
                        self.finish(task_id, False, GOLD_FAILED, 0.0)
                else:
                    groups.append((gold, items))
            if not groups:
                continue
            chunk = _Chunk(next(self.chunk_ids), groups)
            worker.progress.value = _pack_progress(0, time.monotonic())
            try:
                worker.conn.send((chunk.chunk_id, groups))
            except OSError:  # died since it last answered: retry on a fresh worker
                self.queue.append(groups)
                self.replace(worker)
                return
            worker.chunk = chunk

    def wait_and_drain(self, watched: list[_Worker]) -> None:
        """Sleep until a watched worker sends, dies or reaches its deadline (a step's time limit
        or its start-up limit), then handle what arrived."""
        now = time.monotonic()
        deadlines = [worker.running_step(now)[1] + self.timeout if worker.ready
                     else worker.started + _STARTUP_TIMEOUT_S for worker in watched]
        worker_of = {}
        for worker in watched:
            worker_of[worker.conn] = worker
            worker_of[worker.process.sentinel] = worker
        ready = _wait_ready(list(worker_of), timeout=max(0.0, min(deadlines) - now))
        for worker in {id(worker_of[handle]): worker_of[handle] for handle in ready}.values():
            if worker in self.pool.workers:
                self.drain(worker)

    def enforce_deadlines(self) -> None:
        """Fail a worker's start-up past its limit; kill a worker whose step overran."""
        now = time.monotonic()
        for worker in list(self.pool.workers):
            if not worker.ready and now - worker.started > _STARTUP_TIMEOUT_S:
                raise _startup_failure(worker, f"no handshake within {_STARTUP_TIMEOUT_S:.0f} s")
            if self.overran(worker):
                self.drain(worker)  # a last batch may be sitting in the pipe: read it first
                if worker in self.pool.workers and self.overran(worker):
                    self.give_up_on_current(worker, TIMEOUT)

    def overran(self, worker: _Worker) -> bool:
        now = time.monotonic()
        return worker.chunk is not None and now - worker.running_step(now)[1] > self.timeout

    def drain(self, worker: _Worker) -> None:
        """Handle every message ``worker`` already sent (its handshake, batches of verdicts);
        if it died with work pending, its running step is a crash (a dead process sends nothing
        more, so nothing is lost); if it died while starting, the pool cannot work at all."""
        try:
            while worker in self.pool.workers and worker.conn.poll():
                if not worker.ready:
                    self.pool.read_ready(worker)
                elif worker.chunk is not None:
                    self.handle(worker, worker.conn.recv())
                else:
                    worker.conn.recv()  # nothing is expected from an idle worker: discard
        except (EOFError, OSError):
            pass
        if worker not in self.pool.workers or worker.process.is_alive():
            return
        if not worker.ready:
            raise _startup_failure(worker, "it exited before its handshake")
        if worker.chunk is not None:
            self.give_up_on_current(worker, CRASH)
        else:
            self.replace(worker)  # died while idle (e.g. killed from outside)

    def handle(self, worker: _Worker, message) -> None:
        """Record a batch of verdicts ``("results", chunk_id, [(task_id, verdict, s)], done)``."""
        chunk = worker.chunk
        if message[0] != "results" or chunk is None or message[1] != chunk.chunk_id:
            return
        for task_id, verdict, seconds in message[2]:
            chunk.reported.add(task_id)
            self.finish(task_id, verdict, OK, seconds)
        if message[3]:
            worker.chunk = None

    def give_up_on_current(self, worker: _Worker, status: str) -> None:
        """``worker`` died or overran: fail its running step, requeue the rest, replace it."""
        chunk = worker.chunk
        now = time.monotonic()
        step, started = worker.running_step(now)
        failed_group, failed_item = chunk.steps[min(step, len(chunk.steps) - 1)]
        rest = []
        for group_index, (gold, items) in enumerate(chunk.groups):
            if group_index == failed_group and failed_item < 0:  # the gold itself failed
                self.stats["gold_failures"] += 1
                self.failed_golds.add(gold)
                for task_id, _ in items:
                    self.finish(task_id, False, GOLD_FAILED, now - started)
                continue
            if group_index == failed_group and items[failed_item][0] not in chunk.reported:
                task_id = items[failed_item][0]
                self.stats["timeouts" if status == TIMEOUT else "crashes"] += 1
                self.finish(task_id, False, status, now - started)
                chunk.reported.add(task_id)
            remaining = [item for item in items if item[0] not in chunk.reported]
            if remaining:
                rest.append((gold, remaining))
        if rest:
            self.queue.append(rest)
        worker.chunk = None
        self.replace(worker)


def _grade_in_pool(pool: _Pool, chunk_batches, timeout, results, on_done):
    """Run every task on ``pool``; fill ``results[task_id] = (verdict, status, seconds)``.

    ``chunk_batches`` yields lists of chunks (see :func:`_make_chunks`); it is consumed lazily,
    whenever fewer than two chunks per worker are waiting, so the caller can extract answers
    slice by slice while the workers already verify the first ones. See :class:`_PoolRun`.
    """
    return _PoolRun(pool, chunk_batches, timeout, results, on_done).run()


# --------------------------------------------------------------------------------------------
# Pools kept between calls
# --------------------------------------------------------------------------------------------

# Pools kept between calls, keyed by their configuration: workers stay warm (imported modules,
# parsed golds and answers, the LaTeX parser's prediction cache), so a trainer calling
# the rewards every step pays the process start-up once.
_SHARED_POOLS: dict[tuple, _Pool] = {}
_SHARED_POOLS_LOCK = threading.Lock()


def _shared_pool(n_workers, start_method, memory_limit_bytes, item_hook) -> _Pool | None:
    """The kept pool for this configuration, created on first use; None when another thread is
    using it (the caller then makes a temporary pool)."""
    key = (n_workers, start_method, memory_limit_bytes, item_hook)
    with _SHARED_POOLS_LOCK:
        pool = _SHARED_POOLS.get(key)
        if pool is not None and pool.owner_pid != os.getpid():
            pool = None  # inherited through fork: the pipes belong to the parent
        if pool is None:
            pool = _Pool(n_workers, start_method=start_method,
                         memory_limit_bytes=memory_limit_bytes, item_hook=item_hook)
            _SHARED_POOLS[key] = pool
    if not pool.lock.acquire(blocking=False):
        return None
    for worker in list(pool.workers):
        if not worker.process.is_alive():
            pool.replace(worker)
    return pool


def shutdown_workers() -> None:
    """Stop the grading worker processes kept between calls (also done at interpreter exit)."""
    with _SHARED_POOLS_LOCK:
        pools = [pool for pool in _SHARED_POOLS.values() if pool.owner_pid == os.getpid()]
        _SHARED_POOLS.clear()
    for pool in pools:
        with pool.lock:
            pool.close()


atexit.register(shutdown_workers)


def _resolve_workers(workers: int | None) -> int:
    """Worker processes for ``workers`` (None: this rank's share of the CPUs the job was given,
    :func:`rsgrpo.resources.allocated_cpus`, not the node's hardware threads)."""
    if workers is None:
        return allocated_cpus()
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = in-process), got {workers}")
    return int(workers)
