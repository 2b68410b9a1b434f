"""Memory and time of the training step's precision and activation settings on CPU, one run.

    .venv/bin/python perf/bench_memory.py [--models tiny,smollm2] [--steps 3] [--json out.json]

Two parts, every measurement in a fresh process (so no allocator cache carries over):

1. **Log-probs of one micro-batch** (B 4, L 2048, vocabulary 32k, a 2-layer model; forward and
   backward): the naive computation (``rsgrpo.train.loss.naive_token_logprobs``: float32 logits of every
   position and a full log-softmax) against the trainer's (``token_logprobs``: completion positions
   only, 1024-token chunks recomputed in the backward pass). Peak resident memory above the inputs,
   and the ratio.
2. **Training steps** of the real trainer (``rsgrpo.train.trainer.Trainer``, transformers rollouts of the
   offline arithmetic set, math-verify rewards in-process, DeepSpeed update) for each of
   ``fp32``, ``fp32 + gradient checkpointing``, ``bf16-mixed``, ``bf16-mixed + gradient
   checkpointing`` (bf16-mixed at ZeRO stage 1, fp32 at stage 0): median update and step seconds
   over the steps after the first, and the process's peak resident memory, each against the fp32
   row of the same model. Every process runs with a fixed glibc mmap threshold (see
   ``tests/peak_memory.py``), so its peak resident memory counts live memory, not freed blocks.

On CPU, bf16-mixed holds more bytes per parameter than fp32 (bf16 weights and gradients next to the
fp32 masters, gradients and AdamW state): it halves activations and is a GPU speed setting, so the
CPU figures show its cost at small activation sizes, not its benefit at paper scale.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_train import SETTINGS, add_model_arguments, bench_model  # noqa: E402  (this folder is on sys.path)
from peak_memory import logprob_peaks_mb  # noqa: E402  (tests/peak_memory.py: the tests' measurement)

TRAIN = """
import csv, json, resource, sys, time
from rsgrpo.train.trainer import Trainer
from rsgrpo.train.config import from_dict
cfg = from_dict(json.loads(sys.argv[1]), "bench_memory")
Trainer(cfg).run()
rows = list(csv.DictReader(open(cfg.run_dir + "/metrics.csv")))
print("RESULT", json.dumps({"rows": rows, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

VARIANTS = [  # (label, settings)
    ("fp32", {"precision": "fp32", "zero_stage": 0, "gradient_checkpointing": False}),
    ("fp32 + checkpointing", {"precision": "fp32", "zero_stage": 0, "gradient_checkpointing": True}),
    ("bf16-mixed", {"precision": "bf16-mixed", "zero_stage": 1, "gradient_checkpointing": False}),
    ("bf16-mixed + checkpointing", {"precision": "bf16-mixed", "zero_stage": 1, "gradient_checkpointing": True}),
]


def logprob_memory() -> dict:
    naive, chunked = logprob_peaks_mb()
    return {"naive_mb": naive, "chunked_mb": chunked, "ratio": naive / chunked}


def train_variant(name: str, model_dir: Path, data: Path, steps: int, work: Path, settings: dict) -> dict:
    prompts, samples, max_new, micro = SETTINGS[name]
    cfg = {"model_dir": str(model_dir), "train_data": str(data), "steps": steps, "prompts_per_step": prompts,
           "samples_per_prompt": samples, "max_new_tokens": max_new, "lr": 1e-5, "engine": "hf",
           "micro_batch_size": micro, "dynamic_sampling": False, "checkpoint_every": 0, "keep_last": 1,
           "progress": False, "grading_workers": 0, "run_dir": str(work / f"run-{name}-{len(os.listdir(work))}"),
           **settings}
    # the same fixed glibc mmap threshold as tests/peak_memory.py: freed memory leaves the resident set
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(TRAIN), json.dumps(cfg)], cwd=ROOT,
                         capture_output=True, text=True, timeout=3600, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{name} {settings}: the run failed:\n{out.stderr[-3000:]}")
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))[7:])
    timed = result["rows"][1:] or result["rows"]
    step = [sum(float(r[k]) for k in ("time_generate", "time_grade", "time_update")) for r in timed]
    return {"update_s": statistics.median(float(r["time_update"]) for r in timed),
            "step_s": statistics.median(step), "peak_mb": result["peak_mb"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap)
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f} at the start")
    lp = logprob_memory()
    print(f"\nlog-probs of one micro-batch (B 4, L 2048, V 32k), forward + backward: naive {lp['naive_mb']:.0f} MB, "
          f"chunked {lp['chunked_mb']:.0f} MB, naive / chunked = {lp['ratio']:.1f}")
    from rsgrpo.prepare.data_sources import load_records, write_records

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        data = write_records(load_records({"source": "generator", "name": "arithmetic", "n": 64, "seed": 0}),
                             work / "train.jsonl")
        for name in args.models.split(","):
            model_dir = bench_model(name, work, args.smollm2_dir)
            base = None
            for label, settings in VARIANTS:
                result = train_variant(name, model_dir, data, args.steps, work, settings)
                base = base or result
                rows.append({"model": name, "variant": label, **result,
                             "update_vs_fp32": result["update_s"] / base["update_s"],
                             "peak_vs_fp32": result["peak_mb"] / base["peak_mb"]})
    cols = ["model", "variant", "update_s", "step_s", "peak_mb", "update_vs_fp32", "peak_vs_fp32"]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps({"logprobs": lp, "train": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
