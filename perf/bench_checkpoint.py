"""Checkpoint bytes on disk: a resumable checkpoint vs an evaluation-only one, one run.

    .venv/bin/python perf/bench_checkpoint.py [--model smollm2] [--json out.json]

For fp32 (ZeRO 0) and bf16-mixed (ZeRO 1), the real trainer runs 2 steps with a checkpoint after
each and ``keep_resumable: 1``: step 2 keeps its resume state (AdamW moments, and for bf16-mixed the
fp32 master weights, in per-rank shards), step 1 is stripped to the HF weights that evaluation
reads. Printed: the bytes of each, split into HF weights and resume state, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_train import SETTINGS, bench_model  # noqa: E402  (this script's folder is on sys.path)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(name: str, model_dir: Path, work: Path, precision: str, stage: int) -> dict:
    from rsgrpo.prepare.data_sources import load_records, write_records
    from rsgrpo.train import checkpoint as ckpt
    from rsgrpo.train.config import from_dict
    from rsgrpo.train.train import Trainer

    prompts, samples, max_new, micro = SETTINGS[name]
    data = write_records(load_records({"source": "generator", "name": "arithmetic", "n": 16, "seed": 0}),
                         work / "train.jsonl")
    run = work / f"run-{precision}"
    Trainer(from_dict({
        "model_dir": str(model_dir), "train_data": str(data), "steps": 2, "prompts_per_step": 2,
        "samples_per_prompt": 2, "max_new_tokens": 8, "engine": "hf", "micro_batch_size": micro,
        "dynamic_sampling": False, "checkpoint_every": 1, "keep_last": 0, "keep_resumable": 1,
        "progress": False, "grading_workers": 0, "precision": precision, "zero_stage": stage, "run_dir": str(run),
    }, "bench_checkpoint")).run()
    resumable, evaluation = run / "checkpoints" / "step-000002", run / "checkpoints" / "step-000001"
    resume = folder_bytes(resumable / ckpt.RESUME_DIR)
    return {"model": name, "precision": precision, "resumable_bytes": folder_bytes(resumable),
            "resume_state_bytes": resume, "evaluation_only_bytes": folder_bytes(evaluation),
            "ratio": folder_bytes(resumable) / folder_bytes(evaluation), "prompts": prompts, "samples": samples,
            "max_new": max_new}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--smollm2-dir", default=str(ROOT / "models" / "smollm2"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp:
        work = Path(tmp)
        model_dir = bench_model(args.model, work, args.smollm2_dir)
        for precision, stage in (("fp32", 0), ("bf16-mixed", 1)):
            rows.append(measure(args.model, model_dir, work, precision, stage))
    print("| model | precision | resumable MB | of it resume state MB | evaluation-only MB | resumable / eval-only |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['precision']} | {r['resumable_bytes'] / 2**20:.0f} | "
              f"{r['resume_state_bytes'] / 2**20:.0f} | {r['evaluation_only_bytes'] / 2**20:.0f} | {r['ratio']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
