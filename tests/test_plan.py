"""`python -m rsgrpo plan`: shapes from config.json alone, the paper grid priced and fitting, the
colocated engine's share the trainer's, expected vs bounded hours, checkpoints per job, and a job that
cannot fit refused by the workflow before any job runs."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from snakemake_helpers import REPO, copy_workflow, dry_run_resources, snakemake

from rsgrpo import capacity, cli
from rsgrpo.capacity import meta_shape, model_shape
from rsgrpo.plan.plan import load_workflow_config, misfits, notes, plan
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


def _train_config(config, model, run):
    from rsgrpo import grid as G
    from rsgrpo.train.config import from_dict

    cell = next(c for c in G.expand(config) if c.model == model and c.run == run)
    return from_dict(G.train_settings(config, cell), "test")


def test_the_plans_engine_share_is_the_one_the_trainer_computes(grid):
    """Every colocated train row: the share, the engine's GB and its KV room are
    rsgrpo.capacity.colocated_engine_share's for the cell's TrainConfig, the function the trainer calls."""
    config, rows = grid
    trains = [r for r in rows if r["job"] == "train"]
    shares = set()
    for r in trains:
        model = config["models"][r["model"]]
        shape = model_shape(json.loads(shipped_config_path(model["spec"]["id"]).read_text()))
        cfg = _train_config(config, r["model"], r["run"])
        job = capacity.train_job(cfg, ranks=model["gpus"], prompt_tokens=config["plan"]["prompt_tokens"])
        sized = capacity.colocated_engine_share(shape, job, model["gpu_memory_gb"] * 1e9, kl_reference=False)
        assert r["engine_share"] == sized["share"] and r["engine_share_fits"], r
        assert r["engine_gb"] == round(sized["engine_bytes"] / 1e9, 2) == r["rollout_engine_gb"]
        assert r["kv_room_gb"] == round(sized["kv_room_bytes"] / 1e9, 2)
        shares.add(r["engine_share"])
    assert len(shares) > 1 and 0.3 not in shares  # sized per model, not one constant
    qwen7b = next(r for r in trains if r["model"] == "qwen7b")
    assert qwen7b["engine_share"] == 0.469 and qwen7b["kv_room_gb"] > 1.5 * 8.77  # 8.77 GB at the old 0.3


def _changed(config, *, plan=None, **models):
    """A copy of the validated config with plan assumptions and per-model training keys changed."""
    import copy

    changed = copy.deepcopy(config)
    changed["plan"].update(plan or {})
    for key, training in models.items():
        changed["models"][key].setdefault("training", {}).update(training)
    return changed


def _row(rows, model, run="grpo", job="train"):
    return next(r for r in rows if (r["job"], r["model"], r["run"]) == (job, model, run))


def test_the_plan_uses_a_configured_gpu_memory_utilization(grid):
    config, _ = grid
    rows = plan(_changed(config, qwen7b={"engine_options": {"gpu_memory_utilization": 0.35}}))
    r = _row(rows, "qwen7b")
    shape = model_shape(json.loads(shipped_config_path("Qwen/Qwen2.5-Math-7B").read_text()))
    overhead = sum(capacity.vllm_overhead(shape).values())
    assert r["engine_share"] == 0.35 and r["engine_gb"] == 28.0 and r["engine_share_fits"]
    assert r["kv_room_gb"] == round((28e9 - 2 * shape.params - overhead) / 1e9, 2)
    assert _row(rows, "llama8b")["engine_share"] == 0.447  # the others keep theirs
    # a configured share that does not fit beside the trainer's states and the margin is refused
    crowded = plan(_changed(config, qwen7b={"engine_options": {"gpu_memory_utilization": 0.52}}))
    assert not _row(crowded, "qwen7b")["engine_share_fits"] and _row(crowded, "qwen7b")["fits"]
    from rsgrpo.plan.plan import misfits

    message = [m for m in misfits(crowded) if "does not fit beside" in m]
    assert len(message) == 1 and message[0].startswith("models.qwen7b: the train job's vLLM engine at "
                                                       "gpu_memory_utilization 0.52 (41.6 GB)")


def test_kl_coef_adds_the_reference_model_to_gpu_and_host_memory(grid):
    config, rows = grid
    kl = plan(_changed(config, qwen7b={"kl_coef": 0.001}))
    shape = model_shape(json.loads(shipped_config_path("Qwen/Qwen2.5-Math-7B").read_text()))
    before, after = _row(rows, "qwen7b"), _row(kl, "qwen7b")
    assert before["reference_model_gb"] == 0 and after["reference_model_gb"] == round(2 * shape.params / 1e9, 2)
    assert after["host_gb"] == pytest.approx(before["host_gb"] + 4 * 2 * shape.params / 1e9, abs=0.02)  # 4 ranks
    # the engine gives the replica its room: the share shrinks by about its 15.2 GB of an 80 GB GPU
    assert after["engine_share"] == pytest.approx(before["engine_share"] - 2 * shape.params / 80e9, abs=0.0011)
    assert after["total_gb"] == pytest.approx(before["total_gb"], abs=0.1) and after["fits"]


def test_hours_are_the_expectation_and_hours_bound_every_completion_at_its_cap(grid):
    config, rows = grid
    fraction = config["plan"]["expected_completion_fraction"]
    assert 0 < fraction < 1
    for r in rows:
        assert r["generated_tokens"] == pytest.approx(r["generated_tokens_bound"] * fraction, rel=1e-3), r
        assert r["hours"] < r["hours_bound"]
    # the exact formula of one train row: rounds x decode + update at the expected completion length
    r, cfg = _row(rows, "qwen7b"), _train_config(config, "qwen7b", "grpo")
    shape = model_shape(json.loads(shipped_config_path("Qwen/Qwen2.5-Math-7B").read_text()))
    assume, prompt = config["plan"], config["plan"]["prompt_tokens"]
    expected = round(fraction * cfg.max_new_tokens)
    per_rank = cfg.prompts_per_step * cfg.samples_per_prompt // 4
    engine = capacity.engine_memory(shape, sequences=per_rank, sequence=prompt + expected, gpu_bytes=80e9,
                                    utilization=r["engine_share"])
    peak, bandwidth = assume["gpu"]["tflops"] * 1e12, assume["gpu"]["bandwidth_tbs"] * 1e12
    decode = capacity.decode_seconds(shape, sequences=per_rank, prompt=prompt, completion=expected,
                                     concurrent=engine["concurrent"], peak_flops=peak, bandwidth=bandwidth,
                                     efficiency=assume["decode_efficiency"])
    flops = capacity.train_step_flops(shape, sequences=4 * per_rank, prompt=prompt, completion=expected,
                                      gradient_checkpointing=True)
    step = assume["gen_rounds"] * decode + flops["update"] / (4 * peak * assume["train_mfu"])
    assert r["hours"] == round(cfg.steps * step / 3600, 2) and r["minutes_per_step"] == round(step / 60, 2)
    # at a fraction of 1 the expectation is the bound
    whole = plan(_changed(config, plan={"expected_completion_fraction": 1}))
    whole = {(x["job"], x["model"], x["run"]): x for x in whole}
    for r in rows:
        same = whole[(r["job"], r["model"], r["run"])]
        assert same["hours"] == same["hours_bound"] == r["hours_bound"]
        assert same["generated_tokens"] == same["generated_tokens_bound"] == r["generated_tokens_bound"]


def test_runtime_and_submissions_come_from_the_expected_hours(grid):
    config, rows = grid
    factor, limit = config["plan"]["safety_factor"], config["plan"]["max_runtime_minutes"]
    r = _row(rows, "qwen7b")
    assert r["submissions"] == math.ceil(r["hours"] * 60 * factor / limit) == 2
    assert math.ceil(r["hours_bound"] * 60 * factor / limit) == 5  # what the bound would ask for
    unlimited = _row(plan(_changed(config, plan={"max_runtime_minutes": 10**6})), "qwen7b")
    assert unlimited["runtime_min"] == pytest.approx(r["hours"] * 60 * factor, abs=2) and unlimited["submissions"] == 1


def test_checkpoints_size_time_and_count_per_job(grid):
    config, rows = grid
    shape = model_shape(json.loads(shipped_config_path("Qwen/Qwen2.5-Math-7B").read_text()))
    r = _row(rows, "qwen7b")
    assert r["checkpoint_gb"] == round(14 * shape.params / 1e9, 2)  # bf16 weights + fp32 masters + 2 moments
    assert r["checkpoint_min"] == round(14 * shape.params / 1e9 / 60, 2)  # at 1 GB/s
    fast = _row(plan(_changed(config, plan={"checkpoint_write_gbs": 2.0})), "qwen7b")
    assert fast["checkpoint_min"] == round(7 * shape.params / 1e9 / 60, 2)
    # every 100 steps alone: one every 100 x ~24 min; every 720 minutes too: one every 30 steps
    steps_only = _row(plan(_changed(config, qwen7b={"checkpoint_every_minutes": 0})), "qwen7b")
    period = 100 * steps_only["minutes_per_step"] + r["checkpoint_min"]
    assert steps_only["checkpoints_per_job"] == 10080 // period == 4
    assert r["checkpoints_per_job"] == 13
    rare = plan(_changed(config, qwen7b={"checkpoint_every_minutes": 0, "checkpoint_every": 500}))
    assert _row(rare, "qwen7b")["checkpoints_per_job"] == 0
    said = [n for n in notes(rare, config["plan"]) if "checkpoint(s) per job" in n]
    assert len(said) == 1 and said[0].startswith("train qwen7b (13 job(s)) writes 0 checkpoint(s) per job of 10080 min")
    assert not [n for n in notes(rows, config["plan"]) if "checkpoint(s) per job" in n]


def test_the_paper_grid_writes_several_checkpoints_per_job(grid):
    """config/grid.yaml's checkpoint_every_minutes: every train job of the paper grid writes at least 4."""
    _, rows = grid
    few = [(r["model"], r["run"], r["checkpoints_per_job"]) for r in rows
           if r["job"] == "train" and r["checkpoints_per_job"] < 4]
    assert not few


def test_host_memory_counts_the_grading_workers(grid):
    config, rows = grid
    per_worker = capacity.GRADING_WORKER_BYTES / 1e9
    base = _row(rows, "qwen7b")  # grading_workers null: plan.train_cpus (32) / 4 ranks = 8 per rank
    none = _row(plan(_changed(config, qwen7b={"grading_workers": 0})), "qwen7b")
    many = _row(plan(_changed(config, qwen7b={"grading_workers": 16})), "qwen7b")
    assert base["host_gb"] - none["host_gb"] == pytest.approx(4 * 8 * per_worker, abs=0.02)
    assert many["host_gb"] - none["host_gb"] == pytest.approx(4 * 16 * per_worker, abs=0.02)
    assert none["mem_mb"] < base["mem_mb"] < many["mem_mb"]


def test_train_cpus_is_the_slurm_profiles():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    default = schema["properties"]["plan"]["properties"]["train_cpus"]["default"]
    assert default == profile["set-resources"]["train"]["cpus_per_task"]


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
    train = planned[("train", "qwen1p5b", "beta2")]
    assert (asked["train"]["runtime"], asked["train"]["mem_mb"]) == (train["runtime_min"], train["mem_mb"])
    # one sample job per checkpoint runs every benchmark: their minutes add up, the largest memory counts
    benches = [planned[("sample", "qwen1p5b", bench)] for bench in config["benchmarks"]]
    assert len(benches) == 6
    minutes = min(config["plan"]["max_runtime_minutes"], sum(r["runtime_min"] for r in benches))
    assert (asked["sample"]["runtime"], asked["sample"]["mem_mb"]) == (minutes, max(r["mem_mb"] for r in benches))
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


@pytest.fixture(scope="module")
def calibration():
    config = load_workflow_config([str(REPO / "config" / "calibrate.yaml")])
    return config, plan(config)


def test_the_calibration_prices_each_regime_with_its_own_max_tokens(calibration, grid):
    """config/calibrate.yaml: one sampling row per model x regime x benchmark, each a single base cell
    capped at its regime's max_tokens (max: the context, the smaller of models.<key>.context_length and
    config.json's max_position_embeddings, minus plan.prompt_tokens); a grid without regimes has none."""
    config, rows = calibration
    assert all(r["job"] == "sample" and r["fits"] and r["jobs"] == 1 for r in rows)
    assert len(rows) == 5 * 16 * 6 and {r["regime"] for r in rows} == set(config["regimes"])
    assert {r["regime"] for r in grid[1]} == {"-"}
    prompt = config["plan"]["prompt_tokens"]
    context = {"qwen1p5b": 4096, "qwen7b": 4096, "qwen25_7b": 32768, "qwen3_4b": 32768, "llama8b": 131072}
    problems = {key: bench["problems"] for key, bench in config["benchmarks"].items()}
    for r in rows:
        cap = 3072 if config["regimes"][r["regime"]]["max_tokens"] == 3072 else context[r["model"]] - prompt
        assert r["generated_tokens_bound"] == 32 * problems[r["run"]] * cap, r
    hours: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["model"], str(config["regimes"][r["regime"]]["max_tokens"]))
        hours[key] = hours.get(key, 0.0) + r["gpu_hours"]
    for model in context:  # temperature, top-p and template do not change the price, the cap does
        same = {round(sum(r["gpu_hours"] for r in rows if (r["model"], r["regime"]) == (model, name)), 2)
                for name, regime in config["regimes"].items() if regime["max_tokens"] == 3072}
        assert len(same) == 1
    for model in ("qwen1p5b", "qwen7b"):  # a 4096-token context: max = 4096 - 1024 = 3072 at the plan's prompt
        assert hours[(model, "max")] == pytest.approx(hours[(model, "3072")], abs=0.05)
    for model in ("qwen25_7b", "qwen3_4b", "llama8b"):
        assert hours[(model, "max")] > 10 * hours[(model, "3072")]


def test_a_regime_sample_job_asks_slurm_for_its_own_plan(tmp_path, calibration):
    from rsgrpo.plan.plan import resources, sample_key

    config, rows = calibration
    planned = resources(rows, config["plan"]["max_runtime_minutes"])
    assert sample_key("llama8b") == ("sample", "llama8b", "*")
    assert sample_key("llama8b", "t1_p1_plain_max") == ("sample", "llama8b", "*@t1_p1_plain_max")
    short = planned[sample_key("qwen3_4b", "t06_p095_chat_3072")]
    long = planned[sample_key("qwen3_4b", "t06_p095_chat_max")]
    assert short["runtime"] < long["runtime"]
    proc = snakemake(copy_workflow(tmp_path / "wf"), "-n", "results/qwen3_4b/base-regime-t06_p095_chat_max/passk.csv",
                     "--configfile", "config/calibrate.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    asked = dry_run_resources(proc.stdout)["sample"]
    assert (asked["runtime"], asked["mem_mb"]) == (long["runtime"], long["mem_mb"])


def test_the_extensions_overlay_plans_each_method_with_its_training_keys(grid):
    """config/extensions.yaml over config/grid.yaml: every new cell fits its GPUs; W-REINFORCE trains
    without dynamic sampling, so it generates one round per step (no refill) and trains as many tokens;
    a cell the paper grid has too is planned as there; and the plan checks every cell's train config, so a
    W-REINFORCE method left with dynamic sampling on is refused before any job runs."""
    import copy

    config = load_workflow_config([str(REPO / "config/grid.yaml"), str(REPO / "config/extensions.yaml")])
    rows = plan(config)
    assert misfits(rows) == []
    train = {(r["model"], r["run"]): r for r in rows if r["job"] == "train"}
    assert len(train) == 26
    nsr, mle = train[("qwen1p5b", "w_reinforce")], train[("qwen1p5b", "max_rl")]
    assert nsr["generated_tokens"] * config["plan"]["gen_rounds"] == mle["generated_tokens"]
    assert nsr["trained_tokens"] == mle["trained_tokens"] and nsr["hours"] < mle["hours"]
    paper = {(r["model"], r["run"]): r for r in grid[1] if r["job"] == "train"}
    for shared in [("qwen1p5b", "beta2"), ("qwen1p5b", "beta8"), ("llama8b", "grpo")]:
        assert train[shared] == paper[shared]
    broken = copy.deepcopy(config)
    del broken["methods"]["w_reinforce"]["training"]
    with pytest.raises(ValueError, match="'dynamic_sampling'.*no group baseline"):
        plan(broken)


# ------------------------------------------------------------------------------------------------
# LoRA cells and the comparison with full fine-tuning
# ------------------------------------------------------------------------------------------------
LORA_COLUMNS = ["model", "params_b", "gpus", "zero_stage", "gpu_memory_gb", "lora", "lora_from", "adapter_params_m",
                "full_run", "lora_run", "full_states_gb", "lora_states_gb", "full_gb_per_gpu", "lora_gb_per_gpu",
                "full_engine_gb", "lora_engine_gb", "full_fits", "lora_fits", "full_gpus_needed", "lora_gpus_needed",
                "full_gpu_hours", "lora_gpu_hours", "full_checkpoint_gb", "lora_checkpoint_gb"]
LORA_OVERLAY = {  # one full fine-tuning sweep (qwen1p5b) and one LoRA sweep (qwen7b: LoRA cells only)
    "methods": {"grpo_lora": {"estimator": "grpo", "params": {"scale": "std"}, "label": "GRPO (LoRA)",
                              "training": {"lora": {"rank": 8, "target_modules": ["q_proj", "v_proj"]}}}},
    "sweeps": [{"name": "full", "models": ["qwen1p5b"], "methods": ["base", "grpo"]},
               {"name": "lora", "models": ["qwen7b"], "methods": ["base", "grpo_lora"]}]}


@pytest.fixture(scope="module")
def grid_comparison(grid):
    from rsgrpo.plan.lora_comparison import lora_comparison

    return lora_comparison(grid[0])


def test_the_comparison_has_a_row_per_grid_model_at_loras_defaults(grid, grid_comparison):
    """config/grid.yaml has no LoRA cell: every model's first cell against itself with
    rsgrpo.train.config_lora.DEFAULTS (rank 16, all-linear); the full side is the plan's own row."""
    from rsgrpo.capacity_lora import Lora, adapter_params
    from rsgrpo.plan.lora_comparison import LORA_COLUMNS as COLUMNS

    config, rows = grid
    assert COLUMNS == LORA_COLUMNS
    assert [r["model"] for r in grid_comparison] == list(config["models"])
    assert all(list(r) == LORA_COLUMNS for r in grid_comparison)
    assert all(r["lora"] == "-" for r in rows)  # the paper grid trains every weight
    for r in grid_comparison:
        model = config["models"][r["model"]]
        shape = model_shape(json.loads(shipped_config_path(model["spec"]["id"]).read_text()))
        planned = _row(rows, r["model"], r["full_run"])
        assert r["lora"] == "rank 16, all-linear" and r["lora_from"] == "defaults" and r["full_run"] == r["lora_run"]
        assert r["adapter_params_m"] == round(adapter_params(shape, Lora(16)) / 1e6, 2)
        assert r["full_gpu_hours"] == planned["gpu_hours"] and r["full_checkpoint_gb"] == planned["checkpoint_gb"]
        assert r["full_engine_gb"] == planned["engine_gb"] and r["gpus"] == planned["gpus"] == model["gpus"]
        assert r["full_states_gb"] == pytest.approx(sum(planned[f"{c}_gb"] for c in
                                                        ("weights", "gradients", "master_weights", "optimizer")),
                                                    abs=0.03)
        # LoRA: the bf16 base and the adapters' 20 bytes each (plus ZeRO-3's gathered layer), far below
        assert r["lora_states_gb"] < r["full_states_gb"] / 4 and r["lora_gb_per_gpu"] < r["full_gb_per_gpu"]
        assert r["lora_engine_gb"] > r["full_engine_gb"] and r["lora_gpu_hours"] < r["full_gpu_hours"]
        assert r["lora_checkpoint_gb"] < r["full_checkpoint_gb"] / 6 and r["full_fits"] and r["lora_fits"]
        assert r["lora_gpus_needed"] == 1 <= r["full_gpus_needed"] <= r["gpus"]
    qwen7b = next(r for r in grid_comparison if r["model"] == "qwen7b")
    # full fine-tuning at ZeRO-3: 2 GPUs hold 4 x 0.55B gathered + 18 x 7.6B / 2 = 70.7 GB of states, which
    # with the 6 GB margin leaves less than the engine's smallest share (4 GB of 80); 3 GPUs leave 26 GB
    assert qwen7b["full_gpus_needed"] == 3
    shape = model_shape(json.loads(shipped_config_path("Qwen/Qwen2.5-Math-7B").read_text()))
    a = adapter_params(shape, Lora(16))
    # ZeRO-3 on 4: the gathered embedding and a quarter of the bf16 base and adapters; the largest adapter's
    # bf16 gradient gathered ([16, 18944]) and a quarter of the adapters' fp32 gradients, masters and moments
    assert qwen7b["lora_states_gb"] == round((2 * shape.largest_layer + 2 * (shape.params + a) / 4
                                             + 2 * 16 * shape.intermediate + (4 + 4 + 8) * a / 4) / 1e9, 2) == 5.08


def test_lora_cells_are_planned_with_their_adapters_and_lead_the_comparison(tmp_path):
    """A config whose qwen7b trains only with LoRA (rank 8 on q_proj and v_proj): its plan rows price
    the frozen base and the adapters; the comparison prices that cell against itself with lora null,
    and qwen1p5b (full fine-tuning only) with qwen7b's lora block."""
    from rsgrpo.capacity_lora import Lora, adapter_params
    from rsgrpo.plan.lora_comparison import lora_comparison

    overlay = tmp_path / "lora.yaml"
    overlay.write_text(yaml.safe_dump(LORA_OVERLAY))
    config = load_workflow_config([str(REPO / "config" / "grid.yaml"), str(overlay)])
    rows = plan(config)
    assert misfits(rows) == []
    lora_row, full_row = _row(rows, "qwen7b", "grpo_lora"), _row(rows, "qwen1p5b", "grpo")
    assert lora_row["lora"] == "rank 8, q_proj+v_proj" and full_row["lora"] == "-"
    shape = model_shape(json.loads(shipped_config_path("Qwen/Qwen2.5-Math-7B").read_text()))
    lora = Lora(rank=8, targets=("q_proj", "v_proj"))
    a = adapter_params(shape, lora)
    assert a == 8 * 28 * ((3584 + 3584) + (3584 + 512))  # q: 3584 -> 28 x 128, v: 3584 -> 4 x 128
    assert lora_row["gradients_gb"] == round((2 * 8 * 3584 + 4 * a / 4) / 1e9, 2)
    assert lora_row["master_weights_gb"] == round(a / 1e9, 2) and lora_row["optimizer_gb"] == round(2 * a / 1e9, 2)
    assert lora_row["checkpoint_gb"] == round((2 * shape.params + 12 * a) / 1e9, 2)
    comparison = {r["model"]: r for r in lora_comparison(config)}
    assert list(comparison) == ["qwen1p5b", "qwen7b"]  # the models that train
    assert comparison["qwen7b"]["lora_from"] == comparison["qwen1p5b"]["lora_from"] == "qwen7b/grpo_lora"
    assert comparison["qwen7b"]["full_run"] == comparison["qwen7b"]["lora_run"] == "grpo_lora"
    assert comparison["qwen1p5b"]["lora"] == comparison["qwen7b"]["lora"] == "rank 8, q_proj+v_proj"
    assert comparison["qwen7b"]["lora_gpu_hours"] == lora_row["gpu_hours"]
    assert comparison["qwen7b"]["full_checkpoint_gb"] == round(14 * shape.params / 1e9, 2)


def test_a_lora_target_the_model_lacks_is_refused_naming_the_cell(tmp_path):
    overlay = tmp_path / "lora.yaml"
    broken = json.loads(json.dumps(LORA_OVERLAY))
    broken["methods"]["grpo_lora"]["training"]["lora"]["target_modules"] = ["q_proj", "c_attn"]
    overlay.write_text(yaml.safe_dump(broken))
    config = load_workflow_config([str(REPO / "config" / "grid.yaml"), str(overlay)])
    with pytest.raises(ValueError, match=r"plan: qwen7b/grpo_lora: lora\.target_modules: 'c_attn' matches no linear"):
        plan(config)


def test_plan_verb_writes_the_comparison_as_csv_and_markdown(tmp_path, capsys):
    csv_path, md_path = tmp_path / "lora_vs_full.csv", tmp_path / "lora_vs_full.md"
    assert cli.main(["plan", "--config", str(REPO / "config" / "grid.yaml"), "--lora-csv", str(csv_path),
                     "--lora-md", str(md_path)]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["model"] for r in rows] == ["qwen1p5b", "qwen7b", "qwen25_7b", "qwen3_4b", "llama8b"]
    assert list(rows[0]) == LORA_COLUMNS
    md = md_path.read_text()
    assert md.startswith("## LoRA vs full fine-tuning, per model") and md.count("\n| qwen") == 4
    assert "full_gb_per_gpu | lora_gb_per_gpu" in md and "full_gpus_needed | lora_gpus_needed" in md
    assert "## LoRA vs full fine-tuning, per model" in capsys.readouterr().out
    from rsgrpo.layout import LAYOUT

    assert LAYOUT.lora_vs_full("md") == "results/plan/lora_vs_full.md"
