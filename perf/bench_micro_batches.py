"""The update's time and peak memory with contiguous micro-batches vs token-budget ones, one run.

    .venv/bin/python perf/bench_micro_batches.py [--model smollm2|tiny] [--pairs 32] [--updates 3]
                                                  [--json out.json]

The workload is the update stage alone (``rsgrpo.train.actor.Actor.update``, fp32, ZeRO stage 0, one
process) on pairs whose completion lengths spread as real math rollouts do: log-uniform from 8 to 512
tokens (a fixed seed), prompts of 40-80 tokens, random token ids. Each variant runs in a fresh process
(``tests/peak_memory.py``: fixed glibc mmap threshold, peak reset after the setup), one thread:

* ``contiguous``: ``micro_batch_size`` 4 rows in group order, each padded to its longest row (what
  ``micro_batch_tokens: null`` does);
* ``budget``: ``micro_batch_tokens`` = 4 x the longest pair, no row cap: the pairs sorted by length and
  packed, so no micro-batch holds more token slots than the contiguous plan's largest can.

Printed per variant: micro-batches, the padding share of the padded token slots, the MEDIAN seconds of
``--updates`` updates after a warm-up update, and the peak memory above the setup; then the ratios
against ``contiguous`` and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_train import bench_model  # noqa: E402  (this folder is on sys.path)
from peak_memory import measured_output  # noqa: E402  (tests/peak_memory.py: the tests' measurement)

SETUP = """
import json, math, random, statistics, time
from rsgrpo.train import micro_batches
from rsgrpo.train.actor import Actor
from rsgrpo.train.config import from_dict
from rsgrpo.train.distributed import collectives
spec = json.loads({spec!r})
collectives.init_distributed()
rng = random.Random(spec["seed"])
lengths = [(rng.randint(40, 80), round(math.exp(rng.uniform(math.log(8), math.log(512)))))
           for _ in range(spec["pairs"])]
cfg = from_dict(dict(model_dir=spec["model_dir"], engine="hf", lr=1e-6, weight_decay=0.0,
                     micro_batch_size=spec["micro_batch_size"], micro_batch_tokens=spec["micro_batch_tokens"]))
actor = Actor(cfg, spec["model_dir"])
vocab = actor.model.config.vocab_size
pairs = [([rng.randrange(3, vocab) for _ in range(p)], [rng.randrange(3, vocab) for _ in range(c)]) for p, c in lengths]
advantages = torch.tensor([rng.gauss(0.0, 1.0) for _ in pairs])
sizes = [p + c for p, c in lengths]
plan = micro_batches.plan(sizes, max_rows=cfg.micro_batch_size, max_tokens=cfg.micro_batch_tokens)
print("PLAN", json.dumps({{"micro_batches": len(plan), "padding": micro_batches.padding_fraction(sizes, plan),
                          "tokens": sum(sizes)}}))
actor.update(pairs, advantages, lr=1e-6)  # warm-up: first-call allocations and kernels
"""

WORK = """
seconds = []
for _ in range(spec["updates"]):
    start = time.perf_counter()
    actor.update(pairs, advantages, lr=1e-6)
    seconds.append(time.perf_counter() - start)
print("SECONDS", json.dumps(seconds))
"""


def _measure(spec: dict) -> dict:
    """Peak MB of the timed updates above the setup; the plan and the seconds come back in its output."""
    stdout = measured_output(SETUP.format(spec=json.dumps(spec)), WORK, timeout=3600,
                             env={"TOKENIZERS_PARALLELISM": "false"})
    found = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in stdout.splitlines()
             if line.split(" ", 1)[0] in ("PLAN", "SECONDS", "PEAK_MB")}
    return {**json.loads(found["PLAN"]), "seconds": json.loads(found["SECONDS"]), "peak_mb": float(found["PEAK_MB"])}


def main(argv=None) -> int:
    import statistics
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(bench_model(args.model, Path(tmp)))
        longest = 80 + 512
        variants = {"contiguous": (4, None), "budget": (args.pairs, 4 * longest)}
        load_before = os.getloadavg()[0]
        rows = {}
        for name, (size, budget) in variants.items():
            spec = dict(model_dir=model_dir, pairs=args.pairs, updates=args.updates, seed=args.seed,
                        micro_batch_size=size, micro_batch_tokens=budget)
            result = _measure(spec)
            result["median_s"] = statistics.median(result["seconds"])
            rows[name] = result
        load_after = os.getloadavg()[0]
    print(f"update of {args.pairs} pairs ({rows['contiguous']['tokens']} tokens; completions 8..512 log-uniform) "
          f"on {args.model}, fp32, one thread; load {load_before:.2f} -> {load_after:.2f}")
    print("| variant | micro-batches | padding | median update s | peak MB above setup |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['micro_batches']} | {r['padding']:.1%} | {r['median_s']:.2f} | {r['peak_mb']:.0f} |")
    base, budget = rows["contiguous"], rows["budget"]
    print(f"budget / contiguous: time {budget['median_s'] / base['median_s']:.2f}x, "
          f"peak memory {budget['peak_mb'] / base['peak_mb']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
