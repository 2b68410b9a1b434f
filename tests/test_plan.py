"""`python -m rsgrpo plan`: shapes from config.json alone, the paper grid priced and fitting, and a
job that cannot fit refused by the workflow before any job runs."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from snakemake_helpers import REPO, copy_workflow, dry_run_resources, snakemake

from rsgrpo import cli
from rsgrpo.plan import capacity
from rsgrpo.plan.plan import load_workflow_config, meta_shape, model_shape, plan
from rsgrpo.prepare.loading import MODEL_CONFIGS, shipped_config_path
from rsgrpo.prepare.tiny import tiny_config

PUBLISHED_B = {"Qwen/Qwen2.5-Math-1.5B": 1.54, "Qwen/Qwen2.5-Math-7B": 7.62, "Qwen/Qwen2.5-7B": 7.62,
               "Qwen/Qwen3-4B-Base": 4.02, "meta-llama/Llama-3.1-8B-Instruct": 8.03}


@pytest.mark.parametrize("hub_id", sorted(PUBLISHED_B))
def test_shipped_configs_have_the_published_sizes(hub_id):
    config = json.loads(shipped_config_path(hub_id).read_text())
    assert model_shape(config).params / 1e9 == pytest.approx(PUBLISHED_B[hub_id], rel=0.01)
    assert not any(k in config for k in ("weights", "state_dict"))  # architecture numbers only


def test_closed_form_shapes_equal_the_meta_device_build():
    configs = [json.loads(p.read_text()) for p in sorted(MODEL_CONFIGS.glob("*.json"))]
    configs.append(tiny_config().to_dict())
    configs.append(dict(tiny_config(num_kv_heads=1).to_dict(), tie_word_embeddings=False))
    configs.append({**configs[0], "attention_bias": True, "mlp_bias": True})  # a llama with every bias
    assert {c["model_type"] for c in configs} == {"llama", "qwen2", "qwen3"}
    for config in configs:
        assert model_shape(config) == meta_shape(config), config.get("architectures")


@pytest.fixture(scope="module")
def grid():
    config = load_workflow_config([str(REPO / "config" / "grid.yaml")])
    return config, plan(config)


def test_paper_grid_every_job_fits_and_model_states_are_deepspeeds(grid):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    config, rows = grid
    assert rows and all(r["fits"] for r in rows), [r for r in rows if not r["fits"]]
    trains = [r for r in rows if r["job"] == "train"]
    assert {r["model"] for r in trains} == set(config["models"])
    for r in trains:
        model = config["models"][r["model"]]
        zero = {**config["training"], **model.get("training", {})}["zero_stage"]
        shape = model_shape(json.loads(shipped_config_path(model["spec"]["id"]).read_text()))
        if zero == 3:
            _, expected, _ = estimate_zero3_model_states_mem_needs(
                shape.params, shape.largest_layer, num_gpus_per_node=model["gpus"], cpu_offload=False)
        else:
            _, expected = estimate_zero2_model_states_mem_needs(shape.params, num_gpus_per_node=model["gpus"],
                                                                cpu_offload=False)
        states = sum(r[f"{c}_gb"] for c in ("weights", "gradients", "master_weights", "optimizer"))
        assert states == pytest.approx(expected / 1e9, abs=0.03), r
        assert r["gpu_hours"] > 0 and r["pflops"] > 0 and r["generated_tokens"] > 0
    samples = [r for r in rows if r["job"] == "sample"]
    assert len(samples) == len(config["models"]) * len(config["benchmarks"])


def test_plan_verb_writes_the_csv_and_refuses_a_job_that_does_not_fit(tmp_path, capsys):
    small = tmp_path / "small-gpu.yaml"
    small.write_text(yaml.safe_dump({"models": {"qwen7b": {"gpu_memory_gb": 24}}}))
    out = tmp_path / "plan.csv"
    assert cli.main(["plan", "--config", str(REPO / "config" / "grid.yaml"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert rows and all(r["fits"] == "True" for r in rows)
    assert cli.main(["plan", "--config", str(REPO / "config" / "grid.yaml"), str(small)]) == 1
    err = capsys.readouterr().err
    assert "models.qwen7b: train needs" in err and "the GPU has 24.0 GB (models.qwen7b.gpu_memory_gb)" in err
    assert "largest component: optimizer" in err and "models.qwen1p5b" not in err
    assert cli.main(["plan", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert f"config file '{tmp_path / 'missing.yaml'}' does not exist" in capsys.readouterr().err


def test_workflow_refuses_a_job_that_does_not_fit_at_parse_time(tmp_path):
    """`snakemake -n all` with qwen7b on 24 GB GPUs: the config check names the model, the component
    and GB needed vs available, before any job (dry runs included)."""
    work = copy_workflow(tmp_path / "wf")
    grid_yaml = work / "config" / "grid.yaml"
    config = yaml.safe_load(grid_yaml.read_text())
    config["models"]["qwen7b"]["gpu_memory_gb"] = 24
    grid_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = snakemake(work, "-n", "all")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "jobs that do not fit their GPU" in out and "models.qwen7b: train needs" in out
    assert "largest component: optimizer" in out and "the GPU has 24.0 GB" in out and "Job stats" not in out


def test_the_plans_engine_share_is_the_trainers():
    from rsgrpo.plan.plan import COLOCATED_ENGINE_SHARE
    from rsgrpo.train.engines.vllm import COLOCATED_VLLM_DEFAULTS

    assert COLOCATED_ENGINE_SHARE == COLOCATED_VLLM_DEFAULTS["gpu_memory_utilization"]


def test_more_gpus_or_checkpointing_lower_the_peak():
    config = json.loads(shipped_config_path("Qwen/Qwen2.5-Math-7B").read_text())
    shape = model_shape(config)
    job = dict(precision="bf16-mixed", zero_stage=3, offload_optimizer=False, micro_batch=4, sequence=4096,
               completion=3072, logprob_chunk=1024)
    four = capacity.train_memory(shape, capacity.TrainJob(ranks=4, gradient_checkpointing=True, **job))
    eight = capacity.train_memory(shape, capacity.TrainJob(ranks=8, gradient_checkpointing=True, **job))
    plain = capacity.train_memory(shape, capacity.TrainJob(ranks=4, gradient_checkpointing=False, **job))
    assert eight["total"] < four["total"] < plain["total"]
    assert max(plain, key=lambda k: plain[k] if k != "total" else 0) == "activations"


def test_train_and_sample_jobs_ask_slurm_for_what_the_plan_says(tmp_path, grid):
    config, rows = grid
    planned = {(r["job"], r["model"], r["run"]): r for r in rows}
    proc = snakemake(copy_workflow(tmp_path / "wf"), "-n", "results/qwen1p5b/beta2/samples/aime24.parquet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    asked = dry_run_resources(proc.stdout)
    for rule, key in (("train", ("train", "qwen1p5b", "beta2")), ("sample", ("sample", "qwen1p5b", "aime24"))):
        row = planned[key]
        assert (asked[rule]["runtime"], asked[rule]["mem_mb"]) == (row["runtime_min"], row["mem_mb"]), rule
    # the plan's numbers: safety factor x estimate, within the config's bounds
    sample = planned[("sample", "qwen1p5b", "aime24")]
    expected = math.ceil(sample["hours"] * 60 / sample["jobs"] * config["plan"]["safety_factor"])
    assert sample["runtime_min"] == max(config["plan"]["min_runtime_minutes"], expected)
    assert planned[("train", "qwen7b", "beta4")]["runtime_min"] == config["plan"]["max_runtime_minutes"]


def test_a_hub_model_the_package_does_not_know_is_planned_once_prepared(tmp_path, capsys):
    """No shipped config.json and no prepared checkpoint: the workflow still parses (prepare-model
    must be able to run) and says the model is not planned yet; the plan verb names it."""
    from rsgrpo.plan.plan import MissingModelConfig, model_config

    extra = {"models": {"other": {"spec": {"source": "hub", "id": "someone/unknown-7b"}, "train_set": "math12k",
                                  "gpus": 1}},
             "sweeps": [{"name": "other", "models": ["other"], "methods": ["grpo"]}]}
    with pytest.raises(MissingModelConfig, match=r"models\.other: no config\.json .* prepare-model"):
        model_config("other", extra["models"]["other"], tmp_path / "models" / "other")
    work = copy_workflow(tmp_path / "wf")
    (work / "config" / "extra.yaml").write_text(yaml.safe_dump(extra))
    proc = snakemake(work, "-n", "--configfile", "config/grid.yaml", "config/extra.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not planned yet (no config.json before prepare-model): other" in proc.stdout + proc.stderr
    assert cli.main(["plan", "--config", str(work / "config" / "grid.yaml"), str(work / "config" / "extra.yaml")]) == 1
    assert "models.other: no config.json" in capsys.readouterr().err


def test_gpu_smoke_config_fits_one_gpu_and_runs_the_whole_dag(tmp_path):
    """config/gpu-smoke.yaml: a Qwen2.5-Math-1.5B-shaped random model on one GPU, bf16-mixed, vLLM,
    two evaluated checkpoints per trained cell; every job of the DAG is scheduled."""
    config = load_workflow_config([str(REPO / "config" / "gpu-smoke.yaml")])
    model = config["models"]["qwen15_random"]
    assert model["gpus"] == 1 and model["spec"]["source"] == "random"
    assert config["training"]["precision"] == "bf16-mixed" and config["training"]["engine"] == "vllm"
    rows = plan(config)
    assert all(r["fits"] and r["gpus"] == 1 for r in rows)
    assert {r["params_b"] for r in rows} == {1.544}
    proc = snakemake(copy_workflow(tmp_path / "wf"), "-n", "--configfile", "config/gpu-smoke.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from snakemake_helpers import job_counts

    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["train"] == 2 and counts["sample"] == 5 and counts["plan"] == 1  # base + 2 cells x 2 steps


def test_an_engine_share_too_small_for_the_weights_is_refused(tmp_path, capsys):
    """qwen7b's colocated vLLM at 0.15 of an 80 GB GPU: 12 GB cannot hold 15.2 GB of bf16 weights and
    a sequence's KV cache, although the trainer's own total fits."""
    cramped = tmp_path / "cramped.yaml"
    cramped.write_text(yaml.safe_dump({"models": {"qwen7b": {"training": {
        "micro_batch_size": 4, "zero_stage": 3, "engine_options": {"gpu_memory_utilization": 0.15}}}}}))
    config = load_workflow_config([str(REPO / "config" / "grid.yaml"), str(cramped)])
    rows = [r for r in plan(config) if r["model"] == "qwen7b" and r["job"] == "train"]
    assert rows and all(r["fits"] and not r["engine_fits"] and r["engine_gb"] == 12.0 for r in rows)
    assert cli.main(["plan", "--config", str(REPO / "config" / "grid.yaml"), str(cramped)]) == 1
    err = capsys.readouterr().err
    assert "models.qwen7b: the train job's vLLM engine reserves 12.0 GB" in err
    assert "raise training.engine_options.gpu_memory_utilization" in err and "models.qwen1p5b" not in err


def test_dynamic_sampling_rounds_multiply_generation_not_the_update(grid):
    """Refill repeats generation: the plan's train hours grow by (rounds - 1) x the decode time and
    the generated tokens by the rounds, the trained tokens stay; without dynamic sampling the
    assumption is not used."""
    import copy

    config, rows = grid

    def train_rows(gen_rounds, **training):
        changed = copy.deepcopy(config)
        changed["plan"]["gen_rounds"] = gen_rounds
        changed["training"].update(training)
        return {(r["model"], r["run"]): r for r in plan(changed) if r["job"] == "train"}

    one, two, three = train_rows(1.0), train_rows(2.0), train_rows(3.0)
    off = train_rows(3.0, dynamic_sampling=False)
    for key, r1 in one.items():
        assert two[key]["generated_tokens"] == 2 * r1["generated_tokens"]
        assert two[key]["trained_tokens"] == r1["trained_tokens"]
        # hours linear in the rounds: 3 rounds add as much over 2 as 2 over 1 (the decode time)
        assert three[key]["hours"] - two[key]["hours"] == pytest.approx(two[key]["hours"] - r1["hours"], abs=0.02)
        assert two[key]["hours"] > r1["hours"]
        assert off[key]["hours"] == r1["hours"] and off[key]["generated_tokens"] == r1["generated_tokens"]
    capped = train_rows(50.0)  # at most training.max_gen_rounds (8) rounds
    eight = train_rows(8.0)
    assert all(capped[k]["generated_tokens"] == eight[k]["generated_tokens"] for k in one)


def test_the_plan_asks_a_model_source_for_its_config_before_the_model_exists(tmp_path):
    """The plan knows no source by name: a source registered with planned_config is planned at once,
    one without waits until prepare-model has written the checkpoint."""
    from rsgrpo.plan.plan import MissingModelConfig, model_config
    from rsgrpo.prepare import model_sources
    from rsgrpo.prepare.tiny import tiny_config

    planned = tiny_config(hidden_size=96, num_layers=3, num_heads=3).to_dict()
    model_sources.register("test_plan_planned", planned_config=lambda spec: planned)(lambda spec, tmp: None)
    model_sources.register("test_plan_unplanned")(lambda spec, tmp: None)
    try:
        assert model_config("m", {"spec": {"source": "test_plan_planned"}}, tmp_path / "absent") == planned
        with pytest.raises(MissingModelConfig, match="models.n: no config.json to plan from"):
            model_config("n", {"spec": {"source": "test_plan_unplanned"}}, tmp_path / "absent")
        (tmp_path / "prepared").mkdir()
        (tmp_path / "prepared" / "config.json").write_text('{"hidden_size": 7}')
        prepared = model_config("n", {"spec": {"source": "test_plan_unplanned"}}, tmp_path / "prepared")
        assert prepared == {"hidden_size": 7}
    finally:
        for name in ("test_plan_planned", "test_plan_unplanned"):
            model_sources.MODEL_SOURCES.pop(name)
