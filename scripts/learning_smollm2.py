"""Does the trainer learn? RS-GRPO (beta 2) on SmolLM2-135M-Instruct, offline arithmetic, CPU.

Prepares SmolLM2 (``rsgrpo.prepare.model_sources.prepare_model({"source": "smollm2"})``) if needed, then

1. splits the DISTINCT problem texts of the arithmetic generator (levels ``--levels``) with a seeded
   shuffle into a held-out set (``--eval-n`` problems, default 64) and a training set (the rest, at
   most ``--train-n``); the two are disjoint by problem text, which the script asserts;
2. evaluates the initial model on the held-out set: ``--eval-samples`` completions per problem
   (default 4) at the training temperature and max_new_tokens, with ``--top-p``;
3. trains with ``rsgrpo.train.trainer.Trainer`` (the code behind ``python -m rsgrpo train``: transformers
   rollouts, the ``binary`` math-verify reward, RS-GRPO advantages, dynamic sampling, DeepSpeed
   AdamW);
4. evaluates the final checkpoint on the same held-out problems with the SAME per-sample seeds
   (common random numbers: the before/after difference is not inflated by sampling noise of
   the two runs being independent);

and prints

* the training reward of every step, and the mean of the first vs the last ``--window`` steps;
* held-out accuracy before and after under three graders: the guarded reward (``binary`` on records
  with ``answer_format: integer``, exactly the training reward of the real-model demo, config/demo-llm.yaml),
  a strict check independent of ``rsgrpo.grading`` (the last integer written in the completion
  equals the answer), and plain math-verify (``binary`` without the format); each as mean
  per-problem pass@1 (= correct / samples, ``rsgrpo.evaluate.passk.pass_at_k``) and pass@k for k = samples,
  with a percentile-bootstrap 95% CI over problems (``rsgrpo.evaluate.passk.bootstrap_ci``), the paired
  after - before difference with a paired bootstrap CI (``rsgrpo.evaluate.passk.paired_difference``), and
  how many problems got better / worse;
* how many held-out completions give a final answer that restates an expression (not a literal
  integer, e.g. "5 + 8") and are counted correct: by plain math-verify, and by the guarded grader
  (which must count none).

Why the guard: math-verify compares expressions symbolically, so "The answer is 5 + 8." is correct
for "What is 5 + 8?", and RL on plain math-verify learns exactly that shortcut (restating the sum
is short and always right). The ``integer`` answer format (``rsgrpo.grading.answer_format``) grades
only a literal integer. ``--reward plain`` trains on plain math-verify instead (records without the
format; its run lives in ``<out>/run-plain``, its summary in ``<out>/learning-plain.json``), to
watch the shortcut appear. Every held-out completion, its extracted answer and the three verdicts
are written to ``<out>/eval_before.jsonl`` / ``eval_after.jsonl``.

Default budget: level-1 arithmetic (one-digit sums a + b: 100 distinct texts, 64 held out, 36 to
train on), 16 steps of 4 prompts x 8 samples, temperature 0.6, 64 new tokens, lr 5e-5,
beta 2. Why these: the paper's lr 1e-6 is tuned for hundreds of steps of 512 x 16 samples and does
not move a 135M model measurably in a few small steps; at temperature 1.0 SmolLM2 rambles and
almost no group has a correct sample (dynamic sampling drops them), at 0.6 some do from the first
step (the demo's settings). Training samples with top_p 1.0 (the trainer's log-probs are of the whole
distribution); evaluation with ``--top-p`` (0.9). The held-out set is never used to choose any of these.
The script prints its own timings.

    python scripts/learning_smollm2.py --out runs/learning_smollm2 [--fresh]

Results (and per-problem correct counts) go to ``<out>/learning.json``. A second call with the same
arguments reuses the finished training run in ``<out>/run`` (the trainer resumes it at its last
step; config and data hashes must match) and only redoes the two evaluations; ``--fresh`` retrains.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rsgrpo.train import rewards  # noqa: E402

# The real-model demo's guard (config/demo-llm.yaml, train set and benchmark): only a literal integer is graded.
ANSWER_FORMAT = "integer"


def split_problems(levels: list[int], eval_n: int, train_n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out and training records, disjoint by problem text, with ``answer_format: integer``.

    The generator draws problems with replacement, so its distinct texts are collected from a large
    draw (seed ``seed``), sorted, shuffled with ``seed`` and cut: the first ``eval_n`` are held out,
    the next (at most ``train_n``) are the training set.
    """
    from rsgrpo.prepare.data_sources import load_records

    pool = load_records({"source": "generator", "name": "arithmetic", "n": 20000, "seed": seed,
                         "difficulty": levels, "answer_format": ANSWER_FORMAT})
    distinct: dict[str, dict] = {}
    for r in pool:
        distinct.setdefault(r["problem"], r)
    texts = sorted(distinct)
    random.Random(f"learning-split/{seed}").shuffle(texts)
    if len(texts) < eval_n + 8:
        raise SystemExit(f"levels {levels} have only {len(texts)} distinct problems; need {eval_n} held out + "
                         "at least 8 to train on")
    held_out = [dict(distinct[t], id=f"heldout-{i:04d}") for i, t in enumerate(texts[:eval_n])]
    train = [dict(distinct[t], id=f"train-{i:04d}") for i, t in enumerate(texts[eval_n:eval_n + train_n])]
    overlap = {r["problem"] for r in held_out} & {r["problem"] for r in train}
    assert not overlap, f"held-out and training problems overlap: {sorted(overlap)[:5]}"
    return held_out, train


def without_format(records: list[dict]) -> list[dict]:
    """The records as a dataset of the default format (``any``: plain math-verify) sees them."""
    return [{k: v for k, v in r.items() if k != "answer_format"} for r in records]


LAST_INTEGER = re.compile(r"-?\d+")


def strict_correct(text: str, gold: str) -> bool:
    """The LAST integer literal written in the completion equals the (integer) gold answer.

    An independent check of the guarded grader, sharing no code with ``rsgrpo.grading``: a
    completion that restates the question ("The answer is 5 + 8.") writes no 13, so it fails here
    whatever math-verify makes of it."""
    found = LAST_INTEGER.findall(text.replace(",", ""))
    return bool(found) and int(found[-1]) == int(gold)


GRADERS = ("guarded", "strict", "math_verify")


def evaluate(model_dir: str, records: list[dict], *, samples: int, temperature: float, top_p: float,
             max_new_tokens: int, seed: int, batch_size: int, dump: Path) -> tuple[dict, dict]:
    """Correct-sample counts per problem (``samples`` completions each) under each of
    :data:`GRADERS`, and the counts of completions whose final answer restates an expression (an
    extracted answer that is not a literal integer): in all, and counted correct by each grader.
    Every completion, its extracted answer and its verdicts are written to ``dump`` (JSONL).

    Problem ``i`` samples with the per-problem seed ``(seed, i)``, so two evaluations of different
    checkpoints draw the same random numbers for the same problem."""
    from rsgrpo.grading import extract_answer, is_integer_literal
    from rsgrpo.prepare.loading import load_policy
    from rsgrpo.prepare.prompts import build_prompt
    from rsgrpo.train.engines import make_engine
    from rsgrpo.train.engines.base import SamplingParams, row_seed

    model, tok = load_policy(model_dir)
    engine = make_engine("hf", model_dir=model_dir, model=model, tokenizer=tok, batch_size=batch_size)
    prompts = [build_prompt(r["problem"], template="chat", tokenizer=tok) for r in records]
    params = SamplingParams(n=samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed)
    comps = engine.generate(prompts, params, seeds=[row_seed(seed, i) for i in range(len(records))])
    engine.close()
    texts = [c.text for group in comps for c in group]
    per_sample = [r for r in records for _ in range(samples)]
    golds = [str(r["answer"]) for r in per_sample]

    def binary(sample_records):
        verdicts = rewards.compute("binary", completions=texts, answers=golds, problems=[""] * len(texts),
                                   records=sample_records, settings={"workers": 0}).values
        return [bool(v) for v in verdicts]

    verdicts = {"guarded": binary(per_sample), "strict": [strict_correct(t, g) for t, g in zip(texts, golds)],
                "math_verify": binary(without_format(per_sample))}
    extracted = [extract_answer(t) for t in texts]
    restated = [a is not None and not is_integer_literal(a) for a in extracted]
    with open(dump, "w") as fh:
        for k, (t, g, a) in enumerate(zip(texts, golds, extracted)):
            fh.write(json.dumps({"problem": records[k // samples]["problem"], "gold": g, "completion": t,
                                 "extracted": a, **{name: verdicts[name][k] for name in GRADERS}}) + "\n")
    per = lambda v: [int(sum(v[i * samples:(i + 1) * samples])) for i in range(len(records))]  # noqa: E731
    counts = {"restated_answers": sum(restated)}
    for name in GRADERS:
        counts[f"restated_correct_{name}"] = sum(r and v for r, v in zip(restated, verdicts[name]))
    return {name: per(verdicts[name]) for name in GRADERS}, counts


def fmt_ci(ci) -> str:
    return f"{float(ci.mean):.4f} [95% CI {float(ci.low):.4f}, {float(ci.high):.4f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=str(ROOT / "models" / "smollm2"),
                    help="prepared SmolLM2 dir (created with prepare_model if missing)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "learning_smollm2"))
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--samples", type=int, default=8, help="samples per prompt (group size)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.6, help="rollout AND evaluation temperature")
    ap.add_argument("--top-p", type=float, default=0.9,
                    help="evaluation top_p (training samples with top_p 1.0: the trainer's log-probs are of the "
                         "whole distribution)")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--levels", default="1", help="arithmetic difficulty levels (comma list)")
    ap.add_argument("--train-n", type=int, default=1000, help="max training problems (distinct texts)")
    ap.add_argument("--eval-n", type=int, default=64, help="held-out problems (distinct texts)")
    ap.add_argument("--eval-samples", type=int, default=4, help="completions per held-out problem")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=4, help="steps averaged for first/last reward")
    ap.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples for the CIs")
    ap.add_argument("--reward", choices=["guarded", "plain"], default="guarded",
                    help="training reward: guarded = binary on answer_format integer records (the demo's: only "
                         "a literal integer is graded); plain = binary on records without the format (plain "
                         "math-verify, which accepts a restated '5 + 8'); trains in <out>/run-plain")
    ap.add_argument("--fresh", action="store_true",
                    help="delete the run dir (<out>/run or <out>/run-plain) first (default: a finished run of "
                         "the same config is reused, only the evaluations are redone)")
    args = ap.parse_args(argv)

    import numpy as np

    from rsgrpo.evaluate.passk import bootstrap_ci, paired_difference, pass_at_k
    from rsgrpo.prepare.data_sources import write_records
    from rsgrpo.prepare.model_sources import prepare_model
    from rsgrpo.train.config import from_dict
    from rsgrpo.train.trainer import Trainer

    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        print(f"preparing SmolLM2 in {model_dir} ...", flush=True)
        prepare_model({"source": "smollm2"}, model_dir)

    levels = [int(x) for x in args.levels.split(",")]
    held_out, train = split_problems(levels, args.eval_n, args.train_n, args.split_seed)
    print(f"problems: {len(train)} training, {len(held_out)} held out (levels {levels}); "
          f"disjoint by problem text: {not ({r['problem'] for r in train} & {r['problem'] for r in held_out})}",
          flush=True)
    train_path = write_records(train if args.reward == "guarded" else without_format(train),
                               out / f"train{'' if args.reward == 'guarded' else '-plain'}.jsonl")
    write_records(held_out, out / "held_out.jsonl")
    eval_kw = dict(samples=args.eval_samples, temperature=args.temperature, top_p=args.top_p,
                   max_new_tokens=args.max_new_tokens, seed=777, batch_size=64)

    t0 = time.time()
    before, restated_before = evaluate(str(model_dir), held_out, dump=out / "eval_before.jsonl", **eval_kw)
    tag = "" if args.reward == "guarded" else f"-{args.reward}"
    eval_before_s = time.time() - t0
    print(f"held-out before: {' / '.join(f'{sum(before[g])} ({g})' for g in GRADERS)} of "
          f"{len(held_out) * args.eval_samples} samples correct ({eval_before_s:.0f}s)", flush=True)

    run_dir = out / f"run{tag}"
    if args.fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    cfg = from_dict({
        "model_dir": str(model_dir), "train_data": str(train_path), "steps": args.steps,
        "prompts_per_step": args.prompts, "samples_per_prompt": args.samples,
        "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": 1.0,
        "lr": args.lr, "estimator": "rs_grpo", "estimator_params": {"beta": args.beta}, "engine": "hf",
        "micro_batch_size": 16, "checkpoint_every": 0, "keep_last": 1, "run_dir": str(run_dir),
        "grading_workers": 0, "seed": 0, "reward_kind": "binary",
    }, "learning_smollm2")
    t1 = time.time()
    # A run dir holding the finished run of the SAME config (the trainer checks the config and
    # data hashes) is resumed at its last step, i.e. reused without training again.
    manifest = Trainer(cfg).run()
    train_s = time.time() - t1

    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    rewards = [float(r["reward_mean"]) for r in rows]
    w = min(args.window, len(rewards))
    first, last = float(np.mean(rewards[:w])), float(np.mean(rewards[-w:]))
    step_seconds = [float(r["time_generate"]) + float(r["time_grade"]) + float(r["time_update"]) for r in rows]

    t2 = time.time()
    after, restated_after = evaluate(manifest["final_checkpoint"], held_out, dump=out / f"eval_after{tag}.jsonl",
                                     **eval_kw)
    eval_after_s = time.time() - t2

    n = args.eval_samples
    bkw = dict(n_boot=args.bootstrap, seed=0)
    interval = lambda ci: {"mean": float(ci.mean), "low": float(ci.low), "high": float(ci.high)}  # noqa: E731
    graders = {}
    for grader in GRADERS:
        cb, ca = np.array(before[grader]), np.array(after[grader])
        res = {"correct_before": cb.tolist(), "correct_after": ca.tolist(),
               "problems_better": int((ca > cb).sum()), "problems_worse": int((ca < cb).sum())}
        for k in sorted({1, n}):
            pb, pa = pass_at_k(n, cb, k), pass_at_k(n, ca, k)
            res[f"pass{k}_before"] = interval(bootstrap_ci(pb, **bkw))
            res[f"pass{k}_after"] = interval(bootstrap_ci(pa, **bkw))
            res[f"pass{k}_diff"] = interval(paired_difference(pa, pb, **bkw))
        graders[grader] = res

    summary = {
        "model": "SmolLM2-135M-Instruct", "method": "rs_grpo", "beta": args.beta, "steps": args.steps,
        "reward": args.reward,
        "prompts_per_step": args.prompts, "samples_per_prompt": args.samples,
        "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
        "lr": args.lr, "levels": levels, "train_problems": len(train), "held_out_problems": len(held_out),
        "eval_samples_per_problem": n, "bootstrap": args.bootstrap,
        "reward_per_step": rewards, "groups_kept_per_step": [int(r["groups_kept"]) for r in rows],
        "entropy_per_step": [float(r["entropy"]) for r in rows],
        "response_len_per_step": [float(r["response_len_mean"]) for r in rows],
        "step_seconds": step_seconds,
        f"reward_first_{w}": first, f"reward_last_{w}": last,
        "cumulative_solve_rate_final": float(rows[-1]["cumulative_solve_rate"]),
        "held_out": graders, "restated_before": restated_before, "restated_after": restated_after,
        "eval_before_seconds": eval_before_s, "train_seconds_this_call": train_s,
        "train_seconds_recorded": sum(step_seconds), "eval_after_seconds": eval_after_s,
        "total_seconds": time.time() - t_start,
    }
    summary_file = out / f"learning{tag}.json"
    summary_file.write_text(json.dumps(summary, indent=2) + "\n")

    print()
    print(f"RS-GRPO beta {args.beta}, reward {args.reward}, SmolLM2-135M-Instruct, "
          f"arithmetic levels {levels}: {args.steps} steps x "
          f"{args.prompts} prompts x {args.samples} samples, T {args.temperature}, top_p {args.top_p}, "
          f"{args.max_new_tokens} new tokens, lr {args.lr}")
    print("step  reward  groups_kept  entropy  resp_len  seconds")
    for r, sec in zip(rows, step_seconds):
        print(f"{int(r['step']):4d}  {float(r['reward_mean']):.4f}  {int(r['groups_kept']):11d}  "
              f"{float(r['entropy']):7.3f}  {float(r['response_len_mean']):8.1f}  {sec:7.1f}")
    print(f"training reward: first {w} steps {first:.4f} -> last {w} steps {last:.4f}")
    print(f"held-out: {len(held_out)} problems disjoint from training, {n} samples each, same seeds before/after; "
          f"mean over problems, percentile bootstrap 95% CI ({args.bootstrap} resamples of problems)")
    for grader, res in graders.items():
        label = {"guarded": "guarded (binary, answer_format integer)",
                 "strict": "strict (last integer written == answer)",
                 "math_verify": "plain math-verify (binary, answer_format any)"}[grader]
        if grader == {"guarded": "guarded", "plain": "math_verify"}[args.reward]:
            label += " (= the training reward)"
        print(f"  grader {label}:")
        for k in sorted({1, n}):
            print(f"    pass@{k} before {fmt_ci(_ci(res[f'pass{k}_before']))}")
            print(f"    pass@{k} after  {fmt_ci(_ci(res[f'pass{k}_after']))}")
            print(f"    pass@{k} after - before (paired) {fmt_ci(_ci(res[f'pass{k}_diff']))}")
        print(f"    problems with more / fewer correct samples after training: "
              f"{res['problems_better']} / {res['problems_worse']}")
    print("held-out completions whose final answer restates an expression (not a literal integer), and how many "
          "of them each grader counts correct:")
    for when, counts in (("before", restated_before), ("after", restated_after)):
        print(f"  {when}: {counts['restated_answers']} restated; counted correct by plain math-verify "
              f"{counts['restated_correct_math_verify']}, by the guarded grader {counts['restated_correct_guarded']}, "
              f"by strict {counts['restated_correct_strict']}")
    print(f"completions and verdicts: {out / 'eval_before.jsonl'}, {out / f'eval_after{tag}.jsonl'}")
    print(f"time: eval before {eval_before_s:.0f}s, training {sum(step_seconds):.0f}s recorded for {len(rows)} steps "
          f"({train_s:.0f}s in this call), eval after {eval_after_s:.0f}s, total {time.time() - t_start:.0f}s; "
          f"summary in {out / f'learning{tag}.json'}")
    return 0


def _ci(d: dict):
    from rsgrpo.evaluate.passk import Interval

    return Interval(d["mean"], d["low"], d["high"])


if __name__ == "__main__":
    sys.exit(main())
