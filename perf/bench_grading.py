"""Benchmark: rsgrpo.grading.grade vs a plain math-verify loop on a realistic sample set.

The sample set imitates what pass@k evaluation grades: P problems x S samples from a peaked policy,
i.e. a handful of distinct final answers per problem (Zipf-like frequencies), several of them
equivalent spellings of one value ("1/2", "\\frac{1}{2}", "0.5"), wrapped in varied reasoning text.
Golds follow the formats of MATH500/AIME/HMMT: integers, fractions, radicals, tuples, intervals,
degrees, multiples of pi, decimals, \\text{} words.

Both graders run in the same run on the same data. The plain loop
(``verify(parse("$gold$"), parse("$answer$"))`` per sample, LaTeX extraction, extraction by
``extract_answer``) is slow, so by default it runs on a quarter of the problems (~8000 samples;
whole problems spread evenly over the set, each in sample order, so math-verify's built-in LRU
cache helps it as it would in practice) and its time is
extrapolated linearly to the whole set (the output says so); ``--plain-subset 0`` runs it on all.
The plain loop is warmed on another sample set first (its first parses in a process are slower),
and also timed with the samples shuffled, which defeats math-verify's lru_cache(20) on parsed
LaTeX: the ordered ratio is what scoring a problem-major samples file gains, the shuffled one what
the (gold, answer) dedup is worth by itself.
Verdicts must be identical on every sample the plain loop graded (an AssertionError otherwise).
The plain loop is stock math-verify in this process (the grader's fast parsing lives only in its
worker processes; the script asserts this process's parser is untouched).
Then the worst case for the cache: all-distinct answers, reported as items/s. Finally the parse
speed of the workers' fast parser (rsgrpo.grading.fastparse._enable_fast_parsing) against the stock
one on distinct strings (golds and answers of the sets above), each parsed once in a fresh process
after the workers' warm-up: the ratio is printed by the run.

Timings: wall clock (the headline ratio, on the machine as it is: the load average is printed next
to each figure) and CPU seconds (this process plus the grading workers, from /proc), whose ratio
depends much less on what else the machine runs. The headline run of the grader is its first call
on this sample set (worker parse caches cold; the pool itself, a one-off per process, is started
and warmed before and timed separately); a second, warm call is printed as such, not used.

    python perf/bench_grading.py                      # 500 x 64, plain loop on ~8000 samples
    python perf/bench_grading.py --problems 50 --samples 16 --plain-subset 0   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rsgrpo.grading import extract_answer, grade, grade_report  # noqa: E402

_WORDS = ("east", "west", "even", "odd", "ellipse", "parabola")


def _fraction_forms(value: Fraction) -> list[str]:
    p, q = value.numerator, value.denominator
    forms = [f"\\frac{{{p}}}{{{q}}}", f"{p}/{q}", f"\\dfrac{{{p}}}{{{q}}}"]
    if p < 10 and q < 10:
        forms.append(f"\\tfrac{p}{q}")  # one-digit arguments need no braces
    x = float(value)
    if len(repr(x)) <= 8:  # terminating decimal
        forms.append(repr(x))
    return forms


def make_problem(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """(gold, equivalent answer spellings, wrong answers) in one of the benchmark formats."""
    kind = rng.choice(["int", "int", "int", "frac", "sqrt", "tuple", "interval", "degree", "pi",
                       "decimal", "text"])
    if kind == "int":
        n = rng.randint(0, 999)
        return str(n), [str(n), f"{n}.", f"{n}.0"], [str(n + 1), str(n - 1), str(2 * n + 3), str(n * 10)]
    if kind == "frac":
        q = rng.choice([2, 3, 4, 5, 6, 8, 9, 12, 16, 25])
        p = rng.randint(1, 3 * q)
        while Fraction(p, q).denominator == 1:
            p += 1
        v = Fraction(p, q)
        gold = f"\\frac{{{v.numerator}}}{{{v.denominator}}}"
        wrong = [f"\\frac{{{v.numerator + 1}}}{{{v.denominator}}}", f"{v.denominator}/{v.numerator}",
                 str(round(float(v), 1) + 0.1)]
        return gold, _fraction_forms(v), wrong
    if kind == "sqrt":
        a, b = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7, 10, 11])
        return (f"{a}\\sqrt{{{b}}}", [f"{a}\\sqrt{{{b}}}", f"{a} \\sqrt{b}", f"\\sqrt{{{a * a * b}}}"],
                [f"{a + 1}\\sqrt{{{b}}}", f"\\sqrt{{{a * b}}}", f"{a * b}"])
    if kind == "tuple":
        a, b = rng.randint(-9, 9), rng.randint(-9, 9)
        return (f"\\left( {a}, {b} \\right)", [f"({a}, {b})", f"\\left({a},{b}\\right)", f"({a},{b})"],
                [f"({b}, {a + 1})", f"({a}, {b + 1})", f"[{a}, {b}]"])
    if kind == "interval":
        a = rng.randint(-9, 5)
        b = a + rng.randint(1, 9)
        return (f"[{a}, {b})", [f"[{a},{b})", f"\\left[{a}, {b}\\right)", f"[{a}, {b})"],
                [f"({a}, {b})", f"[{a}, {b}]", f"[{a}, {b + 1})"])
    if kind == "degree":
        d = rng.randint(1, 179)
        return f"{d}^\\circ", [f"{d}", f"{d}^\\circ", f"{d}^{{\\circ}}"], [f"{d + 1}", f"{180 - d + 1}^\\circ"]
    if kind == "pi":
        k = rng.randint(2, 40)
        return f"{k}\\pi", [f"{k}\\pi", f"{k} \\pi", f"\\pi {k}"], [f"{k + 1}\\pi", f"{k}", f"\\frac{{{k}}}{{\\pi}}"]
    if kind == "decimal":
        v = Fraction(rng.randint(1, 999), 100)
        return (str(float(v)), [str(float(v)), f"\\frac{{{v.numerator}}}{{{v.denominator}}}", f"{float(v):.2f}"],
                [str(float(v) + 0.5), str(float(v) * 10)])
    word = rng.choice(_WORDS)
    return f"\\text{{{word}}}", [f"\\text{{{word}}}", word], [f"\\text{{{w}}}" for w in _WORDS if w != word][:3]


_OPENINGS = ("Let me think step by step.", "We start from the given data.", "First, simplify.",
             "Consider the setup carefully.", "Let us compute.")


def make_sample_set(problems: int, samples: int, seed: int) -> tuple[list[str], list[str]]:
    """Golds and completions (problem-major) of a peaked policy: 2-6 distinct answers per problem."""
    rng = random.Random(seed)
    golds, completions = [], []
    for _ in range(problems):
        gold, equivalent, wrong = make_problem(rng)
        n_distinct = rng.randint(2, 6)
        pool = rng.sample(equivalent, min(len(equivalent), rng.randint(1, 3)))
        pool += rng.sample(wrong, min(len(wrong), max(1, n_distinct - len(pool))))
        rng.shuffle(pool)
        weights = [1.0 / (rank + 1) ** 1.5 for rank in range(len(pool))]  # peaked
        for _ in range(samples):
            golds.append(gold)
            if rng.random() < 0.04:
                completions.append(f"{rng.choice(_OPENINGS)} I could not finish the computation.")
                continue
            answer = rng.choices(pool, weights)[0]
            steps = rng.randint(1, 4)
            body = " ".join(f"Step {i}: x_{i} = {rng.randint(1, 99)}." for i in range(steps))
            completions.append(f"{rng.choice(_OPENINGS)} {body} So the final answer is $\\boxed{{{answer}}}$.")
    return golds, completions


def plain_loop(golds, completions, indices):
    """The baseline: parse both sides and verify, per sample, no cache, no pool."""
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig()]
    verdicts = {}
    for i in indices:
        answer = extract_answer(completions[i])
        if answer is None:
            verdicts[i] = False
            continue
        verdicts[i] = bool(verify(parse("$" + golds[i] + "$", config), parse("$" + answer + "$", config)))
    return verdicts


def _load() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "load average n/a"


def _workers_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of this process's live child processes (the grading workers),
    from /proc; empty where /proc is missing."""
    import multiprocessing

    out = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for child in multiprocessing.active_children():
        try:
            with open(f"/proc/{child.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[child.pid] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            pass
    return out


# Run in a fresh process: parse every string of stdin once (the stock parser, or the workers' fast
# parser when argv[1] == "fast") after the workers' warm-up; print wall and CPU seconds as JSON.
_PARSE_TIMING_CODE = """
import json, sys, time
from rsgrpo.grading import fastparse
if sys.argv[1] == "fast":
    assert fastparse._enable_fast_parsing()
fastparse._quiet_math_verify()
fastparse._warm_up()
strings = json.load(sys.stdin)
wall, cpu = time.perf_counter(), time.process_time()
for s in strings:
    fastparse._parse(s)
print(json.dumps([time.perf_counter() - wall, time.process_time() - cpu]))
"""


def parse_seconds(strings: list[str], mode: str) -> tuple[float, float]:
    """(wall, CPU) seconds to parse ``strings`` once each in a fresh process, ``mode`` "stock" or
    "fast" (this process keeps the stock parser)."""
    out = subprocess.run([sys.executable, "-c", _PARSE_TIMING_CODE, mode], input=json.dumps(strings),
                         text=True, capture_output=True, check=True, cwd=ROOT)
    wall, cpu = json.loads(out.stdout.strip().splitlines()[-1])
    return wall, cpu


class _CpuMeter:
    """Wall and CPU seconds of a block: this process plus the grading workers alive throughout."""

    def __enter__(self):
        self.workers = _workers_cpu_seconds()
        self.cpu = time.process_time()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.parent_cpu = time.process_time() - self.cpu
        after = _workers_cpu_seconds()
        self.workers_cpu = sum(after[pid] - before for pid, before in self.workers.items() if pid in after)
        self.total_cpu = self.parent_cpu + self.workers_cpu
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--plain-subset", type=int, default=8000,
                    help="about this many samples (whole problems) graded by the plain loop (0 = all); "
                         "its time is extrapolated")
    ap.add_argument("--shuffled-subset", type=int, default=2000,
                    help="random samples graded by the plain loop in random order (extrapolated)")
    ap.add_argument("--distinct", type=int, default=2000, help="items of the all-distinct worst case")
    ap.add_argument("--parse-strings", type=int, default=1000,
                    help="distinct strings of the fast-vs-stock parse timing (0 = skip it)")
    ap.add_argument("--workers", type=int, default=None, help="grading processes (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    golds, completions = make_sample_set(args.problems, args.samples, args.seed)
    n = len(golds)
    workers = args.workers if args.workers is not None else os.cpu_count()
    print(f"sample set: {args.problems} problems x {args.samples} samples = {n} items; "
          f"{workers} workers on {os.cpu_count()} CPU cores")

    # start the kept worker pool once (forkserver + parser warm-up: a one-off per process, not per
    # batch, reported separately), then time ours on the sample set
    start = time.perf_counter()
    grade(["1"], ["\\boxed{1}"], workers=workers)
    print(f"one-off pool start-up (forkserver, imports, worker warm-up): {time.perf_counter() - start:.2f} s")
    print(f"machine before ours: {_load()}")
    with _CpuMeter() as ours:
        report = grade_report(golds, completions, workers=workers, timeout=5.0)
    ours_s = ours.wall
    print(f"rsgrpo.grading (cold: first call on this set): {ours_s:.2f} s ({n / ours_s:,.0f} items/s); "
          f"CPU {ours.total_cpu:.2f} s = parent {ours.parent_cpu:.2f} + workers {ours.workers_cpu:.2f}; "
          f"{report.summary()}")
    print(f"  distinct golds {report.n_unique_golds}, distinct (gold, normalised answer) pairs "
          f"{report.n_unique_pairs} of {n - report.n_no_answer} answered samples; {_load()}")
    with _CpuMeter() as warm:
        grade_report(golds, completions, workers=workers, timeout=5.0)
    print(f"rsgrpo.grading, WARM (same set again: worker parse caches hot; not the headline): "
          f"{warm.wall:.2f} s, CPU {warm.total_cpu:.2f} s")

    # the plain loop is stock math-verify: the grader's fast parsing exists only in its workers
    from latex2sympy2_extended import latex2sympy2

    import rsgrpo.grading.fastparse as fastparse

    assert not fastparse._FAST_PARSING_ENABLED and not hasattr(
        latex2sympy2._Latex2Sympy.create_parser, "__wrapped__"), "the plain loop must use stock math-verify"

    # the plain loop runs in this process: warm its parser on another sample set first (untimed),
    # and give it whole problems (not scattered samples) so that math-verify's own LRU cache
    # (lru_cache(20) on parsed LaTeX) helps it exactly as it would when scoring a samples file
    w_golds, w_completions = make_sample_set(20, args.samples, args.seed + 100)
    start = time.perf_counter()
    plain_loop(w_golds, w_completions, range(len(w_golds)))
    warm_s = time.perf_counter() - start
    if 0 < args.plain_subset < n:
        # whole problems (each one's samples in order, as in a samples file), spread evenly over
        # the set so that the extrapolation sees every kind of gold in its proportion
        k = min(args.problems, -(-args.plain_subset // args.samples))
        chosen = sorted({j * args.problems // k for j in range(k)})
        subset = [p * args.samples + s for p in chosen for s in range(args.samples)]
    else:
        subset = list(range(n))
    with _CpuMeter() as plain_meter:
        plain = plain_loop(golds, completions, subset)
    plain_measured_s = plain_meter.wall
    plain_s = plain_measured_s * n / len(subset)
    plain_cpu = plain_meter.parent_cpu * n / len(subset)
    note = "" if len(subset) == n else (f" (measured {plain_measured_s:.2f} s on "
                                       f"{len(subset) // args.samples} problems spread over the set = "
                                       f"{len(subset)} samples, extrapolated linearly to {n})")
    note += f"; parser warmed on another set first ({warm_s:.1f} s, not counted)"
    print(f"plain parse+verify loop: {plain_s:.2f} s ({n / plain_s:,.1f} items/s), "
          f"CPU {plain_cpu:.2f} s{note}; {_load()}")

    mismatches = [i for i in subset if report.status[i] != "timeout" and plain[i] != report.verdicts[i]]
    timeouts = sum(report.status[i] == "timeout" for i in subset)
    examples = [(golds[i], completions[i]) for i in mismatches[:3]]
    assert not mismatches, f"verdicts differ on {len(mismatches)} samples, e.g. {examples}"
    print(f"verdicts identical on all {len(subset) - timeouts} compared samples "
          f"({timeouts} timed out in ours, excluded)")
    print(f"speed-up: {plain_s / ours_s:.1f}x wall-clock (target >= 20x); CPU seconds: plain "
          f"{plain_cpu:.2f} / ours {ours.total_cpu:.2f} = {plain_cpu / ours.total_cpu:.1f}x "
          f"(with {workers} workers on {workers} idle cores the wall-clock ratio is at most ~{workers}x "
          f"the CPU ratio)")

    # the same plain loop with the samples in random order: math-verify's LRU cache no longer sees
    # the repeats, which shows what the (gold, answer) dedup itself is worth
    shuffled = random.Random(args.seed + 3).sample(range(n), min(n, args.shuffled_subset))
    start = time.perf_counter()
    plain_shuffled = plain_loop(golds, completions, shuffled)
    shuffled_s = (time.perf_counter() - start) * n / len(shuffled)
    assert all(plain_shuffled[i] == report.verdicts[i] for i in shuffled if report.status[i] != "timeout")
    print(f"plain loop, samples in random order (defeats math-verify's LRU): {shuffled_s:.2f} s "
          f"(measured on {len(shuffled)} random samples, extrapolated; verdicts identical too); "
          f"speed-up {shuffled_s / ours_s:.1f}x")

    # worst case for the cache: every answer distinct (no repeats within a gold)
    rng = random.Random(args.seed + 2)
    d_golds, d_completions = [], []
    for i in range(args.distinct):
        gold = str(rng.randint(1, 999))
        d_golds.append(gold)
        d_completions.append(f"so $\\boxed{{\\frac{{{i + 1}}}{{{rng.randint(2, 97)}}}}}$" if i % 2 else
                             f"\\boxed{{{i * 7 + 1000}}}")
    with _CpuMeter() as d_meter:
        d_report = grade_report(d_golds, d_completions, workers=workers, timeout=5.0)
    d_s = d_meter.wall
    d_plain_n = min(300, args.distinct)
    start = time.perf_counter()
    plain_loop(d_golds, d_completions, range(d_plain_n))
    d_plain_s = (time.perf_counter() - start) * args.distinct / d_plain_n
    print(f"worst case (all {args.distinct} answers distinct, {d_report.cache_hits} cache hits): "
          f"{args.distinct / d_s:,.0f} items/s ours vs {args.distinct / d_plain_s:,.0f} items/s plain "
          f"(plain measured on {d_plain_n}); speed-up {d_plain_s / d_s:.1f}x; "
          f"ours CPU {d_meter.total_cpu:.2f} s; {_load()}")

    # parse speed alone: the workers' fast parser vs the stock one, on distinct strings
    if args.parse_strings > 0:
        distinct = {answer for answer in map(extract_answer, completions + d_completions) if answer}
        distinct.update(golds + d_golds)
        strings = sorted(distinct)
        random.Random(args.seed + 4).shuffle(strings)
        strings = strings[: args.parse_strings]
        stock_wall, stock_cpu = parse_seconds(strings, "stock")
        fast_wall, fast_cpu = parse_seconds(strings, "fast")
        print(f"parse speed on {len(strings)} distinct strings (each parsed once, fresh processes, "
              f"after the warm-up): stock {stock_wall:.2f} s wall / {stock_cpu:.2f} s CPU, fast "
              f"{fast_wall:.2f} s / {fast_cpu:.2f} s: fast parsing {stock_cpu / fast_cpu:.2f}x "
              f"(CPU), {stock_wall / fast_wall:.2f}x (wall); {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
