"""What this machine's GPU path costs, next to what the plan predicts: one command, one table.

    python scripts/gpu_check.py [--model DIR] [--prompts 64] [--samples 8] [--max-new 512] [--steps 3]
                                [--ranks 1,2] [--engine vllm] [--json out.json]

Without ``--model`` it prepares (once, under perf/out/) a random-weight model of Qwen2.5-Math-1.5B's
shape with the real Qwen vocabulary (``prepare-model`` source ``random``: offline). Every measurement
runs in its own process (a vLLM engine and a training run do not share a GPU's allocator), one after
the other:

* **rollout**: generated tokens/s of the trainer's engine (``rsgrpo.train.engines.make_engine``: vLLM in
  bf16 on a GPU) over ``prompts x samples`` completions of up to ``max_new`` tokens, and, for vLLM,
  of raw ``vllm.LLM.generate`` on the same prompts with the same engine settings: the overhead of
  our wrapper (ours / raw);
* **train**, for each rank count of ``--ranks`` that the GPUs allow (1 rank: ZeRO-1; 2+: ZeRO-3):
  ``steps`` steps of ``rsgrpo.train.trainer.Trainer`` (bf16-mixed, gradient checkpointing, the colocated
  engine with sleep mode) after one warm-up step: training tokens/s and MFU of the update (6 FLOPs
  per parameter and token, 8 with checkpointing, over the GPU peak of the config's ``plan.gpu``),
  seconds of the weight refresh (trainer -> engine), and the peak GPU memory of a rank (the device's
  used memory at its highest, which counts vLLM's allocations too) next to the plan's prediction
  (``rsgrpo.plan.capacity``) and their ratio.

On a machine without a GPU it runs the same steps on CPU with the transformers engine (``--engine
hf``), which is how its plumbing is tested; the GPU figures then read "no GPU".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RANDOM_SPEC = {"source": "random", "config": "Qwen/Qwen2.5-Math-1.5B", "seed": 0, "dtype": "bfloat16"}
PEAK_TFLOPS = 989.0  # the plan's default GPU (H100 SXM dense BF16); --tflops for another


def _prompts(tokenizer, count: int) -> list[str]:
    from rsgrpo.prepare.generators import generate_arithmetic
    from rsgrpo.prepare.prompts import build_prompt

    return [build_prompt(r["problem"], template="plain", tokenizer=tokenizer)
            for r in generate_arithmetic(n=count, seed=0, difficulty=[1, 2, 3])]


def _gpu_used() -> float:
    import torch

    if not torch.cuda.is_available():
        return float("nan")
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 1e9


# ------------------------------------------------------------------------------------------------
# workers (each in its own process)
# ------------------------------------------------------------------------------------------------
def worker_rollout(spec: dict) -> dict:
    import torch

    from rsgrpo.prepare.loading import load_tokenizer
    from rsgrpo.train.engines import make_engine
    from rsgrpo.train.engines.base import SamplingParams, encode_prompts, generation_length

    tok = load_tokenizer(spec["model"])
    prompts = _prompts(tok, spec["prompts"])
    max_len = generation_length(encode_prompts(tok, prompts), spec["max_new"], spec["model"], key="--max-new")
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    options = {"kv_cache_memory_bytes": 1 << 30} if spec["engine"] == "vllm" and not torch.cuda.is_available() else {}
    params = SamplingParams(n=spec["samples"], temperature=1.0, max_tokens=spec["max_new"], seed=0)
    if spec["side"] == "raw":  # vLLM alone, with the engine settings ours uses
        from vllm import LLM
        from vllm import SamplingParams as VParams

        from rsgrpo.train.engines.vllm import vllm_llm_kwargs

        llm = LLM(**vllm_llm_kwargs(spec["model"], dtype=dtype, max_model_len=max_len, **options))
        sampling = VParams(n=spec["samples"], temperature=1.0, max_tokens=spec["max_new"], seed=0)

        def run() -> int:
            return sum(len(c.token_ids) for o in llm.generate(prompts, sampling, use_tqdm=False) for c in o.outputs)
    else:
        engine = make_engine(spec["engine"], model_dir=spec["model"], tokenizer=tok, dtype=dtype,
                             batch_size=spec["prompts"] * spec["samples"], max_model_len=max_len, **options)

        def run() -> int:
            return sum(len(c.token_ids) for row in engine.generate(prompts, params) for c in row)
    # the whole workload twice, the faster counts: the first pays one-time costs (kernels for new shapes)
    timings = []
    for _ in range(2):
        t0 = time.perf_counter()
        tokens = run()
        timings.append(time.perf_counter() - t0)
    seconds = min(timings)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "gpu_used_gb": _gpu_used()}


def worker_train(spec: dict) -> dict:
    import csv

    import torch

    from rsgrpo.train.config import from_dict
    from rsgrpo.train.trainer import Trainer

    gpu = torch.cuda.is_available()
    cfg = from_dict({
        "model_dir": spec["model"], "train_data": spec["data"], "steps": spec["steps"] + 1,
        "prompts_per_step": spec["prompts"], "samples_per_prompt": spec["samples"],
        "max_new_tokens": spec["max_new"], "temperature": 1.0, "lr": 1e-6, "estimator": "grpo",
        "dynamic_sampling": False, "micro_batch_size": spec["micro"], "engine": spec["engine"],
        "precision": "bf16-mixed" if gpu else "fp32", "zero_stage": spec["zero_stage"] if gpu else 0,
        "gradient_checkpointing": True, "checkpoint_every": 0, "keep_last": 1, "progress": False,
        "grading_workers": 0, "prompt_template": "plain", "run_dir": spec["run_dir"],
        "engine_options": {} if gpu or spec["engine"] == "hf" else {"kv_cache_memory_bytes": 1 << 30},
    }, "gpu_check")
    trainer = Trainer(cfg)
    refresh, peaks = [], []
    push, step = trainer.push_weights, trainer.train_step

    def timed_push():
        t0 = time.perf_counter()
        push()
        refresh.append(time.perf_counter() - t0)
        peaks.append(_gpu_used())

    def observed_step(i):
        row = step(i)
        peaks.append(_gpu_used())
        return row

    trainer.push_weights, trainer.train_step = timed_push, observed_step
    trainer.run()
    if not trainer.dist.is_main:
        return {}
    rows = list(csv.DictReader((Path(spec["run_dir"]) / "metrics.csv").open()))[1:]  # after the warm-up step
    return {"time_update": [float(r["time_update"]) for r in rows],
            "response_len": [float(r["response_len_mean"]) for r in rows],
            "refresh_s": refresh[1:] or refresh, "gpu_used_gb": max(peaks) if peaks else float("nan"),
            "max_allocated_gb": torch.cuda.max_memory_allocated() / 1e9 if gpu else float("nan"),
            "world_size": trainer.dist.world_size}


# ------------------------------------------------------------------------------------------------
# orchestrator
# ------------------------------------------------------------------------------------------------
def run_worker(kind: str, spec: dict, work: Path, ranks: int = 1) -> dict:
    spec_path, out_path = work / f"{kind}-{len(os.listdir(work))}-spec.json", work / f"{kind}-out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    me = [str(Path(__file__).resolve()), "--worker", kind, "--spec", str(spec_path), "--out", str(out_path)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *me]
           if ranks > 1 else [sys.executable, *me])
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.run(cmd, cwd=str(work), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"gpu_check: the {kind} worker failed (exit {proc.returncode})")
    return json.loads(out_path.read_text())


def prompt_lengths(model_dir: str, records: list[dict]) -> list[int]:
    """Token counts of the training prompts (the plain template the training run uses)."""
    from rsgrpo.prepare.loading import load_tokenizer
    from rsgrpo.prepare.prompts import build_prompt
    from rsgrpo.train.engines.base import encode_prompts

    tok = load_tokenizer(model_dir)
    return [len(ids) for ids in encode_prompts(tok, [build_prompt(r["problem"], template="plain", tokenizer=tok)
                                                     for r in records])]


def predicted_train_gb(shape, spec: dict, ranks: int, gpu_gb: float, prompt: int) -> float:
    """The plan's peak GPU memory of one rank of this training run (``prompt``: the longest prompt)."""
    import torch

    from rsgrpo.plan import capacity
    from rsgrpo.plan.plan import COLOCATED_ENGINE_SHARE

    gpu = torch.cuda.is_available()
    job = capacity.TrainJob(precision="bf16-mixed" if gpu else "fp32", zero_stage=spec["zero_stage"] if gpu else 0,
                            ranks=ranks, offload_optimizer=False, micro_batch=spec["micro"],
                            sequence=prompt + spec["max_new"], completion=spec["max_new"],
                            gradient_checkpointing=True, logprob_chunk=1024)
    engine = COLOCATED_ENGINE_SHARE * gpu_gb * 1e9 if gpu and spec["engine"] == "vllm" else 0.0
    return capacity.train_memory(shape, job, engine_bytes=engine)["total"] / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint directory (default: a random Qwen2.5-Math-1.5B shape)")
    ap.add_argument("--engine", default=None, choices=["vllm", "hf"], help="default: vllm on a GPU, hf on CPU")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=512)
    ap.add_argument("--micro", type=int, default=8, help="micro-batch of the update")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up step)")
    ap.add_argument("--ranks", default="1,2", help="rank counts to train with (those beyond the GPUs are skipped)")
    ap.add_argument("--tflops", type=float, default=PEAK_TFLOPS, help="GPU peak dense BF16 TFLOP/s (for MFU)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", choices=["rollout", "train"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        result = (worker_rollout if args.worker == "rollout" else worker_train)(spec)
        if result:  # rank 0 of a training run, or the rollout process
            Path(args.out).write_text(json.dumps(result))
        return 0

    import torch

    from rsgrpo.plan.plan import model_shape
    from rsgrpo.prepare.data_sources import write_records
    from rsgrpo.prepare.generators import generate_arithmetic
    from rsgrpo.prepare.model_sources import prepare_model

    gpus = torch.cuda.device_count()
    engine = args.engine or ("vllm" if gpus else "hf")
    device = f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus else "no GPU (CPU)"
    gpu_gb = torch.cuda.get_device_properties(0).total_memory / 1e9 if gpus else float("nan")
    model = args.model or str(prepare_model(RANDOM_SPEC, ROOT / "perf" / "out" / "models" / "qwen15-random"))
    shape = model_shape(json.loads((Path(model) / "config.json").read_text()))
    print(f"gpu_check: {device}; model {model} ({shape.params / 1e9:.2f}B parameters); engine {engine}")
    base = {"model": model, "engine": engine, "prompts": args.prompts, "samples": args.samples,
            "max_new": args.max_new, "micro": args.micro, "steps": args.steps}
    report: dict = {"device": device, "engine": engine, "model": model, "params": shape.params}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        ours = run_worker("rollout", {**base, "side": "ours"}, work)
        report["rollout"] = {"ours_tokens_per_s": ours["tokens_per_s"], "tokens": ours["tokens"]}
        if engine == "vllm":
            raw = run_worker("rollout", {**base, "side": "raw"}, work)
            report["rollout"].update(raw_tokens_per_s=raw["tokens_per_s"],
                                     ours_over_raw=ours["tokens_per_s"] / raw["tokens_per_s"])
        print(_rollout_line(report["rollout"]), flush=True)
        records = generate_arithmetic(n=4 * args.prompts * (args.steps + 1), seed=1, difficulty=[1, 2, 3])
        data = write_records(records, work / "train.jsonl")
        lengths = prompt_lengths(model, records)
        report["train"] = []
        for ranks in [int(r) for r in args.ranks.split(",")]:
            if ranks > max(gpus, 1):
                print(f"gpu_check: {ranks} ranks skipped ({gpus} GPU(s))")
                continue
            spec = {**base, "data": str(data), "run_dir": str(work / f"run-{ranks}"),
                    "zero_stage": 1 if ranks == 1 else 3}
            res = run_worker("train", spec, work, ranks=ranks)
            update = statistics.median(res["time_update"])
            tokens = args.prompts * args.samples * (statistics.mean(lengths) + statistics.median(res["response_len"]))
            flops = 8 * shape.params * tokens  # forward + backward + the checkpointing recompute
            predicted = predicted_train_gb(shape, spec, ranks, gpu_gb, max(lengths))
            measured = res["gpu_used_gb"]
            report["train"].append({
                "ranks": ranks, "zero_stage": spec["zero_stage"] if gpus else 0,
                "train_tokens_per_s": tokens / update,
                "mfu": flops / (update * ranks * args.tflops * 1e12) if gpus else float("nan"),
                "refresh_s": statistics.median(res["refresh_s"]),
                "peak_gpu_gb": measured, "predicted_gb": predicted,
                "predicted_over_measured": predicted / measured if gpus else float("nan")})
    _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _rollout_line(r: dict) -> str:
    line = f"rollout: ours {r['ours_tokens_per_s']:.0f} tokens/s ({r['tokens']} tokens)"
    if "raw_tokens_per_s" in r:
        line += f", raw vLLM {r['raw_tokens_per_s']:.0f} tokens/s, ours / raw = {r['ours_over_raw']:.2f}"
    return line


def _print(report: dict) -> None:
    cols = ["ranks", "zero_stage", "train_tokens_per_s", "mfu", "refresh_s", "peak_gpu_gb", "predicted_gb",
            "predicted_over_measured"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in report["train"]:
        print("| " + " | ".join(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
    if report["device"].startswith("no GPU"):
        print("no GPU: MFU and GPU memory are not measured; the run checked the plumbing on CPU")


if __name__ == "__main__":
    sys.exit(main())
