"""Answer extraction and normalisation: what is handed to math-verify, and the cache keys.

* **Extraction** (:func:`extract_answer`): the last complete ``\\boxed{...}``/``\\fbox{...}`` with
  brace matching in linear time (no regex backtracking); fallbacks for "the answer is ...".
* **Normalisation** (:func:`normalize_answer`) is deliberately conservative: it only removes
  notation that math-verify's own LaTeX normalisation removes anyway, so it merges cache keys
  without changing a verdict; the tests compare every non-timed-out verdict with a plain
  ``verify(parse(..), parse(..))``.
* **Wrapping** (:func:`wrap_latex`): golds and answers are parsed as ``"$" + x + "$"`` (why: see
  :mod:`rsgrpo.grading.fastparse`).
"""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Fallback phrases, matched case-insensitively; the rightmost occurrence of any of them wins.
_FALLBACK_PHRASES = ("final answer is", "answer is", "final answer:", "answer:")
_FALLBACK_MAX_CHARS = 500
_BRACE_OR_BACKSLASH = re.compile(r"[\\{}]")


def _matching_braces(text: str) -> dict[int, int]:
    """Map the index of every structural ``{`` to the index of its ``}`` (unclosed ones absent).

    One left-to-right pass with a stack over the backslashes and braces only (a one-character
    class regex, which cannot backtrack), so the cost is linear in ``len(text)`` however many
    unclosed ``\\boxed{`` the text holds. ``\\{``, ``\\}`` and ``\\\\`` are escapes, not structure.
    """
    match: dict[int, int] = {}
    stack: list[int] = []
    skip_until = -1
    for found in _BRACE_OR_BACKSLASH.finditer(text):
        pos = found.start()
        if pos <= skip_until:
            continue  # this character is escaped by the backslash just before it
        char = text[pos]
        if char == "\\":
            skip_until = pos + 1
        elif char == "{":
            stack.append(pos)
        elif stack:
            match[stack.pop()] = pos
    return match


def _find_all(text: str, needle: str) -> list[int]:
    out, start = [], 0
    while True:
        pos = text.find(needle, start)
        if pos < 0:
            return out
        out.append(pos)
        start = pos + 1


def _strip_math_delimiters(answer: str) -> str:
    """Remove unescaped ``$`` (the grader adds its own ``$..$``) and surrounding whitespace."""
    if "$" in answer:
        pieces = answer.split("$")
        kept = [pieces[0]]
        for piece in pieces[1:]:
            if kept[-1].endswith("\\"):
                kept[-1] += "$" + piece  # an escaped dollar sign (\$) is part of the answer
            else:
                kept.append(piece)
        answer = "".join(kept)
    return answer.strip()


def _close_of_brace(text: str, brace: int) -> int | None:
    """Index of the ``}`` closing the structural ``{`` at ``brace``, or None if it is never closed.

    Gives the same answer as ``_matching_braces(text).get(brace)`` for a ``{`` that is not escaped
    (the box commands end in a letter or a blank, never a backslash): from ``brace`` on, the
    escape state is fresh and a depth counter closes ``brace`` exactly where the stack would;
    braces before ``brace`` cannot pair with anything inside. Cost: the box's own length.
    """
    depth = 0
    skip_until = -1
    for found in _BRACE_OR_BACKSLASH.finditer(text, brace):
        pos = found.start()
        if pos <= skip_until:
            continue
        char = text[pos]
        if char == "\\":
            skip_until = pos + 1
        elif char == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos
    return None


def _box_argument(text: str, pos: int, cmd: str, close_of) -> str | None:
    """Argument of the box command ``cmd`` at ``pos``, or None when it is not a usable box
    (a longer command such as ``\\boxedtext``, an unclosed ``{``, nothing after it)."""
    length = len(text)
    after_cmd = pos + len(cmd)
    if after_cmd < length and text[after_cmd].isalpha():
        return None  # another command such as \boxedtext
    arg_start = after_cmd
    while arg_start < length and text[arg_start] in " \t":
        arg_start += 1
    if arg_start < length and text[arg_start] == "{":
        close = close_of(arg_start)
        return text[arg_start + 1 : close] if close is not None else None
    if arg_start > after_cmd:  # \boxed 5
        end = arg_start
        while end < length and not text[end].isspace() and text[end] != "$":
            end += 1
        if end > arg_start:
            return text[arg_start:end]
    return None


def _boxed_answer(text: str) -> str | None:
    """Content of the last complete ``\\boxed{..}``/``\\fbox{..}`` (by start position), or None.

    Also accepts the brace-less form ``\\boxed 5`` (argument = next run of non-space, non-``$``
    characters). A box whose ``{`` is never closed is skipped, so a truncated completion falls back
    to the previous complete box. The last box is tried first with a scan of its own length (the
    usual case); only when it is not usable are all boxes examined with one brace-matching pass
    over the text (:func:`_boxed_answer_all_boxes`), so the cost stays linear.
    """
    pos, cmd = max((text.rfind(cmd), cmd) for cmd in _BOX_COMMANDS)
    if pos < 0:
        return None
    answer = _box_argument(text, pos, cmd, lambda brace: _close_of_brace(text, brace))
    if answer is not None:
        return answer
    return _boxed_answer_all_boxes(text)


def _boxed_answer_all_boxes(text: str) -> str | None:
    """:func:`_boxed_answer` by examining every box from the last one back, with the braces of the
    whole text matched in one pass (the reference the fast path is tested against)."""
    starts = sorted(
        (pos, cmd) for cmd in _BOX_COMMANDS for pos in _find_all(text, cmd)
    )
    braces: dict[int, int] | None = None

    def close_of(brace: int) -> int | None:
        nonlocal braces
        if braces is None:
            braces = _matching_braces(text)
        return braces.get(brace)

    for pos, cmd in reversed(starts):
        answer = _box_argument(text, pos, cmd, close_of)
        if answer is not None:
            return answer
    return None


def _fallback_answer(text: str) -> str | None:
    """Answer after the rightmost "final answer is" / "answer is" / "answer:" phrase, or None.

    The answer is the first ``$..$`` math span right after the phrase when there is one, else the
    rest of the line up to a sentence end (". " or end of line), with a trailing period removed.
    """
    lower = text.lower()
    best_end = -1
    for phrase in _FALLBACK_PHRASES:
        pos = lower.rfind(phrase)
        if pos >= 0:
            best_end = max(best_end, pos + len(phrase))
    if best_end < 0:
        return None
    rest = text[best_end : best_end + _FALLBACK_MAX_CHARS].lstrip(" \t:")
    if rest.startswith("$$"):
        close = rest.find("$$", 2)
        candidate = rest[2:close] if close > 0 else ""
    elif rest.startswith("$"):
        close = rest.find("$", 1)
        candidate = rest[1:close] if close > 0 else ""
    else:
        candidate = rest.split("\n", 1)[0]
        sentence_end = candidate.find(". ")
        if sentence_end >= 0:
            candidate = candidate[:sentence_end]
    candidate = _strip_sentence_period(_strip_math_delimiters(candidate))
    return candidate or None


def _strip_sentence_period(answer: str) -> str:
    """Drop one sentence-final period (``\\boxed{5.}``): math-verify fails on ``$\\pi.$``."""
    if answer.endswith(".") and not answer.endswith("..") and not answer.endswith("\\."):
        answer = answer[:-1].rstrip()
    return answer


def extract_answer_with_source(text: str) -> tuple[str | None, str | None]:
    """``(answer, source)`` where source is ``"boxed"``, ``"fallback"`` or None (no answer).

    The source lets the "partial" reward (rsgrpo.rewards) give format credit only to well-formed
    boxed answers.
    """
    if not isinstance(text, str) or not text:
        return None, None
    boxed = _boxed_answer(text)
    if boxed is not None:
        boxed = _strip_sentence_period(_strip_math_delimiters(boxed))
        return (boxed, "boxed") if boxed else (None, None)
    fallback = _fallback_answer(text)
    return (fallback, "fallback") if fallback is not None else (None, None)


def extract_answer(text: str) -> str | None:
    """Final answer of a completion, or None when it gives none.

    Order: (1) the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces handled, escaped
    ``\\{ \\}`` ignored, unclosed boxes skipped, ``\\boxed 5`` accepted); (2) the text after the
    rightmost "final answer is" / "answer is" / "final answer:" / "answer:" (case-insensitive): the
    first ``$..$`` span after it, else the rest of that line up to a sentence end. Unescaped ``$``
    and one sentence-final period are removed from the result. Linear time: ``str.find`` scans
    and one brace-matching pass.
    """
    return extract_answer_with_source(text)[0]


# --------------------------------------------------------------------------------------------
# Normalisation (cache keys)
# --------------------------------------------------------------------------------------------

# \left / \right (and \mleft / \mright) before one of these delimiters carry no meaning for the
# grader; math-verify's LaTeX normalisation drops them (left ones, then right ones) first thing.
_LEFT_BEFORE_DELIMITER = re.compile(
    r"\\m?left(?=\\\{|\{|\\\||\||\[|\(|\\rbracl|\\lgroup|\\lbrace|\\lbrack|\\vert|\\lvert"
    r"|\\lceil|\\lfloor|\\langle|\\llcorner|\\ulcorner)"
)
_RIGHT_BEFORE_DELIMITER = re.compile(
    r"\\m?right(?=\\\}|\}|\\\||\||\]|\)|\\rbrack|\\rgroup|\\rbrace|\\vert|\\rvert"
    r"|\\rceil|\\rfloor|\\rangle|\\lrcorner|\\urcorner)"
)
_FRAC_VARIANTS = re.compile(r"\\[dtc]frac")
_NEGATIVE_THIN_SPACE = re.compile(r"\\!\s*")


def normalize_answer(answer: str) -> str:
    """Cache key of an extracted answer: merges spellings without ever changing a verdict.

    Only rewrites that math-verify's own LaTeX normalisation performs anyway, in an order that
    cannot change its result: ``\\left[\\begin{matrix}`` -> ``\\begin{bmatrix}`` (and the
    closing pair); drop ``\\left``/``\\right`` before a delimiter;
    ``\\dfrac``/``\\tfrac``/``\\cfrac`` -> ``\\frac``; drop ``\\!`` with the spaces after it (not
    when the answer holds ``_{``, where math-verify's permutation rewrite runs before its ``\\!``
    removal). Whitespace (even leading/trailing: ``" 15\\mbox{ cm}^2 "`` grades differently from
    ``"15\\mbox{ cm}^2"``) and trailing periods (``"$\\pi.$"`` fails to parse) are NOT touched here:
    math-verify's regexes see them, so merging them would change verdicts; extraction strips them.
    Equality with plain math-verify is tested on every non-timed-out item.
    """
    key = answer
    if "matrix" in key:
        key = key.replace("\\left[\\begin{matrix}", "\\begin{bmatrix}")
        key = key.replace("\\end{matrix}\\right]", "\\end{bmatrix}")
    if "left" in key:
        key = _apply_if_idempotent(_LEFT_BEFORE_DELIMITER, "", key)
    if "right" in key:
        key = _apply_if_idempotent(_RIGHT_BEFORE_DELIMITER, "", key)
    if "frac" in key:
        key = _FRAC_VARIANTS.sub(lambda match: "\\frac", key)
    if "\\!" in key and "_{" not in key:
        key = _apply_if_idempotent(_NEGATIVE_THIN_SPACE, "", key)
    return key


def _apply_if_idempotent(pattern: re.Pattern, replacement: str, s: str) -> str:
    """``pattern.sub`` unless a second pass would change the result again (e.g. ``\\left\\left(``):
    math-verify applies each rewrite once, so only a fixed point is guaranteed to be invisible."""
    out = pattern.sub(replacement, s)
    return s if pattern.search(out) else out


def wrap_latex(answer: str) -> str:
    """The string handed to math-verify's ``parse``: ``"$" + answer + "$"`` (why this wrapping:
    see :mod:`rsgrpo.grading.fastparse`)."""
    return "$" + answer + "$"

