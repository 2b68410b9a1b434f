"""Answer extraction and normalisation: what is handed to math-verify, and the cache keys.

* **Extraction** (:func:`extract_answer`): the last complete ``\\boxed{...}``/``\\fbox{...}`` with
  brace matching in linear time (no regex backtracking), joined with the boxes just before it the
  way math-verify joins an answer given in several boxes; fallbacks for "the answer is ...".
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

# math-verify reads an answer written in several boxes as one answer (its boxed normalisation in
# latex2sympy2_extended, the mode its parser uses for a boxed answer): walking left from the last
# box, an earlier box joins when fewer than _JOIN_NEAR_CHARS characters separate the two, or fewer
# than _JOIN_SEPARATED_CHARS holding a separator (_JOIN_SEPARATOR) while the two contents differ;
# the walk stops at the first box that does not join. Contents are stripped, a content equal to
# its right neighbour is kept once, and the parts are joined with ",".
_JOIN_NEAR_CHARS = 10
_JOIN_SEPARATED_CHARS = 70
_JOIN_SEPARATOR = re.compile(r"\b(?:and|or)\b|[,;]")

# Fallback answers are math, never prose. A prose word: two or more letters that are neither a
# command (\frac) nor a command's argument (\text{cm}), nor "and"/"or" (which join parts of an
# answer, "2 and 3").
_PROSE_WORD = re.compile(r"(?<![\\{A-Za-z])(?!(?:and|or)(?![A-Za-z]))[A-Za-z]{2,}")
# "34, so we are done": a comma or semicolon followed by prose ends the answer's clause.
_CLAUSE_END = re.compile(r"[,;]\s*(?=" + _PROSE_WORD.pattern + ")")
# "The largest n is 34": the value follows the last of these.
_VALUE_MARKER = re.compile(r"\b(?:is|equals|be)\b|=")
_MATH_SPANS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


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


def _close_of_brace(text: str, brace: int, end: int | None = None) -> int | None:
    """Index of the ``}`` closing the structural ``{`` at ``brace``, or None if it is not closed
    before ``end`` (default: the end of the text).

    Gives the same answer as ``_matching_braces(text).get(brace)`` for a ``{`` that is not escaped
    (the box commands end in a letter or a blank, never a backslash): from ``brace`` on, the
    escape state is fresh and a depth counter closes ``brace`` exactly where the stack would;
    braces before ``brace`` cannot pair with anything inside. Cost: the box's own length.
    """
    depth = 0
    skip_until = -1
    for found in _BRACE_OR_BACKSLASH.finditer(text, brace, len(text) if end is None else end):
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


def _last_box(text: str) -> tuple[int, str, str] | None:
    """``(position, command, argument)`` of the last complete ``\\boxed{..}``/``\\fbox{..}`` (by
    start position), or None.

    Also accepts the brace-less form ``\\boxed 5`` (argument = next run of non-space, non-``$``
    characters). A box whose ``{`` is never closed is skipped, so a truncated completion falls back
    to the previous complete box. The last box is tried first with a scan of its own length (the
    usual case); only when it is not usable are all boxes examined with one brace-matching pass
    over the text (:func:`_last_box_all_boxes`), so the cost stays linear.
    """
    pos, cmd = max((text.rfind(cmd), cmd) for cmd in _BOX_COMMANDS)
    if pos < 0:
        return None
    answer = _box_argument(text, pos, cmd, lambda brace: _close_of_brace(text, brace))
    if answer is not None:
        return pos, cmd, answer
    return _last_box_all_boxes(text)


def _last_box_all_boxes(text: str) -> tuple[int, str, str] | None:
    """:func:`_last_box` by examining every box from the last one back, with the braces of the
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
            return pos, cmd, answer
    return None


def _boxes_joined_to(text: str, last_start: int, last_content: str) -> list[str]:
    """Contents of the box starting at ``last_start`` and of the boxes math-verify joins to it
    (see ``_JOIN_NEAR_CHARS``), left to right.

    Each earlier box is looked for before the start of the box to its right (a box that is not
    closed by then ends the walk), so every character is scanned a bounded number of times.
    """
    parts = [last_content.strip()]
    later_start = last_start
    # the last start of each command before later_start, found again only once passed
    found = {cmd: text.rfind(cmd, 0, later_start) for cmd in _BOX_COMMANDS}
    while True:
        for cmd in _BOX_COMMANDS:
            if found[cmd] >= later_start:
                found[cmd] = text.rfind(cmd, 0, later_start)
        pos, cmd = max((found[cmd], cmd) for cmd in _BOX_COMMANDS)
        if pos < 0:
            break
        brace = pos + len(cmd)
        while brace < later_start and text[brace].isspace():
            brace += 1
        if brace >= later_start or text[brace] != "{":
            break  # \boxedtext, \boxed 5: math-verify joins braced boxes only
        close = _close_of_brace(text, brace, later_start)
        if close is None:
            break
        content = text[brace + 1 : close].strip()
        gap = later_start - close - 1
        near = gap < _JOIN_NEAR_CHARS
        separated = (gap < _JOIN_SEPARATED_CHARS and content != parts[-1]
                     and _JOIN_SEPARATOR.search(text, close + 1, later_start) is not None)
        if not (near or separated):
            break
        if content != parts[-1]:
            parts.append(content)
        later_start = pos
    parts.reverse()
    return parts


def _joined_box_answer(text: str, pos: int, cmd: str, content: str) -> str | None:
    """The boxed final answer given the last box (:func:`_last_box`): its content joined with
    the boxes math-verify joins to it (:func:`_boxes_joined_to`; a brace-less ``\\boxed 5`` joins
    nothing), each part cleaned like a single answer; None when every part is empty."""
    arg_start = pos + len(cmd)
    while arg_start < len(text) and text[arg_start] in " \t":
        arg_start += 1
    if not text.startswith("{", arg_start):
        return _clean(content) or None
    parts = (_clean(part) for part in _boxes_joined_to(text, pos, content))
    return ",".join(part for part in parts if part) or None


def _clean(answer: str) -> str:
    return _strip_sentence_period(_strip_math_delimiters(answer))


def _leading_math_span(text: str) -> str | None:
    """Content of the ``$..$``/``$$..$$``/``\\(..\\)``/``\\[..\\]`` span ``text`` starts with
    ("" when it is never closed), or None when ``text`` does not start with one."""
    for opener, closer in _MATH_SPANS:
        if text.startswith(opener):
            close = text.find(closer, len(opener))
            return text[len(opener) : close] if close >= 0 else ""
    return None


def _fallback_answer(text: str) -> str | None:
    """Answer after the rightmost "final answer is" / "answer is" / "answer:" phrase, or None.

    The answer is math, never a prose sentence: the math span right after the phrase when there
    is one; else the sentence after it (up to ". " or the end of the line, and up to a comma or
    semicolon followed by prose) when it holds no prose word; else, in a prose sentence ("The
    largest n is 34"), what follows its last "is" / "equals" / "be" / "=" when that holds no
    prose word; else None. A trailing period and unescaped ``$`` are removed.
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
    span = _leading_math_span(rest)
    if span is not None:
        return _clean(span) or None
    sentence = rest.split("\n", 1)[0]
    sentence_end = sentence.find(". ")
    if sentence_end >= 0:
        sentence = sentence[:sentence_end]
    clause_end = _CLAUSE_END.search(sentence)
    if clause_end is not None:
        sentence = sentence[: clause_end.start()]
    if _PROSE_WORD.search(sentence) is not None:
        markers = list(_VALUE_MARKER.finditer(sentence))
        if not markers:
            return None
        sentence = sentence[markers[-1].end() :]
        if _PROSE_WORD.search(sentence) is not None:
            return None
    return _clean(sentence) or None


def _strip_sentence_period(answer: str) -> str:
    """Drop one sentence-final period (``\\boxed{5.}``): math-verify fails on ``$\\pi.$``."""
    if answer.endswith(".") and not answer.endswith("..") and not answer.endswith("\\."):
        answer = answer[:-1].rstrip()
    return answer


def extract_answer_with_source(text: str) -> tuple[str | None, str | None]:
    """``(answer, source)`` where source is ``"boxed"``, ``"fallback"`` or None (no answer).

    The source lets the "partial" reward (rsgrpo.train.rewards) give format credit only to well-formed
    boxed answers.
    """
    if not isinstance(text, str) or not text:
        return None, None
    last = _last_box(text)
    if last is not None:
        boxed = _joined_box_answer(text, *last)
        return (boxed, "boxed") if boxed else (None, None)
    fallback = _fallback_answer(text)
    return (fallback, "fallback") if fallback is not None else (None, None)


def extract_answer(text: str) -> str | None:
    """Final answer of a completion, or None when it gives none.

    Order: (1) the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces handled, escaped
    ``\\{ \\}`` ignored, unclosed boxes skipped, ``\\boxed 5`` accepted), joined with ``,`` to the
    boxes before it that math-verify reads as parts of the same answer (``\\boxed{-2} and
    \\boxed{1}`` -> ``-2,1``; see ``_JOIN_NEAR_CHARS``); (2) the math after the rightmost "final
    answer is" / "answer is" / "final answer:" / "answer:" (case-insensitive): the math span right
    after it, a sentence without prose, or the value after the last "is" / "=" of a prose sentence
    (see :func:`_fallback_answer`). Unescaped ``$`` and one sentence-final period are removed
    from the result. Linear time: ``str.find`` scans and bounded brace-matching passes.
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

