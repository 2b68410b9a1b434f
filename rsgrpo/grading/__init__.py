"""Verifiable rewards: answer extraction and math-verify grading that never hangs.

RL training and pass@k evaluation grade hundreds of thousands of completions against gold answers.
math-verify (``verify(parse(gold), parse(answer))``) is the reference grader, but on model output it
can run without bound inside sympy (``\\boxed{100000!}``, ``10^{10^{10^{10}}}``), and its own
timeouts are ``signal.alarm`` based (they cannot interrupt C code and do not work off the main
thread). This package keeps math-verify's verdicts (except that a dataset may require a literal
integer answer, see :mod:`~rsgrpo.grading.answer_format`) and fixes the rest. Modules:

* :mod:`~rsgrpo.grading.extract`: answer extraction (last complete ``\\boxed{}`` with the boxes
  math-verify joins to it, fallback phrases) in linear time, and the conservative normalisation
  that merges cache keys.
* :mod:`~rsgrpo.grading.answer_format`: the answer formats of a dataset (``any``, ``integer``):
  which extracted answers math-verify may compare at all.
* :mod:`~rsgrpo.grading.fastparse`: math-verify parsing and verification (LaTeX only, ``$..$``
  wrapping, internal timeouts off), the exact fast-parse patch the workers apply, the warm-up.
* :mod:`~rsgrpo.grading.worker`: what runs in a worker process (chunks of gold groups, verdicts
  in batches, progress in a shared integer), and the in-process loop for ``workers=0``.
* :mod:`~rsgrpo.grading.pool`: the parent side: worker processes, the dispatch loop that owns
  every deadline and kills overrunning workers, pools kept between calls.
* :mod:`~rsgrpo.grading.report`: :class:`GradeReport` and the item statuses.
* :mod:`~rsgrpo.grading.api`: :func:`grade_report` and :func:`grade` (dedup of
  ``(gold, normalised answer)`` pairs, extraction slice by slice while workers verify).
"""

from .answer_format import (
    ANSWER_FORMAT_FIELD,
    ANSWER_FORMATS,
    DEFAULT_ANSWER_FORMAT,
    check_answer_format,
    is_integer_literal,
    record_answer_format,
)
from .api import DEFAULT_MAX_ANSWER_CHARS, DEFAULT_MEMORY_LIMIT_BYTES, grade, grade_report
from .extract import extract_answer, extract_answer_with_source, normalize_answer, wrap_latex
from .pool import shutdown_workers
from .report import GradeReport

__all__ = [
    "extract_answer",
    "extract_answer_with_source",
    "normalize_answer",
    "wrap_latex",
    "ANSWER_FORMATS",
    "ANSWER_FORMAT_FIELD",
    "DEFAULT_ANSWER_FORMAT",
    "check_answer_format",
    "is_integer_literal",
    "record_answer_format",
    "GradeReport",
    "grade_report",
    "grade",
    "shutdown_workers",
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "DEFAULT_MAX_ANSWER_CHARS",
]
