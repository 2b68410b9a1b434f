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
job of the requested runtime writes. A cell whose training settings have ``lora`` is priced as LoRA
training (column ``lora``; :mod:`rsgrpo.capacity_lora`): the frozen base without gradients or
optimizer state, the adapters' states, full fine-tuning's activations plus the adapters'.

:func:`lora_comparison` prices, per model that trains, LoRA next to full fine-tuning: GB per GPU, the
fewest GPUs each fits on, GPU-hours and checkpoint sizes (``results/plan/lora_vs_full.csv`` and ``.md``).

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
import sys
from pathlib import Path

from rsgrpo import capacity
from rsgrpo.capacity import GB
from rsgrpo.io import atomic_path
from rsgrpo.plan.lora_comparison import LORA_COLUMNS, lora_comparison, lora_markdown
from rsgrpo.plan.rows import (
    COLUMNS,
    NO_REGIME,
    MissingModelConfig,
    expected_completion,
    markdown_table,
    model_config,
    plan_row,
    planned_cells,
    train_row,
)

# what the workflow (workflow/rules/*.smk), scripts and tests use of the plan, some of it from its modules
__all__ = ["MissingModelConfig", "load_workflow_config", "misfits", "model_config", "notes", "plan", "resources",
           "sample_key"]

SAMPLE_ENGINE_SHARE = 0.9      # vLLM's own default gpu_memory_utilization for a GPU of its own
STATES = ["weights", "gradients", "master_weights", "optimizer", "reference_model"]  # resident while generating


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

    layout = layout or LAYOUT
    assume = config["plan"]
    peak, bandwidth = assume["gpu"]["tflops"] * 1e12, assume["gpu"]["bandwidth_tbs"] * 1e12
    cells, shapes, contexts = planned_cells(config, layout, unplanned)
    rows = [train_row(config, cell, shapes[cell.model], layout, assume) for cell in cells if not cell.is_base]
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
            for name, completion in (("bound", cap), ("expected", expected_completion(cap, assume))):
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
            rows.append(plan_row("sample", key, bench_key, gpus, "bf16", "-", shape,
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


def write_csv(rows: list[dict], path: str | Path, columns: list[str] = COLUMNS) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_text(text: str, path: str | Path) -> Path:
    """``text`` and a final newline to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return Path(path)


def markdown(rows: list[dict]) -> str:
    return markdown_table(rows, ["job", "model", "run", "regime", "jobs", "gpus", "lora", "params_b", "total_gb",
                         "gpu_memory_gb", "largest", "engine_share", "kv_room_gb", "hours_bound", "hours", "gpu_hours",
                         "runtime_min", "submissions", "checkpoints_per_job", "mem_mb"])


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
    parser.add_argument("--lora-csv", default=None,
                        help="also write the comparison of LoRA and full fine-tuning per model as CSV here")
    parser.add_argument("--lora-md", default=None, help="... and as Markdown here")


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
        comparison = lora_comparison(config)
    except ValueError as exc:
        print(f"plan: error: {exc}", file=sys.stderr)
        return 1
    print(markdown(rows))
    print(f"\n{lora_markdown(comparison)}")
    if args.out:
        print(f"plan: {write_csv(rows, args.out)}", file=sys.stderr)
    if args.lora_csv:
        print(f"plan: {write_csv(comparison, args.lora_csv, LORA_COLUMNS)}", file=sys.stderr)
    if args.lora_md:
        print(f"plan: {write_text(lora_markdown(comparison), args.lora_md)}", file=sys.stderr)
    for note in notes(rows, config["plan"]):
        print(f"plan: note: {note}", file=sys.stderr)
    bad = misfits(rows)
    for message in bad:
        print(f"plan: does not fit: {message}", file=sys.stderr)
    return 1 if bad else 0
