"""Answer formats: what a final answer must look like before math-verify may compare it.

A dataset spec's ``answer_format`` (:mod:`rsgrpo.prepare.data_sources`) says which answers its problems accept:

* ``any`` (the default): every extracted answer goes to math-verify.
* ``integer``: the extracted answer must be a literal integer (:func:`is_integer_literal`); any
  other answer is wrong without being verified (grade status ``not_integer``). Why: math-verify
  compares expressions symbolically, so on "What is 5 + 8?" the answer "5 + 8" equals the gold 13,
  and a policy trained on such problems learns to restate the question instead of solving it.
  Every gold of an ``integer`` dataset must itself be a literal integer.

Records carry the format in the field :data:`ANSWER_FORMAT_FIELD`, present only when it is not the
default (so the records of an ``any`` dataset are the same as before formats existed); the rewards
and the scorer read it with :func:`record_answer_format`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

ANY, INTEGER = "any", "integer"
ANSWER_FORMATS = (ANY, INTEGER)
DEFAULT_ANSWER_FORMAT = ANY
ANSWER_FORMAT_FIELD = "answer_format"

_INTEGER = re.compile(r"[+-]?[0-9]+")
# Wrappers that only change how a number is typeset; math-verify reads \text{13} and {13} as 13.
_WRAPPERS = ("\\text{", "\\textbf{", "\\mathbf{", "\\mathrm{", "{")
_MAX_WRAPPERS = 3


def is_integer_literal(answer: str) -> bool:
    """Whether ``answer`` is written as an integer: optional sign, ASCII digits.

    Tolerated around it, as math-verify ignores them: surrounding whitespace, one ``$..$`` or
    ``$$..$$`` pair, one sentence-final period, and up to three ``\\text{}``/``\\textbf{}``/
    ``\\mathbf{}``/``\\mathrm{}``/``{}`` wrappers. Leading zeros are accepted (AIME writes ``033``;
    math-verify decides ``033`` = 33). Deliberately refused, because each also reads as something
    other than one integer: digit grouping (``1,000``: math-verify reads ``1,2`` as a set),
    decimals (``13.0``), spaces inside (``1 3``, ``- 13``), expressions (``5 + 8``), equations
    (``n = 13``), units, degrees and percent signs, non-ASCII digits or minus signs.
    """
    if not isinstance(answer, str):
        return False
    text = _drop_period(answer.strip())
    for delimiter in ("$$", "$"):
        if len(text) > 2 * len(delimiter) and text.startswith(delimiter) and text.endswith(delimiter):
            text = _drop_period(text[len(delimiter) : -len(delimiter)].strip())
            break
    for _ in range(_MAX_WRAPPERS):
        wrapper = next((w for w in _WRAPPERS if text.startswith(w) and text.endswith("}")), None)
        if wrapper is None:
            break
        text = text[len(wrapper) : -1].strip()
    return _INTEGER.fullmatch(text) is not None


def _drop_period(text: str) -> str:
    return text[:-1].rstrip() if text.endswith(".") and not text.endswith("..") else text


def check_answer_format(value, where: str) -> str:
    """``value`` when it names an answer format, else ValueError naming ``where`` and the value."""
    if value not in ANSWER_FORMATS:
        raise ValueError(f"{where}: answer_format must be one of {', '.join(map(repr, ANSWER_FORMATS))}, "
                         f"got {value!r}")
    return value


def answer_allowed(answer: str, answer_format: str) -> bool:
    """Whether an extracted answer may go to math-verify under ``answer_format``."""
    return answer_format == ANY or is_integer_literal(answer)


def record_answer_format(record: Mapping) -> str:
    """The answer format of a record (:data:`ANSWER_FORMAT_FIELD`, default ``any``), checked."""
    value = record.get(ANSWER_FORMAT_FIELD, DEFAULT_ANSWER_FORMAT)
    return check_answer_format(value, f"record {record.get('id')!r}")


def item_answer_formats(answer_formats: str | Sequence[str], golds: Sequence[str]) -> list[str]:
    """One checked format per gold from a single format or one per item; ValueError for an unknown
    format or an ``integer`` item whose gold is not a literal integer (naming the item and gold)."""
    if isinstance(answer_formats, str):
        formats = [check_answer_format(answer_formats, "grading")] * len(golds)
    else:
        formats = list(answer_formats)
        if len(formats) != len(golds):
            raise ValueError(f"answer_formats and golds differ in length: {len(formats)} vs {len(golds)}")
        for i, value in enumerate(formats):
            check_answer_format(value, f"answer format of item {i}")
    for i, (gold, answer_format) in enumerate(zip(golds, formats)):
        if answer_format == INTEGER and not is_integer_literal(gold):
            raise ValueError(f"gold answer of item {i} is not an integer literal but its answer_format is "
                             f"'integer': {gold!r}")
    return formats
