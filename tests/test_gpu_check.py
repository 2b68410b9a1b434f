"""scripts/gpu_check.py: its checks' judgments, the configs it trains with, the reward that makes a random
model's gradients non-zero, the --cpu dry run end to end (transformers engine, tiny model), and the
one-GPU profile (profiles/gpu-local) that runs config/gpu-smoke.yaml."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from script_loading import load_script

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "config" / "gpu-smoke.yaml"
PROFILE = ROOT / "profiles" / "gpu-local" / "config.yaml"


GC = load_script("gpu_check")


def _rows(*k3, grad=(0.8, 0.9, 1.1), reward=(0.5, 0.4, 0.6)):
    return [{"step": str(i + 1), "grad_norm": str(grad[i]), "reward_mean": str(reward[i]),
             "adv_abs_correct": "0.5", "adv_abs_wrong": "0.5", "mismatch_k3": str(k3[i]),
             "mismatch_abs_max": "0.01"} for i in range(len(k3))]


WEIGHTS = {"tensors": 10, "changed": 9, "max_delta": 1e-3, "finite": True}


# ------------------------------------------------------------------------------------------------
# the reward, the arguments, the configs
# ------------------------------------------------------------------------------------------------
def test_the_reward_varies_on_random_text_so_groups_carry_signal():
    rng = random.Random(0)
    texts = ["".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randrange(0, 50))) for _ in range(800)]
    values = GC.parity_reward(completions=texts, answers=[""] * 800, problems=[""] * 800, records=[{}] * 800)
    assert set(values) == {0.0, 1.0} and 0.4 < sum(values) / len(values) < 0.6
    groups = [values[i:i + 8] for i in range(0, 800, 8)]
    assert sum(max(g) > min(g) for g in groups) >= 95  # all but ~2 / 2**8 of the groups of 8
    GC.register_reward()
    GC.register_reward()  # once per process, however often it is asked
    from rsgrpo.train import rewards

    out = rewards.compute(GC.REWARD, completions=["ab", "b", ""], answers=[""] * 3, problems=[""] * 3, records=[{}] * 3)
    assert out.values == [0.0, 1.0, 1.0] and rewards.solved_at(GC.REWARD) == 1.0  # 97 + 98 odd, 98 even, 0 even


def test_arguments_take_each_modes_sizes_unless_given():
    gpu, cpu = GC.parse_args([]), GC.parse_args(["--cpu", "--prompts", "6"])
    assert (gpu.layers, gpu.prompts, gpu.samples, gpu.max_new, gpu.timeout) == (4, 16, 8, None, 600)
    assert (cpu.layers, cpu.prompts, cpu.samples, cpu.max_new, cpu.micro) == (0, 6, 4, 8, 8)
    assert gpu.min_speed_ratio == 0.8 and gpu.stale_factor == 10.0 and gpu.work.endswith("perf/out/gpu-check")


def test_the_smoke_config_is_the_gpu_path_and_names_the_gpu_profile():
    text = SMOKE.read_text()
    config = yaml.safe_load(text)
    training = config["training"]
    assert training["precision"] == "bf16-mixed" and training["zero_stage"] in (1, 2, 3)
    assert training["engine"] == "vllm" and training["gradient_checkpointing"] is True
    assert "--profile profiles/gpu-local --configfile config/gpu-smoke.yaml" in text
    assert "or profiles/local" not in text and "scripts/gpu_check.py" in text
    smoke = GC.smoke_settings(SMOKE)
    assert smoke["spec"]["source"] == "random" and smoke["template"] == "plain"
    assert smoke["training"]["precision"] == "bf16-mixed" and "steps" not in smoke["training"]


@pytest.mark.parametrize("cpu", [False, True])
def test_each_runs_config_is_valid_and_trains_the_checked_path(tmp_path, cpu):
    from rsgrpo.train.config import from_dict

    GC.register_reward()
    args = GC.parse_args(["--cpu"] if cpu else [])
    smoke = GC.smoke_settings(SMOKE)
    specs = GC.worker_specs(args, smoke, model_dir="m", data="d.jsonl", work=tmp_path, bound=0.05)
    assert set(specs) == {"zero1", "zero3-killed", "zero3-resumed"}
    assert specs["zero3-killed"]["config"] == specs["zero3-resumed"]["config"]  # the restart is the same command
    assert specs["zero1"]["stale_step"] == 3 and specs["zero3-killed"]["hold_step"] == 3
    assert "hold_step" not in specs["zero3-resumed"] and specs["zero1"]["own_engine_copy"] is cpu
    for name, stage, bound in (("zero1", 1, 0.0), ("zero3-killed", 3, 0.05)):
        cfg = from_dict(dict(specs[name]["config"]), name)
        assert cfg.zero_stage == stage and cfg.precision == "bf16-mixed" and cfg.gradient_checkpointing
        assert cfg.mismatch_max_k3 == bound and cfg.reward_kind == GC.REWARD and not cfg.dynamic_sampling
        assert cfg.steps == 3 and cfg.engine == ("hf" if cpu else "vllm") and cfg.lr == args.lr
        assert cfg.max_new_tokens == (8 if cpu else 512)  # the smoke config's on GPU
    assert from_dict(dict(specs["zero3-killed"]["config"])).checkpoint_every == 2
    with pytest.raises(ValueError, match="zero1 or zero3"):
        GC.run_config("zero2", args, smoke, model_dir="m", data="d", run_dir="r", bound=0.05)


def test_layers_cut_the_random_model_and_nothing_else():
    spec = {"source": "random", "config": "Qwen/Qwen2.5-Math-1.5B", "seed": 0}
    assert GC.model_spec(spec, 4) == {**spec, "overrides": {"num_hidden_layers": 4}}
    assert GC.model_spec(spec, 0) == spec
    with pytest.raises(ValueError, match="--layers 0 or --model"):
        GC.model_spec({"source": "smollm2"}, 4)


# ------------------------------------------------------------------------------------------------
# the judgments
# ------------------------------------------------------------------------------------------------
def test_update_check_needs_gradients_varying_rewards_and_changed_weights():
    ok = GC.check_update("zero1_update", _rows(1e-4, 1e-4, 1e-2), WEIGHTS)
    assert ok.ok and ok.line().startswith("PASS zero1_update: 3 steps") and "9 of 10 weight tensors" in ok.text
    assert not GC.check_update("u", _rows(1e-4, 1e-4, 1e-2, grad=(0.8, 0.0, 1.0)), WEIGHTS).ok
    assert not GC.check_update("u", _rows(1e-4, 1e-4, 1e-2, grad=(0.8, float("nan"), 1.0)), WEIGHTS).ok
    flat = GC.check_update("u", _rows(1e-4, 1e-4, 1e-2, reward=(0.0, 0.5, 0.5)), WEIGHTS)
    assert not flat.ok and "rewards do not vary" in flat.text
    assert "no weight tensor changed" in GC.check_update("u", _rows(0, 0, 0), {**WEIGHTS, "changed": 0}).text
    assert "NaN" in GC.check_update("u", _rows(0, 0, 0), {**WEIGHTS, "finite": False}).text
    assert "no final checkpoint" in GC.check_update("u", _rows(0, 0, 0), None).text
    assert "expected 1..3" in GC.check_update("u", _rows(0, 0), WEIGHTS).text


def test_refresh_check_holds_each_named_step_to_the_bound():
    assert GC.check_refresh("zero1_refresh", _rows(1e-4, 2e-4, 0.3), 0.05, [2], "after one update").ok
    high = GC.check_refresh("zero3_refresh", _rows(1e-4, 2e-4, 0.3), 0.05, [2, 3], "x")
    assert not high.ok and high.text.startswith("step 3: k3 0.3 not within the bound 0.05")
    assert not GC.check_refresh("r", _rows(1e-4, float("nan"), 0), 0.05, [2], "x").ok
    rows = [{k: v for k, v in r.items() if not k.startswith("mismatch")} for r in _rows(0, 0, 0)]
    assert "no mismatch_k3 column" in GC.check_refresh("r", rows, 0.05, [2], "x").text


def test_stale_check_wants_the_stale_step_well_above_the_refreshed_ones():
    ok = GC.check_stale(_rows(1e-4, 2e-4, 3e-3), 0.05, 10.0)
    assert ok.ok and "15 x" in ok.text and "within the bound" in ok.text
    assert GC.check_stale(_rows(0.0, 0.0, 1e-6), 0.05, 10.0).ok  # exact agreement when refreshed (CPU)
    close = GC.check_stale(_rows(1e-4, 2e-4, 3e-4), 0.05, 10.0)
    assert not close.ok and "raise --lr" in close.text
    assert not GC.check_stale(_rows(1e-4, 2e-4, 3e-3), 0.05, 2.0, stale_pushed=False).ok
    assert not GC.check_stale(_rows(1e-4, 2e-4, float("nan")), 0.05, 2.0).ok


def test_speed_check_compares_with_raw_vllm_on_gpu_only():
    speed = {"ours_tokens": 1000, "ours_tokens_per_s": 900.0, "raw_tokens": 1000, "raw_tokens_per_s": 1000.0}
    assert GC.check_speed(speed, 0.8, cpu=False).ok and "ours / raw 0.90 >= 0.8" in GC.check_speed(speed, 0.8,
                                                                                                     cpu=False).text
    assert not GC.check_speed({**speed, "ours_tokens_per_s": 500.0}, 0.8, cpu=False).ok
    hf = {**speed, "raw_tokens": None, "raw_tokens_per_s": None, "engine": "hf"}
    assert GC.check_speed(hf, 0.8, cpu=True).ok and not GC.check_speed(hf, 0.8, cpu=False).ok
    assert not GC.check_speed(None, 0.8, cpu=True).ok


def test_memory_check_allows_the_plans_priced_total_plus_its_margin():
    plan = {"priced": 60e9, "margin": 6e9, "share": 0.4}
    run = {"plan": plan, "peak_bytes": 64e9, "peak_phase": "push", "baseline_bytes": 0.6e9}
    ok = GC.check_memory("zero1_memory", [run], cpu=False)
    assert ok.ok and "peak 64.00 GB used (push" in ok.text and "1.067 x priced, unpriced +4.00 GB" in ok.text
    assert not GC.check_memory("m", [{**run, "peak_bytes": 67e9}], cpu=False).ok
    assert GC.check_memory("m", [run, {**run, "peak_bytes": 70e9}], cpu=False).text.endswith("above the plan")
    assert "failed: KeyError" in GC.check_memory("m", [{"plan_error": "KeyError: x"}], cpu=False).text
    assert GC.check_memory("m", [{"plan": plan}], cpu=True).ok
    assert not GC.check_memory("m", [{"plan": plan}], cpu=False).ok  # a GPU run must measure


def test_linear_and_resume_checks():
    assert GC.check_linear([{"linear_untouched": True}, {"linear_untouched": True}]).ok
    assert not GC.check_linear([{"linear_untouched": True}, {"linear_untouched": False}]).ok
    assert not GC.check_linear([{}]).ok
    good = {"held": True, "killed_returncode": -signal.SIGKILL, "checkpoint_at_kill": 2, "start_step": 2,
            "metrics_steps": [1, 2, 3], "final_step": 3, "checkpoint_problems": [], "loaded_params": 1000,
            "seconds": 90.0}
    assert GC.check_resume(good).ok
    for change, fragment in (({"killed_returncode": 0}, "not SIGKILL"), ({"start_step": 0}, "began at step 0"),
                             ({"metrics_steps": [1, 2, 2, 3]}, "each of 1..3 once"),
                             ({"checkpoint_at_kill": 3}, "expected step 2"), ({"final_step": 2}, "final step 2"),
                             ({"checkpoint_problems": ["model.safetensors: size"]}, "final checkpoint: model"),
                             ({"held": False, "held_error": "boom"}, "never reached step 3's update (boom)")):
        bad = GC.check_resume({**good, **change})
        assert not bad.ok and fragment in bad.text, (change, bad.text)


def test_one_failure_fails_the_whole_check():
    checks = [GC.Check("a", True, "x"), GC.Check("b", False, "y")]
    assert [c.line() for c in checks] == ["PASS a: x", "FAIL b: y"]
    assert GC.exit_code(checks) == 1 and GC.exit_code(checks[:1]) == 0 and GC.exit_code([]) == 1
    assert [c.line() for c in GC.failed(["p", "q"], "worker died")] == ["FAIL p: worker died", "FAIL q: worker died"]


# ------------------------------------------------------------------------------------------------
# the script end to end
# ------------------------------------------------------------------------------------------------
def _run(*args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_gpu(), reason="this machine has a GPU: the script would run the real check")
def test_without_a_gpu_it_says_so_and_exits_2(tmp_path):
    proc = _run("--work", str(tmp_path / "work"))
    assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
    assert "gpu_check: no GPU here" in proc.stdout and "--cpu" in proc.stdout
    assert not (tmp_path / "work").exists()


def test_cpu_dry_run_passes_every_check_with_one_line_each(tmp_path):
    """The whole sequence on CPU: both ZeRO stages train (gradients, changed weights), the refreshed
    engine matches the trainer and the stale one does not, the killed run resumes."""
    out = tmp_path / "report.json"
    proc = _run("--cpu", "--work", str(tmp_path / "work"), "--json", str(out))
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("PASS ", "FAIL "))]
    assert [line.split(":")[0].split()[1] for line in lines] == GC.CHECKS, proc.stdout
    assert proc.returncode == 0 and all(line.startswith("PASS") for line in lines), proc.stdout + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert all(c["ok"] for c in report["checks"].values()) and report["zero3"]["start_step"] == 2
    assert "--cpu dry run" in report["checks"]["zero1_memory"]["text"]
    assert report["zero1"]["stale_pushed"] is True and report["zero1"]["plan"]["priced"] > 0
    assert (tmp_path / "work" / "logs" / "zero3-resumed.log").read_text().count("resuming from") == 1
    assert math.isfinite(report["zero1"]["speed"]["ours_tokens_per_s"])


# ------------------------------------------------------------------------------------------------
# the one-GPU profile
# ------------------------------------------------------------------------------------------------
def test_the_gpu_profile_runs_gpu_jobs_one_at_a_time(tmp_path):
    """profiles/gpu-local holds a pool of one GPU: two jobs of resources gpu=1 run one after the other
    (Snakemake scales a request down to the pool rather than refusing it, so a pool of 0 would let
    them run together)."""
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["resources"] == ["gpu=1"] and profile["cores"] == "all"
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "gpu-local").mkdir()
    (tmp_path / "profiles" / "gpu-local" / "config.yaml").write_text(PROFILE.read_text())
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: "a.txt", "b.txt"\n\n'
        'rule gpu_job:\n    output: "{x}.txt"\n    resources: gpu=1\n'
        '    shell: "date +%s.%N > {output}; sleep 1; date +%s.%N >> {output}"\n')
    from snakemake_helpers import snakemake

    proc = snakemake(tmp_path, "--profile", "profiles/gpu-local", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (a0, a1), (b0, b1) = ([float(x) for x in (tmp_path / f"{n}.txt").read_text().split()] for n in "ab")
    assert a1 <= b0 or b1 <= a0  # never both at once


def test_the_gpu_profile_schedules_the_smoke_config(tmp_path):
    from snakemake_helpers import copy_workflow, job_counts, snakemake

    proc = snakemake(copy_workflow(tmp_path / "wf"), "all", "-n", "--profile", "profiles/gpu-local", "--configfile",
                     "config/gpu-smoke.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_counts(proc.stdout + proc.stderr)["train"] == 2
    models = yaml.safe_load(SMOKE.read_text())["models"]
    assert all(model["gpus"] == 1 for model in models.values())  # what a pool of one GPU serves
