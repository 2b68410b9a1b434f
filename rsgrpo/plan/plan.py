"""``python -m rsgrpo plan``: memory and compute of every training and sampling job of a workflow
config, before anything is submitted.

For each training job (a cell with training) and each sampling job (a model's evaluated checkpoints
on one benchmark) the plan gives, per GPU, the bytes of weights, gradients, fp32 master weights,
AdamW state, one micro-batch's activations at the longest sequence, the output layer's log-prob
chunk and the rollout engine (``rsgrpo.plan.capacity`` holds the arithmetic and its sources), the total
against the GPU's memory (``models.<key>.gpu_memory_gb``) with the largest component named, and the
tokens, FLOPs and GPU-hours of the run under the throughput assumptions of the config's ``plan``
section.

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
import functools
import json
import math
import sys
from pathlib import Path

from rsgrpo.plan import capacity
from rsgrpo.plan.capacity import GB, Shape

COLOCATED_ENGINE_SHARE = 0.3   # rsgrpo.train.engines.COLOCATED_VLLM_DEFAULTS (no torch import at parse time)
SAMPLE_ENGINE_SHARE = 0.9      # vLLM's own default gpu_memory_utilization for a GPU of its own
COMPONENTS = ["weights", "gradients", "master_weights", "optimizer", "activations", "logprob_chunk",
              "rollout_engine"]
COLUMNS = (["job", "model", "run", "jobs", "gpus", "precision", "zero_stage", "params_b"]
           + [f"{c}_gb" for c in COMPONENTS]
           + ["total_gb", "gpu_memory_gb", "fits", "largest", "engine_gb", "kv_room_gb", "engine_fits", "host_gb",
              "generated_tokens", "trained_tokens",
              "pflops", "hours", "gpu_hours", "runtime_min", "submissions", "mem_mb"])
HOST_BASE_GB = 16  # per job: Python, torch, tokenizer, data, DeepSpeed and vLLM host-side buffers


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


@functools.lru_cache(maxsize=64)
def _shape_of(config_json: str) -> Shape:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    data = json.loads(config_json)
    config = AutoConfig.for_model(**data)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    text = config.get_text_config(decoder=True)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return Shape(params=params, largest_layer=largest, layers=text.num_hidden_layers, hidden=text.hidden_size,
                 intermediate=text.intermediate_size, heads=heads,
                 kv_heads=getattr(text, "num_key_value_heads", None) or heads, head_dim=head_dim,
                 vocab=text.vocab_size)


DECODERS = ("llama", "qwen2", "qwen3", "mistral")  # closed form of their parameters: see _decoder_shape


def _decoder_shape(c: dict) -> Shape:
    """The shape of a standard decoder (Llama, Qwen2, Qwen3, Mistral) from config.json by arithmetic:
    what the meta-device build gives (tests compare the two), without importing torch, so that the
    workflow's config check stays fast."""
    h, inter, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads") or heads
    d = c.get("head_dim") or h // heads
    kind = c["model_type"]
    qkv_bias = kind == "qwen2" or (kind in ("llama", "mistral") and c.get("attention_bias", False)) or (
        kind == "qwen3" and c.get("attention_bias", False))
    o_bias = kind in ("llama", "qwen3") and c.get("attention_bias", False)
    mlp_bias = kind == "llama" and c.get("mlp_bias", False)
    q, kv = heads * d, kv_heads * d
    attention = h * q + 2 * h * kv + q * h + qkv_bias * (q + 2 * kv) + o_bias * h
    mlp = 3 * h * inter + mlp_bias * (2 * inter + h)
    per_layer = attention + mlp + 2 * h + (2 * d if kind == "qwen3" else 0)  # norms (+ Qwen3's q/k norms)
    embedding = vocab * h
    tied = c.get("tie_word_embeddings", kind != "llama" and kind != "mistral")
    params = embedding + layers * per_layer + h + (0 if tied else embedding)
    return Shape(params=params, largest_layer=max(embedding, h * inter + mlp_bias * inter), layers=layers,
                 hidden=h, intermediate=inter, heads=heads, kv_heads=kv_heads, head_dim=d, vocab=vocab)


def model_shape(config: dict) -> Shape:
    """Parameter count and shapes of a causal LM from its config.json: by arithmetic for the standard
    decoders (:data:`DECODERS`), built on the meta device for any other architecture."""
    if config.get("model_type") in DECODERS:
        return _decoder_shape(config)
    return meta_shape(config)


def meta_shape(config: dict) -> Shape:
    """The shape of the model transformers builds from ``config`` on the meta device (no weights)."""
    return _shape_of(json.dumps(config, sort_keys=True))


def _gb(x: float) -> float:
    return round(x / GB, 2)


def _row(job: str, key: str, run: str, gpus: int, precision: str, zero: int | str, shape: Shape,
         memory: dict[str, float], gpu_gb: float, tokens: tuple[float, float], flops: float, hours: float, *,
         host: float, jobs: int, assume: dict, engine: dict | None = None) -> dict:
    """A plan row; ``hours``: wall hours of all ``jobs`` of the row together, ``host``: bytes of one job;
    ``engine``: a vLLM engine's ``capacity.engine_memory`` (its KV room must hold one full sequence)."""
    parts = {c: memory.get(c, 0.0) for c in COMPONENTS}
    total = sum(parts.values())
    factor = assume["safety_factor"]
    # CPU jobs (gpus 0) have no GPU to check, and their hours are not GPU hours: a fixed limit
    per_job = hours * 60 / jobs * factor if gpus > 0 else assume["cpu_runtime_minutes"]
    runtime = int(min(assume["max_runtime_minutes"], max(assume["min_runtime_minutes"], math.ceil(per_job))))
    submissions = max(1, math.ceil(per_job / assume["max_runtime_minutes"]))  # a job past its limit resumes
    mem_mb = int(min(assume["max_mem_mb"], math.ceil((host + HOST_BASE_GB * GB) * factor / 1e6)))
    return {"job": job, "model": key, "run": run, "jobs": jobs, "gpus": gpus, "precision": precision,
            "zero_stage": zero, "params_b": round(shape.params / 1e9, 3),
            **{f"{c}_gb": _gb(v) for c, v in parts.items()}, "total_gb": _gb(total),
            "gpu_memory_gb": gpu_gb if gpus > 0 else "-", "fits": gpus == 0 or total <= gpu_gb * GB,
            "largest": max(parts, key=parts.get),
            "engine_gb": _gb(engine["reserved"]) if engine else "-",
            "kv_room_gb": _gb(engine["reserved"] - engine["weights"]) if engine else "-",
            "engine_fits": engine["kv_fits"] if engine else True, "host_gb": _gb(host + HOST_BASE_GB * GB),
            "generated_tokens": int(tokens[0]), "trained_tokens": int(tokens[1]), "pflops": round(flops / 1e15, 1),
            "hours": round(hours, 2), "gpu_hours": round(hours * max(gpus, 1), 2), "runtime_min": runtime,
            "submissions": submissions, "mem_mb": mem_mb}


def _problems(key: str, bench: dict, assume: dict, layout) -> int:
    prepared = Path(layout.benchmark_data(key))
    if prepared.is_file():
        with prepared.open() as f:
            return sum(1 for line in f if line.strip())
    return int(bench.get("problems", assume["problems"]))


def plan(config: dict, layout=None, *, unplanned: list[str] | None = None) -> list[dict]:
    """One row per training job and per (model, benchmark) sampling job of a validated workflow config.

    A model without a config.json to read (:class:`MissingModelConfig`) is an error, or, with an
    ``unplanned`` list, skipped and named in it (the workflow plans it once prepare-model has run).
    """
    from rsgrpo import grid as G
    from rsgrpo.layout import LAYOUT
    from rsgrpo.train.config import from_dict

    layout = layout or LAYOUT
    assume = config["plan"]
    gpu = assume["gpu"]
    peak, bandwidth = gpu["tflops"] * 1e12, gpu["bandwidth_tbs"] * 1e12
    rows = []
    cells = G.expand(config)
    shapes = {}
    for key in dict.fromkeys(c.model for c in cells):
        try:
            shapes[key] = model_shape(model_config(key, config["models"][key], layout.model_dir(key)))
        except MissingModelConfig:
            if unplanned is None:
                raise
            unplanned.append(key)
    cells = [c for c in cells if c.model in shapes]
    for cell in cells:
        if cell.is_base:
            continue
        model = config["models"][cell.model]
        shape = shapes[cell.model]
        cfg = from_dict(G.train_settings(config, cell, layout), f"plan: {cell.id}")
        gpus = int(model.get("gpus", 0)) * int(model.get("nodes", 1))
        gpu_gb = float(model.get("gpu_memory_gb", 80))
        prompt = int(assume["prompt_tokens"])
        job = capacity.TrainJob(precision=cfg.precision, zero_stage=cfg.zero_stage, ranks=max(gpus, 1),
                                offload_optimizer=cfg.offload_optimizer, micro_batch=cfg.micro_batch_size,
                                sequence=prompt + cfg.max_new_tokens, completion=cfg.max_new_tokens,
                                gradient_checkpointing=cfg.gradient_checkpointing,
                                logprob_chunk=cfg.logprob_chunk_tokens)
        share = cfg.engine_options.get("gpu_memory_utilization", COLOCATED_ENGINE_SHARE)
        engine = share * gpu_gb * GB if gpus > 0 and cfg.engine != "hf" else 0.0
        memory = capacity.train_memory(shape, job, engine_bytes=engine)
        sequences = cfg.prompts_per_step * cfg.samples_per_prompt
        flops = capacity.train_step_flops(shape, sequences=sequences, prompt=prompt, completion=cfg.max_new_tokens,
                                          gradient_checkpointing=cfg.gradient_checkpointing,
                                          ppo_epochs=cfg.ppo_epochs)
        ranks = job.ranks
        per_rank = math.ceil(sequences / ranks)
        # without a vLLM reservation (transformers on CPU) every sequence of the rank decodes at once
        engine_use = capacity.engine_memory(shape, sequences=per_rank, sequence=job.sequence, gpu_bytes=gpu_gb * GB,
                                            utilization=share) if engine else None
        decode = capacity.decode_seconds(shape, sequences=per_rank, prompt=prompt, completion=cfg.max_new_tokens,
                                         concurrent=engine_use["concurrent"] if engine_use else per_rank,
                                         peak_flops=peak, bandwidth=bandwidth,
                                         efficiency=assume["decode_efficiency"])
        update = flops["update"] / (ranks * peak * assume["train_mfu"])
        # dynamic sampling refills the batch: generation repeats, the update does not
        rounds = min(float(assume["gen_rounds"]), cfg.max_gen_rounds) if cfg.dynamic_sampling else 1.0
        hours = cfg.steps * (rounds * decode + update) / 3600
        per_node = ranks // int(model.get("nodes", 1))
        host = capacity.host_memory(shape, job, ranks_per_node=per_node, sleeping_engine=engine > 0)
        rows.append(_row("train", cell.model, cell.run, gpus, cfg.precision, cfg.zero_stage, shape, memory, gpu_gb,
                         (flops["generated_tokens"] * rounds * cfg.steps, flops["trained_tokens"] * cfg.steps),
                         (flops["generate"] * rounds + flops["update"]) * cfg.steps, hours, host=host, jobs=1,
                         assume=assume, engine=engine_use))
    ev = config["evaluation"]
    for key in dict.fromkeys(c.model for c in cells):
        model = config["models"][key]
        shape = shapes[key]
        gpus = min(1, int(model.get("gpus", 0)))
        gpu_gb = float(model.get("gpu_memory_gb", 80))
        checkpoints = sum(len(c.eval_steps) if not c.is_base else 1 for c in cells if c.model == key)
        for bench_key, bench in config["benchmarks"].items():
            sequences = bench["n"] * _problems(bench_key, bench, assume, layout)
            prompt, completion = int(assume["prompt_tokens"]), int(ev["max_tokens"])
            engine = capacity.engine_memory(shape, sequences=sequences, sequence=prompt + completion,
                                            gpu_bytes=gpu_gb * GB, utilization=SAMPLE_ENGINE_SHARE if gpus else None)
            seconds = capacity.decode_seconds(shape, sequences=sequences, prompt=prompt, completion=completion,
                                              concurrent=engine["concurrent"], peak_flops=peak, bandwidth=bandwidth,
                                              efficiency=assume["decode_efficiency"])
            flops = sequences * completion * capacity.forward_flops_per_token(shape, prompt + completion / 2)
            rows.append(_row("sample", key, bench_key, gpus, "bf16", "-", shape,
                             {"rollout_engine": engine["reserved"]}, gpu_gb,
                             (sequences * completion * checkpoints, 0), flops * checkpoints,
                             seconds * checkpoints / 3600, host=2 * shape.params, jobs=checkpoints, assume=assume,
                             engine=engine if gpus else None))
    return rows


def misfits(rows: list[dict]) -> list[str]:
    """Jobs that do not fit their GPU, one message per model and need: the model, GB needed vs
    available, the largest component and the jobs."""
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
            f"after its weights, less than one full-length sequence's KV cache: raise {key[job]} or use more GPUs; "
            f"jobs: {', '.join(runs)}" for (model, job, reserved, room), runs in cramped.items()]
    return out


def resources(rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    """SLURM resources of each train job (key ``("train", model, run)``) and sample job (``("sample",
    model, benchmark)``): ``runtime`` in minutes and ``mem_mb``."""
    return {(r["job"], r["model"], r["run"]): {"runtime": r["runtime_min"], "mem_mb": r["mem_mb"]} for r in rows}


def write_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def markdown(rows: list[dict]) -> str:
    cols = ["job", "model", "run", "jobs", "gpus", "params_b", "total_gb", "gpu_memory_gb", "largest", "gpu_hours",
            "runtime_min", "submissions", "mem_mb"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


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
    long: dict[tuple, list[str]] = {}
    for r in rows:
        if r["submissions"] > 1:
            long.setdefault((r["job"], r["model"], r["submissions"], r["runtime_min"]), []).append(r["run"])
    for (job, model, submissions, limit), runs in long.items():
        print(f"plan: note: {job} {model} ({len(runs)} job(s)) runs about {submissions} x plan.max_runtime_minutes "
              f"({limit} min); each resubmission resumes from the last checkpoint"
              + (" (more than the slurm profile's 3 retries)" if submissions > 4 else ""), file=sys.stderr)
    bad = misfits(rows)
    for message in bad:
        print(f"plan: does not fit: {message}", file=sys.stderr)
    return 1 if bad else 0
