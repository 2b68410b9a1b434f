"""Per-step time breakdown of the trainer (generate / grade / update) on CPU.

Runs a few real training steps (``rsgrpo.train.trainer.Trainer``: transformers rollouts, math-verify
grading, DeepSpeed AdamW update) for the tiny random model and for SmolLM2-135M-Instruct on the
offline arithmetic generator, and prints the mean seconds per phase and the rollout throughput.
Dynamic sampling is off so every step makes an update of the same batch size (what is timed is
the full pipeline, not how many groups happen to be kept). The first step of each model is a
warm-up and is excluded from the means.

    python perf/bench_train.py [--models tiny,smollm2] [--steps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    # model -> (prompts per step, samples per prompt, max new tokens, micro batch)
    "tiny": (8, 8, 64, 16),
    "smollm2": (4, 8, 48, 8),
}


def bench_model(name: str, work: Path, smollm2_dir: str | Path = ROOT / "models" / "smollm2") -> Path:
    """A benchmark's model: a fresh tiny random one under ``work``, or SmolLM2-135M-Instruct prepared
    once into ``smollm2_dir`` (the workflow's models/ folder by default) and reused."""
    from rsgrpo.prepare.model_sources import prepare_model
    from rsgrpo.prepare.tiny import build_tiny_model

    if name == "tiny":
        return build_tiny_model(work / "tiny", seed=0)
    if name == "smollm2":
        model_dir = Path(smollm2_dir)
        if not (model_dir / "config.json").is_file():
            prepare_model({"source": "smollm2"}, model_dir)
        return model_dir
    raise SystemExit(f"unknown model {name!r}; choose from {sorted(SETTINGS)}")


def bench(name: str, model_dir: Path, steps: int, work: Path) -> dict:
    from rsgrpo.prepare.data_sources import load_records, write_records
    from rsgrpo.train.config import from_dict
    from rsgrpo.train.trainer import Trainer

    prompts, samples, max_new, micro = SETTINGS[name]
    data = write_records(load_records({"source": "generator", "name": "arithmetic", "n": 64, "seed": 0}),
                         work / f"{name}.jsonl")
    cfg = from_dict({
        "model_dir": str(model_dir), "train_data": str(data), "steps": steps, "prompts_per_step": prompts,
        "samples_per_prompt": samples, "max_new_tokens": max_new, "lr": 1e-5, "engine": "hf",
        "micro_batch_size": micro, "dynamic_sampling": False, "checkpoint_every": 0, "keep_last": 1,
        "progress": False, "grading_workers": 1, "run_dir": str(work / f"run-{name}"),
    }, f"bench:{name}")
    t0 = time.perf_counter()
    Trainer(cfg).run()
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader((work / f"run-{name}" / "metrics.csv").open()))
    timed = rows[1:] if len(rows) > 1 else rows
    mean = lambda k: sum(float(r[k]) for r in timed) / len(timed)  # noqa: E731
    return {
        "model": name, "batch": f"{prompts}x{samples}", "max_new_tokens": max_new, "steps_timed": len(timed),
        "generate_s": mean("time_generate"), "grade_s": mean("time_grade"), "update_s": mean("time_update"),
        "step_s": mean("time_generate") + mean("time_grade") + mean("time_update"),
        "gen_tokens_per_s": mean("tokens_per_s"), "response_len": mean("response_len_mean"),
        "run_wall_s": wall,
    }


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """The options the training benchmarks share: models, steps, where SmolLM2 lives, JSON output."""
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--smollm2-dir", default=str(ROOT / "models" / "smollm2"))
    ap.add_argument("--json", default=None, help="also write the results as JSON here")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap)
    args = ap.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            results.append(bench(name, bench_model(name, work, args.smollm2_dir), args.steps, work))

    cols = ["model", "batch", "max_new_tokens", "generate_s", "grade_s", "update_s", "step_s",
            "gen_tokens_per_s", "response_len"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
