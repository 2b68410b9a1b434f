"""math-verify parsing and verification, and the exact fast-parse patch used in the workers.

* **Parsing** (:func:`_parse`): gold and extracted answer are wrapped as ``"$" + x + "$"`` and
  parsed with ``LatexExtractionConfig`` only. On every gold of MATH500/AIME24/AIME25/HMMT-Feb-25
  the ``$..$``, ``\\boxed{..}`` and ``$\\boxed{..}$`` wrappings give identical parses (studied
  when this was written); ``$..$`` is the simplest. ``ExprExtractionConfig`` is deliberately NOT
  used: it feeds text to sympy ``parse_expr``, which ``eval``\\ s generated Python code; even
  behind math-verify's regex that is an avoidable risk for untrusted model output, and everything
  it accepts (``1/2``, ``0.5``, ``2*x``) is also accepted by the LaTeX parser. (The LaTeX parser
  reaches sympy's ``parse_expr`` only through ``sympy.Number(token)`` on number tokens its ANTLR
  grammar matched, i.e. digits and a decimal point, which cannot carry code; the tests feed
  ``__import__`` payloads and check nothing ran.) math-verify's own timeouts are disabled here:
  the caller enforces the time limit (the parent process, or an interval timer in-process).
* **Fast parsing in the workers** (:func:`_enable_fast_parsing`): most of a stock parse of a
  non-trivial answer is ANTLR's uncached full-context LL prediction, and most of the rest sympy's
  ``parse_expr`` on number tokens. Workers use ANTLR's documented two-stage strategy (SLL
  prediction; the stock LL parser whenever SLL reports an error), build digit-only number tokens
  as ``Integer(int(text))`` and reuse other number tokens' values: the same parse output (tested
  against the stock parser on a corpus), in less time (perf/bench_grading.py prints the
  ratio it measures). The caller's process keeps the stock parser.
* **Warm-up** (:func:`_warm_up`): a new worker grades a few generic pairs before it takes work,
  so that building the parser does not count against the first real items' deadlines.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from .extract import wrap_latex

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


class _LRU:
    """Small bounded dict used for per-worker caches (keeps worker memory bounded)."""

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
# Fast parsing (worker processes only)
# --------------------------------------------------------------------------------------------

# Set in a worker process once _enable_fast_parsing succeeded (never in the caller's process).
# Read it from this module: a copy imported elsewhere would not see it change.
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

    1. **SLL first, then stock LL** (ANTLR's documented two-stage parsing). Most of a
       math-verify parse of a non-trivial answer (tuples, radicals, ``\\pi``, ``\\text{}``,
       degrees) is ANTLR's *full-context* LL prediction (``execATNWithFullContext``), which
       ANTLR never caches, so every parse pays it again. For ``PredictionMode.SLL`` the
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
       full ``parse_expr`` (tokenizer, transformations, ``eval`` of the generated code) per
       number token. For a token of ASCII digits only, the stock method strips leading zeros
       and ``sympy.Number`` returns ``Integer(int(text))`` (its ``auto_number`` transformation
       wraps the digits in ``Integer(..)``), which we build directly; any other token goes to
       the stock method once per distinct text and the (immutable) result is reused.

    The tests compare this process's parse output (``srepr`` of every element) with a stock
    process on the fixtures, the real gold formats and a generated corpus, and the benchmark
    asserts identical verdicts against a stock loop. Returns False (changing nothing) when
    latex2sympy / antlr4 lack the expected internals (another version): grading then simply
    runs with the stock parser.
    """
    global _FAST_PARSING_ENABLED
    if _FAST_PARSING_ENABLED:
        return True
    try:
        from antlr4.dfa.DFA import DFA
        from antlr4.PredictionContext import PredictionContextCache
        from latex2sympy2_extended import latex2sympy2 as l2s

        converter = l2s._Latex2Sympy
        stock_create_parser = converter.create_parser
        stock_parse_number = converter.parse_number
        probe = stock_create_parser(converter(), "1")
        if not (hasattr(probe, "_interp") and hasattr(probe, "atn") and callable(probe.math)):
            return False
        sll_dfa = [DFA(state, index) for index, state in enumerate(probe.atn.decisionToState)]
        sll_context_cache = PredictionContextCache()
        create_parser = _sll_first_create_parser(stock_create_parser, sll_dfa, sll_context_cache)
        parse_number = _fast_parse_number(stock_parse_number)
    except Exception:
        return False
    converter.create_parser = create_parser
    converter.parse_number = parse_number
    _FAST_PARSING_ENABLED = True
    return True


def _sll_first_create_parser(stock_create_parser, sll_dfa, sll_context_cache):
    """A ``create_parser`` method whose parser's ``math()`` tries SLL prediction (with its own
    DFA cache) and, on any error, parses again with a fresh stock parser."""
    from antlr4.atn.ParserATNSimulator import ParserATNSimulator
    from antlr4.atn.PredictionMode import PredictionMode

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

    create_parser.__wrapped__ = stock_create_parser
    return create_parser


def _fast_parse_number(stock_parse_number):
    """A ``parse_number`` method: ASCII digits -> ``Integer(int(text))``; any other short token
    through the stock method once, its (immutable) value then reused."""
    import sympy

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

    parse_number.__wrapped__ = stock_parse_number
    return parse_number


# --------------------------------------------------------------------------------------------
# Warm-up
# --------------------------------------------------------------------------------------------

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
