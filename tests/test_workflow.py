"""The Snakemake workflow: lint, DAG shape, config validation, and a real run on a tiny config."""

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake_helpers import PRELOADED, REPO, copy_workflow, job_counts, snakemake, write_config

from rsgrpo.grading import extract_answer
from rsgrpo.train import checkpoint as ckpt

TINY_CONFIG = REPO / "tests/fixtures/workflow/tiny.yaml"
TINY = yaml.safe_load(TINY_CONFIG.read_text())


def test_lint_is_clean():
    out = snakemake(REPO, "--lint")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Congratulations, your workflow is in a good condition!" in out.stdout + out.stderr


PAPER_COUNTS = {
    "all": 1, "bandit": 1, "plan": 1, "plot_advantages": 1, "cell_index": 1, "aggregate": 1, "figures": 1,
    "prepare_model": 5,  # one per model
    "prepare_data": 9,  # 3 train sets + 6 benchmarks
    "train": 27,  # 32 cells minus 5 shared base models
    "score": 64,  # 32 final evaluations + 8 ablation cells x 4 intermediate checkpoints
    "sample": 64,  # one per evaluation: 6 benchmarks with one engine
}


def test_paper_grid_dry_run_job_counts(tmp_path):
    out = snakemake(copy_workflow(tmp_path), "-n")
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout + out.stderr) == PAPER_COUNTS


EXTENSIONS_COUNTS = {
    "all": 1, "bandit": 1, "plan": 1, "plot_advantages": 1, "cell_index": 1, "aggregate": 1, "figures": 1,
    "prepare_model": 4,  # qwen1p5b, qwen7b, qwen3_4b, llama8b
    "prepare_data": 8,  # deepmath103k, math12k + 6 benchmarks
    # 8 methods on qwen1p5b, 5 on each of 3 math12k models, RS-GRPO at beta 8, 32 and 128 (beta 2 and MaxRL
    # are the first sweep's cells)
    "train": 26,
    "sample": 50,  # 4 base + 26 final + 5 beta-to-max-rl cells x 4 intermediate steps
    "score": 50,
}


def test_extensions_overlay_dry_run(tmp_path):
    """config/extensions.yaml over config/grid.yaml: the new methods as sweeps of the paper's models and
    data; a method's `training` keys reach its cells' train commands (and only theirs), and a cell the
    paper grid has too keeps its path and its command."""
    wf = copy_workflow(tmp_path)
    both = ("--configfile", "config/grid.yaml", "config/extensions.yaml")
    out = snakemake(wf, "-n", *both)
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout + out.stderr) == EXTENSIONS_COUNTS
    targets = [f"results/qwen1p5b/{run}/metrics.csv" for run in
               ("gspo", "cispo", "dr_grpo", "w_reinforce", "beta2")]
    out = snakemake(wf, "-n", "-p", *targets, *both)
    assert out.returncode == 0, out.stderr
    text = out.stdout.replace("'", "")
    commands = {run: next(line for line in text.splitlines() if "python -m rsgrpo train" in line
                          and f"--run-dir runs/qwen1p5b/{run} " in line) for run in
                ("gspo", "cispo", "dr_grpo", "w_reinforce", "beta2")}
    assert '--set=policy_loss="gspo" --set=loss_agg="seq-mean-token-mean"' in commands["gspo"]
    assert '--set=policy_loss="cispo"' in commands["cispo"] and "loss_agg" not in commands["cispo"]
    assert '--set=loss_agg="seq-mean-token-sum-norm"' in commands["dr_grpo"]
    assert '--set=estimator_params={"scale": "none"}' in commands["dr_grpo"]
    assert "--set=dynamic_sampling=false" in commands["w_reinforce"]
    assert '--set=estimator_params={"positive_advantage_weight": 0.1}' in commands["w_reinforce"]
    for key in ("policy_loss", "loss_agg", "dynamic_sampling"):
        assert key not in commands["beta2"]
    paper = snakemake(wf, "-n", "-p", targets[-1])
    assert commands["beta2"] in paper.stdout.replace("'", "")  # the paper grid's cell, unchanged


LORA_COUNTS = dict(
    PAPER_COUNTS,
    train=56,  # the paper's 27 trained cells, their 27 LoRA twins (rank 32) and GRPO / RS-GRPO at rank 1
    sample=125,  # the paper's 64 + 27 LoRA finals + 8 LoRA ablation cells x 4 intermediate steps + 2 rank 1
    score=125,
)


def _merged(*files: str) -> dict:
    """The workflow config of ``--configfile`` FILES, merged as Snakemake merges them: mappings key by
    key, anything else replaced."""
    def merge(base, over):
        if isinstance(base, dict) and isinstance(over, dict):
            return {**base, **{k: merge(base[k], v) if k in base else v for k, v in over.items()}}
        return over

    out: dict = {}
    for name in files:
        out = merge(out, yaml.safe_load((REPO / name).read_text()))
    return out


def _train_commands(output: str) -> dict[str, list[str]]:
    """{run dir: the argv of its ``python -m rsgrpo train`` (up to the log redirection)} from ``snakemake -n -p``."""
    import shlex

    commands = {}
    for line in output.splitlines():
        if "python -m rsgrpo train" in line:
            argv = shlex.split(line[line.index("python -m rsgrpo train"):])
            argv = argv[: argv.index(">")]
            commands[argv[argv.index("--run-dir") + 1]] = argv
    return commands


def train_config(argv: list[str]):
    """The TrainConfig a train command's ``--set=`` arguments give, parsed as the train verb parses them."""
    from rsgrpo.train.config import load_config

    return load_config(None, [a.removeprefix("--set=") for a in argv if a.startswith("--set=")])


def test_lora_overlay_dry_run(tmp_path):
    """config/lora.yaml over config/grid.yaml: every trained cell of the paper grid once more with LoRA
    (and GRPO / RS-GRPO at rank 1). Each LoRA cell's train command carries the lora block and the LoRA lr
    (10x full fine-tuning's) and parses, as the train verb parses it, into a valid TrainConfig that differs
    from its full fine-tuning twin's in those two keys only; the full fine-tuning cells keep their paths and
    their commands, and carry no lora."""
    from rsgrpo import grid as G
    from rsgrpo.layout import LAYOUT
    from rsgrpo.train.config import to_dict
    from rsgrpo.train.config_lora import DEFAULTS

    files = ("config/grid.yaml", "config/lora.yaml")
    both = ("--configfile", *files)
    lint = snakemake(REPO, "--lint", *both)  # as `make lint`
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr
    wf = copy_workflow(tmp_path)
    out = snakemake(wf, "-n", *both)
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout + out.stderr) == LORA_COUNTS

    paper_cfg, config = _merged(files[0]), _merged(*files)
    assert config["sweeps"][: len(paper_cfg["sweeps"])] == paper_cfg["sweeps"]  # the paper's sweeps, unchanged
    methods = config["methods"]

    def lora_of(cell):
        return methods[cell.method].get("training", {}).get("lora")

    def twin(cell):  # the full fine-tuning cell a LoRA cell mirrors: grpo_lora, grpo_lora_r1 -> grpo
        method = cell.method.split("_lora")[0]
        return G.run_segment(config["models"][cell.model], cell.train_set, method, cell.beta)

    paper = [c for c in G.expand(paper_cfg) if not c.is_base]
    steps = {c.id: c.eval_steps for c in paper}
    trained = [c for c in G.expand(config) if not c.is_base]
    lora_cells = [c for c in trained if lora_of(c) is not None]
    assert {c.id for c in trained if lora_of(c) is None} == {c.id for c in paper}
    assert len(lora_cells) == 29 and all(c.method.split("_lora")[0] in paper_cfg["methods"] for c in lora_cells)
    mirrored = {(c.model, twin(c), c.eval_steps) for c in lora_cells if c.method.endswith("_lora")}
    assert mirrored == {(c.model, c.run, c.eval_steps) for c in paper}  # every paper cell, at its steps

    def metrics(cells):
        return [LAYOUT.metrics(LAYOUT.cell_dir(c.id)) for c in cells]

    out = snakemake(wf, "-n", "-p", *metrics(trained), *both)
    assert out.returncode == 0, out.stderr
    commands = _train_commands(out.stdout)
    paper_out = snakemake(wf, "-n", "-p", *metrics(paper))  # the paper grid alone (the default config)
    assert paper_out.returncode == 0, paper_out.stderr
    paper_commands = _train_commands(paper_out.stdout)
    assert len(commands) == len(trained) and len(paper_commands) == len(paper)

    for cell in trained:
        argv = commands[LAYOUT.run_dir(cell.id)]
        cfg = train_config(argv)
        block = lora_of(cell)
        if block is None:
            assert argv == paper_commands[LAYOUT.run_dir(cell.id)], cell.id
            assert cfg.lora is None and not any("lora" in a for a in argv), cell.id
            continue
        lr = methods[cell.method]["training"]["lr"]
        assert lr == pytest.approx(10 * paper_cfg["training"]["lr"])  # docs/training.md: LoRA lr ~ 10x
        assert f"--set=lora={json.dumps(block)}" in argv and f"--set=lr={json.dumps(lr)}" in argv, cell.id
        assert cfg.lora == {**DEFAULTS, **block} and cfg.lr == lr, cell.id
        full_argv = paper_commands[LAYOUT.run_dir(f"{cell.model}/{twin(cell)}")]
        full = to_dict(train_config(full_argv))
        # keep_last follows the evaluated steps: the rank-1 cells evaluate only the final one
        same_steps = steps[f"{cell.model}/{twin(cell)}"] == cell.eval_steps
        assert {k: v for k, v in to_dict(cfg).items() if full[k] != v and (same_steps or k != "keep_last")} == {
            "lora": cfg.lora, "lr": lr}, cell.id
        assert argv[argv.index("--nproc") + 1] == full_argv[full_argv.index("--nproc") + 1], cell.id


def test_demo_lora_overlay_dry_run(tmp_path):
    """config/demo-lora.yaml over config/demo.yaml (`make demo-lora`): the demo's 12 trained cells unchanged
    and 6 LoRA cells (GRPO and RS-GRPO beta 4, 3 seeds), evaluated at the demo's steps, whose train commands
    carry the lora block and the LoRA lr and parse into valid TrainConfigs."""

    files = ("config/demo.yaml", "config/demo-lora.yaml")
    both = ("--configfile", *files)
    lint = snakemake(REPO, "--lint", *both)  # as `make lint`
    assert lint.returncode == 0, lint.stdout + lint.stderr
    wf = copy_workflow(tmp_path)
    out = snakemake(wf, "all", "-n", "-p", *both)
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout + out.stderr)
    assert (counts["train"], counts["sample"], counts["score"], counts["pretrain"]) == (18, 55, 55, 1)
    demo = snakemake(wf, "all", "-n", "-p", "--configfile", files[0])
    assert demo.returncode == 0, demo.stderr
    commands, demo_commands = _train_commands(out.stdout), _train_commands(demo.stdout)
    lora_runs = sorted(r for r in commands if "_lora" in r)
    assert lora_runs == [f"runs/adder/{m}-seed{s}" for m in ("grpo_lora", "rs_grpo_lora-beta4") for s in (0, 1, 2)]
    assert {r: commands[r] for r in commands if r not in lora_runs} == demo_commands  # the demo's, unchanged
    full_lr = train_config(demo_commands["runs/adder/grpo-seed0"]).lr
    for run in lora_runs:
        cfg = train_config(commands[run])
        assert cfg.lora == {"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "all-linear"}, run
        assert cfg.lr == pytest.approx(10 * full_lr), run
        assert cfg.estimator == ("rs_grpo" if "rs_grpo" in run else "grpo"), run


def test_single_cell_schedules_exactly_its_jobs(tmp_path):
    out = snakemake(copy_workflow(tmp_path), "-n", "-p", "results/qwen7b/beta4/passk.csv")
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout + out.stderr) == {
        "prepare_model": 1, "prepare_data": 7, "train": 1, "sample": 1, "score": 1}
    text = out.stdout + out.stderr
    assert "--set=estimator_params={\"beta\": 4.0}" in text.replace("'", "")
    assert "python -m rsgrpo train --nproc 4 " in text  # models.qwen7b.gpus: one rank per GPU
    assert "runs/qwen7b/beta4" in text and "models/qwen7b" in text


def test_base_evaluation_is_shared_by_every_cell_of_a_model(tmp_path):
    wf = copy_workflow(tmp_path)
    out = snakemake(wf, "-n", "results/qwen7b/beta4/passk.csv", "results/qwen7b/dapo17k/grpo/passk.csv",
                    "results/qwen7b/base/passk.csv")
    counts = job_counts(out.stdout + out.stderr)
    assert counts["prepare_model"] == 1 and counts["score"] == 3 and counts["train"] == 2


def test_adding_a_sweep_adds_exactly_the_expected_jobs(tmp_path):
    wf = copy_workflow(tmp_path)
    cfg = yaml.safe_load((REPO / "config/grid.yaml").read_text())
    cfg["sweeps"].append({"name": "extra", "models": ["qwen3_4b"], "methods": ["chen", "rs_grpo"], "betas": [1, 2]})
    out = snakemake(wf, "-n", "--configfile", str(write_config(tmp_path / "more.yaml", cfg)))
    counts = job_counts(out.stdout + out.stderr)
    # new cells: qwen3_4b/chen and qwen3_4b/beta1 (beta2 exists): 2 trainings, 2 samples, 2 scores
    expected = dict(PAPER_COUNTS, train=29, score=66, sample=66)
    assert counts == expected


def test_a_pretrain_model_is_built_by_the_pretrain_rule(tmp_path):
    wf = copy_workflow(tmp_path)
    cfg = yaml.safe_load((REPO / "config/demo-llm.yaml").read_text())
    cfg["models"]["synth"] = {"spec": {"source": "pretrain", "rare_frac": 0.1, "seed": 0}, "gpus": 0,
                              "train_set": "arithmetic", "template": "raw", "context_length": 512}
    config = str(write_config(tmp_path / "synth.yaml", cfg))
    out = snakemake(wf, "-n", "-p", "results/synth/base/passk.csv", "results/smollm2/base/passk.csv",
                    "--configfile", config)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert job_counts(text) == {"pretrain": 1, "prepare_model": 1, "prepare_data": 1, "sample": 2, "score": 2}
    assert "python -m rsgrpo pretrain --spec" in text and "--out models/synth" in text
    assert "--template raw" in text


def test_demo_config_dry_run(tmp_path):
    """The demo: one pretrained model, base + GRPO + RS-GRPO at 3 betas, 3 seeds each, 3 evaluated
    checkpoints per trained cell, 2 benchmarks (one per kind of problem); the real-LLM check as well."""
    wf = copy_workflow(tmp_path)
    out = snakemake(wf, "-n", "--configfile", "config/demo.yaml")
    assert out.returncode == 0, out.stderr
    trained, evaluations = 4 * 3, 1 + 4 * 3 * 3
    assert job_counts(out.stdout + out.stderr) == {
        "pretrain": 1, "prepare_data": 3, "train": trained, "sample": evaluations, "score": evaluations,
        "cell_index": 1, "aggregate": 1, "figures": 1, "plot_advantages": 1, "bandit": 1, "plan": 1, "all": 1}
    # the plan sizes sampling jobs from the prepared benchmarks: it waits for them, so plan.csv does not
    # depend on whether they happened to be prepared before it ran
    out = snakemake(wf, "-n", "results/plan/plan.csv", "--configfile", "config/demo.yaml")
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout + out.stderr) == {"prepare_data": 2, "plan": 1}
    out = snakemake(wf, "-n", "--configfile", "config/demo-llm.yaml")
    assert out.returncode == 0, out.stderr


CALIBRATE_COUNTS = {
    "all": 1, "bandit": 1, "plan": 1, "plot_advantages": 1, "cell_index": 1, "aggregate": 1, "figures": 1,
    "regime_comparison": 1,
    "prepare_model": 5,  # the paper grid's models
    "prepare_data": 6,  # its benchmarks; nothing is trained, so no train set is prepared
    "sample": 80,  # 5 base models x 16 regimes, each its own cell
    "score": 80,
}


def test_calibrate_config_dry_run(tmp_path):
    """config/calibrate.yaml: the paper grid's base models under 16 evaluation regimes, each its own
    sample and score job with its regime's arguments, then the comparison with the paper's base rows;
    the paper grid (no regimes) keeps its jobs (test_paper_grid_dry_run_job_counts) and commands."""
    wf = copy_workflow(tmp_path)
    out = snakemake(wf, "-n", "--configfile", "config/calibrate.yaml")
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout + out.stderr) == CALIBRATE_COUNTS
    out = snakemake(wf, "-n", "-p", "results/llama8b/base-regime-t1_p1_plain_max/samples/aime24.parquet",
                    "results/qwen7b/base-regime-t06_p095_chat_3072/samples/aime24.parquet",
                    "--configfile", "config/calibrate.yaml")
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert job_counts(text) == {"prepare_model": 2, "prepare_data": 6, "sample": 2}
    assert ("--temperature 1.0 --top-p 1.0 --max-tokens max --seed 0 --engine auto --template plain --batch-size 64"
            " --context-length 131072 --no-progress > logs/sample/llama8b/base-regime-t1_p1_plain_max.log") in text
    assert ("--temperature 0.6 --top-p 0.95 --max-tokens 3072 --seed 0 --engine auto --template chat --batch-size 64"
            " --no-progress > logs/sample/qwen7b/base-regime-t06_p095_chat_3072.log") in text
    assert "--n 32 32 32 32 32 32 " in text
    out = snakemake(wf, "-n", "-p", "results/qwen7b/base/samples/aime24.parquet")
    assert ("--n 32 1024 1024 1024 1024 1024 --temperature 0.6 --top-p 0.95 --max-tokens 3072 --seed 0 --engine auto"
            " --template plain --batch-size 64 --no-progress > logs/sample/qwen7b/base.log") in out.stdout + out.stderr


def test_calibrate_config_has_the_paper_grids_models_and_benchmarks():
    """Copied from config/grid.yaml (a config is complete in itself): the same models, training sets and
    benchmarks, only 32 samples per problem (pass@1 and pass@32 are what the comparison needs)."""
    grid, calibrate = (yaml.safe_load((REPO / f"config/{name}.yaml").read_text()) for name in ("grid", "calibrate"))
    assert calibrate["models"] == grid["models"] and calibrate["train_sets"] == grid["train_sets"]
    assert calibrate["benchmarks"].keys() == grid["benchmarks"].keys()
    for key, bench in calibrate["benchmarks"].items():
        assert {**bench, "n": None, "ks": None} == {**grid["benchmarks"][key], "n": None, "ks": None}, key
        assert bench["n"] == 32 and bench["ks"] == [1, 2, 4, 8, 16, 32]
    assert calibrate["methods"] == {"base": grid["methods"]["base"]}
    assert calibrate["evaluation"] == grid["evaluation"]


def test_a_regime_leaves_out_what_it_does_not_override(tmp_path):
    """The schema fills no default into a regime (its template refers to the models' one, which has a
    default): a key a regime leaves out keeps the evaluation's value and the model's template."""
    from rsgrpo.plan.plan import load_workflow_config

    base = yaml.safe_load((REPO / "config/calibrate.yaml").read_text())
    base["regimes"] = {"hot": {"temperature": 1.0}}
    base["sweeps"][0]["regimes"] = ["hot"]
    config = load_workflow_config([str(write_config(tmp_path / "one.yaml", base))])
    assert config["regimes"] == {"hot": {"temperature": 1.0}}


SCHEMA_ERRORS = [
    ({"bandit": {"betas": [-1]}}, "-1 is less than the minimum of 0"),
    ({"bandit": {"seeds": 0}}, "0 is less than the minimum of 1"),
    ({"bandit": {"betaz": [1]}}, "Additional properties are not allowed \\('betaz' was unexpected\\)"),
    ({"bandits": {}}, "'bandits' was unexpected"),
    ({"figures": {"advantage_betas": "2"}}, "'2' is not of type 'array'"),
    ({"models": {"m-1": {"spec": {"source": "tiny"}, "train_set": "t"}}}, "'m-1' does not match"),
    ({"benchmarks": {"b": {"spec": {"source": "local"}, "n": 0, "ks": [1]}}}, "0 is less than the minimum of 1"),
    ({"evaluation": {"top_p": 1.5}}, "1.5 is greater than the maximum of 1"),
    ({"sweeps": [{"models": ["m"]}]}, "'methods' is a required property"),
    ({"regimes": {"hot": {"temperature": -1}}}, "-1 is less than the minimum of 0"),
    ({"regimes": {"hot": {"max_tokens": "all"}}}, "'all' is not valid under any of the given schemas"),
    ({"regimes": {"hot": {"template": "fancy"}}}, "'fancy' is not one of \\['chat', 'plain', 'raw'\\]"),
]

# specs against the registries (rsgrpo.prepare.config_specs), checked before the cross-checks
SPEC_ERRORS = [
    ({"models": {"m": {"spec": {"source": "ftp"}, "train_set": "t"}}},
     "models\\.m\\.spec: spec\\.source must be one of the registered model sources \\['hub'"),
]

CROSS_CHECK_ERRORS = [
    ({"sweeps": [{"models": ["qwen9b"], "methods": ["grpo"]}]}, "sweeps\\[0\\].models\\[0\\]: unknown model 'qwen9b'"),
    ({"sweeps": [{"models": ["qwen7b"], "methods": ["grpo"], "betas": [2]}]},
     "none of the methods \\['grpo'\\] takes beta"),
    ({"benchmarks": {"math500": {"spec": {"source": "local", "path": "x.jsonl"}, "n": 8, "ks": [16]}}},
     "k=16 exceeds the 8 samples"),
    ({"methods": {"grpo": {"estimator": "grpo", "params": {"temperature": 1}}}},
     "estimator 'grpo' takes no parameter 'temperature'"),
    ({"sweeps": [{"models": ["qwen7b"], "methods": ["base"], "regimes": ["hot"]}]},
     "sweeps\\[0\\].regimes\\[0\\]: unknown regime 'hot' \\(known: none\\)"),
]


def _bad_config(tmp_path, config: dict) -> Path:
    base = yaml.safe_load((REPO / "config/grid.yaml").read_text())
    for key, value in config.items():  # replace whole sections, as a user editing a copy would
        base[key] = value
    return write_config(tmp_path / "bad.yaml", base)


@pytest.mark.parametrize("config, message", SCHEMA_ERRORS + SPEC_ERRORS + CROSS_CHECK_ERRORS)
def test_bad_config_rejected_with_its_message(tmp_path, config, message):
    """What workflow/rules/common.smk runs on a config (the schema's validate, the specs against the
    registries, then grid.expand), in process; the next test shows through Snakemake itself that it
    stops the run before any job."""
    from rsgrpo.plan.plan import load_workflow_config

    with pytest.raises(Exception, match=message):
        load_workflow_config([str(_bad_config(tmp_path, config))])


@pytest.mark.parametrize("config, message", [SCHEMA_ERRORS[5], SPEC_ERRORS[0], CROSS_CHECK_ERRORS[0]])
def test_bad_config_rejected_before_any_job(tmp_path, config, message):
    wf = copy_workflow(tmp_path)
    out = snakemake(wf, "-n", "--configfile", str(_bad_config(tmp_path, config)))
    assert out.returncode != 0
    assert re.search(message, out.stdout + out.stderr), out.stdout + out.stderr
    assert "Job stats" not in out.stdout + out.stderr  # rejected before scheduling anything


def test_duplicate_key_in_config_file_rejected(tmp_path):
    wf = copy_workflow(tmp_path)
    text = (REPO / "config/grid.yaml").read_text().replace("bandit:\n", "bandit:\n  seeds: 3\n", 1)
    (tmp_path / "dup.yaml").write_text(text)
    out = snakemake(wf, "-n", "--configfile", str(tmp_path / "dup.yaml"))
    assert out.returncode != 0 and "duplicate key 'seeds'" in out.stdout + out.stderr


def check_results(wf):
    """Every cell's outputs exist and agree with each other; return the cells table."""
    cells = pd.read_csv(wf / "results/aggregate/cells.csv", keep_default_na=False)
    assert sorted(cells.cell) == ["tiny/base", "tiny/beta2", "tiny/beta4", "tiny/grpo"]
    for _, cell in cells.iterrows():
        evals = [cell.passk.rsplit("/", 1)[0]]
        if cell.step_evals:
            evals = [e.split(":", 1)[1] for e in cell.step_evals.split(";")]
            manifest = json.loads((wf / "results" / cell.cell / "manifest.json").read_text())
            assert manifest["final_step"] == TINY["training"]["steps"]
            metrics = pd.read_csv(wf / cell.metrics)
            assert metrics.step.tolist() == [1, 2]
        for folder in evals:
            graded = pd.read_parquet(wf / folder / "graded.parquet")
            passk = pd.read_csv(wf / folder / "passk.csv")
            assert len(graded) == 4 * 4  # problems x samples
            assert [None if pd.isna(x) else x for x in graded.extracted] == [extract_answer(t) for t in graded.text]
            counts = graded.groupby("problem_id").correct.sum()
            for _, row in passk.iterrows():
                expected = sum(1 - math.comb(4 - int(c), row.k) / math.comb(4, row.k) for c in counts) / len(counts)
                assert row.pass_at_k == pytest.approx(expected)
    return cells


def test_real_run_on_tiny_config(tiny_local_run):
    """The whole DAG on CPU: prepare, train (2 steps), sample, score, aggregate, figures, report."""
    wf, config, env = tiny_local_run
    check_results(wf)
    df = pd.read_csv(wf / "results/bandit/bandit.csv")
    assert sorted(df.beta.unique()) == [0.0, 8.0] and len(df) == 2 * 2 * 10
    figures = [line.split("\t")[1] for line in (wf / "results/figures/results/figures.txt").read_text().splitlines()
               if not line.startswith("#")]
    assert {"passk_curves.png", "beta_ablation.png", "entropy.png", "transition_heatmap.png"} <= set(figures)
    assert "simulated in" in (wf / "logs/bandit.log").read_text()
    train_log = (wf / "logs/train/tiny/beta2.log").read_text()
    assert "launching 2 rank(s) per node" in train_log  # models.tiny.cpu_processes: 2
    state = ckpt.load_state(wf / "runs/tiny/beta2/checkpoints/step-000002")
    assert state["world_size"] == 2
    # only the newest checkpoint keeps the optimizer state (keep_resumable 1); step 1 is kept for
    # its evaluation as HF weights alone
    assert [s for s, _ in ckpt.resumable_checkpoints(wf / "runs/tiny/beta2")] == [2]
    assert not (wf / "runs/tiny/beta2/checkpoints/step-000001" / ckpt.RESUME_DIR).exists()
    # the run directory outlives the declared outputs: checkpoints of both steps are there
    assert sorted(p.name for p in (wf / "runs/tiny/beta2/checkpoints").iterdir()) == ["step-000001", "step-000002"]
    # nothing left to do afterwards
    again = snakemake(wf, "-n", "--configfile", str(config), env=env)
    assert "Nothing to be done" in again.stdout + again.stderr
    # the HTML report holds every figure and table, each with its caption
    report = snakemake(wf, "--configfile", str(config), "--report", "report.html", env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "ERROR/" not in report.stderr  # caption RST problems
    html = (wf / "report.html").read_text()
    for name in figures + ["bandit.png", "advantages.png", "table2.csv", "rsgrpo_vs_grpo.csv",
                           "published_comparison.csv"]:
        assert name in html, name


def test_a_calibration_runs_for_real_on_the_tiny_model(tmp_path):
    """The tiny model's base cell under two regimes, one filling the context (--max-tokens max): each is
    sampled with its own settings, and regime_comparison reads them (the tiny model has no published
    row, so its table is empty and says so)."""
    wf = copy_workflow(tmp_path / "wf")
    cfg = {k: v for k, v in TINY.items() if k not in ("training", "sweeps")}
    cfg["models"] = {"tiny": dict(TINY["models"]["tiny"], context_length=140)}
    cfg["methods"] = {"base": TINY["methods"]["base"]}
    cfg["regimes"] = {"short": {"temperature": 0.6, "max_tokens": 4},
                      "fill": {"temperature": 1.0, "top_p": 0.9, "max_tokens": "max"}}
    cfg["sweeps"] = [{"models": ["tiny"], "methods": ["base"], "regimes": ["short", "fill"]}]
    cfg["plan"] = {"prompt_tokens": 100}
    config = str(write_config(tmp_path / "calibrate-tiny.yaml", cfg))
    out = snakemake(wf, "--profile", "profiles/local", "--cores", "2", "results/aggregate/regime_comparison.csv",
                    "--configfile", config, program=PRELOADED)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    short = pd.read_parquet(wf / "results/tiny/base-regime-short/samples/arith_test.parquet")
    filled = pd.read_parquet(wf / "results/tiny/base-regime-fill/samples/arith_test.parquet")
    assert short["num_tokens"].max() <= 4 and filled["num_tokens"].max() > 4
    log = (wf / "logs/sample/tiny/base-regime-fill.log").read_text()
    cap = int(re.search(r"--max-tokens max = (\d+) \(context 140 - longest prompt (\d+)\)", log).group(1))
    assert filled["num_tokens"].max() <= cap and (filled.loc[~filled["finished"], "num_tokens"] == cap).all()
    cells = pd.read_csv(wf / "results/aggregate/cells.csv", keep_default_na=False)
    assert sorted(zip(cells.cell, cells.regime)) == [("tiny/base-regime-fill", "fill"),
                                                     ("tiny/base-regime-short", "short")]
    assert "No base cell of this config has a published Base row" in (
        wf / "results/aggregate/regime_comparison.md").read_text()
