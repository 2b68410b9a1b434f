"""Verifiable rewards: answer extraction and math-verify grading that never hangs.

Why this module exists
----------------------
RL training and pass@k evaluation grade hundreds of thousands of completions against gold answers.
math-verify (``verify(parse(gold), parse(answer))``) is the reference grader, but on model output it
can run for minutes inside sympy (``\\boxed{100000!}``, ``10^{10^{10^{10}}}``), its own timeouts are
``signal.alarm`` based (they cannot interrupt C code and do not work off the main thread), and it is
slow (a few ms per parse). This module keeps math-verify's verdicts and fixes the rest:

* **Extraction** (:func:`extract_answer`): the last complete ``\\boxed{...}``/``\\fbox{...}`` with
  brace matching in linear time (no regex backtracking); fallbacks for "the answer is ...".
* **Parsing**: gold and extracted answer are wrapped as ``"$" + x + "$"`` and parsed with
  ``LatexExtractionConfig`` only. On every gold of MATH500/AIME24/AIME25/HMMT-Feb-25 the ``$..$``,
  ``\\boxed{..}`` and ``$\\boxed{..}$`` wrappings give identical parses (studied when this was
  written); ``$..$`` is the simplest. ``ExprExtractionConfig`` is deliberately NOT used: it feeds
  text to sympy ``parse_expr``, which ``eval``\\ s generated Python code; even behind math-verify's
  regex that is an avoidable risk for untrusted model output, and everything it accepts (``1/2``,
  ``0.5``, ``2*x``) is also accepted by the LaTeX parser. (The LaTeX parser reaches sympy's
  ``parse_expr`` only through ``sympy.Number(token)`` on number tokens its ANTLR grammar matched,
  i.e. digits and a decimal point, which cannot carry code; the tests feed ``__import__`` payloads
  and check nothing ran.)
* **Caching**: each distinct gold is parsed once per chunk of work (normally once), each distinct
  ``(gold, normalised answer)`` pair is verified once; repeats reuse the verdict (``cache_hits``).
  Workers also keep an LRU of parses shared by golds and answers (an answer spelled like its gold
  is not parsed again) and the pool is kept between calls. (math-verify itself keeps an
  ``lru_cache(20)`` of parsed LaTeX, so a plain loop over problem-major samples already skips
  many repeats: see benchmarks/bench_grading.py.)
* **Fast parsing in the workers** (:func:`_enable_fast_parsing`): a stock parse of a non-trivial
  answer costs ~10 ms, ~85% of it ANTLR's uncached full-context LL prediction, and most of the
  rest sympy's ``parse_expr`` on number tokens. Workers use ANTLR's documented two-stage strategy
  (SLL prediction; the stock LL parser whenever SLL reports an error), build digit-only number
  tokens as ``Integer(int(text))`` and reuse other number tokens' values: the same parse output,
  ~5-10x faster (tested against the stock parser on a corpus). The caller's process keeps the
  stock parser.
* **Isolation**: verification runs in worker *processes* (``forkserver`` by default: fork-safe
  even when the caller has initialised CUDA or threads, and workers start with a small address space
  so a memory cap means something). The parent enforces a hard wall-clock limit per item and
  SIGKILLs a worker that exceeds it; each worker caps its address space with ``RLIMIT_AS``. A
  timed-out or crashed item is graded False, counted, its worker replaced, and the batch goes on.
  Workers get chunks of several golds' items and send verdicts back in batches; the step each
  one is running (and since when) sits in a shared integer, so the parent times and, if needed,
  kills exactly that step without a message per item. The parent extracts answers slice by
  slice, so workers start verifying before the last completion is read.

Normalisation (:func:`normalize_answer`) is deliberately conservative: it only removes notation that
math-verify's own LaTeX normalisation removes anyway, so it merges cache keys without changing a
verdict; the tests compare every non-timed-out verdict with a plain ``verify(parse(..), parse(..))``.
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import itertools
import logging
import math
import multiprocessing
import os
import re
import signal
import threading
import time
from collections import OrderedDict
from multiprocessing.connection import wait as _wait_ready
from typing import Callable, Sequence

__all__ = [
    "extract_answer",
    "extract_answer_with_source",
    "normalize_answer",
    "wrap_latex",
    "GradeReport",
    "grade_report",
    "grade",
    "compute_rewards",
    "shutdown_workers",
    "REWARD_KINDS",
    "PARTIAL_FORMAT_CREDIT",
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "DEFAULT_MAX_ANSWER_CHARS",
]

DEFAULT_MEMORY_LIMIT_BYTES = 2 * 1024**3
# An extracted answer longer than this is graded False without parsing (status "too_long"): no gold
# answer of the benchmarks is longer than ~200 characters, while parsing megabytes of LaTeX only
# burns the time budget.
DEFAULT_MAX_ANSWER_CHARS = 2000
# Reward of kind "partial" for a well-formed \boxed{} answer that is wrong (see compute_rewards).
PARTIAL_FORMAT_CREDIT = 0.1
REWARD_KINDS = ("binary", "partial")
# Seconds a new worker may take to import math-verify and answer the handshake.
_STARTUP_TIMEOUT_S = 120.0

# Item statuses of a GradeReport.
OK, NO_ANSWER, TOO_LONG, TIMEOUT, CRASH, GOLD_FAILED = (
    "ok", "no_answer", "too_long", "timeout", "crash", "gold_failed",
)

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Fallback phrases, matched case-insensitively; the rightmost occurrence of any of them wins.
_FALLBACK_PHRASES = ("final answer is", "answer is", "final answer:", "answer:")
_FALLBACK_MAX_CHARS = 500
_BRACE_OR_BACKSLASH = re.compile(r"[\\{}]")


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


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
        i = found.start()
        if i <= skip_until:
            continue  # this character is escaped by the backslash just before it
        ch = text[i]
        if ch == "\\":
            skip_until = i + 1
        elif ch == "{":
            stack.append(i)
        elif stack:
            match[stack.pop()] = i
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


def _close_of_brace(text: str, k: int) -> int | None:
    """Index of the ``}`` closing the structural ``{`` at ``k``, or None if it is never closed.

    Gives the same answer as ``_matching_braces(text).get(k)`` for a ``{`` that is not escaped
    (the box commands end in a letter or a blank, never a backslash): from ``k`` on, the escape
    state is fresh and a depth counter closes ``k`` exactly where the stack would; braces
    before ``k`` cannot pair with anything inside. Cost: the box's own length.
    """
    depth = 0
    skip_until = -1
    for found in _BRACE_OR_BACKSLASH.finditer(text, k):
        i = found.start()
        if i <= skip_until:
            continue
        ch = text[i]
        if ch == "\\":
            skip_until = i + 1
        elif ch == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return i
    return None


def _box_argument(text: str, pos: int, cmd: str, close_of) -> str | None:
    """Argument of the box command ``cmd`` at ``pos``, or None when it is not a usable box
    (a longer command such as ``\\boxedtext``, an unclosed ``{``, nothing after it)."""
    n = len(text)
    j = pos + len(cmd)
    if j < n and text[j].isalpha():
        return None  # another command such as \boxedtext
    k = j
    while k < n and text[k] in " \t":
        k += 1
    if k < n and text[k] == "{":
        close = close_of(k)
        return text[k + 1 : close] if close is not None else None
    if k > j:  # \boxed 5
        end = k
        while end < n and not text[end].isspace() and text[end] != "$":
            end += 1
        if end > k:
            return text[k:end]
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
    answer = _box_argument(text, pos, cmd, lambda k: _close_of_brace(text, k))
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

    def close_of(k: int) -> int | None:
        nonlocal braces
        if braces is None:
            braces = _matching_braces(text)
        return braces.get(k)

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

    The source lets the "partial" reward give format credit only to well-formed boxed answers.
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
# Normalisation (cache keys) and parsing
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
    s = answer
    if "matrix" in s:
        s = s.replace("\\left[\\begin{matrix}", "\\begin{bmatrix}")
        s = s.replace("\\end{matrix}\\right]", "\\end{bmatrix}")
    if "left" in s:
        s = _apply_if_idempotent(_LEFT_BEFORE_DELIMITER, "", s)
    if "right" in s:
        s = _apply_if_idempotent(_RIGHT_BEFORE_DELIMITER, "", s)
    if "frac" in s:
        s = _FRAC_VARIANTS.sub(lambda m: "\\frac", s)
    if "\\!" in s and "_{" not in s:
        s = _apply_if_idempotent(_NEGATIVE_THIN_SPACE, "", s)
    return s


def _apply_if_idempotent(pattern: re.Pattern, replacement: str, s: str) -> str:
    """``pattern.sub`` unless a second pass would change the result again (e.g. ``\\left\\left(``):
    math-verify applies each rewrite once, so only a fixed point is guaranteed to be invisible."""
    out = pattern.sub(replacement, s)
    return s if pattern.search(out) else out


def wrap_latex(answer: str) -> str:
    """The string handed to math-verify's ``parse``: ``"$" + answer + "$"`` (see module docstring)."""
    return "$" + answer + "$"


_LATEX_CONFIG = None


def _latex_config():
    global _LATEX_CONFIG
    if _LATEX_CONFIG is None:
        from math_verify import LatexExtractionConfig

        _LATEX_CONFIG = [LatexExtractionConfig()]
    return _LATEX_CONFIG


def _quiet_math_verify() -> None:
    """math-verify logs a warning per timeout / disabled timeout; the grader counts those itself."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)


def _parse(latex: str):
    """math-verify parse of an already extracted answer or a gold, internal timeouts disabled
    (the caller enforces the time limit: the parent process, or an interval timer in-process)."""
    from math_verify import parse

    return parse(wrap_latex(latex), _latex_config(), parsing_timeout=None)


def _verify(parsed_gold, parsed_answer) -> bool:
    from math_verify import verify

    return bool(verify(parsed_gold, parsed_answer, timeout_seconds=None))


# Set in a worker process once _enable_fast_parsing succeeded (never in the caller's process).
_FAST_PARSING_ENABLED = False
# parse_number results kept per worker (texts of at most _NUMBER_CACHE_MAX_CHARS characters)
_NUMBER_CACHE_SIZE = 20_000
_NUMBER_CACHE_MAX_CHARS = 64
_ASCII_DIGITS_MAX = 64
# How this process's parses went since _enable_fast_parsing: "sll" (SLL parse succeeded) and
# "ll_fallback" (SLL reported an error, the stock LL parser ran); read by the tests.
_FAST_PARSE_COUNTS = {"sll": 0, "ll_fallback": 0}


def _enable_fast_parsing() -> bool:
    """Speed up this process's LaTeX parser without changing any parse result (workers only).

    Only ever called inside a grading worker process (and by tests that check it); the caller's
    process keeps the stock parser, so a plain ``parse`` there is untouched. Two changes to
    latex2sympy's converter class, each exact:

    1. **SLL first, then stock LL** (ANTLR's documented two-stage parsing). ~85% of a
       math-verify parse of a non-trivial answer (tuples, radicals, ``\\pi``, ``\\text{}``,
       degrees) is ANTLR's *full-context* LL prediction (``execATNWithFullContext``), which
       ANTLR never caches, so every parse pays it again (~10 ms). For ``PredictionMode.SLL`` the
       runtime guarantees that the parser "will either return a correct parse tree (i.e. the
       same parse tree that would be returned with the LL prediction mode), or it will report a
       syntax error". The grammar's start rule (``math``) ends with ``EOF``, and latex2sympy's
       error listener raises on the first reported error (lexer or parser), so any error aborts
       the SLL attempt (ANTLR's bail strategy); we then parse again with a fresh stock parser
       (LL prediction, the stock shared DFA cache). The SLL attempt keeps a DFA cache of its
       own, so the stock cache only ever sees LL predictions, as in an unpatched process.
       Everything after the parse tree (conversion to sympy, math-verify's normalisation and
       ``verify``) runs unchanged on an identical tree.
    2. **Number tokens**: ``parse_number(text)`` is ``sympy.Number(cleaned text)``, i.e. sympy's
       full ``parse_expr`` (tokenizer, transformations, ``eval`` of the generated code, ~0.5 ms)
       per number token. For a token of ASCII digits only, the stock method strips leading
       zeros and ``sympy.Number`` returns ``Integer(int(text))`` (its ``auto_number``
       transformation wraps the digits in ``Integer(..)``), which we build directly; any other
       token goes to the stock method once per distinct text and the (immutable) result is
       reused.

    The tests compare this process's parse output (``srepr`` of every element) with a stock
    process on the fixtures, the real gold formats and a generated corpus, and the benchmark
    asserts identical verdicts against a stock loop. Returns False (changing nothing) when
    latex2sympy / antlr4 lack the expected internals (another version): grading then simply
    runs at stock speed.
    """
    global _FAST_PARSING_ENABLED
    if _FAST_PARSING_ENABLED:
        return True
    try:
        import sympy
        from antlr4.atn.ParserATNSimulator import ParserATNSimulator
        from antlr4.atn.PredictionMode import PredictionMode
        from antlr4.dfa.DFA import DFA
        from antlr4.PredictionContext import PredictionContextCache
        from latex2sympy2_extended import latex2sympy2 as l2s

        converter = l2s._Latex2Sympy
        stock_create_parser = converter.create_parser
        stock_parse_number = converter.parse_number
        probe = stock_create_parser(converter(), "1")
        if not (hasattr(probe, "_interp") and hasattr(probe, "atn") and callable(probe.math)):
            return False
        sll_dfa = [DFA(state, i) for i, state in enumerate(probe.atn.decisionToState)]
        sll_context_cache = PredictionContextCache()
    except Exception:
        return False

    def create_parser(self, latex_str):
        parser = stock_create_parser(self, latex_str)
        simulator = ParserATNSimulator(parser, parser.atn, sll_dfa, sll_context_cache)
        simulator.predictionMode = PredictionMode.SLL
        parser._interp = simulator
        sll_math = parser.math

        def math():
            try:
                tree = sll_math()
            except Exception:
                # a syntax error under SLL: a real error or an input that needs full LL. Parse
                # again with a fresh stock parser, i.e. exactly what an unpatched process does.
                _FAST_PARSE_COUNTS["ll_fallback"] += 1
                return stock_create_parser(self, latex_str).math()
            _FAST_PARSE_COUNTS["sll"] += 1
            return tree

        parser.math = math
        return parser

    numbers = _LRU(_NUMBER_CACHE_SIZE)

    def parse_number(self, text):
        if (isinstance(text, str) and text.isascii() and 0 < len(text) <= _ASCII_DIGITS_MAX
                and text.isdigit()):
            return sympy.Integer(int(text))  # int() drops leading zeros as the stock method does
        if not isinstance(text, str) or len(text) > _NUMBER_CACHE_MAX_CHARS:
            return stock_parse_number(self, text)
        number = numbers.get(text)
        if number is None:
            number = stock_parse_number(self, text)  # raises for a non-number: never cached
            numbers.put(text, number)
        return number

    create_parser.__wrapped__ = stock_create_parser
    parse_number.__wrapped__ = stock_parse_number
    converter.create_parser = create_parser
    converter.parse_number = parse_number
    _FAST_PARSING_ENABLED = True
    return True


# Gold/answer pairs in the usual answer formats, graded once when a worker starts: they build the
# LaTeX parser and fill its prediction (DFA) cache for the common constructs, so that the first
# real items do not pay for it under their deadline. Generic formats, not any benchmark's items.
_WARM_UP_PAIRS = (
    ("1", "1"),
    ("-7", "7"),
    ("0.25", "\\frac{1}{4}"),
    ("\\frac{3}{4}", "3/4"),
    ("-\\frac{5}{12}", "\\frac{-5}{12}"),
    ("2\\sqrt{3}", "\\sqrt{12}"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
    ("4\\pi", "\\pi 4"),
    ("\\frac{\\pi}{3}", "60^\\circ"),
    ("(1, -2)", "\\left( 1, -2 \\right)"),
    ("[-3, 5)", "(-3, 5]"),
    ("(-\\infty, 2] \\cup [3, \\infty)", "x \\le 2"),
    ("\\{1, 2, 3\\}", "1, 2, 3"),
    ("45^\\circ", "45"),
    ("\\text{east}", "east"),
    ("x = 5", "5"),
    ("3 + 4i", "4i + 3"),
    ("x^2 + 2x + 1", "(x+1)^2"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 3 \\end{pmatrix}"),
    ("25\\%", "0.25"),
    ("\\$18.90", "18.9"),
    ("2^{10}", "1024"),
    ("\\log_2 8", "3"),
)


def _warm_up() -> None:
    """Grade :data:`_WARM_UP_PAIRS` once (a worker does it before its handshake)."""
    for gold, answer in _WARM_UP_PAIRS:
        try:
            _verify(_parse(gold), _parse(answer))
        except Exception:
            pass


class _LRU:
    """Small bounded dict used for per-worker parse caches (keeps worker memory bounded)."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.data: OrderedDict = OrderedDict()

    def get(self, key):
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        if len(self.data) > self.maxsize:
            self.data.popitem(last=False)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GradeReport:
    """Verdicts of one batch plus what it took to get them (all lists are in input order).

    ``status`` per item: ``ok`` (math-verify answered), ``no_answer`` (nothing extracted),
    ``too_long`` (extracted answer above ``max_answer_chars``), ``timeout`` (worker killed at the
    wall-clock limit), ``crash`` (worker died or ran out of memory), ``gold_failed`` (the gold
    itself timed out or crashed while parsing). Every status but ``ok`` means verdict False.
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
    def n_timed_out_items(self) -> int:
        return self.status.count(TIMEOUT)

    def summary(self) -> str:
        return (
            f"{self.n_items} items, {self.n_correct} correct, {self.n_no_answer} without answer, "
            f"{self.n_unique_pairs} verifications ({self.cache_hits} cache hits, "
            f"{self.n_unique_golds} golds), {self.timeouts} timeouts, {self.crashes} crashes, "
            f"{self.gold_failures} gold failures, {self.wall_seconds:.2f} s"
        )


# --------------------------------------------------------------------------------------------
# Worker process
# --------------------------------------------------------------------------------------------

ItemHook = Callable[[str, str], None]


def _address_space_bytes() -> int:
    """Virtual memory size of this process (what RLIMIT_AS limits), 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# Worker -> parent progress without a message per item: each worker owns one shared 64-bit
# integer and stores ``(step << 32) | (start in ms, low 32 bits)`` before every step of its chunk
# (a step is a gold parse or one item). One aligned 8-byte store, so the parent never reads a
# step with another step's start time. The parent reads it to time the running step, and, when it
# kills or loses a worker, to know exactly which step was running.
_STEP_SHIFT = 32
_MS_MASK = (1 << 32) - 1
# grade_report extracts answers in slices of this many items (the first one smaller), handing
# each slice's new tasks to the workers before extracting the next.
_FIRST_SLICE = 1024
_SLICE = 8192
# A worker sends the verdicts it has collected when this many seconds passed since its last
# message (and at the end of each chunk); they travel in batches, not one message per item.
_FLUSH_S = 0.05


def _pack_progress(step: int, now: float) -> int:
    return (step << _STEP_SHIFT) | (int(now * 1000.0) & _MS_MASK)


def _unpack_progress(value: int, now: float) -> tuple[int, float]:
    """``(step, start)`` from a progress value; ``start`` on the ``time.monotonic()`` clock
    (CLOCK_MONOTONIC, shared by all processes), to the millisecond."""
    now_ms = int(now * 1000.0)
    elapsed_ms = (now_ms - (value & _MS_MASK)) & _MS_MASK
    return value >> _STEP_SHIFT, (now_ms - elapsed_ms) / 1000.0


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
        import resource

        # the cap is headroom over the worker's start-up address space (~60 MB from the
        # forkserver, but a 'fork' from a process holding torch may start at several GB)
        limit = _address_space_bytes() + memory_limit_bytes
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    _quiet_math_verify()
    _enable_fast_parsing()
    _warm_up()  # before the handshake, i.e. before any deadline runs
    conn.send(("ready", os.getpid()))
    # one cache for golds and answers: they go through the same parse, so an answer spelled
    # exactly like its gold (the usual correct answer) reuses the gold's parse
    parse_cache = _LRU(4096)

    def cached_parse(latex: str):
        parsed = parse_cache.get(latex)
        if parsed is None:
            parsed = _parse(latex)
            parse_cache.put(latex, parsed)
        return parsed

    clock = time.monotonic
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        chunk_id, groups = message
        out: list[tuple[int, bool, float]] = []
        last_sent = clock()
        step = 0
        try:
            for gold, items in groups:
                progress.value = _pack_progress(step, clock())
                parsed_gold = cached_parse(gold)
                step += 1
                for task_id, answer in items:
                    started = clock()
                    progress.value = _pack_progress(step, started)
                    try:
                        if item_hook is not None:
                            item_hook(gold, answer)
                        verdict = _verify(parsed_gold, cached_parse(answer))
                    except MemoryError:
                        raise
                    except Exception:  # math-verify swallows its own errors; a last resort
                        verdict = False
                    now = clock()
                    out.append((task_id, verdict, now - started))
                    step += 1
                    if now - last_sent >= _FLUSH_S:
                        conn.send(("results", chunk_id, out, False))
                        out, last_sent = [], now
        except MemoryError:
            # the heap may be in a bad state: report what is done, let the parent replace us
            try:
                conn.send(("results", chunk_id, out, False))
            finally:
                return
        conn.send(("results", chunk_id, out, True))


class _Chunk:
    """A chunk handed to one worker: gold groups, and its steps in the worker's order."""

    __slots__ = ("chunk_id", "groups", "steps", "reported")

    def __init__(self, chunk_id: int, groups):
        self.chunk_id = chunk_id
        self.groups = groups  # [(gold, [(task_id, answer), ...]), ...]
        # step -> (group index, item index or -1 for the gold's parse)
        self.steps: list[tuple[int, int]] = []
        for g, (_, items) in enumerate(groups):
            self.steps.append((g, -1))
            self.steps.extend((g, j) for j in range(len(items)))
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
            ctx.set_forkserver_preload(["rsgrpo.grading", "math_verify"])
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


# --------------------------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------------------------


class _ItemTimeout(BaseException):
    """Raised by the in-process interval timer; BaseException so math-verify cannot swallow it."""


def _grade_in_process(gold_tasks, timeout, item_hook, results, on_done):
    """workers=0: same semantics as the pool with an interval timer instead of a kill (cannot
    interrupt C code such as huge integer powers; use workers >= 1 on untrusted output)."""
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("grading with workers=0 needs the main thread (it uses SIGALRM timers)")
    _quiet_math_verify()

    def on_alarm(signum, frame):
        raise _ItemTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    stats = {"timeouts": 0, "crashes": 0, "gold_failures": 0}
    parse_cache: dict[str, list] = {}  # as in the workers: golds and answers share parses

    def cached_parse(latex: str):
        parsed = parse_cache.get(latex)
        if parsed is None:
            parsed = parse_cache[latex] = _parse(latex)
        return parsed
    try:
        for gold, items in gold_tasks:
            start = time.monotonic()
            try:
                signal.setitimer(signal.ITIMER_REAL, timeout)
                parsed_gold = cached_parse(gold)
                signal.setitimer(signal.ITIMER_REAL, 0)
            except _ItemTimeout:
                stats["gold_failures"] += 1
                for task_id, _ in items:
                    results[task_id] = (False, GOLD_FAILED, time.monotonic() - start)
                    on_done()
                continue
            for task_id, answer in items:
                start = time.monotonic()
                try:
                    signal.setitimer(signal.ITIMER_REAL, timeout)
                    if item_hook is not None:
                        item_hook(gold, answer)
                    verdict, status = _verify(parsed_gold, cached_parse(answer)), OK
                    signal.setitimer(signal.ITIMER_REAL, 0)
                except _ItemTimeout:
                    verdict, status = False, TIMEOUT
                    stats["timeouts"] += 1
                except MemoryError:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    verdict, status = False, CRASH
                    stats["crashes"] += 1
                results[task_id] = (verdict, status, time.monotonic() - start)
                on_done()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return stats


def _make_chunks(gold_tasks, n_workers: int,
                 total_steps: float | None = None) -> list[list[tuple[str, list]]]:
    """Pack per-gold task lists into chunks (lists of gold groups) of about ``cap`` steps.

    A gold's items stay together (so a worker parses it once) unless the group is larger than
    ``cap``; ``cap`` gives every worker ~16 chunks of the whole job (``total_steps``, an estimate
    when the tasks arrive in slices; default: these tasks), small enough to balance the tail and
    large enough that the per-chunk round trip does not matter.
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


def _grade_in_pool(pool: _Pool, chunk_batches, timeout, results, on_done):
    """Run every task on ``pool``; fill ``results[task_id] = (verdict, status, seconds)``.

    ``chunk_batches`` yields lists of chunks (see :func:`_make_chunks`); it is consumed lazily,
    whenever fewer than two chunks per worker are waiting, so the caller can extract answers
    slice by slice while the workers already verify the first ones.

    One loop owns all deadlines: it hands chunks to idle workers and sleeps in ``wait()`` until a
    batch of verdicts, a death or the earliest deadline. The deadline of a busy worker is the
    start of the step it is running (read from its shared progress value) plus ``timeout``; a
    worker past it is SIGKILLed. The step it was running (a gold parse or one item) is graded
    False; the chunk's other unfinished items, including finished ones whose verdicts were
    still in the dead worker's batch, are requeued.
    """
    queue: list[list[tuple[str, list]]] = []  # pop() from the end = next chunk
    source = iter(chunk_batches)
    source_done = False
    stats = {"timeouts": 0, "crashes": 0, "gold_failures": 0, "replaced": 0}
    failed_golds: set[str] = set()
    chunk_ids = iter(range(1 << 62))

    def refill() -> None:
        nonlocal source_done
        while not source_done and len(queue) < 2 * len(pool.workers):
            batch = next(source, None)
            if batch is None:
                source_done = True
            else:
                queue[:0] = reversed(batch)  # behind requeued remainders and earlier chunks

    def finish(task_id, verdict, status, seconds):
        results[task_id] = (verdict, status, seconds)
        on_done()

    def give_up_on_current(worker: _Worker, status: str) -> None:
        """``worker`` died or overran: fail its running step, requeue the rest, replace it."""
        chunk = worker.chunk
        now = time.monotonic()
        step, started = worker.running_step(now)
        failed_group, failed_item = chunk.steps[min(step, len(chunk.steps) - 1)]
        rest = []
        for g, (gold, items) in enumerate(chunk.groups):
            if g == failed_group and failed_item < 0:  # the gold itself timed out or crashed
                stats["gold_failures"] += 1
                failed_golds.add(gold)
                for task_id, _ in items:
                    finish(task_id, False, GOLD_FAILED, now - started)
                continue
            if g == failed_group and items[failed_item][0] not in chunk.reported:
                task_id = items[failed_item][0]
                stats["timeouts" if status == TIMEOUT else "crashes"] += 1
                finish(task_id, False, status, now - started)
                chunk.reported.add(task_id)
            remaining = [item for item in items if item[0] not in chunk.reported]
            if remaining:
                rest.append((gold, remaining))
        if rest:
            queue.append(rest)
        worker.chunk = None
        pool.replace(worker)
        stats["replaced"] += 1

    def handle(worker: _Worker, message) -> None:
        """Record a batch of verdicts ``("results", chunk_id, [(task_id, verdict, s)], done)``."""
        chunk = worker.chunk
        if message[0] != "results" or chunk is None or message[1] != chunk.chunk_id:
            return
        for task_id, verdict, seconds in message[2]:
            chunk.reported.add(task_id)
            finish(task_id, verdict, OK, seconds)
        if message[3]:
            worker.chunk = None

    def drain(worker: _Worker) -> None:
        """Handle every message ``worker`` already sent (its handshake, batches of verdicts);
        if it died with work pending, its running step is a crash (a dead process sends nothing
        more, so nothing is lost); if it died while starting, the pool cannot work at all."""
        try:
            while worker in pool.workers and worker.conn.poll():
                if not worker.ready:
                    pool.read_ready(worker)
                elif worker.chunk is not None:
                    handle(worker, worker.conn.recv())
                else:
                    worker.conn.recv()  # nothing is expected from an idle worker: discard
        except (EOFError, OSError):
            pass
        if worker not in pool.workers or worker.process.is_alive():
            return
        if not worker.ready:
            raise _startup_failure(worker, "it exited before its handshake")
        if worker.chunk is not None:
            give_up_on_current(worker, CRASH)
        else:
            pool.replace(worker)  # died while idle (e.g. killed from outside)
            stats["replaced"] += 1

    def dispatch(worker: _Worker) -> None:
        while worker.ready and worker.chunk is None and queue:
            groups = []
            for gold, items in queue.pop():
                if gold in failed_golds:  # do not burn another timeout on a bad gold
                    for task_id, _ in items:
                        finish(task_id, False, GOLD_FAILED, 0.0)
                else:
                    groups.append((gold, items))
            if not groups:
                continue
            chunk = _Chunk(next(chunk_ids), groups)
            worker.progress.value = _pack_progress(0, time.monotonic())
            try:
                worker.conn.send((chunk.chunk_id, groups))
            except OSError:  # died since it last answered: retry on a fresh worker
                queue.append(groups)
                pool.replace(worker)
                stats["replaced"] += 1
                return
            worker.chunk = chunk

    def overran(worker: _Worker) -> bool:
        now = time.monotonic()
        return worker.chunk is not None and now - worker.running_step(now)[1] > timeout

    try:
        while True:
            refill()
            if not queue and not any(w.chunk is not None for w in pool.workers):
                break
            for worker in list(pool.workers):
                if worker.ready and worker.chunk is None and queue and not worker.process.is_alive():
                    pool.replace(worker)  # died while idle (e.g. killed from outside)
                    stats["replaced"] += 1
                    continue
                dispatch(worker)
            refill()  # extract the next slice now, while the workers verify
            watched = [w for w in pool.workers if w.chunk is not None or not w.ready]
            if not watched:
                continue
            # wake up at the earliest deadline: a step's time limit or a worker's start-up limit
            now = time.monotonic()
            deadlines = [w.running_step(now)[1] + timeout if w.ready else w.started + _STARTUP_TIMEOUT_S
                         for w in watched]
            by_handle = {}
            for w in watched:
                by_handle[w.conn] = w
                by_handle[w.process.sentinel] = w
            ready = _wait_ready(list(by_handle), timeout=max(0.0, min(deadlines) - now))
            for worker in {id(by_handle[h]): by_handle[h] for h in ready}.values():
                if worker in pool.workers:
                    drain(worker)
            now = time.monotonic()
            for worker in list(pool.workers):
                if not worker.ready and now - worker.started > _STARTUP_TIMEOUT_S:
                    raise _startup_failure(worker, f"no handshake within {_STARTUP_TIMEOUT_S:.0f} s")
                if overran(worker):
                    drain(worker)  # a last batch may be sitting in the pipe: read it first
                    if worker in pool.workers and overran(worker):
                        give_up_on_current(worker, TIMEOUT)
    except BaseException:
        # interrupted mid-batch (e.g. KeyboardInterrupt): workers may hold stale work, drop them
        pool.close()
        raise
    return stats


# Pools kept between calls, keyed by their configuration: workers stay warm (imported modules,
# parsed golds and answers, the LaTeX parser's prediction cache), so a trainer calling
# compute_rewards every step pays the process start-up once.
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
        pools = [p for p in _SHARED_POOLS.values() if p.owner_pid == os.getpid()]
        _SHARED_POOLS.clear()
    for pool in pools:
        with pool.lock:
            pool.close()


atexit.register(shutdown_workers)


def _resolve_workers(workers: int | None) -> int:
    if workers is None:
        return os.cpu_count() or 1
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = in-process), got {workers}")
    return int(workers)


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
) -> GradeReport:
    """Grade ``completions[i]`` against ``golds[i]`` and report verdicts with statistics.

    ``workers``: processes (default ``os.cpu_count()``; 0 grades in-process with a SIGALRM timer,
    which cannot interrupt C code: use workers on untrusted output).
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
    """
    if len(golds) != len(completions):
        raise ValueError(f"golds and completions differ in length: {len(golds)} vs {len(completions)}")
    if not timeout or timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    n_workers = _resolve_workers(workers)
    started = time.monotonic()
    n = len(golds)
    for i, gold in enumerate(golds):
        if not isinstance(gold, str) or not gold.strip():
            raise ValueError(f"gold answer of item {i} is empty or not a string: {gold!r}")
    extracted: list[str | None] = [None] * n
    sources: list[str | None] = [None] * n
    status = [NO_ANSWER] * n
    verdicts = [False] * n
    seconds = [0.0] * n

    # distinct (gold, normalised answer) -> task id; items keep a pointer to their task
    task_of_item: list[int] = [-1] * n
    task_ids: dict[tuple[str, str], int] = {}
    golds_with_tasks: set[str] = set()
    results: dict[int, tuple[bool, str, float]] = {}
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=0, desc="grading", unit="answer", file=sys.stderr, dynamic_ncols=True)
    on_done = bar.update if bar is not None else (lambda n=1: None)
    extracted_upto = 0

    def discover(hi: int) -> list[tuple[str, list[tuple[int, str]]]]:
        """Extract items ``extracted_upto..hi``; their new tasks grouped by gold."""
        nonlocal extracted_upto
        per_gold: dict[str, list[tuple[int, str]]] = {}
        for i in range(extracted_upto, hi):
            answer, source = extract_answer_with_source(completions[i])
            extracted[i], sources[i] = answer, source
            if answer is None:
                continue
            if len(answer) > max_answer_chars:
                status[i] = TOO_LONG
                continue
            key = (golds[i], normalize_answer(answer))
            if not key[1]:
                continue
            task = task_ids.get(key)
            if task is None:
                task = task_ids[key] = len(task_ids)
                per_gold.setdefault(key[0], []).append((task, key[1]))
            task_of_item[i] = task
        extracted_upto = hi
        golds_with_tasks.update(per_gold)
        if bar is not None and per_gold:
            bar.total = len(task_ids)
            bar.refresh()
        return list(per_gold.items())

    def chunk_batches(n_slots: int):
        """Chunks of the tasks of each slice of items (a small first slice gets the workers going,
        the parent extracts the next slices while they verify); never an empty batch."""
        size = _FIRST_SLICE
        while extracted_upto < n:
            groups = discover(min(n, extracted_upto + size))
            size = _SLICE
            if groups:
                # chunk size from the whole job's expected number of steps, extrapolated
                steps = len(task_ids) + len(golds_with_tasks)
                yield _make_chunks(groups, n_slots, steps * n / extracted_upto)

    try:
        if n_workers == 0:
            discover(n)
            per_gold: dict[str, list[tuple[int, str]]] = {}
            for (gold, answer), task in task_ids.items():
                per_gold.setdefault(gold, []).append((task, answer))
            stats = _grade_in_process(list(per_gold.items()), float(timeout), item_hook, results,
                                      on_done)
        else:
            batches = chunk_batches(n_workers)
            first = next(batches, None)  # no pool at all when nothing needs verifying
            if first is None:
                stats = {}
            else:
                batches = itertools.chain([first], batches)
                pool = (_shared_pool(n_workers, start_method, memory_limit_bytes, item_hook)
                        if keep_workers else None)
                if pool is not None:
                    try:
                        stats = _grade_in_pool(pool, batches, float(timeout), results, on_done)
                    finally:
                        pool.lock.release()
                else:
                    size = n_workers if extracted_upto < n else min(n_workers, len(task_ids))
                    pool = _Pool(size, start_method=start_method,
                                 memory_limit_bytes=memory_limit_bytes, item_hook=item_hook)
                    try:
                        stats = _grade_in_pool(pool, batches, float(timeout), results, on_done)
                    finally:
                        pool.close()
    finally:
        if bar is not None:
            bar.close()

    for i, task in enumerate(task_of_item):
        if task >= 0:
            verdicts[i], status[i], seconds[i] = results[task]
    n_with_task = sum(1 for t in task_of_item if t >= 0)
    return GradeReport(
        verdicts=verdicts,
        extracted=extracted,
        sources=sources,
        status=status,
        seconds=seconds,
        n_unique_golds=len(golds_with_tasks),
        n_unique_pairs=len(task_ids),
        cache_hits=n_with_task - len(task_ids),
        timeouts=stats.get("timeouts", 0),
        crashes=stats.get("crashes", 0),
        gold_failures=stats.get("gold_failures", 0),
        workers_replaced=stats.get("replaced", 0),
        wall_seconds=time.monotonic() - started,
    )


def grade(
    golds: Sequence[str],
    completions: Sequence[str],
    *,
    workers: int | None = None,
    timeout: float = 5.0,
) -> list[bool]:
    """One verdict per ``(gold, completion)`` pair, in input order (see :func:`grade_report`)."""
    return grade_report(golds, completions, workers=workers, timeout=timeout).verdicts


def compute_rewards(
    golds: Sequence[str],
    completions: Sequence[str],
    *,
    kind: str = "binary",
    workers: int | None = None,
    timeout: float = 5.0,
) -> list[float]:
    """Scalar reward per completion for RL training.

    ``kind="binary"``: 1.0 when math-verify accepts the answer, else 0.0 (the paper's reward).
    ``kind="partial"``: 1.0 correct; :data:`PARTIAL_FORMAT_CREDIT` (0.1) for a wrong (or timed
    out) answer given in a complete ``\\boxed{}``; 0.0 when there is no boxed answer (fallback
    phrases earn no format credit). It exists to exercise continuous rewards in the advantages.
    """
    if kind not in REWARD_KINDS:
        raise ValueError(f"unknown reward kind {kind!r}; allowed kinds: {', '.join(REWARD_KINDS)}")
    report = grade_report(golds, completions, workers=workers, timeout=timeout)
    if kind == "binary":
        return [1.0 if v else 0.0 for v in report.verdicts]
    return [
        1.0 if v else (PARTIAL_FORMAT_CREDIT if src == "boxed" else 0.0)
        for v, src in zip(report.verdicts, report.sources)
    ]

