"""Does RL training work on this machine's GPU? One command, one PASS/FAIL line per check.

    python scripts/gpu_check.py [--config config/gpu-smoke.yaml] [--layers 4] [--model DIR] [--work DIR]
                                [--json out.json]
    python scripts/gpu_check.py --cpu     # the same sequence on CPU: transformers engine, tiny model (dry run)

It trains the model of ``--config`` (config/gpu-smoke.yaml: Qwen2.5-Math-1.5B's shape, random weights,
built offline), cut to its first ``--layers`` decoder layers (0 = all of them), with that config's
training settings (bf16-mixed, gradient checkpointing, the colocated vLLM engine with sleep mode), on a
reward registered here that a random model earns about half the time (:func:`parity_reward`), so
advantages, gradients and weight changes are not zero. Three processes run in turn, each a
:class:`rsgrpo.train.trainer.Trainer` built in-process (``scripts/gpu_check_worker.py``), in about 5
minutes on one H100 (an estimate: the script has not run on a GPU yet):

1. ZeRO-1, 3 steps; before its first step the rollout engine's tokens/s is timed against raw vLLM; the
   weight push after its 2nd update deliberately hands the engine the weights it already had;
2. ZeRO-3 on one rank (the bucketed gather of the push and of the checkpoint, DeepSpeed without its
   torch.nn.functional.linear patch), 3 steps, a checkpoint after the 2nd; SIGKILLed in the middle of
   its 3rd step;
3. the same command again: it resumes from that checkpoint and finishes.

Checks (``--json`` writes their figures):

* ``zero1_update`` / ``zero3_update``: every step's rewards vary within a group, its advantages and
  gradient norm are > 0 (and finite), and the final checkpoint's weights differ from the initial ones;
* ``zero1_refresh`` / ``zero3_refresh``: the mean k3 KL estimate between the engine's and the trainer's
  token log-probs (``mismatch_k3`` of metrics.csv) after one update (and, for ZeRO-3, after the resume)
  is at most the bound (the config's ``mismatch_max_k3``, else 0.05; ``--cpu`` 1e-3): the engine generates
  with the pushed weights (the ZeRO-3 run stops above it itself, as training does);
* ``zero1_stale``: the step generated with the deliberately stale weights has ``--stale-factor`` times
  the refreshed step's mismatch at least: the measure tells stale weights from refreshed ones;
* ``rollout_speed``: generated tokens/s of the trainer's engine (per-completion requests, unseeded,
  log-probs) at least ``--min-speed-ratio`` of raw ``vllm.LLM.generate`` (n samples per request,
  unseeded, log-probs) on the same engine and prompts;
* ``zero1_memory`` / ``zero3_memory``: the GPU's used memory at its highest (polled; vLLM's sleeping
  memory is unmapped, so torch's allocator statistics would count it twice) at most the plan's priced
  total for the same job (``rsgrpo.capacity.train_memory`` with the engine's actual share) plus its
  margin for what it does not price (``MARGIN_BYTES``: CUDA context, NCCL, buckets, fragmentation);
* ``zero3_linear``: torch.nn.functional.linear is still torch's own beside the ZeRO-3 actor;
* ``resume``: the SIGKILLed run held a complete checkpoint, the restarted one resumed from it, finished
  at the last step with each step's metrics row once, and its final checkpoint verifies and loads.

Exit status: 0 when every check passes, 1 when one fails, 2 on a machine without a GPU (``--cpu`` runs
the sequence there as a dry run: the GPU's figures are not judged). The runs, their logs
(``logs/<worker>.log``) and metrics stay in ``--work`` (default perf/out/gpu-check). The judgments are
pure functions in ``scripts/gpu_check_judge.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for _path in (ROOT, HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from gpu_check_judge import (  # noqa: E402
    CHECKPOINT_EVERY,
    HOLD_STEP,
    STALE_STEP,
    STEPS,
    Check,
    check_linear,
    check_memory,
    check_refresh,
    check_resume,
    check_speed,
    check_stale,
    check_update,
    exit_code,
    failed,
    step_of,
)

REWARD = "gpu_check_parity"
SMOKE = ROOT / "config" / "gpu-smoke.yaml"
CHECKS = ["zero1_update", "zero1_refresh", "zero1_stale", "rollout_speed", "zero1_memory", "zero3_update",
          "zero3_linear", "zero3_refresh", "zero3_memory", "resume"]
# The training keys of the smoke config the checks train with (the rest are the checks' own).
SMOKE_KEYS = ("precision", "gradient_checkpointing", "engine", "engine_options", "micro_batch_size", "temperature",
              "top_p", "max_new_tokens", "logprob_chunk_tokens", "offload_optimizer", "rollout_correction",
              "rollout_correction_cap", "mismatch_max_k3", "hf_batch_size")
# Sizes per mode: GPU (a few seconds a step on the cut model) and --cpu (the tiny model, seconds in all).
# --cpu's mismatch bound is tight: engine and trainer run the same kernels there, so a refreshed engine
# agrees to ~1e-7 and one update behind it is off by ~5e-3 (the tiny model), below the GPU bound.
SIZES = {"gpu": {"layers": 4, "prompts": 16, "samples": 8, "max_new": None, "micro": None, "speed_prompts": 64,
                 "lr": 1e-4, "mismatch_bound": None, "timeout": 600},
         "cpu": {"layers": 0, "prompts": 4, "samples": 4, "max_new": 8, "micro": 8, "speed_prompts": 4,
                 "lr": 1e-3, "mismatch_bound": 1e-3, "timeout": 300}}


# ------------------------------------------------------------------------------------------------
# the reward
# ------------------------------------------------------------------------------------------------
def parity_reward(*, completions, answers, problems, records) -> list[float]:
    """1.0 when the sum of the completion's character codes is even, else 0.0: a random model earns it
    about half the time whatever its length, so nearly every group of 8 has rewards that vary (only
    2 / 2**8 of them do not), its advantages are not 0 and neither is the gradient."""
    return [1.0 if sum(map(ord, text)) % 2 == 0 else 0.0 for text in completions]


def register_reward() -> None:
    """Register :func:`parity_reward` as :data:`REWARD` (once per process)."""
    from rsgrpo.train import rewards

    if REWARD not in rewards.REWARDS:
        rewards.register(REWARD, solved_at=1.0)(parity_reward)


# ------------------------------------------------------------------------------------------------
# arguments and the runs' configs (pure)
# ------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="dry run on CPU: transformers engine, a tiny model")
    ap.add_argument("--config", default=str(SMOKE), help="workflow config whose model and training settings are used")
    ap.add_argument("--model", default=None, help="a prepared checkpoint instead of the config's model")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers of the config's model (0 = all; GPU 4)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per step (GPU 16, --cpu 4)")
    ap.add_argument("--samples", type=int, default=None, help="samples per prompt (GPU 8, --cpu 4)")
    ap.add_argument("--max-new", type=int, default=None, help="new tokens per completion (the config's; --cpu 8)")
    ap.add_argument("--micro", type=int, default=None, help="micro-batch of the update (the config's; --cpu 8)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (GPU 1e-4, --cpu 1e-3): large enough "
                                                           "that one update moves the policy visibly")
    ap.add_argument("--speed-prompts", type=int, default=None, help="prompts of the tokens/s workload (GPU 64)")
    ap.add_argument("--min-speed-ratio", type=float, default=0.8, help="rollout_speed: ours / raw vLLM at least")
    ap.add_argument("--stale-factor", type=float, default=10.0, help="zero1_stale: stale / refreshed k3 at least")
    ap.add_argument("--mismatch-bound", type=float, default=None,
                    help="k3 bound of the refresh checks (default: the config's mismatch_max_k3, else 0.05; "
                         "--cpu 1e-3)")
    ap.add_argument("--timeout", type=int, default=None, help="seconds per worker process (GPU 600, --cpu 300)")
    ap.add_argument("--work", default=None, help="folder of the runs and logs, emptied first (perf/out/gpu-check)")
    ap.add_argument("--json", default=None, help="write every check's figures here")
    args = ap.parse_args(argv)
    sizes = SIZES["cpu" if args.cpu else "gpu"]
    for key, value in sizes.items():
        if getattr(args, key) is None and value is not None:
            setattr(args, key, value)
    if args.work is None:
        args.work = str(ROOT / "perf" / "out" / "gpu-check")
    return args


def smoke_settings(path: str | Path) -> dict:
    """What the checks take from a workflow config: its first model's spec and prompt template, and
    the training keys of :data:`SMOKE_KEYS` (the config's ``training:`` section with that model's
    ``training:`` overrides)."""
    import yaml

    config = yaml.safe_load(Path(path).read_text())
    key, model = next(iter(config["models"].items()))
    training = {**(config.get("training") or {}), **(model.get("training") or {})}
    return {"model_key": key, "spec": model["spec"], "template": model.get("template", "plain"),
            "training": {k: training[k] for k in SMOKE_KEYS if k in training}}


def model_spec(spec: dict, layers: int) -> dict:
    """The config's model spec, a random model cut to its first ``layers`` decoder layers (0: as is)."""
    if not layers:
        return dict(spec)
    if spec.get("source") != "random":
        raise ValueError(f"--layers {layers} needs a model of source 'random' (the config's is {spec}); "
                         "use --layers 0 or --model DIR")
    return {**spec, "overrides": {**(spec.get("overrides") or {}), "num_hidden_layers": int(layers)}}


def mismatch_bound(args: argparse.Namespace, smoke: dict) -> float:
    if args.mismatch_bound is not None:
        return float(args.mismatch_bound)
    from rsgrpo.train.config import TrainConfig

    return float(smoke["training"].get("mismatch_max_k3", TrainConfig.mismatch_max_k3))


def run_config(kind: str, args: argparse.Namespace, smoke: dict, *, model_dir: str, data: str, run_dir: str,
               bound: float) -> dict:
    """The TrainConfig mapping of run ``kind`` ("zero1" or "zero3"): the smoke config's training keys,
    then the checks' own. ZeRO-1 logs the mismatch only (its stale step would stop the run; the
    check judges its refreshed step against ``bound``); ZeRO-3 stops above ``bound`` as training does."""
    if kind not in ("zero1", "zero3"):
        raise ValueError(f"kind must be zero1 or zero3, got {kind!r}")
    cfg = dict(smoke["training"])
    cfg.update(model_dir=str(model_dir), train_data=str(data), run_dir=str(run_dir), prompt_template=smoke["template"],
               steps=STEPS, prompts_per_step=args.prompts, samples_per_prompt=args.samples, lr=args.lr,
               warmup_steps=0, estimator="grpo", estimator_params=None, beta_schedule="constant",
               dynamic_sampling=False, reward_kind=REWARD, zero_stage=1 if kind == "zero1" else 3,
               mismatch_max_k3=0.0 if kind == "zero1" else bound, mismatch_check_every=1,
               checkpoint_every=0 if kind == "zero1" else CHECKPOINT_EVERY, checkpoint_every_minutes=0.0,
               keep_last=1, keep_resumable=1, grading_workers=0, progress=False, logging=[], rollout_log_every=0,
               seed=0, collective_timeout_minutes=10.0)
    for key, value in (("max_new_tokens", args.max_new), ("micro_batch_size", args.micro)):
        if value is not None:
            cfg[key] = value
    cfg.setdefault("precision", "bf16-mixed")
    if args.cpu:
        cfg.update(engine="hf", engine_options={})
    return cfg


def worker_specs(args: argparse.Namespace, smoke: dict, *, model_dir: str, data: str, work: Path,
                 bound: float) -> dict[str, dict]:
    """What each worker process gets: its run's config, and which of the checks' hooks it installs."""
    common = {"cpu": bool(args.cpu), "own_engine_copy": bool(args.cpu)}
    zero1 = run_config("zero1", args, smoke, model_dir=model_dir, data=data, run_dir=str(work / "zero1"), bound=bound)
    zero3 = run_config("zero3", args, smoke, model_dir=model_dir, data=data, run_dir=str(work / "zero3"), bound=bound)
    return {
        "zero1": {**common, "config": zero1, "stale_step": STALE_STEP,
                  "speed": {"prompts": args.speed_prompts, "samples": args.samples,
                            "max_new": zero1.get("max_new_tokens", 512)}},
        "zero3-killed": {**common, "config": zero3, "hold_step": HOLD_STEP, "marker": str(work / "zero3-holding")},
        "zero3-resumed": {**common, "config": zero3},
    }


# ------------------------------------------------------------------------------------------------
# orchestration
# ------------------------------------------------------------------------------------------------
def prepare_inputs(args: argparse.Namespace, smoke: dict, work: Path) -> tuple[str, str]:
    """``(model dir, training data path)``: the model prepared once (under perf/out/models, or the tiny
    model under ``work`` with --cpu), and arithmetic problems for every step of every run."""
    from rsgrpo.prepare.data_sources import write_records
    from rsgrpo.prepare.generators import generate_arithmetic

    if args.model:
        model = Path(args.model)
    elif args.cpu:
        from rsgrpo.prepare.tiny import build_tiny_model

        model = build_tiny_model(work / "tiny-model", seed=0)
    else:
        from rsgrpo.prepare.model_sources import prepare_model

        spec = model_spec(smoke["spec"], args.layers)
        name = f"gpu-check-{smoke['model_key']}" + (f"-{args.layers}layers" if args.layers else "")
        model = prepare_model(spec, ROOT / "perf" / "out" / "models" / name)
    records = generate_arithmetic(n=max(args.prompts * STEPS * 2, args.speed_prompts), seed=1, difficulty=[1, 2, 3])
    return str(model), str(write_records(records, work / "train.jsonl"))


class Worker:
    """One worker process (``scripts/gpu_check_worker.py``) in a session of its own (a kill reaches
    whatever it started), logging to a file; it dies with this process (``die_with_parent``)."""

    live: list[Worker] = []

    @classmethod
    def kill_all(cls) -> None:
        for worker in list(cls.live):
            worker.kill()

    def __init__(self, name: str, spec: dict, work: Path):
        self.name, self.out = name, work / f"{name}-result.json"
        spec_path = work / f"{name}-spec.json"
        spec_path.write_text(json.dumps({**spec, "out": str(self.out)}, indent=1))
        self.log = work / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   VLLM_ENABLE_V1_MULTIPROCESSING="0", TOKENIZERS_PARALLELISM="false")
        if spec.get("cpu"):  # the dry run is the same on a machine with GPUs
            env["CUDA_VISIBLE_DEVICES"] = ""
        self.started = time.monotonic()
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, str(HERE / "gpu_check_worker.py"), str(spec_path)],
                                         cwd=str(work), env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        Worker.live.append(self)

    def exited(self) -> bool:
        """Has the worker exited? Without reaping it: while it is unreaped its process group id stays
        reserved, so :meth:`kill` cannot reach a stranger's group."""
        if self.proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def kill(self) -> int:
        """SIGKILL the worker and whatever it started in its session (compile workers, a stuck child);
        its exit status."""
        if self.proc.returncode is None:  # not reaped yet: the group id is still its own
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self in Worker.live:
            Worker.live.remove(self)
        return self.proc.wait()

    def wait(self, timeout: float) -> dict:
        """The worker's result; ``ok`` False with the reason when it failed or ran past ``timeout``."""
        while not self.exited():
            if time.monotonic() - self.started > timeout:
                self.kill()
                return {"ok": False, "error": f"{self.name} ran past {timeout:.0f} s and was killed (log {self.log})"}
            time.sleep(0.2)
        self.kill()  # ends what it may have left running in its session, then reaps it
        return self.result()

    def result(self) -> dict:
        try:
            result = json.loads(self.out.read_text())
        except (OSError, ValueError):
            result = {"ok": False, "error": f"exited {self.proc.returncode} without a result"}
        result["seconds"] = time.monotonic() - self.started
        if not result.get("ok"):
            error = str(result.get("error"))
            result["error"] = f"{self.name}: {error if len(error) <= 300 else error[:300] + ' ...'} (log {self.log})"
        return result


def metrics_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    return list(csv.DictReader(path.open())) if path.is_file() else []


def _safetensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    out: dict = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def weight_change(initial: str | Path, run_dir: Path) -> dict | None:
    """How the newest complete checkpoint's weights differ from the initial model's."""
    import torch

    from rsgrpo.train import checkpoint as ckpt

    done = ckpt.complete_checkpoints(run_dir)
    if not done:
        return None
    before, after = _safetensors(Path(initial)), _safetensors(done[-1][1])
    common = sorted(set(before) & set(after))
    if not common:
        return {"error": f"no weight names in common between {initial} and {done[-1][1]}"}
    # the initial weights in the checkpoint's dtype (the trainer's module starts from that rounding)
    before = {k: before[k].to(after[k].dtype) for k in common}
    changed = [k for k in common if not torch.equal(before[k], after[k])]
    delta = max((float((after[k].float() - before[k].float()).abs().max()) for k in changed), default=0.0)
    finite = all(bool(torch.isfinite(t.float()).all()) for t in after.values())
    return {"tensors": len(common), "changed": len(changed), "max_delta": delta, "finite": finite}


def newest_checkpoint(run_dir: Path) -> int | None:
    from rsgrpo.train import checkpoint as ckpt

    done = ckpt.complete_checkpoints(run_dir)
    return done[-1][0] if done else None


def final_checkpoint_problems(run_dir: Path) -> tuple[list[str], int]:
    """What is wrong with the run's final checkpoint (verified against its marker, then loaded with
    the loader sampling uses), and its parameter count."""
    from rsgrpo.prepare.loading import load_policy
    from rsgrpo.train import checkpoint as ckpt

    done = dict(ckpt.complete_checkpoints(run_dir))
    if STEPS not in done:
        return [f"no complete checkpoint of step {STEPS} (complete: {sorted(done)})"], 0
    problems = ckpt.verify_checkpoint(done[STEPS])
    try:
        model, _ = load_policy(done[STEPS], dtype="bfloat16")
        params = sum(p.numel() for p in model.parameters())
    except Exception as exc:  # a checkpoint that does not load, whatever the reason
        return [*problems, f"does not load: {type(exc).__name__}: {exc}"], 0
    return problems, params


def run_zero1(spec: dict, args: argparse.Namespace, model: str, bound: float, work: Path) -> tuple[list[Check], dict]:
    result = Worker("zero1", spec, work).wait(args.timeout)
    if not result.get("ok"):
        return failed(CHECKS[:5], result["error"]), result
    rows = metrics_rows(work / "zero1")
    took = f" [{result['seconds']:.0f} s]"
    update = check_update("zero1_update", rows, weight_change(model, work / "zero1"))
    checks = [update._replace(text=update.text + took),
              check_refresh("zero1_refresh", rows, bound, [2], "after one update"),
              check_stale(rows, bound, args.stale_factor, stale_pushed=bool(result.get("stale_pushed"))),
              check_speed(result.get("speed"), args.min_speed_ratio, cpu=args.cpu),
              check_memory("zero1_memory", [result], cpu=args.cpu)]
    return checks, result


def run_zero3(specs: dict, args: argparse.Namespace, model: str, bound: float, work: Path) -> tuple[list[Check], dict]:
    """The ZeRO-3 run, killed in its 3rd step and restarted."""
    started = time.monotonic()
    marker = Path(specs["zero3-killed"]["marker"])
    first = Worker("zero3-killed", specs["zero3-killed"], work)
    info: dict = {}
    while not first.exited() and not marker.exists() and time.monotonic() - first.started < args.timeout:
        time.sleep(0.2)
    info["held"] = marker.exists()
    info["checkpoint_at_kill"] = newest_checkpoint(work / "zero3")
    info["killed_returncode"] = first.kill()
    killed = first.result()
    if not info["held"]:
        info["held_error"] = killed.get("error")
    second = Worker("zero3-resumed", specs["zero3-resumed"], work).wait(args.timeout)
    results = [killed, second]  # what each observed, a failed one's too
    rows = metrics_rows(work / "zero3")
    info["seconds"] = time.monotonic() - started
    if not second.get("ok"):
        reason = second["error"] if info["held"] else (killed.get("error") or second["error"])
        return [*failed(["zero3_update"], reason), check_linear(results), *failed(["zero3_refresh"], reason),
                check_memory("zero3_memory", results, cpu=args.cpu), check_resume(info)], second
    manifest = work / "zero3" / "manifest.json"
    info["final_step"] = json.loads(manifest.read_text()).get("final_step") if manifest.is_file() else None
    info["start_step"] = second.get("start_step")
    info["metrics_steps"] = [step_of(r) for r in rows]
    info["checkpoint_problems"], info["loaded_params"] = final_checkpoint_problems(work / "zero3")
    update = check_update("zero3_update", rows, weight_change(model, work / "zero3"))
    checks = [update._replace(text=update.text + f" [{info['seconds']:.0f} s for both processes]"),
              check_linear(results),
              check_refresh("zero3_refresh", rows, bound, [2, 3], "after one update (bucketed gather) and after the "
                                                                 "resume"),
              check_memory("zero3_memory", results, cpu=args.cpu), check_resume(info)]
    return checks, second


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no GPU here (torch.cuda.is_available() is False), nothing checked; --cpu runs the same "
              "sequence on CPU as a dry run", flush=True)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    register_reward()
    smoke = smoke_settings(args.config)
    bound = mismatch_bound(args, smoke)
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    checks, report = [], {"args": vars(args), "checks": {}}
    try:
        model, data = prepare_inputs(args, smoke, work)
    except Exception as exc:  # no model or data: every check fails, each on its own line
        reason = f"the inputs could not be prepared: {type(exc).__name__}: {exc}"
        runs = [("inputs", lambda: (failed(CHECKS, reason), {}))]
    else:
        specs = worker_specs(args, smoke, model_dir=model, data=data, work=work, bound=bound)
        report["model"] = model
        print(f"gpu_check: {'--cpu dry run' if args.cpu else 'GPU'}; model {model}; {STEPS} steps of {args.prompts} "
              f"prompts x {args.samples} samples per run; work {work}", flush=True)
        runs = [("zero1", lambda: run_zero1(specs["zero1"], args, model, bound, work)),
                ("zero3", lambda: run_zero3(specs, args, model, bound, work))]
    try:
        for name, run in runs:
            found, report[name] = run()
            report["checks"].update({c.name: {"ok": c.ok, "text": c.text} for c in found})
            for check in found:
                print(check.line(), flush=True)
            checks += found
    finally:
        Worker.kill_all()  # on an interrupt too: the workers run in sessions of their own
    failures = [c.name for c in checks if not c.ok]
    print(f"gpu_check: {len(checks) - len(failures)} of {len(checks)} checks passed in "
          f"{(time.monotonic() - started) / 60:.1f} min" + (f"; failed: {', '.join(failures)}" if failures else ""),
          flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return exit_code(checks)


if __name__ == "__main__":
    sys.exit(main())
