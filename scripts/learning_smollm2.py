"""Does the trainer learn? RS-GRPO (beta 2) on SmolLM2-135M-Instruct, offline arithmetic, CPU.

Prepares SmolLM2 (``rsgrpo.models.prepare_model({"source": "smollm2"})``) if needed, measures
held-out accuracy of the initial model, trains with ``rsgrpo.train.Trainer`` (the same code as
``python -m rsgrpo train``: real data, rollout, grading, DeepSpeed), then measures held-out accuracy
of the final checkpoint with the same sampling settings, and prints

* training reward over the first vs the last steps (from metrics.csv);
* held-out accuracy before vs after (greedy by default; ``--eval-temperature`` > 0 samples).

Budgets are chosen for ~20-30 minutes on 2 uncontended CPU cores: 10 steps of 8 prompts x 8
samples, ``max_new_tokens`` 96 and lr 5e-5. The paper's lr 1e-6 is tuned for hundreds of steps of
512 x 16 samples and does not move a 135M model measurably in 10 small steps. 48 new tokens is
too short: SmolLM2 reasons step by step as the prompt asks, and nearly every answer is cut before
its ``\boxed{}`` (measured: reward 0 on all 64 samples of a first step). Easy problems (arithmetic
levels 1-2) keep the reward away from 0 so some groups survive dynamic sampling. Held-out
accuracy: 4 samples at temperature 1.0 per held-out problem by default (less noisy than greedy on a
few dozen problems); the held-out problems are generated with another seed and any problem text
seen in training is removed. Results go to ``<out>/learning.json``.

    python scripts/learning_smollm2.py --out runs/learning_smollm2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def held_out_accuracy(model_dir: str, records: list[dict], *, max_new_tokens: int, temperature: float,
                      samples: int, seed: int, batch_size: int) -> float:
    """Mean binary reward of ``samples`` completions per held-out problem (greedy: 1 sample)."""
    from rsgrpo.data import build_prompt
    from rsgrpo.grading import compute_rewards
    from rsgrpo.models import load_policy
    from rsgrpo.rollout import SamplingParams, make_engine

    model, tok = load_policy(model_dir)
    engine = make_engine("hf", model_dir=model_dir, model=model, tokenizer=tok, batch_size=batch_size)
    prompts = [build_prompt(r["problem"], template="chat", tokenizer=tok) for r in records]
    n = 1 if temperature == 0 else samples
    params = SamplingParams(n=n, temperature=temperature, top_p=1.0, max_tokens=max_new_tokens, seed=seed)
    comps = engine.generate(prompts, params)
    golds = [str(r["answer"]) for r in records for _ in range(n)]
    rewards = compute_rewards(golds, [c.text for group in comps for c in group], kind="binary")
    engine.close()
    return sum(rewards) / len(rewards)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=str(ROOT / "models" / "smollm2"),
                    help="prepared SmolLM2 dir (created with prepare_model if missing)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "learning_smollm2"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--levels", default="1,2", help="arithmetic difficulty levels (comma list)")
    ap.add_argument("--train-n", type=int, default=200)
    ap.add_argument("--eval-n", type=int, default=32)
    ap.add_argument("--eval-temperature", type=float, default=1.0)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--window", type=int, default=3, help="steps averaged for first/last reward")
    args = ap.parse_args(argv)

    from rsgrpo.data import load_records, write_records
    from rsgrpo.models import prepare_model
    from rsgrpo.train import Trainer
    from rsgrpo.trainconfig import from_dict

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        print(f"preparing SmolLM2 in {model_dir} ...", flush=True)
        prepare_model({"source": "smollm2"}, model_dir)

    levels = [int(x) for x in args.levels.split(",")]
    train = load_records({"source": "generator", "name": "arithmetic", "n": args.train_n, "seed": 0,
                          "difficulty": levels})
    seen = {r["problem"] for r in train}
    pool = load_records({"source": "generator", "name": "arithmetic", "n": 4 * args.eval_n, "seed": 12345,
                         "difficulty": levels})
    held_out = [r for r in pool if r["problem"] not in seen][: args.eval_n]
    train_path = write_records(train, out / "train.jsonl")
    eval_kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.eval_temperature,
                   samples=args.eval_samples, seed=777, batch_size=64)

    t0 = time.time()
    acc_before = held_out_accuracy(str(model_dir), held_out, **eval_kw)
    print(f"held-out accuracy before: {acc_before:.4f} ({len(held_out)} problems, "
          f"{time.time() - t0:.0f}s)", flush=True)

    cfg = from_dict({
        "model_dir": str(model_dir), "train_data": str(train_path), "steps": args.steps,
        "prompts_per_step": args.prompts, "samples_per_prompt": args.samples,
        "max_new_tokens": args.max_new_tokens, "lr": args.lr, "method": "rs_grpo",
        "method_params": {"beta": args.beta}, "engine": "hf", "micro_batch_size": 8,
        "checkpoint_every": 0, "keep_last": 1, "run_dir": str(out / "run"), "grading_workers": 1,
    }, "learning_smollm2")
    t1 = time.time()
    manifest = Trainer(cfg).run()
    train_s = time.time() - t1
    import csv

    rows = list(csv.DictReader((out / "run" / "metrics.csv").open()))
    rewards = [float(r["reward_mean"]) for r in rows]
    w = min(args.window, len(rewards))
    first, last = sum(rewards[:w]) / w, sum(rewards[-w:]) / w

    t2 = time.time()
    acc_after = held_out_accuracy(manifest["final_checkpoint"], held_out, **eval_kw)
    summary = {
        "steps": args.steps, "prompts_per_step": args.prompts, "samples_per_prompt": args.samples,
        "max_new_tokens": args.max_new_tokens, "lr": args.lr, "beta": args.beta, "levels": levels,
        "reward_per_step": rewards, f"reward_first_{w}": first, f"reward_last_{w}": last,
        "held_out_problems": len(held_out), "eval_temperature": args.eval_temperature,
        "held_out_acc_before": acc_before, "held_out_acc_after": acc_after,
        "entropy_per_step": [float(r["entropy"]) for r in rows],
        "cumulative_solve_rate_final": float(rows[-1]["cumulative_solve_rate"]),
        "train_seconds": train_s, "eval_seconds_after": time.time() - t2,
    }
    (out / "learning.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"training reward: first {w} steps {first:.4f} -> last {w} steps {last:.4f}")
    print(f"held-out accuracy: before {acc_before:.4f} -> after {acc_after:.4f}")
    print(f"train time {train_s:.0f}s for {args.steps} steps; summary in {out / 'learning.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
