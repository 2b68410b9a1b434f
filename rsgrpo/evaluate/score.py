"""``python -m rsgrpo score``: grade sampled completions and estimate pass@k with bootstrap CIs.

Inputs: samples parquet(s) (``problem_id``, ``sample_idx``, ``text``; other columns are kept) and
the benchmark each was sampled from (JSONL or parquet with ``id``, ``problem``, ``answer``); several
benchmarks may be scored in one call (the workflow scores all benchmarks of a checkpoint at once).
Outputs:

* graded samples parquet = the samples in their original order (benchmark by benchmark) plus
  ``benchmark``, ``extracted`` (final answer or null), ``correct`` (bool) and ``grade_status``
  (see :class:`rsgrpo.grading.GradeReport`; ``not_integer`` where the benchmark's records ask for an
  integer answer, field ``answer_format`` written by prepare-data, and the answer is not one);
* ``passk.csv``: per benchmark, one row per k in 1, 2, 4, ..., n (n = samples per problem,
  included even when not a power of two) with ``benchmark, k, pass_at_k, ci_low, ci_high,
  n_problems, n_samples``: the unbiased estimator averaged over problems, percentile bootstrap CI
  over problems.

Both files are written atomically (temporary file in the same folder, then ``os.replace``), so a
killed job never leaves a half-written output that Snakemake would take as done.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rsgrpo.io import atomic_path

__all__ = ["score", "SAMPLE_COLUMNS", "PASSK_COLUMNS"]

SAMPLE_COLUMNS = ("problem_id", "sample_idx", "text")
PASSK_COLUMNS = ["benchmark", "k", "pass_at_k", "ci_low", "ci_high", "n_problems", "n_samples"]


def _read_samples(path: Path):
    import pandas as pd

    if not path.is_file():
        raise ValueError(f"samples file {str(path)!r} does not exist")
    df = pd.read_parquet(path)
    missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"samples file {str(path)!r} lacks column(s) {missing}; it has {list(df.columns)}")
    if df.empty:
        raise ValueError(f"samples file {str(path)!r} holds no rows")
    df = df.reset_index(drop=True)
    df["problem_id"] = df["problem_id"].astype(str)
    duplicated = df.duplicated(["problem_id", "sample_idx"])
    if duplicated.any():
        row = df[duplicated].iloc[0]
        raise ValueError(f"samples file {str(path)!r}: problem {row['problem_id']!r} has sample_idx "
                         f"{row['sample_idx']!r} more than once")
    return df


def _check_consistency(df, answers: dict[str, str], samples_path: Path, benchmark_path: Path) -> int:
    """Every sampled problem is in the benchmark and has the same number of samples; returns n."""
    unknown = sorted(set(df["problem_id"]) - set(answers))
    if unknown:
        raise ValueError(f"samples file {str(samples_path)!r}: {len(unknown)} problem id(s) are not in "
                         f"benchmark {str(benchmark_path)!r}: {unknown[:5]}")
    counts = df.groupby("problem_id", sort=False).size()
    if counts.nunique() != 1:
        n_mode = int(counts.mode().iloc[0])
        odd = counts[counts != n_mode]
        raise ValueError(f"samples file {str(samples_path)!r}: unequal sample counts per problem; most "
                         f"have {n_mode} but problem {odd.index[0]!r} has {int(odd.iloc[0])} "
                         f"({len(odd)} problem(s) differ)")
    not_sampled = len(answers) - counts.size
    if not_sampled:
        print(f"score: warning: {not_sampled} of {len(answers)} problems of {benchmark_path} have no "
              "samples; pass@k is averaged over the sampled problems only", file=sys.stderr)
    return int(counts.iloc[0])


def _as_list(value, what: str) -> list:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    values = list(value)
    if not values:
        raise ValueError(f"no {what} given")
    return values


def score(
    samples: str | Path | Sequence[str | Path],
    benchmark: str | Path | Sequence[str | Path],
    *,
    out_graded: str | Path,
    out_passk: str | Path,
    benchmark_name: str | Sequence[str] | None = None,
    workers: int | None = None,
    timeout: float = 5.0,
    n_boot: int = 2000,
    seed: int = 0,
    progress: bool = True,
):
    """Grade samples against their benchmarks; write one graded parquet and one ``passk.csv``.

    ``samples``/``benchmark``/``benchmark_name`` are single values or equally long lists (one
    samples file per benchmark, as the workflow's score rule passes them); names default to the
    benchmark file stems. All benchmarks are graded in one pool run; the graded parquet gets a
    ``benchmark`` column and ``passk.csv`` one block of rows per benchmark.
    Returns ``(graded DataFrame, passk DataFrame, GradeReport)``.
    """
    import pandas as pd

    from rsgrpo.evaluate.passk import bootstrap_ci, pass_at_k, powers_of_two
    from rsgrpo.grading import grade_report, record_answer_format
    from rsgrpo.prepare.data_sources import load_records

    samples_paths = [Path(p) for p in _as_list(samples, "samples file")]
    benchmark_paths = [Path(p) for p in _as_list(benchmark, "benchmark file")]
    names = [str(n) for n in _as_list(benchmark_name, "benchmark name")] or [p.stem for p in benchmark_paths]
    if not (len(samples_paths) == len(benchmark_paths) == len(names)):
        raise ValueError(f"need one samples file and one name per benchmark: got {len(samples_paths)} "
                         f"samples file(s), {len(benchmark_paths)} benchmark file(s), {len(names)} name(s)")
    if len(set(names)) != len(names):
        raise ValueError(f"benchmark names must be distinct, got {names}")

    frames, golds, formats, ns = [], [], [], []
    for samples_path, benchmark_path in zip(samples_paths, benchmark_paths):
        df = _read_samples(samples_path)
        records = load_records({"source": "local", "path": str(benchmark_path)})
        answers = {r["id"]: r["answer"] for r in records}
        answer_formats = {r["id"]: record_answer_format(r) for r in records}
        ns.append(_check_consistency(df, answers, samples_path, benchmark_path))
        frames.append(df)
        golds += [answers[pid] for pid in df["problem_id"]]
        formats += [answer_formats[pid] for pid in df["problem_id"]]
    texts = ["" if pd.isna(t) else str(t) for df in frames for t in df["text"]]  # missing text: no answer
    report = grade_report(golds, texts, workers=workers, timeout=timeout, progress=progress,
                          answer_formats=formats)
    print(f"score: {', '.join(names)}: {report.summary()}", file=sys.stderr)

    graded_frames, passk_frames = [], []
    offset = 0
    for df, name, n in zip(frames, names, ns):
        rows = slice(offset, offset + len(df))
        offset += len(df)
        graded = df.copy()
        graded["benchmark"] = pd.array([name] * len(df), dtype="string")
        graded["extracted"] = pd.array(report.extracted[rows], dtype="string")
        graded["correct"] = np.asarray(report.verdicts[rows], dtype=bool)
        graded["grade_status"] = pd.array(report.status[rows], dtype="string")
        graded_frames.append(graded)

        c = graded.groupby("problem_id", sort=False)["correct"].sum().to_numpy(dtype=np.int64)
        ks = powers_of_two(n)
        per_problem = pass_at_k(n, c, ks)  # [problems, len(ks)]
        if n_boot > 0:
            ci = bootstrap_ci(per_problem, n_boot=n_boot, seed=seed)
            mean, low, high = ci.mean, ci.low, ci.high
        else:
            mean = per_problem.mean(axis=0)
            low = high = np.full(len(ks), np.nan)
        passk_frames.append(pd.DataFrame({
            "benchmark": name,
            "k": ks,
            "pass_at_k": mean,
            "ci_low": low,
            "ci_high": high,
            "n_problems": len(c),
            "n_samples": n,
        }, columns=PASSK_COLUMNS))
    graded = pd.concat(graded_frames, ignore_index=True)
    passk = pd.concat(passk_frames, ignore_index=True)

    with atomic_path(out_graded) as tmp:
        graded.to_parquet(tmp, index=False)
    with atomic_path(out_passk) as tmp:
        passk.to_csv(tmp, index=False)
    return graded, passk, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, nargs="+",
                        help="samples parquet(s) (problem_id, sample_idx, text), one per benchmark")
    parser.add_argument("--benchmark", required=True, nargs="+",
                        help="benchmark JSONL or parquet file(s) (id, problem, answer), same order")
    parser.add_argument("--benchmark-name", default=None, nargs="+",
                        help="name(s) in passk.csv and the graded parquet (default: file stems)")
    parser.add_argument("--out-graded", required=True, help="graded samples parquet to write")
    parser.add_argument("--out-passk", required=True, help="passk.csv to write")
    parser.add_argument("--workers", type=int, default=None,
                        help="grading processes (default: all CPU cores; 0 = in-process)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="hard wall-clock seconds per distinct answer (default 5)")
    parser.add_argument("--bootstrap", type=int, default=2000,
                        help="bootstrap resamples for the CI (0 = no CI; default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def main(args: argparse.Namespace) -> int:
    _, passk, _ = score(
        args.samples, args.benchmark, out_graded=args.out_graded, out_passk=args.out_passk,
        benchmark_name=args.benchmark_name, workers=args.workers, timeout=args.timeout,
        n_boot=args.bootstrap, seed=args.seed,
    )
    for name, rows in passk.groupby("benchmark", sort=False):
        first, last = rows.iloc[0], rows.iloc[-1]
        print(f"score: {name}: pass@{int(first.k)} = {first.pass_at_k:.4f}, pass@{int(last.k)} = "
              f"{last.pass_at_k:.4f}", file=sys.stderr)
    print(f"score: wrote {args.out_graded} and {args.out_passk}", file=sys.stderr)
    return 0
