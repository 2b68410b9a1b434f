"""``python -m rsgrpo sample``: checkpoint x benchmarks -> one parquet of ``n`` samples per problem per benchmark.

Output columns: ``problem_id`` (string), ``sample_idx`` (0..n-1), ``text`` (decoded completion),
``num_tokens`` (completion tokens, EOS included), ``finished`` (ended with EOS rather than being cut
at ``max_tokens``). Rows are ordered by benchmark order, then ``sample_idx``.

Why it is built this way:

* Reproducible independently of chunking: sample ``j`` of problem ``p`` is drawn with its own seed
  ``row_seed(row_seed(seed, hash(p.id)), j)`` (see :mod:`rsgrpo.train.engines`), so the samples do not
  depend on ``--chunk-size``, ``--sample-chunk-size``, ``--batch-size`` or on a resume.
* Resumable: work is split into parts of (``--chunk-size`` problems) x (``--sample-chunk-size``
  sample indices); each finished part is written atomically to ``<out>.parts/`` and skipped on a
  rerun. The parts directory records the run's settings; parts from different settings are
  discarded, never mixed. At the end the parquet is written atomically and the parts removed.
* Large ``n`` (the paper uses 1024 on competition sets): the sample dimension is chunked too, so a
  part never holds more than chunk-size x sample-chunk-size completions.
* One engine for all of a checkpoint's benchmarks: a process start (importing torch and transformers)
  and an engine start (loading the weights; for vLLM also compiling and capturing CUDA graphs) cost
  more than sampling a small benchmark, so the workflow samples every benchmark of a checkpoint in
  one call. Each benchmark keeps its own output, parts and seeds: its samples equal those of a call
  for it alone.
* ``--max-tokens max``: as many new tokens as the model's context leaves after the benchmark's longest
  prompt (the context is ``max_position_embeddings`` of the checkpoint's config.json, or
  ``--context-length`` where that is smaller), one cap per benchmark, so a benchmark's samples still
  do not depend on the others of the call. The workflow's evaluation regimes use it
  (:func:`rsgrpo.grid.sample_settings`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rsgrpo.grid import MAX_TOKENS
from rsgrpo.prepare.prompts import PROMPT_TEMPLATES

COLUMNS = ["problem_id", "sample_idx", "text", "num_tokens", "finished"]
PARTS_CONFIG = "config.json"

log = logging.getLogger(__name__)


def read_benchmark(path: str | Path) -> list[dict]:
    """Records ``{id, problem, answer}`` of a benchmark file (JSONL or parquet), checked by
    :func:`rsgrpo.prepare.data_sources.load_records` (missing fields, empty answers, duplicate ids name the file)."""
    from rsgrpo.prepare.data_sources import load_records

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"benchmark file {str(path)!r} does not exist")
    records = load_records({"source": "local", "path": str(path)})
    if not records:
        raise ValueError(f"benchmark file {str(path)!r} holds no records")
    return records


def problem_seed(seed: int, problem_id: str) -> int:
    """Seed of one problem: mixes the run seed with a stable hash of the problem id."""
    from rsgrpo.train.engines.base import row_seed

    h = int.from_bytes(hashlib.blake2b(str(problem_id).encode(), digest_size=8).digest(), "little") >> 1
    return row_seed(seed, h)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_digest(model_dir: Path) -> str:
    """Cheap identity of a checkpoint: names, sizes and mtimes of its files (weights are not read)."""
    h = hashlib.sha256()
    for p in sorted(model_dir.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(model_dir)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _part_name(p0: int, p1: int, s0: int, s1: int) -> str:
    return f"part-p{p0:07d}-{p1:07d}-s{s0:05d}-{s1:05d}.parquet"


def _prepare_parts_dir(parts: Path, config: dict) -> None:
    """Create ``parts`` for ``config``; keep existing parts only if they were made with it."""
    cfg_file = parts / PARTS_CONFIG
    if parts.exists():
        old = None
        if cfg_file.is_file():
            try:
                old = json.loads(cfg_file.read_text())
            except json.JSONDecodeError:
                old = None
        if old == config:
            return
        print(f"sample: {parts} was made with other settings; discarding its parts", file=sys.stderr)
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    from rsgrpo.io import atomic_path

    with atomic_path(cfg_file) as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_parquet(df, path: Path) -> None:
    from rsgrpo.io import atomic_path

    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


@dataclass(frozen=True)
class BenchmarkJob:
    """One benchmark of a sample call: its file, the parquet to write and its samples per problem."""

    benchmark: Path
    out: Path
    n: int


@dataclass
class _Pending:
    """A benchmark's records, resumable parts and the parts still to generate."""

    job: BenchmarkJob
    records: list[dict]
    parts: Path
    units: list[tuple[int, int, int, int]]
    todo: list[tuple[int, int, int, int]]


def sample(model: str | Path, benchmark: str | Path, out: str | Path, *, n: int = 1, **settings) -> Path:
    """Write ``out`` (parquet, columns :data:`COLUMNS`) for one benchmark; return its path. See
    :func:`sample_benchmarks` for the settings and the module docstring."""
    return sample_benchmarks(model, [BenchmarkJob(Path(benchmark), Path(out), n)], **settings)[0]


def sample_benchmarks(model: str | Path, jobs: Sequence[BenchmarkJob], *, temperature: float = 1.0,
                      top_p: float = 1.0, max_tokens: int | str = 256, seed: int = 0, engine: str = "auto",
                      template: str = "chat", chunk_size: int = 8, sample_chunk_size: int = 64,
                      batch_size: int = 64, dtype: str = "auto", engine_options: dict | None = None,
                      progress: bool = True, context_length: int | None = None) -> list[Path]:
    """Sample every benchmark of ``jobs`` from one checkpoint with ONE engine (one model load, one
    vLLM start), benchmark after benchmark; return the written paths. Each benchmark's samples are
    those a call for it alone would draw (seeds per problem and sample index). ``max_tokens``
    :data:`MAX_TOKENS` fills the context (the smaller of the model's and ``context_length``) after
    each benchmark's longest prompt (see the module docstring)."""
    model = Path(model)
    if not (model / "config.json").is_file():
        raise ValueError(f"model {str(model)!r} is not a checkpoint directory (no config.json)")
    if not jobs:
        raise ValueError("no benchmark to sample")
    outs = [job.out.resolve() for job in jobs]
    if len(set(outs)) != len(outs):
        raise ValueError(f"two benchmarks would write the same file: {[str(job.out) for job in jobs]}")
    for name, value in (("chunk_size", chunk_size), ("sample_chunk_size", sample_chunk_size),
                        ("batch_size", batch_size), *(("n", job.n) for job in jobs),
                        *((("context_length", context_length),) if context_length is not None else ())):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"template must be one of {list(PROMPT_TEMPLATES)}, got {template!r}")
    from rsgrpo.train.engines import resolve_engine_kind
    from rsgrpo.train.engines.base import SamplingParams

    # Validates temperature / top_p / max_tokens / seed and the engine early, before any model is loaded.
    fill = max_tokens == MAX_TOKENS  # a cap per benchmark, resolved once the prompts are tokenized
    params = SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=1 if fill else max_tokens,
                            seed=seed)
    resolve_engine_kind(engine, key="evaluation.engine (--engine)")
    settings = {"model": str(model.resolve()), "model_digest": _model_digest(model), "temperature": float(temperature),
                "top_p": float(top_p), "max_tokens": max_tokens, "seed": seed, "template": template,
                "chunk_size": chunk_size, "sample_chunk_size": sample_chunk_size, "dtype": dtype, "engine": engine}
    context = None
    if fill:
        context = _fill_context(model, context_length)
        settings["context_length"] = context
    pending = [_plan(job, settings, chunk_size, sample_chunk_size) for job in jobs]
    if any(p.todo for p in pending):
        _generate(model, pending, params, engine=engine, template=template, dtype=dtype, batch_size=batch_size,
                  engine_options=engine_options, progress=progress, context=context)
    return [_assemble(p) for p in pending]


def _fill_context(model: Path, context_length: int | None) -> int:
    """The context ``--max-tokens max`` fills: the model's, or ``context_length`` where that is smaller."""
    from rsgrpo.train.engines.base import context_length as model_context

    known = [c for c in (model_context(model), context_length) if c is not None]
    if not known:
        raise ValueError(f"--max-tokens {MAX_TOKENS} needs the model's context: {str(model / 'config.json')!r} "
                         "has no max_position_embeddings; pass --context-length")
    return min(known)


def _plan(job: BenchmarkJob, settings: dict, chunk_size: int, sample_chunk_size: int) -> _Pending:
    """The benchmark's parts directory (made for these settings) and the parts it still lacks."""
    records = read_benchmark(job.benchmark)
    parts = job.out.with_name(job.out.name + ".parts")
    _prepare_parts_dir(parts, {**settings, "benchmark_sha256": _file_digest(job.benchmark), "n": job.n})
    units = [(p0, min(p0 + chunk_size, len(records)), s0, min(s0 + sample_chunk_size, job.n))
             for p0 in range(0, len(records), chunk_size) for s0 in range(0, job.n, sample_chunk_size)]
    todo = [u for u in units if not (parts / _part_name(*u)).is_file()]
    return _Pending(job, records, parts, units, todo)


def _generate(model: Path, pending: list[_Pending], params, *, engine: str, template: str, dtype: str,
              batch_size: int, engine_options: dict | None, progress: bool, context: int | None = None) -> None:
    """Generate the missing parts of every benchmark with one engine; ``context``: fill it (``--max-tokens
    max``), each benchmark up to its longest prompt."""
    import dataclasses

    import pandas as pd
    from tqdm import tqdm

    from rsgrpo.prepare.loading import load_tokenizer
    from rsgrpo.prepare.prompts import build_prompt
    from rsgrpo.train.engines import make_engine
    from rsgrpo.train.engines.base import encode_prompts, generation_length, row_seed

    tokenizer = load_tokenizer(model)
    prompts, seeds = [], []  # per benchmark: {record index: prompt / problem seed}
    for p in pending:
        needed = sorted({k for p0, p1, _, _ in p.todo for k in range(p0, p1)})
        prompts.append({k: build_prompt(p.records[k]["problem"], template=template, tokenizer=tokenizer)
                        for k in needed})
        seeds.append({k: problem_seed(params.seed, str(p.records[k]["id"])) for k in needed})
    caps = [params.max_tokens] * len(pending)  # per benchmark
    if context is not None:
        caps = [_fill_cap(p, context, template, tokenizer) for p in pending]
    # checked before the model loads; sizes vLLM's KV cache for the longest prompt of any benchmark
    needed_length = max(generation_length(encode_prompts(tokenizer, list(by_index.values())), cap, model,
                                          key="evaluation.max_tokens (--max-tokens)")
                        for by_index, cap in zip(prompts, caps))
    eng = make_engine(engine, model_dir=model, tokenizer=tokenizer, dtype=dtype, batch_size=batch_size,
                      max_model_len=needed_length, key="evaluation.engine (--engine)", **(engine_options or {}))
    log.info("rollout engine: %s", eng.describe())
    try:
        for p, by_index, problem_seeds, cap in zip(pending, prompts, seeds, caps):
            params_b = dataclasses.replace(params, max_tokens=cap)
            done = sum((p1 - p0) * (s1 - s0) for p0, p1, s0, s1 in p.units if (p0, p1, s0, s1) not in p.todo)
            with tqdm(total=len(p.records) * p.job.n, initial=done, desc=f"sample {p.job.benchmark.stem}",
                      unit="seq", file=sys.stderr, disable=not progress) as bar:
                for p0, p1, s0, s1 in p.todo:
                    keys = [(k, j) for k in range(p0, p1) for j in range(s0, s1)]
                    # One request per (problem, sample) with its own seed: see the module docstring.
                    results = eng.generate([by_index[k] for k, _ in keys], params_b,
                                           seeds=[row_seed(problem_seeds[k], j) for k, j in keys])
                    rows = [{"problem_id": str(p.records[k]["id"]), "sample_idx": j, "text": c.text,
                             "num_tokens": len(c.token_ids), "finished": bool(c.finished)}
                            for (k, j), (c,) in zip(keys, results)]
                    _write_parquet(pd.DataFrame(rows, columns=COLUMNS), p.parts / _part_name(p0, p1, s0, s1))
                    bar.update(len(keys))
    finally:
        eng.close()


def _fill_cap(p: _Pending, context: int, template: str, tokenizer) -> int:
    """``--max-tokens max`` of one benchmark: ``context`` minus its longest prompt (every problem's, not
    only those still to sample, so a resumed run draws with the same cap)."""
    from rsgrpo.prepare.prompts import build_prompt
    from rsgrpo.train.engines.base import encode_prompts

    prompts = [build_prompt(r["problem"], template=template, tokenizer=tokenizer) for r in p.records]
    longest = max(len(ids) for ids in encode_prompts(tokenizer, prompts))
    if longest >= context:
        raise ValueError(f"--max-tokens {MAX_TOKENS}: the longest prompt of {str(p.job.benchmark)!r} ({longest} "
                         f"tokens) leaves no room in the context of {context} tokens")
    log.info("%s: --max-tokens %s = %d (context %d - longest prompt %d)", p.job.benchmark.name, MAX_TOKENS,
             context - longest, context, longest)
    return context - longest


def _assemble(p: _Pending) -> Path:
    """Join a benchmark's parts into its parquet (benchmark order, then sample index); drop the parts."""
    import pandas as pd

    frames = [pd.read_parquet(p.parts / _part_name(*u)) for u in p.units]
    order = {str(r["id"]): i for i, r in enumerate(p.records)}
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values(["problem_id", "sample_idx"], key=lambda c: c.map(order) if c.name == "problem_id" else c,
                        kind="stable").reset_index(drop=True)
    df = df.astype({"problem_id": "string", "sample_idx": "int64", "text": "string",
                    "num_tokens": "int64", "finished": "bool"})
    if len(df) != len(p.records) * p.job.n:
        raise RuntimeError(f"parts in {p.parts} hold {len(df)} rows, expected {len(p.records) * p.job.n}")
    _write_parquet(df, p.job.out)
    shutil.rmtree(p.parts)
    return p.job.out


def _max_tokens(text: str) -> int | str:
    if text == MAX_TOKENS:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer or {MAX_TOKENS!r}, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory (from prepare-model or train)")
    parser.add_argument("--benchmark", required=True, nargs="+",
                        help="benchmark file(s): JSONL or parquet with id, problem, answer; several are sampled "
                             "one after the other with one engine")
    parser.add_argument("--out", required=True, nargs="+", help="output parquet file, one per --benchmark")
    parser.add_argument("--n", type=int, nargs="+", default=[1],
                        help="samples per problem: one value for every benchmark, or one per --benchmark")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=_max_tokens, default=256,
                        help=f"max new tokens per sample, or {MAX_TOKENS!r}: the model's context minus each "
                             "benchmark's longest prompt")
    parser.add_argument("--context-length", type=int, default=None,
                        help=f"with --max-tokens {MAX_TOKENS}: fill at most this context (default: the model's, "
                             "max_position_embeddings of its config.json)")
    parser.add_argument("--seed", type=int, default=0)
    from rsgrpo.train.engines import ENGINE_KINDS  # the engines (and torch) only when the verb runs

    parser.add_argument("--engine", choices=ENGINE_KINDS, default="auto")
    parser.add_argument("--template", choices=PROMPT_TEMPLATES, default="chat")
    parser.add_argument("--chunk-size", type=int, default=8,
                        help="problems per resumable part (does not change the samples)")
    parser.add_argument("--sample-chunk-size", type=int, default=64,
                        help="sample indices per resumable part (does not change the samples)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="sequences per batch of the transformers engine (vLLM schedules its own)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto (default): the checkpoint's own dtype, i.e. the model's compute dtype")
    parser.add_argument("--kv-cache-bytes", type=int, default=None,
                        help="vLLM only: KV-cache size in bytes (on CPU vLLM otherwise takes ~15 GiB)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=None, help="vLLM only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    options = {}
    if args.kv_cache_bytes is not None:
        options["kv_cache_memory_bytes"] = args.kv_cache_bytes
    if args.gpu_memory_utilization is not None:
        options["gpu_memory_utilization"] = args.gpu_memory_utilization
    if options and args.engine == "hf":
        print("sample: error: --kv-cache-bytes / --gpu-memory-utilization apply to --engine vllm only",
              file=sys.stderr)
        return 2
    benchmarks, outs, ns = args.benchmark, args.out, args.n
    if len(outs) != len(benchmarks) or len(ns) not in (1, len(benchmarks)):
        print(f"sample: error: {len(benchmarks)} --benchmark file(s) need as many --out files (got {len(outs)}) "
              f"and one --n or one per benchmark (got {len(ns)})", file=sys.stderr)
        return 2
    ns = ns * len(benchmarks) if len(ns) == 1 else ns
    jobs = [BenchmarkJob(Path(b), Path(o), n) for b, o, n in zip(benchmarks, outs, ns)]
    try:
        written = sample_benchmarks(args.model, jobs, temperature=args.temperature, top_p=args.top_p,
                                    max_tokens=args.max_tokens, seed=args.seed, engine=args.engine,
                                    template=args.template, chunk_size=args.chunk_size,
                                    sample_chunk_size=args.sample_chunk_size, batch_size=args.batch_size,
                                    dtype=args.dtype, engine_options=options, progress=not args.no_progress,
                                    context_length=args.context_length)
    except ValueError as exc:
        print(f"sample: error: {exc}", file=sys.stderr)
        return 1
    for out in written:
        print(f"sample: {out}")
    return 0
