"""The public grading calls: :func:`grade_report` and :func:`grade`.

Each distinct gold is parsed once per chunk of work (normally once) and each distinct
``(gold, normalised answer)`` pair is verified once; repeats reuse the verdict (``cache_hits``).
Workers also keep an LRU of parses shared by golds and answers (an answer spelled like its gold is
not parsed again) and the pool is kept between calls. (math-verify itself keeps an
``lru_cache(20)`` of parsed LaTeX, so a plain loop over problem-major samples already skips many
repeats: see perf/bench_grading.py.) The answers are extracted slice by slice
(:class:`_TaskTable`), so workers start verifying before the last completion is read.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

from .answer_format import DEFAULT_ANSWER_FORMAT, answer_allowed, item_answer_formats
from .extract import extract_answer_with_source, normalize_answer
from .pool import _grade_in_pool, _make_chunks, _Pool, _resolve_workers, _shared_pool
from .report import NO_ANSWER, NOT_INTEGER, TOO_LONG, GradeReport
from .worker import ItemHook, _grade_in_process

DEFAULT_MEMORY_LIMIT_BYTES = 2 * 1024**3
# An extracted answer longer than this is graded False without parsing (status "too_long"): the
# benchmarks' gold answers are short, while parsing megabytes of LaTeX only burns the time budget.
DEFAULT_MAX_ANSWER_CHARS = 2000
# grade_report extracts answers in slices of this many items (the first one smaller), handing
# each slice's new tasks to the workers before extracting the next.
_FIRST_SLICE = 1024
_SLICE = 8192


class _TaskTable:
    """The items of one :func:`grade_report` call and the distinct verification tasks among them.

    A task is a distinct ``(gold, normalised answer)`` pair; ``task_of_item[i]`` points item ``i``
    at its task (-1: nothing to verify). Items are extracted in order, up to ``extracted_upto``.
    """

    def __init__(self, golds: Sequence[str], completions: Sequence[str], max_answer_chars: int,
                 answer_formats: Sequence[str], bar=None):
        n_items = len(golds)
        self.golds = golds
        self.completions = completions
        self.answer_formats = answer_formats
        self.max_answer_chars = max_answer_chars
        self.bar = bar  # tqdm bar over distinct tasks, or None
        self.extracted: list[str | None] = [None] * n_items
        self.sources: list[str | None] = [None] * n_items
        self.status = [NO_ANSWER] * n_items
        self.task_of_item: list[int] = [-1] * n_items
        self.task_ids: dict[tuple[str, str], int] = {}
        self.golds_with_tasks: set[str] = set()
        self.extracted_upto = 0

    @property
    def n_items(self) -> int:
        return len(self.golds)

    def discover(self, upto: int) -> list[tuple[str, list[tuple[int, str]]]]:
        """Extract items ``extracted_upto..upto``; their new tasks grouped by gold."""
        per_gold: dict[str, list[tuple[int, str]]] = {}
        for item in range(self.extracted_upto, upto):
            answer, source = extract_answer_with_source(self.completions[item])
            self.extracted[item], self.sources[item] = answer, source
            if answer is None:
                continue
            if len(answer) > self.max_answer_chars:
                self.status[item] = TOO_LONG
                continue
            if not answer_allowed(answer, self.answer_formats[item]):
                self.status[item] = NOT_INTEGER
                continue
            key = (self.golds[item], normalize_answer(answer))
            if not key[1]:
                continue
            task = self.task_ids.get(key)
            if task is None:
                task = self.task_ids[key] = len(self.task_ids)
                per_gold.setdefault(key[0], []).append((task, key[1]))
            self.task_of_item[item] = task
        self.extracted_upto = upto
        self.golds_with_tasks.update(per_gold)
        if self.bar is not None and per_gold:
            self.bar.total = len(self.task_ids)
            self.bar.refresh()
        return list(per_gold.items())

    def chunk_batches(self, n_slots: int):
        """Chunks of the tasks of each slice of items (a small first slice gets the workers going,
        the parent extracts the next slices while they verify); never an empty batch."""
        size = _FIRST_SLICE
        while self.extracted_upto < self.n_items:
            groups = self.discover(min(self.n_items, self.extracted_upto + size))
            size = _SLICE
            if groups:
                # chunk size from the whole job's expected number of steps, extrapolated
                steps = len(self.task_ids) + len(self.golds_with_tasks)
                yield _make_chunks(groups, n_slots, steps * self.n_items / self.extracted_upto)

    def tasks_by_gold(self) -> list[tuple[str, list[tuple[int, str]]]]:
        """Every task found so far, grouped by gold (in order of first appearance)."""
        per_gold: dict[str, list[tuple[int, str]]] = {}
        for (gold, answer), task in self.task_ids.items():
            per_gold.setdefault(gold, []).append((task, answer))
        return list(per_gold.items())

    def report(self, results, stats, started: float) -> GradeReport:
        """The :class:`GradeReport` once ``results[task] = (verdict, status, seconds)`` is full."""
        verdicts = [False] * self.n_items
        seconds = [0.0] * self.n_items
        status = self.status
        for i, task in enumerate(self.task_of_item):
            if task >= 0:
                verdicts[i], status[i], seconds[i] = results[task]
        n_with_task = sum(1 for task in self.task_of_item if task >= 0)
        return GradeReport(
            verdicts=verdicts,
            extracted=self.extracted,
            sources=self.sources,
            status=status,
            seconds=seconds,
            n_unique_golds=len(self.golds_with_tasks),
            n_unique_pairs=len(self.task_ids),
            cache_hits=n_with_task - len(self.task_ids),
            timeouts=stats.get("timeouts", 0),
            crashes=stats.get("crashes", 0),
            gold_failures=stats.get("gold_failures", 0),
            workers_replaced=stats.get("replaced", 0),
            wall_seconds=time.monotonic() - started,
        )


def _progress_bar(progress: bool):
    if not progress:
        return None
    import sys

    from tqdm import tqdm

    return tqdm(total=0, desc="grading", unit="answer", file=sys.stderr, dynamic_ncols=True)


def _grade_with_workers(table: _TaskTable, n_workers: int, *, timeout: float, start_method: str,
                        memory_limit_bytes: int | None, keep_workers: bool,
                        item_hook: ItemHook | None, results, on_done) -> dict[str, int]:
    """Verify ``table``'s tasks on a pool (kept or temporary), extracting slice by slice."""
    batches = table.chunk_batches(n_workers)
    first = next(batches, None)  # no pool at all when nothing needs verifying
    if first is None:
        return {}
    batches = itertools.chain([first], batches)
    pool = (_shared_pool(n_workers, start_method, memory_limit_bytes, item_hook)
            if keep_workers else None)
    if pool is not None:
        try:
            return _grade_in_pool(pool, batches, timeout, results, on_done)
        finally:
            pool.lock.release()
    size = (n_workers if table.extracted_upto < table.n_items
            else min(n_workers, len(table.task_ids)))
    pool = _Pool(size, start_method=start_method, memory_limit_bytes=memory_limit_bytes,
                 item_hook=item_hook)
    try:
        return _grade_in_pool(pool, batches, timeout, results, on_done)
    finally:
        pool.close()


def grade_report(
    golds: Sequence[str],
    completions: Sequence[str],
    *,
    workers: int | None = None,
    timeout: float = 5.0,
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
    progress: bool = False,
    start_method: str = "forkserver",
    keep_workers: bool = True,
    item_hook: ItemHook | None = None,
    answer_formats: str | Sequence[str] = DEFAULT_ANSWER_FORMAT,
) -> GradeReport:
    """Grade ``completions[i]`` against ``golds[i]`` and report verdicts with statistics.

    ``workers``: processes (default this rank's share of the job's CPUs,
    ``rsgrpo.resources.allocated_cpus``; 0 grades in-process with a SIGALRM timer, which cannot
    interrupt C code: use workers on untrusted output).
    ``timeout``: hard wall-clock seconds per verification (the gold's parse, or one answer's
    parse + verify), enforced by the parent with SIGKILL.
    ``memory_limit_bytes``: address space a worker may add to what it starts with (``RLIMIT_AS``;
    None = uncapped); beyond it allocations fail, the item is a ``crash``, the worker replaced.
    ``max_answer_chars``: longer extracted answers are graded False unparsed (``too_long``).
    ``progress``: tqdm bar on stderr over distinct verifications.
    ``start_method``: ``forkserver`` (default; safe with CUDA/threads in the caller, whose main
    script must then have an ``if __name__ == "__main__":`` guard) or ``fork``.
    ``keep_workers``: reuse one pool per configuration across calls (warm workers; see
    :func:`shutdown_workers`); False starts and stops a pool for this call only.
    ``item_hook``: test seam, a picklable function called as ``hook(gold, normalised_answer)`` in
    the worker before each verification (lets tests simulate a hang or a crash); None in production.
    ``answer_formats``: one answer format for all items or one per item
    (:mod:`rsgrpo.grading.answer_format`): under ``integer`` an answer that is not a literal integer
    is wrong unverified (status ``not_integer``), and a gold that is not one is a ValueError.
    """
    if len(golds) != len(completions):
        raise ValueError(f"golds and completions differ in length: {len(golds)} vs {len(completions)}")
    if not timeout or timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    n_workers = _resolve_workers(workers)
    started = time.monotonic()
    for i, gold in enumerate(golds):
        if not isinstance(gold, str) or not gold.strip():
            raise ValueError(f"gold answer of item {i} is empty or not a string: {gold!r}")
    formats = item_answer_formats(answer_formats, golds)
    results: dict[int, tuple[bool, str, float]] = {}
    bar = _progress_bar(progress)
    table = _TaskTable(golds, completions, max_answer_chars, formats, bar)
    on_done = bar.update if bar is not None else (lambda n=1: None)
    try:
        if n_workers == 0:
            table.discover(table.n_items)
            stats = _grade_in_process(table.tasks_by_gold(), float(timeout), item_hook, results,
                                      on_done)
        else:
            stats = _grade_with_workers(
                table, n_workers, timeout=float(timeout), start_method=start_method,
                memory_limit_bytes=memory_limit_bytes, keep_workers=keep_workers,
                item_hook=item_hook, results=results, on_done=on_done)
    finally:
        if bar is not None:
            bar.close()
    return table.report(results, stats, started)


def grade(
    golds: Sequence[str],
    completions: Sequence[str],
    *,
    workers: int | None = None,
    timeout: float = 5.0,
    answer_formats: str | Sequence[str] = DEFAULT_ANSWER_FORMAT,
) -> list[bool]:
    """One verdict per ``(gold, completion)`` pair, in input order (see :func:`grade_report`)."""
    return grade_report(golds, completions, workers=workers, timeout=timeout,
                        answer_formats=answer_formats).verdicts
