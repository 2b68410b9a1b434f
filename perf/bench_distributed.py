"""Step time of data-parallel training: 1 rank vs 2 ranks (ZeRO 0 and ZeRO 3) on CPU (gloo).

Each configuration is the real command a workflow job runs, ``python -m rsgrpo train --nproc N``,
on the same model, data, global batch and seed (the 2-rank runs split each step's prompts in two).
Reported per configuration: the median step time over the steps after the first (generate, grade
and update as logged in metrics.csv; a step's time is the slowest rank's), the whole command's wall
time (start-up included), the peak memory of the largest process, and the speed-up against the
1-rank baseline measured in the same run (base/step > 1: faster). That N ranks train the same model
as one is what tests/test_distributed.py checks; this script measures only time and memory.

On a 2-core machine expect little speed-up: both ranks share the cores the single process used,
and gloo adds a gradient all-reduce per step. The point of the CPU figures is correctness at the
same cost; the GPU figures (one rank per GPU) are what the launcher is for.

    python perf/bench_distributed.py                      # tiny model, 4 steps
    python perf/bench_distributed.py --models tiny,smollm2 --steps 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# model -> (prompts per step, samples per prompt, max new tokens, micro batch): bench_train.py's sizes
from bench_train import SETTINGS, bench_model  # noqa: E402  (this script's folder is on sys.path)

# (label, ranks, ZeRO stage, OpenMP threads per rank). The baseline is the first row. A single rank
# is also timed with 2 threads: on a shared machine OpenMP's spin-waiting can make that far slower.
CONFIGS = [("1 rank x 1 thread", 1, 0, 1), ("1 rank x 2 threads", 1, 0, 2),
           ("2 ranks x 1, ZeRO 0", 2, 0, 1), ("2 ranks x 1, ZeRO 3", 2, 3, 1)]
# Runs a command and prints the peak RSS (KiB) of its largest descendant process as the last line:
# each configuration gets its own accounting (getrusage keeps a maximum over all finished children).
PEAK_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def prepare(name: str, work: Path) -> tuple[Path, Path]:
    from rsgrpo.prepare.data_sources import load_records, write_records

    data = write_records(load_records({"source": "generator", "name": "arithmetic", "n": 64, "seed": 0}),
                         work / "train.jsonl")
    return bench_model(name, work), data


def run(name: str, model: Path, data: Path, nproc: int, stage: int, threads: int, steps: int,
        work: Path) -> dict:
    prompts, samples, max_new, micro = SETTINGS[name]
    run_dir = work / f"run-{name}-{nproc}-{stage}-{threads}"
    settings = {"model_dir": str(model), "train_data": str(data), "steps": steps, "prompts_per_step": prompts,
                "samples_per_prompt": samples, "max_new_tokens": max_new, "lr": 1e-5, "engine": "hf",
                "micro_batch_size": micro, "dynamic_sampling": False, "checkpoint_every": 0,
                "keep_last": 1, "progress": False, "grading_workers": 0, "zero_stage": stage, "seed": 0}
    cmd = [sys.executable, "-c", PEAK_WRAPPER, sys.executable, "-m", "rsgrpo", "train",
           "--nproc", str(nproc), "--run-dir", str(run_dir)]
    cmd += [f"--set={k}={json.dumps(v)}" for k, v in settings.items()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{name} nproc {nproc} stage {stage} failed:\n{out.stderr[-3000:]}")
    peak_kib = int(out.stderr.strip().splitlines()[-1])
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))[1:]  # first step: warm-up
    step = [float(r["time_generate"]) + float(r["time_grade"]) + float(r["time_update"]) for r in rows]
    return {"model": name, "ranks": nproc, "zero": stage, "wall_s": wall,
            "step_s": statistics.median(step),
            "generate_s": statistics.median(float(r["time_generate"]) for r in rows),
            "update_s": statistics.median(float(r["time_update"]) for r in rows),
            "peak_mib": peak_kib / 1024,
            "tokens_per_s": statistics.median(float(r["tokens_per_s"]) for r in rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny", help="comma-separated: tiny, smollm2")
    ap.add_argument("--steps", type=int, default=4, help="training steps per run (the first is not timed)")
    args = ap.parse_args()
    print(f"CPU cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            model, data = prepare(name, work)
            prompts, samples, max_new, _ = SETTINGS[name]
            print(f"\n{name}: {prompts} prompts x {samples} samples per step, {max_new} new tokens, "
                  f"{args.steps} steps (median of the last {args.steps - 1})")
            print(f"{'configuration':<20} {'step s':>8} {'generate':>9} {'update':>8} {'gen tok/s':>10} "
                  f"{'wall s':>8} {'peak MiB':>9} {'base/step':>10}")
            base = None
            for label, nproc, stage, threads in CONFIGS:
                r = run(name, model, data, nproc, stage, threads, args.steps, work)
                base = base or r
                print(f"{label:<20} {r['step_s']:>8.2f} {r['generate_s']:>9.2f} {r['update_s']:>8.2f} "
                      f"{r['tokens_per_s']:>10.0f} {r['wall_s']:>8.1f} {r['peak_mib']:>9.0f} "
                      f"{base['step_s'] / r['step_s']:>10.2f}")
    print("\npeak MiB: the largest single process of the run (one rank, or the launcher); "
          "gen tok/s: generated tokens of the whole step / the slowest rank's generation time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
