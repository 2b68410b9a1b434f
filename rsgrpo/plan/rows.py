"""The rows of ``python -m rsgrpo plan``: where a model's shape comes from, a plan row and its Markdown
table, and the row of one training job (memory per GPU, time, checkpoints; LoRA or full fine-tuning),
which :mod:`rsgrpo.plan.plan` and :mod:`rsgrpo.plan.lora_comparison` share. The module docstring of
:mod:`rsgrpo.plan.plan` says what the columns hold."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rsgrpo import capacity, capacity_lora
from rsgrpo.capacity import BYTES, GB, Shape, model_shape

COMPONENTS = ["weights", "gradients", "master_weights", "optimizer", "reference_model", "activations",
              "logprob_chunk", "rollout_engine"]
COLUMNS = (["job", "model", "run", "regime", "jobs", "gpus", "precision", "zero_stage", "lora", "params_b"]
           + [f"{c}_gb" for c in COMPONENTS]
           + ["total_gb", "gpu_memory_gb", "fits", "largest", "engine_share", "engine_gb", "kv_room_gb", "engine_fits",
              "engine_share_fits", "host_gb", "generated_tokens_bound", "generated_tokens", "trained_tokens", "pflops",
              "minutes_per_step_bound", "minutes_per_step", "hours_bound", "hours", "gpu_hours", "runtime_min",
              "submissions", "checkpoint_gb", "checkpoint_min", "checkpoints_per_job", "mem_mb"])
NO_REGIME = "-"  # the regime column of train rows and of sampling under the evaluation section
NO_LORA = "-"  # the lora column of full fine-tuning and of sampling
KEEP_LORA = object()  # train_config: the cell's own lora setting
HOST_BASE_GB = 16  # per job: Python, torch, tokenizer, data, DeepSpeed and vLLM host-side buffers


class MissingModelConfig(ValueError):
    """A model whose config.json is neither prepared nor shipped (a hub model the package does not know)."""


def model_config(key: str, model: dict, model_dir: str | Path) -> dict:
    """config.json of a workflow model (:mod:`rsgrpo.plan.plan`'s docstring says where it comes from)."""
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


def gb(x: float) -> float:
    return round(x / GB, 2)


def slurm_runtime(hours: float, jobs: int, gpus: int, assume: dict) -> tuple[int, int]:
    """SLURM minutes of one job of a row and the submissions it takes: the expected hours x the safety
    factor within the config's bounds; CPU jobs (gpus 0), whose hours are not GPU hours, a fixed limit."""
    per_job = hours * 60 / jobs * assume["safety_factor"] if gpus > 0 else assume["cpu_runtime_minutes"]
    runtime = int(min(assume["max_runtime_minutes"], max(assume["min_runtime_minutes"], math.ceil(per_job))))
    return runtime, max(1, math.ceil(per_job / assume["max_runtime_minutes"]))  # a job past its limit resumes


def plan_row(job: str, key: str, run: str, gpus: int, precision: str, zero: int | str, shape: Shape,
             memory: dict[str, float], gpu_gb: float, *, tokens: dict[str, float], flops: float, hours: float,
             hours_bound: float, host: float, jobs: int, assume: dict, engine: dict | None = None,
             share: float | None = None, share_fits: bool = True, regime: str = NO_REGIME, lora: str = NO_LORA,
             **extra) -> dict:
    """A plan row; ``hours`` (expected) and ``hours_bound`` (every completion at its cap): wall hours of
    all ``jobs`` of the row together; ``host``: bytes of one job; ``engine``: a vLLM engine's
    ``capacity.engine_memory`` at full-length sequences (its KV room must hold one) and ``share`` its
    GPU share; ``lora``: a LoRA train job's adapters (:func:`lora_label`); ``extra``: the training
    job's per-step and checkpoint columns."""
    parts = {c: memory.get(c, 0.0) for c in COMPONENTS}
    total = sum(parts.values())
    runtime, submissions = slurm_runtime(hours, jobs, gpus, assume)
    mem_mb = int(min(assume["max_mem_mb"], math.ceil((host + HOST_BASE_GB * GB) * assume["safety_factor"] / 1e6)))
    blank = {c: "-" for c in ("minutes_per_step_bound", "minutes_per_step", "checkpoint_gb", "checkpoint_min",
                              "checkpoints_per_job")}
    return {"job": job, "model": key, "run": run, "regime": regime, "jobs": jobs, "gpus": gpus, "precision": precision,
            "zero_stage": zero, "lora": lora, "params_b": round(shape.params / 1e9, 3),
            **{f"{c}_gb": gb(v) for c, v in parts.items()}, "total_gb": gb(total),
            "gpu_memory_gb": gpu_gb if gpus > 0 else "-", "fits": gpus == 0 or total <= gpu_gb * GB,
            "largest": max(parts, key=parts.get),
            "engine_share": share if engine else "-", "engine_gb": gb(engine["reserved"]) if engine else "-",
            "kv_room_gb": gb(engine["kv_room"]) if engine else "-",
            "engine_fits": engine["kv_fits"] if engine else True, "engine_share_fits": share_fits,
            "host_gb": gb(host + HOST_BASE_GB * GB), "generated_tokens_bound": int(tokens["generated_bound"]),
            "generated_tokens": int(tokens["generated"]), "trained_tokens": int(tokens["trained"]),
            "pflops": round(flops / 1e15, 1), **blank, "hours_bound": round(hours_bound, 2), "hours": round(hours, 2),
            "gpu_hours": round(hours * max(gpus, 1), 2), "runtime_min": runtime, "submissions": submissions,
            **extra, "mem_mb": mem_mb}


def markdown_table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def expected_completion(tokens: int, assume: dict) -> int:
    """The expected mean completion of a cap of ``tokens`` (``plan.expected_completion_fraction``)."""
    return max(1, round(assume["expected_completion_fraction"] * tokens))


def lora_label(lora: capacity_lora.Lora | None) -> str:
    """The plan's ``lora`` column: ``rank <r>, <targets>`` (``, dropout <d>`` when it is on), or
    :data:`NO_LORA` for full fine-tuning."""
    if lora is None:
        return NO_LORA
    targets = lora.targets if isinstance(lora.targets, str) else "+".join(lora.targets)
    return f"rank {lora.rank}, {targets}" + (f", dropout {lora.dropout:g}" if lora.dropout > 0 else "")


def train_config(config: dict, cell, layout, *, lora=KEEP_LORA, note: str = ""):
    """The cell's TrainConfig (its ``lora`` replaced by ``lora`` unless :data:`KEEP_LORA`)."""
    from rsgrpo import grid as G
    from rsgrpo.train.config import from_dict

    settings = G.train_settings(config, cell, layout)
    if lora is not KEEP_LORA:
        settings["lora"] = lora
    return from_dict(settings, f"plan: {cell.id}{note}")


def ranks_of(model: dict) -> tuple[int, int, int]:
    """(GPUs, ranks per node, ranks) of a ``models.<key>`` entry's train job; a CPU model's ranks are
    its ``cpu_processes`` per node."""
    nodes = int(model.get("nodes", 1))
    gpus = int(model.get("gpus", 0)) * nodes
    local_ranks = int(model.get("gpus", 0)) or int(model.get("cpu_processes", 1))
    return gpus, local_ranks, gpus or local_ranks * nodes


def train_row(config: dict, cell, shape: Shape, layout, assume: dict) -> dict:
    """The plan row of one training cell (the columns: :mod:`rsgrpo.plan.plan`'s docstring)."""
    cfg = train_config(config, cell, layout)
    return price_training(cfg, config["models"][cell.model], cell, shape, assume)


def price_training(cfg, model: dict, cell, shape: Shape, assume: dict) -> dict:
    """The plan row of training ``cfg`` on the GPUs of ``model`` (a ``models.<key>`` entry) for ``cell``."""
    gpus, local_ranks, ranks = ranks_of(model)
    gpu_gb = float(model.get("gpu_memory_gb", 80))
    gpu_bytes = gpu_gb * GB
    peak, bandwidth = assume["gpu"]["tflops"] * 1e12, assume["gpu"]["bandwidth_tbs"] * 1e12
    prompt = int(assume["prompt_tokens"])
    job = capacity.train_job(cfg, ranks=ranks, prompt_tokens=prompt)
    try:  # adapters on layers the model does not have: named before any arithmetic uses them
        adapters = None if job.lora is None else capacity_lora.adapter_params(shape, job.lora)
    except ValueError as exc:
        raise ValueError(f"plan: {cell.id}: {exc}") from None
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
                                          gradient_checkpointing=cfg.gradient_checkpointing, ppo_epochs=cfg.ppo_epochs,
                                          adapter_params=adapters)
        return rounds * decode + flops["update"] / (ranks * peak * assume["train_mfu"]), flops, use

    bound, bound_flops, engine_use = step(cfg.max_new_tokens)
    expected, flops, _ = step(expected_completion(cfg.max_new_tokens, assume))
    hours = cfg.steps * expected / 3600
    runtime, _ = slurm_runtime(hours, 1, gpus, assume)
    workers = cfg.grading_workers if cfg.grading_workers is not None else max(1, assume["train_cpus"] // local_ranks)
    host = capacity.host_memory(shape, job, ranks_per_node=local_ranks, kl_reference=kl, grading_workers=workers)
    ckpt = capacity.checkpoint_bytes(shape, cfg.precision, job.lora)
    write = ckpt / (assume["checkpoint_write_gbs"] * GB) / 60
    # a job runs until its time limit, or until the run ends when the whole run fits in it
    written = capacity.checkpoints_per_job(job_minutes=min(runtime, hours * 60), minutes_per_step=expected / 60,
                                           write_minutes=write, every_steps=cfg.checkpoint_every,
                                           every_minutes=cfg.checkpoint_every_minutes)
    fits = not colocated or engine + sized["resident_bytes"] + sized["margin_bytes"] <= gpu_bytes
    tokens = {"generated_bound": bound_flops["generated_tokens"] * rounds * cfg.steps,
              "generated": flops["generated_tokens"] * rounds * cfg.steps,
              "trained": flops["trained_tokens"] * cfg.steps}
    return plan_row("train", cell.model, cell.run, gpus, cfg.precision, cfg.zero_stage, shape, memory, gpu_gb,
                    tokens=tokens, flops=(flops["generate"] * rounds + flops["update"]) * cfg.steps, hours=hours,
                    hours_bound=cfg.steps * bound / 3600, host=host, jobs=1, assume=assume, engine=engine_use,
                    share=share, share_fits=fits, lora=lora_label(job.lora),
                    minutes_per_step_bound=round(bound / 60, 2), minutes_per_step=round(expected / 60, 2),
                    checkpoint_gb=gb(ckpt), checkpoint_min=round(write, 2),
                    checkpoints_per_job=written if gpus > 0 else "-")  # CPU jobs are not timed


def planned_cells(config: dict, layout, unplanned: list[str] | None) -> tuple[list, dict, dict]:
    """The config's cells whose model has a config.json to plan from, the models' shapes and their
    contexts in tokens (``unplanned``: as :func:`rsgrpo.plan.plan.plan` takes it)."""
    from rsgrpo import grid as G

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
    return [c for c in cells if c.model in shapes], shapes, contexts
