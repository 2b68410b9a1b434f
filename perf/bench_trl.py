"""Step time of our trainer vs TRL's GRPOTrainer, same model / prompts / batch / lengths, one run.

    bash perf/setup_trl_venv.sh                 # once: TRL 1.16.0 in .venv-trl (~1 min)
    .venv/bin/python perf/bench_trl.py [--models tiny,smollm2,smollm2-spread] [--steps-tiny 5]
                                       [--steps-smollm2 4] [--steps-spread 3] [--json out.json]

The orchestrator (this file, run with the project's .venv) prepares the models (the tiny random
model and SmolLM2-135M-Instruct, ``rsgrpo.prepare.model_sources``) and the prompts, then for each workload
(``--models``, :data:`WORKLOADS`) runs

* OURS in a subprocess of ``.venv/bin/python``: ``rsgrpo.train.Trainer`` (what ``python -m rsgrpo
  train`` runs), and
* TRL in a subprocess of ``.venv-trl/bin/python``: ``trl.GRPOTrainer``,

one after the other (never at the same time), each for ``steps`` optimizer steps, and reports the
MEDIAN wall time of the steps after the first (the first step is a warm-up: lazy imports, allocator,
first-call kernels). The load average of the machine before and after each run is printed, as
timings on a shared 2-core machine mean little without it; where other jobs keep the cores busy, run
it with ``OMP_NUM_THREADS=1`` (both workers inherit it): two torch threads then spin-wait on a busy core
and every step takes several times as long, on both sides alike.

What both sides do per step (made as equal as the two libraries allow):

* the same prompts: the same arithmetic problems rendered by ``rsgrpo.prepare.prompts.build_prompt`` (chat
  template) and handed to TRL as plain-text prompts; the TRL worker asserts that TRL's
  tokenization of every prompt equals ours (``rsgrpo.train.engines.base.encode_prompts``);
* generation with a transformers model on CPU (ours: ``rsgrpo.train.engines.hf.HFEngine``, its own decode
  loop with a static KV cache over one batch of all ``prompts x samples`` sequences, seeded per-row
  Gumbel sampling; TRL: one transformers ``generate`` of the whole generation batch, ``do_sample``,
  dynamic KV cache), temperature 1.0, top_p 1.0, no top-k;
  the same completion lengths on both sides whatever the sampled text: in the fixed-length workloads
  (``tiny``, ``smollm2``) EXACTLY ``max_new_tokens`` tokens per completion, EOS suppressed until then
  (TRL: ``min_new_tokens = max_new_tokens`` through ``generation_kwargs``; ours: an engine subclass
  that sets ``SamplingParams.min_tokens = max_tokens``); in ``smollm2-spread`` a target length per
  completion, log-uniform in 8..512 tokens (EOS included) from a fixed seed, the same list on both sides
  (row ``i * samples + j`` of step ``s``: sample ``j`` of the step's prompt ``i``), EOS suppressed before it
  and forced at it (TRL: a logits processor handed to ``model.generate``; ours: a sampler that does the
  same in :class:`~rsgrpo.train.engines.hf.HFEngine`'s decode loop). Completion lengths that vary
  like a reasoning model's are where padded micro-batches waste most of the update: ours packs them
  by ``micro_batch_tokens`` (``--budget``, default ``micro x max_new_tokens``: about the token slots of
  one of TRL's padded micro-batches, so the same activation memory) with no row cap, TRL pads as it
  does (``per_device_train_batch_size`` = ``micro``). The workload is smaller than a real step (4
  prompts x 4 samples) so that a run fits a 2-core machine; every 512-token spread is there;
* reward: ``rsgrpo.train.rewards`` ``binary`` with ``workers=0`` (math-verify, in-process)
  on both sides;
* advantages: group-normalised GRPO (ours: ``grpo`` with ``scale="std"``; TRL: ``scale_rewards=
  "group"``); no dynamic sampling (every group is trained on, as TRL does);
* update: ONE optimizer step per rollout batch (TRL: ``num_iterations=1``, ``steps_per_generation
  = gradient_accumulation_steps``; ours: ``ppo_epochs=1``), micro-batches of the same size with
  gradient accumulation over the whole batch, clipped ratio with clip 0.2 / 0.28, token-mean loss
  over the batch (TRL ``loss_type="dapo"``), no KL and no reference model (``beta=0`` / ``kl_coef=0``),
  AdamW at the same lr with weight decay 0, gradient clipping at 1.0, constant lr, float32, no
  gradient checkpointing (TRL's GRPOConfig turns it on by default; it is turned off here), no
  checkpoint saving inside the timed steps.

Known differences that remain (they are part of what each library costs per step):

* both take the old log-probs from the training forward when ``num_iterations`` / ``ppo_epochs`` is
  1 and compute log-probs on the completion positions only; ours does it in checkpointed chunks
  of ``logprob_chunk_tokens`` inside one call of the output layer, TRL with its own selective
  log-softmax;
* ours updates through a DeepSpeed engine (ZeRO stage 0, gloo, one process), TRL through
  accelerate + the transformers Trainer; ours samples with a per-row seeded Gumbel processor (one
  ``torch.rand`` per row and token), TRL with ``torch.multinomial``.

The time split: ours from ``metrics.csv`` (generate / grade / update); TRL by timing ``model.generate``
and the reward function from inside the run
(update = step - generate - reward, which also holds tokenisation, TRL's bookkeeping and logging).
For ours the report also gives the padding fraction of the update (``rsgrpo.train.micro_batches``:
padding slots / rows x longest row, summed over micro-batches) of the pairs each step trained on, as
planned with the run's ``micro_batch_tokens`` and as contiguous chunks of ``micro`` rows would pad them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# model -> (prompts per step, samples per prompt, max new tokens, micro batch): bench_train.py's sizes
from bench_train import SETTINGS, bench_model  # noqa: E402  (this script's folder is on sys.path)

COMMON = {"temperature": 1.0, "top_p": 1.0, "lr": 1e-5, "weight_decay": 0.0, "grad_clip": 1.0,
          "clip_low": 0.2, "clip_high": 0.28, "seed": 0}
# workload -> model, sizes and completion lengths: fixed (max_new_tokens each) or spread (log-uniform
# target lengths in [low, high] tokens, EOS included)
WORKLOADS = {name: {"model": name, "prompts": p, "samples": n, "max_new": m, "micro": micro, "spread": None}
             for name, (p, n, m, micro) in SETTINGS.items()}
WORKLOADS["smollm2-spread"] = {"model": "smollm2", "prompts": 4, "samples": 4, "max_new": 512, "micro": 4,
                               "spread": (8, 512)}
TARGET_SEED = 1234


def target_lengths(steps: int, rows: int, low: int, high: int, seed: int = TARGET_SEED) -> list[list[int]]:
    """Completion length (EOS included) of every row of every step: log-uniform in ``[low, high]``."""
    import math
    import random

    rng = random.Random(seed)
    return [[min(high, max(low, round(math.exp(rng.uniform(math.log(low), math.log(high))))))
             for _ in range(rows)] for _ in range(steps)]


def forced_length_scores(scores, step: int, targets, eos_ids):
    """``scores`` [rows, vocab] of the token at position ``step`` (0-based) of each row's completion
    with EOS impossible before the row's target length and certain at it."""
    for row, target in enumerate(targets):
        if step < target - 1:
            scores[row, eos_ids] = float("-inf")
        elif step == target - 1:
            scores[row] = float("-inf")
            scores[row, eos_ids[0]] = 0.0
    return scores


# ------------------------------------------------------------------------------------------------
# worker: ours (runs in .venv)
# ------------------------------------------------------------------------------------------------
def worker_ours(spec: dict) -> dict:
    import csv

    import torch

    from rsgrpo.train.config import from_dict
    from rsgrpo.train.engines import hf
    from rsgrpo.train.engines.hf import HFEngine
    from rsgrpo.train.train import Trainer

    class ForcedLengthEngine(HFEngine):
        """HFEngine that suppresses EOS until ``max_tokens`` (``min_tokens``), like TRL's run."""

        def generate(self, prompts, params, *, seeds=None, should_stop=None):
            return super().generate(prompts, dataclasses.replace(params, min_tokens=params.max_tokens), seeds=seeds,
                                    should_stop=should_stop)

    targets_by_seed: dict[int, int] = {}  # the row seed of each row of the generate call -> its target length

    class TargetLengthSampler(hf._SeededSampler):
        """The engine's sampler, with each row's EOS suppressed before its target length and forced at it."""

        def __init__(self, seeds, temperature, top_p):
            super().__init__(seeds, temperature, top_p)
            self.targets, self.step = [targets_by_seed[int(s)] for s in seeds], 0

        def processed(self, scores):
            scores = forced_length_scores(scores.float(), self.step, self.targets, eos_ids)
            self.step += 1
            return super().processed(scores)

        def keep_rows(self, keep):  # finished rows leave the engine's batch: their targets go with them
            super().keep_rows(keep)
            self.targets = [self.targets[int(i)] for i in keep]

    class TargetLengthEngine(HFEngine):
        """HFEngine whose step ``s`` completions have the lengths ``spec["targets"][s]`` (see the module doc)."""

        calls = 0

        def generate(self, prompts, params, *, seeds=None, should_stop=None):
            seeds_ij = self._row_seeds(len(prompts), params, seeds)
            step_targets = spec["targets"][TargetLengthEngine.calls]
            TargetLengthEngine.calls += 1
            targets_by_seed.clear()
            targets_by_seed.update({seeds_ij[i][j]: step_targets[i * params.n + j]
                                    for i in range(len(prompts)) for j in range(params.n)})
            return super().generate(prompts, params, seeds=seeds, should_stop=should_stop)

    spread = spec["targets"] is not None
    if spread:  # the engine builds its sampler by this module-level name
        hf._SeededSampler = TargetLengthSampler

    cfg = from_dict({
        "model_dir": spec["model_dir"], "train_data": spec["data"], "steps": spec["steps"],
        "prompts_per_step": spec["prompts"], "samples_per_prompt": spec["samples"],
        "max_new_tokens": spec["max_new_tokens"], "temperature": spec["temperature"], "top_p": spec["top_p"],
        "estimator": "grpo", "estimator_params": {"scale": "std"}, "dynamic_sampling": False, "kl_coef": 0.0,
        "ppo_epochs": 1, "clip_low": spec["clip_low"], "clip_high": spec["clip_high"], "lr": spec["lr"],
        "weight_decay": spec["weight_decay"], "grad_clip": spec["grad_clip"], "warmup_steps": 0,
        "micro_batch_size": spec["micro_batch_size"], "engine": "hf",
        "hf_batch_size": spec["prompts"] * spec["samples"],
        "grading_workers": 0, "reward_kind": "binary", "precision": "fp32", "zero_stage": 0,
        "checkpoint_every": 0, "keep_last": 1, "progress": False, "seed": spec["seed"],
        "run_dir": spec["run_dir"], "micro_batch_tokens": spec["micro_batch_tokens"],
        # a forced EOS has log-prob 0 in the engine and not in the trainer: measured, never a reason to stop
        **({"mismatch_max_k3": 0.0} if spread else {}),
    }, "bench_trl:ours")

    def factory(model, tokenizer, model_dir):
        engine = (TargetLengthEngine if spread else ForcedLengthEngine)(
            model_dir, model=model, tokenizer=tokenizer, batch_size=spec["prompts"] * spec["samples"])
        eos_ids.extend(engine.eos_ids)
        return engine

    eos_ids: list[int] = []
    trainer = Trainer(cfg, engine_factory=factory)
    lengths: list[list[int]] = []  # prompt + completion tokens of the pairs of each update

    def record_lengths(actor) -> None:
        update = actor.update

        def recorded_update(pairs, *args, **kwargs):
            lengths.append([len(prompt) + len(completion) for prompt, completion in pairs])
            return update(pairs, *args, **kwargs)

        actor.update = recorded_update

    walls: list[float] = []
    inner = trainer.train_step

    def timed_step(step):
        if not lengths and not walls:  # the actor exists once Trainer.run has set up
            record_lengths(trainer.actor)
        t0 = time.perf_counter()
        row = inner(step)
        walls.append(time.perf_counter() - t0)
        return row

    trainer.train_step = timed_step  # Trainer.run calls self.train_step(step)
    trainer.run()
    rows = list(csv.DictReader((Path(spec["run_dir"]) / "metrics.csv").open()))
    return {
        "step_s": walls,
        "generate_s": [float(r["time_generate"]) for r in rows],
        "reward_s": [float(r["time_grade"]) for r in rows],
        "update_s": [float(r["time_update"]) for r in rows],
        "completion_tokens": [float(r["response_len_mean"]) * spec["prompts"] * spec["samples"] for r in rows],
        "reward_mean": [float(r["reward_mean"]) for r in rows],
        "torch_threads": torch.get_num_threads(),
        "pair_lengths": lengths,
    }


# ------------------------------------------------------------------------------------------------
# worker: TRL (runs in .venv-trl)
# ------------------------------------------------------------------------------------------------
def worker_trl(spec: dict) -> dict:
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rsgrpo.prepare.data_sources import load_records
    from rsgrpo.prepare.loading import load_policy
    from rsgrpo.prepare.prompts import build_prompt
    from rsgrpo.train import rewards
    from rsgrpo.train.engines.base import encode_prompts

    model, tok = load_policy(spec["model_dir"], dtype="float32")
    records = load_records({"source": "local", "path": spec["data"]})
    prompts = [build_prompt(r["problem"], template="chat", tokenizer=tok) for r in records]
    # TRL tokenizes a plain-text prompt with processing_class(text=prompts): must equal our ids
    trl_ids = tok(text=prompts)["input_ids"]
    ours_ids = encode_prompts(tok, prompts)
    if [list(x) for x in trl_ids] != ours_ids:
        raise SystemExit("TRL's prompt token ids differ from rsgrpo.train.engines.base.encode_prompts; "
                         "not the same prompts")
    ds = Dataset.from_list([{"prompt": p, "answer": str(r["answer"])} for p, r in zip(prompts, records)])

    timers = {"generate": 0.0, "reward": 0.0}

    def reward_fn(prompts, completions, answer, **kwargs):
        t0 = time.perf_counter()
        n = len(completions)
        out = rewards.compute("binary", completions=list(completions), answers=list(answer), problems=[""] * n,
                              records=[{}] * n, settings={"workers": 0}).values
        timers["reward"] += time.perf_counter() - t0
        return out

    reward_fn.__name__ = "rsgrpo_binary"

    gen_cls = type(model).generate
    calls = [0]

    class TargetLengths(transformers.LogitsProcessor):
        """EOS suppressed before each row's target length and forced at it (see the module doc)."""

        def __init__(self, targets, prompt_width, eos):
            self.targets, self.prompt_width, self.eos = targets, prompt_width, eos

        def __call__(self, input_ids, scores):
            return forced_length_scores(scores, input_ids.shape[1] - self.prompt_width, self.targets, self.eos)

    def timed_generate(*args, **kwargs):
        if spec["targets"] is not None:
            eos = kwargs["generation_config"].eos_token_id
            eos = [eos] if isinstance(eos, int) else list(eos)
            kwargs["logits_processor"] = transformers.LogitsProcessorList(
                [TargetLengths(spec["targets"][calls[0]], kwargs["input_ids"].shape[1], eos)])
            calls[0] += 1
        t0 = time.perf_counter()
        out = gen_cls(model, *args, **kwargs)
        timers["generate"] += time.perf_counter() - t0
        return out

    batch = spec["prompts"] * spec["samples"]
    if batch % spec["micro"]:
        raise SystemExit(f"batch {batch} must be a multiple of the micro batch {spec['micro']}")
    args = GRPOConfig(
        output_dir=spec["run_dir"], max_steps=spec["steps"], per_device_train_batch_size=spec["micro"],
        gradient_accumulation_steps=batch // spec["micro"], num_generations=spec["samples"],
        max_completion_length=spec["max_new_tokens"], temperature=spec["temperature"], top_p=spec["top_p"],
        top_k=0, generation_kwargs={} if spec["targets"] is not None else {"min_new_tokens": spec["max_new_tokens"]},
        learning_rate=spec["lr"], weight_decay=spec["weight_decay"], max_grad_norm=spec["grad_clip"],
        lr_scheduler_type="constant", warmup_steps=0, beta=0.0, num_iterations=1,
        epsilon=spec["clip_low"], epsilon_high=spec["clip_high"], loss_type="dapo", scale_rewards="group",
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, seed=spec["seed"],
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t_last = None
            self.steps: list[dict] = []
            self.logs: list[dict] = []

        def on_train_begin(self, args, state, control, **kw):
            self.t_last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.steps.append({"step_s": now - self.t_last, **timers})
            timers["generate"] = timers["reward"] = 0.0
            self.t_last = now

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.logs.append(dict(logs))  # (logging runs after on_step_end: it is timed in the next step)

    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=ds,
                          processing_class=tok, callbacks=[timer])
    model.generate = timed_generate  # after GRPOTrainer wrapped/patched the model
    trainer.train()
    steps = timer.steps
    return {
        "step_s": [s["step_s"] for s in steps],
        "generate_s": [s["generate"] for s in steps],
        "reward_s": [s["reward"] for s in steps],
        "update_s": [s["step_s"] - s["generate"] - s["reward"] for s in steps],
        "completion_tokens": [float(lg["completions/mean_length"]) * batch for lg in timer.logs],
        "reward_mean": [float(lg.get("reward", float("nan"))) for lg in timer.logs],
        "torch_threads": torch.get_num_threads(),
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
    }


# ------------------------------------------------------------------------------------------------
# orchestrator (runs in .venv)
# ------------------------------------------------------------------------------------------------
def run_worker(python: str, side: str, spec: dict, work: Path) -> dict:
    spec_path = work / f"{side}-{spec['model']}-spec.json"
    out_path = work / f"{side}-{spec['model']}-out.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--worker", side, "--spec", str(spec_path),
                           "--out", str(out_path)], env=env, cwd=str(work), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-10000:])
        raise SystemExit(f"{side} worker for {spec['model']} failed (exit {proc.returncode})")
    res = json.loads(out_path.read_text())
    res.update(side=side, model=spec["model"], process_wall_s=wall, load_before=load0, load_after=load1)
    return res


def padding(res: dict, spec: dict) -> dict:
    """Ours: the padding fraction of the update's micro-batches over every step's pairs, as the run
    planned them (its ``micro_batch_tokens``) and as contiguous chunks of ``micro`` rows would pad them."""
    from rsgrpo.train import micro_batches

    if res["side"] != "ours" or not res.get("pair_lengths"):
        return {"pad_frac": float("nan"), "pad_frac_contiguous": float("nan")}
    steps = res["pair_lengths"]
    real = sum(sum(step) for step in steps)

    def fraction(max_rows: int, budget: int | None) -> float:
        plans = [micro_batches.plan(step, max_rows=max_rows, max_tokens=budget) for step in steps]
        return 1.0 - real / sum(micro_batches.padded_slots(step, plan) for step, plan in zip(steps, plans))

    return {"pad_frac": fraction(spec["micro_batch_size"], spec["micro_batch_tokens"]),
            "pad_frac_contiguous": fraction(spec["micro"], None)}


def summarise(res: dict, spec: dict) -> dict:
    timed = slice(1, None) if len(res["step_s"]) > 1 else slice(0, None)
    med = lambda k: statistics.median(res[k][timed])  # noqa: E731
    toks = statistics.median(res["completion_tokens"][timed]) if res["completion_tokens"] else float("nan")
    spread = spec.get("spread")
    return {
        "model": res["model"], "side": res["side"],
        "batch": f"{spec['prompts']}x{spec['samples']}",
        "max_new": f"{spread[0]}..{spread[1]}" if spread else spec["max_new_tokens"],
        "micro": spec["micro"] if res["side"] == "trl" or not spec["micro_batch_tokens"] else
        f"{spec['micro_batch_tokens']} tok", "steps_timed": len(res["step_s"][timed]),
        **padding(res, spec), "micro_batch_tokens": spec["micro_batch_tokens"],
        "step_s": med("step_s"), "min_step_s": min(res["step_s"][timed]),
        "generate_s": med("generate_s"), "reward_s": med("reward_s"),
        "update_s": med("update_s"), "tokens_per_step": toks,
        "gen_tok_per_s": toks / med("generate_s") if med("generate_s") > 0 else float("nan"),
        "steps_all": [round(x, 2) for x in res["step_s"]],
        "load": f"{res['load_before']:.2f}->{res['load_after']:.2f}",
        "torch_threads": res["torch_threads"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,smollm2,smollm2-spread", help=f"workloads, of {sorted(WORKLOADS)}")
    ap.add_argument("--steps-tiny", type=int, default=5, help="optimizer steps for the tiny model (1st = warm-up)")
    ap.add_argument("--steps-smollm2", type=int, default=4, help="optimizer steps for SmolLM2 (1st = warm-up)")
    ap.add_argument("--steps-spread", type=int, default=3, help="optimizer steps for smollm2-spread (1st = warm-up)")
    ap.add_argument("--budget", type=int, default=None,
                    help="ours: micro_batch_tokens of the spread workload (default: micro x max_new_tokens)")
    ap.add_argument("--smollm2-dir", default=str(ROOT / "models" / "smollm2"))
    ap.add_argument("--ours-python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--trl-python", default=str(ROOT / ".venv-trl" / "bin" / "python"))
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("--reprint", default=None, metavar="JSON", help="only print the tables of a --json file")
    ap.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        res = (worker_ours if args.worker == "ours" else worker_trl)(spec)
        Path(args.out).write_text(json.dumps(res))
        return 0

    if args.reprint:
        print_report(json.loads(Path(args.reprint).read_text())["summary"])
        return 0
    for py in (args.ours_python, args.trl_python):
        if not Path(py).is_file():
            raise SystemExit(f"{py} not found (TRL side: bash perf/setup_trl_venv.sh)")

    from rsgrpo.prepare.data_sources import load_records, write_records

    t_start = time.perf_counter()
    rows, raw = [], []
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        work = Path(tmp)
        data = write_records(load_records({"source": "generator", "name": "arithmetic", "n": 64, "seed": 0,
                                           "difficulty": [1, 2]}), work / "prompts.jsonl")
        for name in args.models.split(","):
            if name not in WORKLOADS:
                raise SystemExit(f"unknown workload {name!r}; choose from {sorted(WORKLOADS)}")
            load = WORKLOADS[name]
            model_dir = bench_model(load["model"], work, args.smollm2_dir)
            prompts, samples, max_new, micro = load["prompts"], load["samples"], load["max_new"], load["micro"]
            steps = {"tiny": args.steps_tiny, "smollm2": args.steps_smollm2}.get(name, args.steps_spread)
            spread = load["spread"]
            # spread: ours packs by a token budget (no row cap), TRL pads micro-batches of `micro` rows
            budget = (args.budget or micro * max_new) if spread else None
            for side, py in (("ours", args.ours_python), ("trl", args.trl_python)):
                spec = dict(COMMON, model=name, model_dir=str(model_dir), data=str(data), steps=steps,
                            prompts=prompts, samples=samples, max_new_tokens=max_new, micro=micro,
                            micro_batch_size=prompts * samples if spread else micro, micro_batch_tokens=budget,
                            spread=spread, targets=target_lengths(steps, prompts * samples, *spread) if spread
                            else None, run_dir=str(work / f"run-{side}-{name}"))
                print(f"[{time.strftime('%H:%M:%S')}] {name}: {side} ({steps} steps) ...", file=sys.stderr, flush=True)
                res = run_worker(py, side, spec, work)
                raw.append(res)
                rows.append(summarise(res, spec))

    print_report(rows)
    print(f"torch threads: {sorted({r['torch_threads'] for r in rows})}; total wall "
          f"{time.perf_counter() - t_start:.0f}s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": rows, "raw": raw}, indent=2) + "\n")
    return 0


def print_report(rows: list[dict]) -> None:
    cols = ["model", "side", "batch", "max_new", "micro", "steps_timed", "step_s", "min_step_s", "generate_s",
            "reward_s", "update_s", "tokens_per_step", "gen_tok_per_s", "pad_frac", "load", "steps_all"]
    print("Per optimizer step: step_s / generate_s / reward_s / update_s = MEDIAN over the steps after the "
          "warm-up step, min_step_s = fastest of them (seconds; load = 1-min load average before->after the "
          "run; steps_all = every step incl. the warm-up; pad_frac = ours: padding share of the update's "
          "token slots, every step):")
    for r in rows:  # JSON written before the min_step_s / pad_frac columns existed
        r.setdefault("min_step_s", float(min(r["steps_all"][1:] or r["steps_all"])))
        r.setdefault("pad_frac", float("nan"))
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print()
    for name in dict.fromkeys(r["model"] for r in rows):
        o = next((r for r in rows if r["model"] == name and r["side"] == "ours"), None)
        t = next((r for r in rows if r["model"] == name and r["side"] == "trl"), None)
        if o and t:
            print(f"{name}: step time TRL / ours = {t['step_s']:.2f} / {o['step_s']:.2f} s = "
                  f"{t['step_s'] / o['step_s']:.2f}x median, {t['min_step_s'] / o['min_step_s']:.2f}x fastest step "
                  f"(generate {t['generate_s'] / o['generate_s']:.2f}x, update {t['update_s'] / o['update_s']:.2f}x; "
                  f"> 1 = TRL slower); completion tokens per step {t['tokens_per_step']:.0f} vs "
                  f"{o['tokens_per_step']:.0f}")
        if o and o.get("micro_batch_tokens"):
            print(f"{name}: padding of our update's micro-batches (same pairs): {o['pad_frac_contiguous']:.1%} as "
                  f"contiguous chunks of {t['micro'] if t else '?'} rows, {o['pad_frac']:.1%} packed by "
                  f"micro_batch_tokens {o['micro_batch_tokens']}")


if __name__ == "__main__":
    sys.exit(main())
