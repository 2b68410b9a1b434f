# Loads and validates the config, expands the grid (rsgrpo.grid), and holds the shared helpers.
# All experiment logic lives in rsgrpo; this file only maps wildcards to cells and CLI arguments.
# Every path comes from rsgrpo.layout.Layout (LAYOUT): no file name is spelled here or in a rule.
import json
import os
import re
import shlex

from snakemake.logging import logger
from snakemake.utils import validate

from rsgrpo import grid as G
from rsgrpo.plan import plan as plan_jobs
from rsgrpo.layout import FINAL, Layout, split_eval
from rsgrpo.prepare.config_specs import check_config_specs

validate(config, schema="../schemas/config.schema.yaml")

# Duplicate keys are silently merged by YAML loaders: re-read each config file strictly.
CONFIG_FILES = [str(f) for f in workflow.configfiles]
for _file in CONFIG_FILES:
    G.load_yaml_strict(_file)

LAYOUT = Layout()
# model and dataset specs against the registries of sources and generators (not schema enums)
check_config_specs(config, source=", ".join(CONFIG_FILES) or "config")
CELLS = G.expand(config, source=", ".join(CONFIG_FILES) or "config")
REGIMES = any(cell.regime is not None for cell in CELLS)  # base cells under evaluation regimes: compare them
# Every job must fit its GPU (python -m rsgrpo plan): refused here, dry runs included, not after days in a queue.
UNPLANNED = []  # models whose config.json exists only once prepare-model has run
PLAN = plan_jobs.plan(config, LAYOUT, unplanned=UNPLANNED)
if UNPLANNED:
    logger.warning(f"not planned yet (no config.json before prepare-model): {', '.join(UNPLANNED)}")
_MISFITS = plan_jobs.misfits(PLAN)
if _MISFITS:
    raise ValueError(
        f"{', '.join(CONFIG_FILES) or 'config'}: jobs that do not fit their GPU:\n  " + "\n  ".join(_MISFITS)
    )
# SLURM runtime (minutes) and host mem_mb of train and sample jobs: the plan's estimate x plan.safety_factor
JOB_RESOURCES = plan_jobs.resources(PLAN, config["plan"]["max_runtime_minutes"])
BENCHMARKS = list(config["benchmarks"])

# Software under --software-deployment-method conda: the CPU rules run in RSGRPO_ENV; train and
# sample run in RSGRPO_GPU_ENV (vLLM, CUDA torch) when the config gives their model GPUs (see
# software_env and the two files). Their post-deploy scripts install this checkout: RSGRPO_SOURCE.
RSGRPO_ENV = "../envs/rsgrpo.yaml"
RSGRPO_GPU_ENV = "../envs/rsgrpo-gpu.yaml"
os.environ.setdefault("RSGRPO_SOURCE", str(workflow.basedir))


# Under --software-deployment-method apptainer every rule runs in this image (containers/).
container: config["container"]


def model_keys(pretrained):
    """Regex of the model keys built by the pretrain rule (spec source pretrain) or, with
    pretrained False, by prepare_model: the two rules write the same model directories."""
    keys = [k for k, m in config["models"].items() if (m["spec"]["source"] == "pretrain") == pretrained]
    return "|".join(re.escape(k) for k in keys) or "(?!)"


wildcard_constraints:
    model=r"[A-Za-z][A-Za-z0-9_]*",
    name=r"[A-Za-z][A-Za-z0-9_]*",
    bench=r"[A-Za-z][A-Za-z0-9_]*",
    # [<train_set>/]<method>[/step<N>]: one or two name segments, optionally a checkpoint segment
    evalrun=rf"(?:[A-Za-z][A-Za-z0-9_]*/)?[A-Za-z][A-Za-z0-9_.\-]*(?:/{LAYOUT.EVAL_STEP_REGEX})?",
    run=r"(?:[A-Za-z][A-Za-z0-9_]*/)?[A-Za-z][A-Za-z0-9_.\-]*",


def space_separated(values):
    """Format a list for a shell command line (betas etc.)."""
    return " ".join(str(v) for v in values)


def cell_of(wildcards):
    run = getattr(wildcards, "run", None) or split_eval(wildcards.evalrun)[0]
    return G.cell_from_path(config, wildcards.model, run, CELLS, LAYOUT)


def eval_step(wildcards):
    return split_eval(wildcards.evalrun)[1]


def checkpoint_dir(wildcards):
    """The checkpoint an evaluation samples from: the prepared model for base, else a train step."""
    cell = cell_of(wildcards)
    if cell.is_base:
        return LAYOUT.model_dir(cell.model)
    return LAYOUT.checkpoint_dir(cell.id, G.step_number(config, eval_step(wildcards), cell))


def train_settings(cell):
    settings = G.train_settings(config, cell, LAYOUT)
    if any(s != FINAL for s in cell.eval_steps):
        settings["keep_last"] = 0  # intermediate checkpoints are evaluated: keep them all
    return settings


def set_flags(settings):
    """--set key=value flags for `python -m rsgrpo train` (values as JSON, which YAML reads)."""
    return " ".join(shlex.quote(f"--set={k}={json.dumps(v)}") for k, v in settings.items())


def model_gpus(wildcards):
    return int(config["models"][wildcards.model].get("gpus", 0))


def software_env(wildcards):
    """The environment of a train or sample job: the GPU one when the config gives the model GPUs,
    whatever the machine that builds the environments has."""
    return RSGRPO_GPU_ENV if model_gpus(wildcards) > 0 else RSGRPO_ENV


def planned(job, resource):
    """A rule's resource from the plan (JOB_RESOURCES); a cell outside the sweeps (any well-formed
    target path) gets the longest runtime and the most memory the config allows."""

    def get(wildcards):
        if job == "train":
            key = (job, wildcards.model, wildcards.run)
        else:  # a sample job: the model's, or its evaluation regime's
            key = plan_jobs.sample_key(wildcards.model, cell_of(wildcards).regime)
        fallback = {"runtime": config["plan"]["max_runtime_minutes"], "mem_mb": config["plan"]["max_mem_mb"]}
        return JOB_RESOURCES.get(key, fallback)[resource]

    return get


def model_nodes(wildcards):
    return int(config["models"][wildcards.model].get("nodes", 1))


def train_ranks_per_node(wildcards):
    """`train --nproc`: one rank per GPU, or the configured number of gloo processes on CPU."""
    model = config["models"][wildcards.model]
    return int(model.get("gpus", 0)) or int(model.get("cpu_processes", 1))


def report_table(name):
    """An aggregate CSV marked for the HTML report; its caption is workflow/report/<name>.rst."""
    return report(LAYOUT.aggregate_table(name), caption=f"../report/{name}.rst", category="Tables")


def aggregate_inputs():
    """Everything the aggregate and figure steps read: each evaluation's tables, each run's metrics."""
    files = []
    for cell in CELLS:
        for step in cell.eval_steps:
            folder = LAYOUT.eval_dir(cell.id, step)
            files += [LAYOUT.passk(folder), LAYOUT.graded(folder)]
        if not cell.is_base:
            files.append(LAYOUT.metrics(LAYOUT.cell_dir(cell.id)))
    return files


def regime_inputs():
    """What regime_comparison reads: every base cell's final pass@k table and graded samples."""
    folders = [LAYOUT.eval_dir(cell.id, FINAL) for cell in CELLS if cell.is_base]
    return [f for folder in folders for f in (LAYOUT.passk(folder), LAYOUT.graded(folder))]


def final_outputs():
    """Every cell's final pass@k table and every evaluated checkpoint's."""
    outs = []
    for cell in CELLS:
        for step in cell.eval_steps:
            outs.append(LAYOUT.passk(LAYOUT.eval_dir(cell.id, step)))
    return outs


def dataset_spec(wildcards):
    section = "train_sets" if wildcards.kind == LAYOUT.TRAIN_DATA else "benchmarks"
    if wildcards.name not in config[section]:
        raise ValueError(f"no {section} entry named {wildcards.name!r} in the config")
    entry = config[section][wildcards.name]
    return shlex.quote(json.dumps(entry if section == "train_sets" else entry["spec"]))


def sample_inputs(wildcards):
    cell = cell_of(wildcards)
    inputs = {"benchmarks": [LAYOUT.benchmark_data(bench) for bench in BENCHMARKS]}
    if cell.is_base:
        inputs["model"] = LAYOUT.model_dir(cell.model)
    else:
        inputs["manifest"] = LAYOUT.manifest(LAYOUT.cell_dir(cell.id))
    return inputs


def sample_args(wildcards):
    """The sample verb's settings: evaluation's, under a base cell's regime its overrides (G.sample_settings);
    max_tokens max fills the model's context_length after each benchmark's longest prompt."""
    ev = config["evaluation"]
    s = G.sample_settings(config, cell_of(wildcards))
    n = space_separated(config["benchmarks"][bench]["n"] for bench in BENCHMARKS)
    fill = ""
    if s["max_tokens"] == G.MAX_TOKENS:
        fill = f" --context-length {config['models'][wildcards.model]['context_length']}"
    return (
        f"--n {n} --temperature {s['temperature']} --top-p {s['top_p']}"
        f" --max-tokens {s['max_tokens']} --seed {ev['seed']} --engine {ev['engine']} --template {s['template']}"
        f" --batch-size {ev['batch_size']}{fill}"
    )
