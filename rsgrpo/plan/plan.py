"""``python -m rsgrpo plan``: memory and compute of every training and sampling job of a workflow
config, before anything is submitted.

For each training job (a cell with training) and each sampling row (a model's evaluated checkpoints
on one benchmark; one sample job of the workflow samples a checkpoint on every benchmark; the base
cells of an evaluation regime get rows of their own, column ``regime``, capped at the regime's
``max_tokens``: ``max`` is the model's context, the smaller of ``models.<key>.context_length`` and its
config.json's ``max_position_embeddings``, minus ``plan.prompt_tokens``) the plan
gives, per GPU, the bytes of weights, gradients, fp32 master weights, AdamW state, the reference
model (``kl_coef`` > 0), one micro-batch's activations at the longest sequence, the output layer's
log-prob chunk and the rollout engine (:mod:`rsgrpo.capacity` holds the arithmetic and its sources),
the total against the GPU's memory (``models.<key>.gpu_memory_gb``) with the largest component
named, the colocated vLLM engine's GPU share (the one the trainer computes,
:func:`rsgrpo.capacity.colocated_engine_share`, unless
``training.engine_options.gpu_memory_utilization`` sets one) and the KV room it leaves, and the
tokens, FLOPs and hours of the run under the assumptions of the config's ``plan`` section:
``hours_bound`` with every completion at ``max_new_tokens``, ``hours`` at
``plan.expected_completion_fraction`` of it, which sizes the SLURM requests. For a training job also
the minutes per step, the size and write time of a resumable checkpoint and how many checkpoints a
job of the requested runtime writes.

The model's shape comes from its config.json alone (no weights): the prepared checkpoint's when
``models/<key>`` exists, else the one its model source plans (``planned_config`` of
:data:`rsgrpo.prepare.model_sources.MODEL_SOURCES`: the config shipped in ``rsgrpo/prepare/model_configs``
for the paper's hub models, a ``local`` spec's own, the tiny model's options). Standard decoders
(Llama, Qwen2/3, Mistral) are counted by arithmetic, which equals transformers' meta-device build
(tested) and keeps the workflow's config check fast; any other architecture is built on the meta device.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from rsgrpo import capacity
from rsgrpo.capacity import BYTES, GB, Shape, model_shape

SAMPLE_ENGINE_SHARE = 0.9      # vLLM's own default gpu_memory_utilization for a GPU of its own
COMPONENTS = ["weights", "gradients", "master_weights", "optimizer", "reference_model", "activations",
              "logprob_chunk", "rollout_engine"]
COLUMNS = (["job", "model", "run", "regime", "jobs", "gpus", "precision", "zero_stage", "params_b"]
           + [f"{c}_gb" for c in COMPONENTS]
           + ["total_gb", "gpu_memory_gb", "fits", "largest", "engine_share", "engine_gb", "kv_room_gb", "engine_fits",
              "engine_share_fits", "host_gb", "generated_tokens_bound", "generated_tokens", "trained_tokens", "pflops",
              "minutes_per_step_bound", "minutes_per_step", "hours_bound", "hours", "gpu_hours", "runtime_min",
              "submissions", "checkpoint_gb", "checkpoint_min", "checkpoints_per_job", "mem_mb"])
NO_REGIME = "-"  # the regime column of train rows and of sampling under the evaluation section
HOST_BASE_GB = 16  # per job: Python, torch, tokenizer, data, DeepSpeed and vLLM host-side buffers
STATES = ["weights", "gradients", "master_weights", "optimizer", "reference_model"]  # resident while generating


class MissingModelConfig(ValueError):
    """A model whose config.json is neither prepared nor shipped (a hub model the package does not know)."""


def model_config(key: str, model: dict, model_dir: str | Path) -> dict:
    """config.json of a workflow model (see the module docstring for where it comes from)."""
    from rsgrpo.prepare.model_sources import MODEL_SOURCES, parse_model_spec

    prepared = Path(model_dir) / "config.json"
    if prepared.is_file():
        return json.loads(prepared.read_text())
    spec = parse_model_spec(model["spec"])
    planned = MODEL_SOURCES[spec["source"]].planned_config(spec)
    if planned is not None:
        return planned
    raise MissingModelConfig(f"models.{key}: no config.json to plan from (spec {spec}): its source plans none "
                             f"before it is built (for a hub model: none is shipped in rsgrpo/prepare/model_configs); "
                             f"run `python -m rsgrpo prepare-model` for it first (the plan then reads {prepared})")


def _gb(x: float) -> float:
    return round(x / GB, 2)


def _runtime(hours: float, jobs: int, gpus: int, assume: dict) -> tuple[int, int]:
    """SLURM minutes of one job of a row and the submissions it takes: the expected hours x the safety
    factor within the config's bounds; CPU jobs (gpus 0), whose hours are not GPU hours, a fixed limit."""
    per_job = hours * 60 / jobs * assume["safety_factor"] if gpus > 0 else assume["cpu_runtime_minutes"]
    runtime = int(min(assume["max_runtime_minutes"], max(assume["min_runtime_minutes"], math.ceil(per_job))))
    return runtime, max(1, math.ceil(per_job / assume["max_runtime_minutes"]))  # a job past its limit resumes


def _row(job: str, key: str, run: str, gpus: int, precision: str, zero: int | str, shape: Shape,
         memory: dict[str, float], gpu_gb: float, *, tokens: dict[str, float], flops: float, hours: float,
         hours_bound: float, host: float, jobs: int, assume: dict, engine: dict | None = None,
         share: float | None = None, share_fits: bool = True, regime: str = NO_REGIME, **extra) -> dict:
    """A plan row; ``hours`` (expected) and ``hours_bound`` (every completion at its cap): wall hours of
    all ``jobs`` of the row together; ``host``: bytes of one job; ``engine``: a vLLM engine's
    ``capacity.engine_memory`` at full-length sequences (its KV room must hold one) and ``share`` its
    GPU share; ``extra``: the training job's per-step and checkpoint columns."""
    parts = {c: memory.get(c, 0.0) for c in COMPONENTS}
    total = sum(parts.values())
    runtime, submissions = _runtime(hours, jobs, gpus, assume)
    mem_mb = int(min(assume["max_mem_mb"], math.ceil((host + HOST_BASE_GB * GB) * assume["safety_factor"] / 1e6)))
    blank = {c: "-" for c in ("minutes_per_step_bound", "minutes_per_step", "checkpoint_gb", "checkpoint_min",
                              "checkpoints_per_job")}
    return {"job": job, "model": key, "run": run, "regime": regime, "jobs": jobs, "gpus": gpus, "precision": precision,
            "zero_stage": zero, "params_b": round(shape.params / 1e9, 3),
            **{f"{c}_gb": _gb(v) for c, v in parts.items()}, "total_gb": _gb(total),
            "gpu_memory_gb": gpu_gb if gpus > 0 else "-", "fits": gpus == 0 or total <= gpu_gb * GB,
            "largest": max(parts, key=parts.get),
            "engine_share": share if engine else "-", "engine_gb": _gb(engine["reserved"]) if engine else "-",
            "kv_room_gb": _gb(engine["kv_room"]) if engine else "-",
            "engine_fits": engine["kv_fits"] if engine else True, "engine_share_fits": share_fits,
            "host_gb": _gb(host + HOST_BASE_GB * GB), "generated_tokens_bound": int(tokens["generated_bound"]),
            "generated_tokens": int(tokens["generated"]), "trained_tokens": int(tokens["trained"]),
            "pflops": round(flops / 1e15, 1), **blank, "hours_bound": round(hours_bound, 2), "hours": round(hours, 2),
            "gpu_hours": round(hours * max(gpus, 1), 2), "runtime_min": runtime, "submissions": submissions,
            **extra, "mem_mb": mem_mb}


def _problems(key: str, bench: dict, assume: dict, layout) -> int:
    prepared = Path(layout.benchmark_data(key))
    if prepared.is_file():
        with prepared.open() as f:
            return sum(1 for line in f if line.strip())
    return int(bench.get("problems", assume["problems"]))


def _expected(tokens: int, assume: dict) -> int:
    """The expected mean completion of a cap of ``tokens`` (``plan.expected_completion_fraction``)."""
    return max(1, round(assume["expected_completion_fraction"] * tokens))


def _train_row(config: dict, cell, shape: Shape, layout, assume: dict) -> dict:
    """The plan row of one training cell (see the module docstring)."""
    from rsgrpo import grid as G
    from rsgrpo.train.config import from_dict

    model = config["models"][cell.model]
    cfg = from_dict(G.train_settings(config, cell, layout), f"plan: {cell.id}")
    nodes = int(model.get("nodes", 1))
    gpus = int(model.get("gpus", 0)) * nodes
    local_ranks = int(model.get("gpus", 0)) or int(model.get("cpu_processes", 1))
    gpu_gb = float(model.get("gpu_memory_gb", 80))
    gpu_bytes = gpu_gb * GB
    peak, bandwidth = assume["gpu"]["tflops"] * 1e12, assume["gpu"]["bandwidth_tbs"] * 1e12
    prompt = int(assume["prompt_tokens"])
    ranks = gpus or local_ranks * nodes
    job = capacity.train_job(cfg, ranks=ranks, prompt_tokens=prompt)
    kl, dtype = cfg.kl_coef > 0, BYTES[cfg.precision]
    colocated = gpus > 0 and cfg.engine != "hf"
    sized = capacity.colocated_engine_share(shape, job, gpu_bytes, kl_reference=kl)
    share = float(cfg.engine_options.get("gpu_memory_utilization", sized["share"]))
    engine = share * gpu_bytes if colocated else 0.0
    memory = capacity.train_memory(shape, job, engine_bytes=engine, kl_reference=kl)
    sequences = cfg.prompts_per_step * cfg.samples_per_prompt
    per_rank = math.ceil(sequences / ranks)
    # dynamic sampling refills the batch: generation repeats, the update does not
    rounds = min(float(assume["gen_rounds"]), cfg.max_gen_rounds) if cfg.dynamic_sampling else 1.0

    def step(completion: int) -> tuple[float, dict, dict | None]:
        """Seconds of one step at completions of ``completion`` tokens, its FLOPs and the engine."""
        # without a vLLM reservation (transformers on CPU) every sequence of the rank decodes at once
        use = capacity.engine_memory(shape, sequences=per_rank, sequence=prompt + completion, gpu_bytes=gpu_bytes,
                                     utilization=share, dtype_bytes=dtype) if engine else None
        decode = capacity.decode_seconds(shape, sequences=per_rank, prompt=prompt, completion=completion,
                                         concurrent=use["concurrent"] if use else per_rank, peak_flops=peak,
                                         bandwidth=bandwidth, efficiency=assume["decode_efficiency"], dtype_bytes=dtype)
        flops = capacity.train_step_flops(shape, sequences=sequences, prompt=prompt, completion=completion,
                                          gradient_checkpointing=cfg.gradient_checkpointing, ppo_epochs=cfg.ppo_epochs)
        return rounds * decode + flops["update"] / (ranks * peak * assume["train_mfu"]), flops, use

    bound, bound_flops, engine_use = step(cfg.max_new_tokens)
    expected, flops, _ = step(_expected(cfg.max_new_tokens, assume))
    hours = cfg.steps * expected / 3600
    runtime, _ = _runtime(hours, 1, gpus, assume)
    workers = cfg.grading_workers if cfg.grading_workers is not None else max(1, assume["train_cpus"] // local_ranks)
    host = capacity.host_memory(shape, job, ranks_per_node=local_ranks, kl_reference=kl, grading_workers=workers)
    ckpt = capacity.checkpoint_bytes(shape, cfg.precision)
    write = ckpt / (assume["checkpoint_write_gbs"] * GB) / 60
    # a job runs until its time limit, or until the run ends when the whole run fits in it
    written = capacity.checkpoints_per_job(job_minutes=min(runtime, hours * 60), minutes_per_step=expected / 60,
                                           write_minutes=write, every_steps=cfg.checkpoint_every,
                                           every_minutes=cfg.checkpoint_every_minutes)
    fits = not colocated or engine + sized["resident_bytes"] + sized["margin_bytes"] <= gpu_bytes
    tokens = {"generated_bound": bound_flops["generated_tokens"] * rounds * cfg.steps,
              "generated": flops["generated_tokens"] * rounds * cfg.steps,
              "trained": flops["trained_tokens"] * cfg.steps}
    return _row("train", cell.model, cell.run, gpus, cfg.precision, cfg.zero_stage, shape, memory, gpu_gb,
                tokens=tokens, flops=(flops["generate"] * rounds + flops["update"]) * cfg.steps, hours=hours,
                hours_bound=cfg.steps * bound / 3600, host=host, jobs=1, assume=assume, engine=engine_use,
                share=share, share_fits=fits, minutes_per_step_bound=round(bound / 60, 2),
                minutes_per_step=round(expected / 60, 2), checkpoint_gb=_gb(ckpt), checkpoint_min=round(write, 2),
                checkpoints_per_job=written if gpus > 0 else "-")  # CPU jobs are not timed


def plan(config: dict, layout=None, *, unplanned: list[str] | None = None) -> list[dict]:
    """One row per training job and per (model, benchmark) sampling job of a validated workflow config.

    A model without a config.json to read (:class:`MissingModelConfig`) is an error, or, with an
    ``unplanned`` list, skipped and named in it (the workflow plans it once prepare-model has run).
    """
    from rsgrpo import grid as G
    from rsgrpo.layout import LAYOUT

    layout = layout or LAYOUT
    assume = config["plan"]
    peak, bandwidth = assume["gpu"]["tflops"] * 1e12, assume["gpu"]["bandwidth_tbs"] * 1e12
    cells = G.expand(config)
    shapes, contexts = {}, {}
    for key in dict.fromkeys(c.model for c in cells):
        try:
            found = model_config(key, config["models"][key], layout.model_dir(key))
            shapes[key] = model_shape(found)
            contexts[key] = min((int(c) for c in (config["models"][key].get("context_length"),
                                                  found.get("max_position_embeddings")) if c), default=0)
        except MissingModelConfig:
            if unplanned is None:
                raise
            unplanned.append(key)
    cells = [c for c in cells if c.model in shapes]
    rows = [_train_row(config, cell, shapes[cell.model], layout, assume) for cell in cells if not cell.is_base]
    for key, regime in dict.fromkeys((c.model, c.regime) for c in cells):
        model = config["models"][key]
        shape = shapes[key]
        gpus = min(1, int(model.get("gpus", 0)))
        gpu_gb = float(model.get("gpu_memory_gb", 80))
        sampled = [c for c in cells if (c.model, c.regime) == (key, regime)]
        checkpoints = sum(len(c.eval_steps) if not c.is_base else 1 for c in sampled)
        prompt, cap = int(assume["prompt_tokens"]), G.sample_settings(config, sampled[0])["max_tokens"]
        if cap == G.MAX_TOKENS:
            cap = contexts[key] - prompt
            if cap < 1:
                raise ValueError(f"regimes.{regime}.max_tokens: {G.MAX_TOKENS} leaves no room for new tokens "
                                 f"after plan.prompt_tokens = {prompt} in the {contexts[key]}-token context of "
                                 f"models.{key}")
        cap = int(cap)
        for bench_key, bench in config["benchmarks"].items():
            sequences = bench["n"] * _problems(bench_key, bench, assume, layout)
            out = {}
            for name, completion in (("bound", cap), ("expected", _expected(cap, assume))):
                engine = capacity.engine_memory(shape, sequences=sequences, sequence=prompt + completion,
                                                gpu_bytes=gpu_gb * GB,
                                                utilization=SAMPLE_ENGINE_SHARE if gpus else None)
                seconds = capacity.decode_seconds(shape, sequences=sequences, prompt=prompt, completion=completion,
                                                  concurrent=engine["concurrent"], peak_flops=peak,
                                                  bandwidth=bandwidth, efficiency=assume["decode_efficiency"])
                flops = sequences * completion * capacity.forward_flops_per_token(shape, prompt + completion / 2)
                out[name] = (engine, seconds * checkpoints / 3600, flops * checkpoints,
                             sequences * completion * checkpoints)
            engine, hours, flops, generated = out["expected"]
            rows.append(_row("sample", key, bench_key, gpus, "bf16", "-", shape,
                             {"rollout_engine": out["bound"][0]["reserved"]}, gpu_gb,
                             tokens={"generated_bound": out["bound"][3], "generated": generated, "trained": 0},
                             flops=flops, hours=hours, hours_bound=out["bound"][1], host=2 * shape.params,
                             jobs=checkpoints, assume=assume, engine=out["bound"][0] if gpus else None,
                             share=SAMPLE_ENGINE_SHARE, regime=NO_REGIME if regime is None else regime))
    return rows


def misfits(rows: list[dict]) -> list[str]:
    """Jobs that do not fit their GPU, one message per model and need: the model, GB needed vs
    available, the largest component and the jobs; engines without room for one sequence's KV cache;
    colocated engines whose share does not fit beside the trainer's resident states and the margin."""
    groups: dict[tuple, list[str]] = {}
    for r in rows:
        if not r["fits"]:
            key = (r["model"], r["job"], r["total_gb"], r["gpu_memory_gb"], r["largest"], r[r["largest"] + "_gb"])
            groups.setdefault(key, []).append(r["run"])
    out = [f"models.{model}: {job} needs {total} GB per GPU, the GPU has {available} GB "
           f"(models.{model}.gpu_memory_gb); largest component: {largest} {size} GB; jobs: {', '.join(runs)}"
           for (model, job, total, available, largest, size), runs in groups.items()]
    cramped: dict[tuple, list[str]] = {}
    for r in rows:
        if not r["engine_fits"]:
            cramped.setdefault((r["model"], r["job"], r["engine_gb"], r["kv_room_gb"]), []).append(r["run"])
    key = {"train": "training.engine_options.gpu_memory_utilization", "sample": "the sample engine's share"}
    out += [f"models.{model}: the {job} job's vLLM engine reserves {reserved} GB of the GPU, which leaves {room} GB "
            f"after its weights and its own overhead, less than one full-length sequence's KV cache: raise {key[job]} "
            f"or use more GPUs; jobs: {', '.join(runs)}" for (model, job, reserved, room), runs in cramped.items()]
    crowded: dict[tuple, list[str]] = {}
    for r in rows:
        if not r["engine_share_fits"]:
            resident = round(sum(r[f"{c}_gb"] for c in STATES), 2)
            crowded.setdefault((r["model"], r["engine_share"], r["engine_gb"], resident, r["gpu_memory_gb"]),
                               []).append(r["run"])
    margin = round(capacity.MARGIN_BYTES / GB, 2)
    out += [f"models.{model}: the train job's vLLM engine at gpu_memory_utilization {share} ({engine} GB) does not fit "
            f"beside the {resident} GB the trainer keeps on the GPU while it generates and a {margin} GB margin "
            f"(rsgrpo.capacity.MARGIN_BYTES) on a {gpu} GB GPU: leave training.engine_options.gpu_memory_utilization "
            f"unset (sized to fit, at least {capacity.MIN_ENGINE_SHARE}) or lower it, or use more GPUs, a higher "
            f"zero_stage or offload_optimizer; jobs: {', '.join(runs)}"
            for (model, share, engine, resident, gpu), runs in crowded.items()]
    return out


EVERY_BENCHMARK = "*"  # a sample job evaluates one checkpoint on every benchmark (one engine start)


def sample_key(model: str, regime: str | None = None) -> tuple[str, str, str]:
    """Key of :func:`resources` for a model's sample jobs (under an evaluation regime: its own)."""
    every = EVERY_BENCHMARK if regime in (None, NO_REGIME) else f"{EVERY_BENCHMARK}@{regime}"
    return "sample", model, every


def resources(rows: list[dict], max_runtime_minutes: int) -> dict[tuple[str, str, str], dict]:
    """SLURM resources of each train job (key ``("train", model, run)``) and sample job (:func:`sample_key`:
    ``("sample", model, EVERY_BENCHMARK)``, a regime's ``*@<regime>``): ``runtime`` in minutes and
    ``mem_mb``. A sample job runs the model's benchmark rows one after the other: their minutes add up
    (within ``max_runtime_minutes``; a job past its limit resumes from its finished parts) and the
    largest memory counts."""
    out = {(r["job"], r["model"], r["run"]): {"runtime": r["runtime_min"], "mem_mb": r["mem_mb"]}
           for r in rows if r["job"] == "train"}
    for r in rows:
        if r["job"] == "sample":
            job = out.setdefault(sample_key(r["model"], r["regime"]), {"runtime": 0, "mem_mb": 0})
            job["runtime"] = min(max_runtime_minutes, job["runtime"] + r["runtime_min"])
            job["mem_mb"] = max(job["mem_mb"], r["mem_mb"])
    return out


def write_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def markdown(rows: list[dict]) -> str:
    cols = ["job", "model", "run", "regime", "jobs", "gpus", "params_b", "total_gb", "gpu_memory_gb", "largest",
            "engine_share", "kv_room_gb", "hours_bound", "hours", "gpu_hours", "runtime_min", "submissions",
            "checkpoints_per_job", "mem_mb"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def notes(rows: list[dict], assume: dict) -> list[str]:
    """What the plan points out without refusing: runs that take several submissions (more than the
    slurm profile's 3 retries give), and GPU train jobs longer than ``plan.min_runtime_minutes`` that
    write fewer than 2 checkpoints per job (a job that ends early then loses most of its work)."""
    long: dict[tuple, list[str]] = {}
    few: dict[tuple, list[str]] = {}
    for r in rows:
        if r["submissions"] > 1:
            long.setdefault((r["job"], r["model"], r["submissions"], r["runtime_min"]), []).append(r["run"])
        if (r["job"] == "train" and r["gpus"] and r["checkpoints_per_job"] < 2
                and r["runtime_min"] > assume["min_runtime_minutes"]):
            few.setdefault((r["model"], r["checkpoints_per_job"], r["runtime_min"], r["minutes_per_step"],
                            r["checkpoint_min"]), []).append(r["run"])
    out = [f"{job} {model} ({len(runs)} job(s)) runs about {submissions} x plan.max_runtime_minutes ({limit} min); "
           "each resubmission resumes from the last checkpoint"
           + (" (more than the slurm profile's 3 retries)" if submissions > 4 else "")
           for (job, model, submissions, limit), runs in long.items()]
    out += [f"train {model} ({len(runs)} job(s)) writes {count} checkpoint(s) per job of {limit} min ({per_step} min "
            f"per step, {write} min per checkpoint): set models.{model}.training.checkpoint_every_minutes to at most "
            f"{max(1, int(limit // 4))} (4 per job) or a lower checkpoint_every"
            for (model, count, limit, per_step, write), runs in few.items()]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", nargs="+", default=["config/grid.yaml"],
                        help="workflow config file(s), later ones override earlier ones (like --configfile)")
    source.add_argument("--config-json", default=None,
                        help="the workflow's effective config as JSON (the rule passes it; already validated)")
    parser.add_argument("--out", default=None, help="also write the plan as CSV here")


def load_workflow_config(paths: list[str]) -> dict:
    """The workflow config as Snakemake sees it: files merged in order, schema defaults filled in, checked."""
    from snakemake.utils import update_config, validate

    from rsgrpo import grid as G
    from rsgrpo.prepare.config_specs import check_config_specs

    schema = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
    if not schema.is_file():
        raise ValueError(f"plan --config reads the workflow's schema, {schema}: run it from a checkout of the "
                         "workflow (or pass the effective config with --config-json)")
    config: dict = {}
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"config file {path!r} does not exist")
        update_config(config, G.load_yaml_strict(path))
    validate(config, str(schema))
    check_config_specs(config, ", ".join(paths))  # specs against the registries, as common.smk does
    G.expand(config, ", ".join(paths))  # the cross-checks a schema cannot express
    return config


def main(args: argparse.Namespace) -> int:
    try:
        config = json.loads(args.config_json) if args.config_json else load_workflow_config(args.config)
        rows = plan(config)
    except ValueError as exc:
        print(f"plan: error: {exc}", file=sys.stderr)
        return 1
    print(markdown(rows))
    if args.out:
        print(f"plan: {write_csv(rows, args.out)}", file=sys.stderr)
    for note in notes(rows, config["plan"]):
        print(f"plan: note: {note}", file=sys.stderr)
    bad = misfits(rows)
    for message in bad:
        print(f"plan: does not fit: {message}", file=sys.stderr)
    return 1 if bad else 0
