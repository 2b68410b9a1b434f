"""The result of a grading call: :class:`GradeReport` and the item statuses it holds."""

from __future__ import annotations

import dataclasses

# Item statuses of a GradeReport.
OK, NO_ANSWER, TOO_LONG, NOT_INTEGER, TIMEOUT, CRASH, GOLD_FAILED = (
    "ok", "no_answer", "too_long", "not_integer", "timeout", "crash", "gold_failed",
)


@dataclasses.dataclass
class GradeReport:
    """Verdicts of one batch plus what it took to get them (all lists are in input order).

    ``status`` per item: ``ok`` (math-verify answered), ``no_answer`` (nothing extracted),
    ``too_long`` (extracted answer above ``max_answer_chars``), ``not_integer`` (the item's answer
    format is ``integer`` and the extracted answer is not a literal integer, see
    :mod:`rsgrpo.grading.answer_format`; never verified), ``timeout`` (worker killed at the
    wall-clock limit), ``crash`` (worker died or ran out of memory), ``gold_failed`` (the gold itself
    timed out or crashed while parsing). Every status but ``ok`` means verdict False.
    ``seconds`` is the wall time of the verification that produced the item's verdict, measured in
    the worker (by the parent for a timeout or crash; shared by items that reused a cached
    verdict; 0 for items never verified).
    ``timeouts``/``crashes`` count verification tasks (distinct pairs), not items.
    """

    verdicts: list[bool]
    extracted: list[str | None]
    sources: list[str | None]
    status: list[str]
    seconds: list[float]
    n_unique_golds: int = 0
    n_unique_pairs: int = 0
    cache_hits: int = 0
    timeouts: int = 0
    crashes: int = 0
    gold_failures: int = 0
    workers_replaced: int = 0
    wall_seconds: float = 0.0

    @property
    def n_items(self) -> int:
        return len(self.verdicts)

    @property
    def n_correct(self) -> int:
        return sum(self.verdicts)

    @property
    def n_no_answer(self) -> int:
        return self.status.count(NO_ANSWER)

    @property
    def n_not_integer(self) -> int:
        return self.status.count(NOT_INTEGER)

    @property
    def n_timed_out_items(self) -> int:
        return self.status.count(TIMEOUT)

    def summary(self) -> str:
        not_integer = f"{self.n_not_integer} not integer, " if self.n_not_integer else ""
        return (
            f"{self.n_items} items, {self.n_correct} correct, {self.n_no_answer} without answer, {not_integer}"
            f"{self.n_unique_pairs} verifications ({self.cache_hits} cache hits, "
            f"{self.n_unique_golds} golds), {self.timeouts} timeouts, {self.crashes} crashes, "
            f"{self.gold_failures} gold failures, {self.wall_seconds:.2f} s"
        )
