"""Tests of rsgrpo.grading: extraction, verdicts equal to plain math-verify, hard timeouts, crashes.

Fixtures under tests/fixtures/grading/ hold gold answers in the formats of MATH500 / AIME / HMMT
(intervals, degrees, tuples, \\text{}, radicals, matrices) with equivalent and wrong completions.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import multiprocessing
import signal
import time
from pathlib import Path

import pytest
from math_verify import LatexExtractionConfig, parse, verify

from rsgrpo.grading import (
    PARTIAL_FORMAT_CREDIT,
    compute_rewards,
    extract_answer,
    extract_answer_with_source,
    grade,
    grade_report,
    normalize_answer,
    shutdown_workers,
)

FIXTURES = Path(__file__).parent / "fixtures" / "grading"
EQUIVALENCES = [json.loads(line) for line in (FIXTURES / "equivalences.jsonl").read_text().splitlines()]

# Markers for the test-only worker hook (answers that make the worker misbehave on purpose).
HANG_MARKER = "31415926"
EXIT_MARKER = "27182818"
MEMORY_MARKER = "16180339"


def misbehaving_worker_hook(gold: str, answer: str) -> None:
    """Injected into grading workers: hang forever, die, or exhaust memory on marker answers."""
    if answer == HANG_MARKER:
        time.sleep(3600)
    elif answer == EXIT_MARKER:
        os._exit(13)
    elif answer == MEMORY_MARKER:
        blob = bytearray(8 * 1024**3)  # far beyond the worker's RLIMIT_AS: MemoryError
        del blob


def plain_verdict(gold: str, completion: str) -> bool:
    """The reference: math-verify on the extracted (not normalised) answer, no pool, no cache."""
    answer = extract_answer(completion)
    if answer is None:
        return False
    config = [LatexExtractionConfig()]
    return bool(verify(parse("$" + gold + "$", config), parse("$" + answer + "$", config)))


# ---------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are not structure
        ("\\boxed{a{b{c}}d}", "a{b{c}}d"),
        ("first \\boxed{1} then \\fbox{2}", "2"),
        ("\\boxed{3} and a truncated \\boxed{4", "3"),
        ("\\boxed 5 is it", "5"),
        ("\\boxed{$7$}", "7"),
        ("\\boxed{\\$18.90}", "\\$18.90"),
        ("\\boxed{\\pi.}", "\\pi"),
        ("\\boxed{ 12 }", "12"),
        ("The final answer is $42$. I hope it is correct.", "42"),
        ("Final Answer: 17", "17"),
        ("so the answer is 3.5. Done", "3.5"),
        ("ANSWER: x+1\nmore text", "x+1"),
        ("no answer here", None),
        ("\\boxed{}", None),
        ("", None),
        ("\\boxedfoo{3}", None),
    ],
)
def test_extract_answer_cases(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_reports_source_for_format_credit():
    assert extract_answer_with_source("\\boxed{4}") == ("4", "boxed")
    assert extract_answer_with_source("the answer is 4") == ("4", "fallback")
    assert extract_answer_with_source("nothing") == (None, None)


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" * 150_000,  # 1 MB of unclosed boxes: naive rescans would be quadratic
        "{" * 500_000 + "}" * 500_000 + "\\boxed{1}",
        "\\boxed{" + "{" * 499_990 + "1",
        "the answer is " * 80_000,
        "\\\\" * 500_000 + "\\boxed{2}",
        "a" * 1_000_000,
    ],
    ids=["unclosed-boxes", "deep-braces", "unclosed-deep", "many-phrases", "backslashes", "plain"],
)
def test_extract_answer_is_linear_on_1mb_inputs(text):
    start = time.perf_counter()
    extract_answer(text)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------------
# normalisation and verdicts
# ---------------------------------------------------------------------------------------------


def test_normalize_answer_merges_spellings():
    assert normalize_answer("\\dfrac{1}{2}") == "\\frac{1}{2}"
    assert normalize_answer("\\left( 3, 4 \\right]") == "( 3, 4 ]"
    assert normalize_answer("10,\\! 080") == "10,080"
    assert normalize_answer("\\leftarrow") == "\\leftarrow"  # a longer command is left alone
    assert normalize_answer("\\left\\left(") == "\\left\\left("  # not a fixed point: untouched


def _variants(completion: str) -> list[str]:
    """Equivalent spellings whose normalised answers coincide (they exercise the cache)."""
    return [
        completion,
        completion.replace("\\frac", "\\dfrac"),
        completion.replace("(", "\\left(").replace(")", "\\right)"),
        completion.replace(",", ",\\!"),
    ]


def test_fixture_verdicts_in_process():
    report = grade_report(
        [row["gold"] for row in EQUIVALENCES], [row["completion"] for row in EQUIVALENCES], workers=0
    )
    wrong = [
        (row["why"], row["gold"], row["completion"], verdict)
        for row, verdict in zip(EQUIVALENCES, report.verdicts)
        if verdict != row["expected"]
    ]
    assert not wrong
    # the fixture is only meaningful if it holds both equivalent and wrong answers
    assert 0 < sum(report.verdicts) < len(report.verdicts)


def test_pool_verdicts_equal_plain_math_verify_on_every_item():
    golds, completions = [], []
    for row in EQUIVALENCES:
        for variant in _variants(row["completion"]):
            golds.append(row["gold"])
            completions.append(variant)
    report = grade_report(golds, completions, workers=2, timeout=20)
    assert report.n_items == len(golds)
    assert report.cache_hits > 0  # equivalent spellings shared one verification
    assert report.n_unique_pairs + report.cache_hits + report.n_no_answer == report.n_items
    compared = 0
    for gold, completion, verdict, status in zip(golds, completions, report.verdicts, report.status):
        if status == "timeout":
            continue
        assert verdict == plain_verdict(gold, completion), (gold, completion, status)
        compared += 1
    assert compared >= len(golds) - 2
    # and against the fixture's expectations for the unmodified completions
    for row, verdict in zip(EQUIVALENCES, report.verdicts[:: len(_variants("x"))]):
        assert verdict == row["expected"], row["why"]


def test_grade_wraps_report_and_keeps_order():
    golds = [str(i) for i in range(40)]
    completions = [f"\\boxed{{{i if i % 3 else i + 1}}}" for i in range(40)]
    assert grade(golds, completions, workers=2) == [i % 3 != 0 for i in range(40)]


def test_cache_counts_repeated_answers():
    golds = ["\\frac{1}{2}"] * 6 + ["3"] * 4
    completions = ["\\boxed{1/2}", "\\boxed{\\dfrac{1}{2}}", "\\boxed{\\frac{1}{2}}", "\\boxed{1/2}",
                   "\\boxed{0.5}", "nothing"] + ["\\boxed{3}"] * 3 + ["\\boxed{4}"]
    report = grade_report(golds, completions, workers=0)
    # distinct normalised pairs: (1/2), (\frac{1}{2}), (0.5), (3), (4)
    assert report.n_unique_pairs == 5
    assert report.cache_hits == 4
    assert report.n_unique_golds == 2
    assert report.verdicts == [True] * 5 + [False] + [True] * 3 + [False]
    assert report.status[5] == "no_answer"


def test_compute_rewards_kinds():
    golds = ["5", "5", "5", "5"]
    completions = ["\\boxed{5}", "\\boxed{6}", "the answer is 6", "no idea"]
    assert compute_rewards(golds, completions, workers=0) == [1.0, 0.0, 0.0, 0.0]
    assert compute_rewards(golds, completions, kind="partial", workers=0) == [
        1.0, PARTIAL_FORMAT_CREDIT, 0.0, 0.0,
    ]
    with pytest.raises(ValueError, match="allowed kinds: binary, partial"):
        compute_rewards(golds, completions, kind="dense")


def test_input_errors():
    with pytest.raises(ValueError, match="differ in length"):
        grade(["1"], ["\\boxed{1}", "\\boxed{2}"], workers=0)
    with pytest.raises(ValueError, match="gold answer of item 1 is empty"):
        grade(["1", "  "], ["\\boxed{1}", "\\boxed{2}"], workers=0)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        grade(["1"], ["\\boxed{1}"], workers=-1)


# ---------------------------------------------------------------------------------------------
# hostile inputs, hard timeouts, crashes
# ---------------------------------------------------------------------------------------------


def hostile_completions(marker_file: Path) -> list[str]:
    nested = 500
    return [
        "\\boxed{" + "{" * 100_000 + "}" * 100_000 + "}",
        "\\boxed{" + "{" * nested + "1" + "}" * nested + "}",
        "\\boxed{10^{10^{10^{10}}}}",
        "\\boxed{100000!}",
        "\\boxed{(10^{100})!}",
        "\\boxed{9^{9^{9^{9}}}}",
        "\\boxed{2^{2^{2^{2^{2^{2}}}}}}",
        "a" * 1_000_000,
        "\\boxed{" * 140_000,
        "\\boxed{" + "1+" * 500_000 + "1}",
        "\\boxed{",
        "\\boxed{\x00\x01\x02\x1b[31m}",
        "\\boxed{\ud800}",
        "\\boxed{}" * 5000,
        "\\boxed{1}" * 10_000,
        "\\boxed{\\frac{1}{0}}",
        "\\boxed{0^0}",
        "\\boxed{\\infty - \\infty}",
        "\\boxed{\\int_0^\\infty e^{-x^2} dx}",
        "\\boxed{\\sum_{n=1}^{10^{10}} n}",
        "\\boxed{\\lim_{x\\to 0} \\frac{\\sin x}{x}}",
        "\\boxed{" + "x^" * 300 + "x}",
        "\\boxed{" + "\\sqrt{" * 200 + "2" + "}" * 200 + "}",
        f"\\boxed{{__import__('os').system('touch {marker_file}')}}",
        f"the answer is $__import__('pathlib').Path('{marker_file}').touch()$",
        "\\boxed{\\text{" + "a" * 1500 + "}}",
        "\\boxed{1,2,3,\\ldots}",
        "\\boxed{\\left(\\right.}",
        "\\boxed{\\}",
        "\\boxed{\\mathbb{R}}",
        "\\boxed{x = y = z = 1}",
        "\\boxed{\U0001F600}",
        "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
        "\\boxed{10^{-10^{10}}}",
        "\\boxed{1e100000}",
        "\\boxed{\\binom{10^{6}}{5 \\cdot 10^{5}}}",
        "\\boxed{\\prod_{k=1}^{10^{9}} k}",
        "the answer is " + "9" * 1_000_000,
        "\\boxed{\\frac{d}{dx} x^{10^{10}}}",
    ]


def test_hostile_corpus_returns_within_the_limit(tmp_path):
    marker_file = tmp_path / "pwned"
    hostile = hostile_completions(marker_file)
    assert len(hostile) >= 30
    # interleave distinct easy items so that a lost or shifted result would show
    golds, completions, expected = [], [], []
    for i, completion in enumerate(hostile):
        golds += ["42", str(1000 + i)]
        completions += [completion, f"\\boxed{{{1000 + i}}}"]
        expected += [None, True]
    timeout = 1.5
    children_before = set(multiprocessing.active_children())
    start = time.monotonic()
    report = grade_report(golds, completions, workers=2, timeout=timeout, keep_workers=False)
    wall = time.monotonic() - start
    assert report.n_items == len(golds)
    assert max(report.seconds) <= timeout + 1.0, max(report.seconds)
    for i, want in enumerate(expected):
        if want is not None:
            assert report.verdicts[i] is True and report.status[i] == "ok", i
        else:
            assert report.verdicts[i] is False, (i, completions[i][:80])
    assert not marker_file.exists(), "model output was executed"
    # every hostile item ran at most once: timeouts bound the wall time (plus pool start-up)
    assert wall <= (report.timeouts + report.crashes) * (timeout + 1.0) + 60
    assert report.timeouts >= 3  # the corpus really contains items that hang inside sympy
    assert set(multiprocessing.active_children()) <= children_before  # killed workers are gone


def test_hanging_crashing_and_memory_hungry_workers_are_replaced():
    golds = ["1", "2", "3", "4", "5", "6", "7"]
    completions = [
        "\\boxed{1}", f"\\boxed{{{HANG_MARKER}}}", "\\boxed{3}", f"\\boxed{{{EXIT_MARKER}}}",
        "\\boxed{5}", f"\\boxed{{{MEMORY_MARKER}}}", "\\boxed{7}",
    ]
    timeout = 1.0
    children_before = set(multiprocessing.active_children())
    start = time.monotonic()
    report = grade_report(
        golds, completions, workers=1, timeout=timeout, memory_limit_bytes=1024**3,
        item_hook=misbehaving_worker_hook, keep_workers=False,
    )
    wall = time.monotonic() - start
    assert report.verdicts == [True, False, True, False, True, False, True]
    assert report.status == ["ok", "timeout", "ok", "crash", "ok", "crash", "ok"]
    assert report.timeouts == 1 and report.crashes == 2
    assert report.workers_replaced == 3
    assert report.seconds[1] <= timeout + 1.0
    assert wall < 30
    assert set(multiprocessing.active_children()) <= children_before


def test_kept_pool_is_reused_and_survives_a_killed_worker():
    children_before = set(multiprocessing.active_children())
    first = grade_report(["2"], [f"\\boxed{{{HANG_MARKER}}}"], workers=1, timeout=1.0,
                         item_hook=misbehaving_worker_hook)
    assert first.status == ["timeout"] and first.workers_replaced == 1
    pool_workers = set(multiprocessing.active_children()) - children_before
    assert len(pool_workers) == 1  # the hung worker is gone, its replacement kept
    second = grade_report(["2", "3"], ["\\boxed{2}", "\\boxed{4}"], workers=1, timeout=5.0,
                          item_hook=misbehaving_worker_hook)
    assert second.verdicts == [True, False] and second.workers_replaced == 0
    assert set(multiprocessing.active_children()) - children_before == pool_workers  # reused
    # a worker killed from outside between calls is noticed and replaced
    (worker,) = pool_workers
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(timeout=5)
    third = grade_report(["5"], ["\\boxed{5}"], workers=1, timeout=5.0, item_hook=misbehaving_worker_hook)
    assert third.verdicts == [True] and third.status == ["ok"]
    shutdown_workers()
    assert set(multiprocessing.active_children()) <= children_before


def test_fork_start_method_gives_the_same_verdicts():
    golds = [row["gold"] for row in EQUIVALENCES[:12]]
    completions = [row["completion"] for row in EQUIVALENCES[:12]]
    report = grade_report(golds, completions, workers=2, start_method="fork", keep_workers=False)
    assert report.verdicts == [row["expected"] for row in EQUIVALENCES[:12]]
    with pytest.raises(ValueError, match="start_method must be"):
        grade_report(["1"], ["\\boxed{1}"], workers=1, start_method="spawn", keep_workers=False)


def test_in_process_grading_times_out_with_a_timer():
    report = grade_report(
        ["1", "2"], [f"\\boxed{{{HANG_MARKER}}}", "\\boxed{2}"], workers=0, timeout=1.0,
        item_hook=misbehaving_worker_hook,
    )
    assert report.status == ["timeout", "ok"]
    assert report.verdicts == [False, True]
    assert report.seconds[0] < 2.0
