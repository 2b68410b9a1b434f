"""Grid expansion and the config cross-checks the JSON schema cannot express."""

import copy
from pathlib import Path

import pytest
import yaml

from rsgrpo import grid as G
from rsgrpo import layout as L
from rsgrpo.analysis import cell_index
from rsgrpo.train import checkpoint

REPO = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((REPO / "config/grid.yaml").read_text())


def paper():
    return copy.deepcopy(PAPER)


def test_paper_grid_cells():
    cells = G.expand(paper())
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids)) == 32
    assert sum(c.is_base for c in cells) == 5  # one shared base evaluation per model
    # Table 2 settings: 1.5B/deepmath has all 5 trained methods, 7B/dapo has 4, math12k settings 2 each
    assert {c.run for c in cells if c.model == "qwen1p5b"} == {
        "base", "grpo", "walder", "mahdavi", "chen", "beta0", "beta2", "beta4", "beta8"}
    assert {c.run for c in cells if c.model == "qwen7b" and c.train_set == "dapo17k"} == {
        "dapo17k/grpo", "dapo17k/mahdavi", "dapo17k/chen", "dapo17k/beta2"}
    for model in ("qwen25_7b", "qwen3_4b", "llama8b"):
        assert {c.run for c in cells if c.model == model} == {"base", "grpo", "beta2"}
    # the ablation cell qwen7b/beta2 is also a Table 2 cell: one cell, union of evaluation steps
    beta2 = next(c for c in cells if c.id == "qwen7b/beta2")
    assert beta2.eval_steps == ("100", "200", "300", "400", "final")
    assert next(c for c in cells if c.id == "qwen7b/grpo").eval_steps == ("final",)


def test_single_cell_path_parsing():
    cfg = paper()
    cell = G.cell_from_path(cfg, "qwen7b", "beta4", G.expand(cfg))
    assert (cell.model, cell.train_set, cell.method, cell.beta) == ("qwen7b", "deepmath103k", "rs_grpo", 4.0)
    off_grid = G.cell_from_path(cfg, "qwen7b", "math12k/beta3")
    assert (off_grid.train_set, off_grid.beta, off_grid.eval_steps) == ("math12k", 3.0, ("final",))
    assert G.cell_from_path(cfg, "llama8b", "base").is_base
    for run, message in [("beta-1", "beta must be >= 0"), ("betax", "cannot read a beta"),
                         ("nope", "unknown method 'nope'"),
                         ("grpo-beta2", "takes no beta"), ("math12k/base", "base model has no train set"),
                         ("gsm8k/grpo", "unknown train set 'gsm8k'"), ("a/b/c", "expected results/")]:
        with pytest.raises(G.ConfigError, match=message):
            G.cell_from_path(cfg, "qwen7b", run)
    with pytest.raises(G.ConfigError, match="unknown model 'qwen9b'"):
        G.cell_from_path(cfg, "qwen9b", "grpo")


def test_split_eval():
    assert L.split_eval("beta4") == ("beta4", "final")
    assert L.split_eval("dapo17k/beta2/step000100") == ("dapo17k/beta2", "100")
    assert L.split_eval("dapo17k/beta2") == ("dapo17k/beta2", "final")
    assert L.split_eval("step000100") == ("step000100", "final")  # a leaf alone is never an evaluation folder


def test_layout_paths():
    lay = L.Layout()
    ev = lay.eval_dir("qwen7b/beta2", "100")
    assert ev == "results/qwen7b/beta2/step000100" and lay.eval_dir("qwen7b/beta2", L.FINAL) == "results/qwen7b/beta2"
    assert L.split_eval(ev.removeprefix("results/qwen7b/")) == ("beta2", "100")
    assert (lay.passk(ev), lay.graded(ev), lay.samples(ev, "aime24")) == (
        f"{ev}/passk.csv", f"{ev}/graded.parquet", f"{ev}/samples/aime24.parquet")
    cell = lay.cell_dir("qwen7b/beta2")
    assert (lay.metrics(cell), lay.manifest(cell)) == (f"{cell}/metrics.csv", f"{cell}/manifest.json")
    assert lay.checkpoint_dir("qwen7b/beta2", 100) == "runs/qwen7b/beta2/checkpoints/step-000100"
    # the trainer writes the checkpoints the evaluation reads: one definition of their names
    assert checkpoint.checkpoint_name is L.checkpoint_name
    assert checkpoint.checkpoints_dir("runs/x") == Path("runs/x") / L.CHECKPOINTS
    # rules call the methods with wildcard patterns
    assert lay.passk(lay.cell_dir("{model}/{evalrun}")) == "results/{model}/{evalrun}/passk.csv"
    assert lay.log("train/{model}/{run}") == "logs/train/{model}/{run}.log"
    assert (lay.train_data("math12k"), lay.benchmark_data("aime24"), lay.model_dir("qwen7b")) == (
        "data/train/math12k.jsonl", "data/benchmarks/aime24.jsonl", "models/qwen7b")
    assert lay.aggregate_table("table2", "md") == "results/aggregate/table2.md"
    with pytest.raises(ValueError, match="unknown aggregate table 'table3'"):
        lay.aggregate_table("table3")


def test_run_path_rule_round_trips():
    lay = L.Layout()
    methods = {"base": {}, "grpo": {}, lay.BARE_BETA_METHOD: {}, "risky": {}}
    for method, beta, leaf in [("grpo", None, "grpo"), (lay.BARE_BETA_METHOD, 4.0, "beta4"),
                               (lay.BARE_BETA_METHOD, 0.5, "beta0.5"), ("risky", 2.0, "risky-beta2")]:
        assert lay.run_leaf(method, beta) == leaf
        assert lay.parse_run_leaf(leaf, methods) == (method, None if beta is None else L.fmt_beta(beta))
    assert lay.run_segment("grpo", None, "dapo17k", "deepmath103k") == "dapo17k/grpo"
    assert lay.run_segment("grpo", None, None, "deepmath103k") == "base"


def test_seeds_axis_gives_one_cell_per_seed_of_every_trained_method():
    cfg = paper()
    cfg["sweeps"] = [{"name": "seeded", "models": ["qwen7b"], "methods": ["base", "grpo", "rs_grpo"],
                      "betas": [2, 4], "seeds": [0, 3]}]
    cells = G.expand(cfg)
    assert [c.id for c in cells] == ["qwen7b/base", "qwen7b/grpo-seed0", "qwen7b/grpo-seed3", "qwen7b/beta2-seed0",
                                     "qwen7b/beta2-seed3", "qwen7b/beta4-seed0", "qwen7b/beta4-seed3"]
    assert [c.seed for c in cells] == [None, 0, 3, 0, 3, 0, 3]
    assert [c.group for c in cells] == ["qwen7b/base"] + [f"qwen7b/{g}" for g in ("grpo", "beta2", "beta4")
                                                          for _ in (0, 3)]
    assert [G.train_settings(cfg, c)["seed"] for c in cells[1:]] == [0, 3] * 3
    assert "seed" not in G.train_settings(cfg, G.cell_from_path(cfg, "qwen7b", "grpo"))  # training.seed applies
    for cell in cells:  # every path parses back to its cell, also outside the grid
        assert G.cell_from_path(cfg, cell.model, cell.run) == cell
    other = G.cell_from_path(cfg, "qwen7b", "dapo17k/beta8-seed12")
    assert (other.method, other.beta, other.seed, other.train_set, other.group) == (
        "rs_grpo", 8.0, 12, "dapo17k", "qwen7b/dapo17k/beta8")
    assert G.train_settings(cfg, other)["seed"] == 12
    with pytest.raises(G.ConfigError, match="the base model is not trained, so it has no training seed"):
        G.cell_from_path(cfg, "qwen7b", "base-seed1")
    lay = L.Layout()
    assert lay.split_seed("beta4-seed1") == ("beta4", 1)
    assert lay.split_seed("grpo") == ("grpo", None)
    assert lay.split_seed("-seed1") == ("-seed1", None)  # no leaf before the suffix: not a seed


def test_renamed_beta_method_key_gets_the_long_path_form():
    """Only the method key Layout.BARE_BETA_METHOD is spelled beta<b>; renamed, the cells are <key>-beta<b>."""
    cfg = paper()
    cfg["methods"]["risky"] = cfg["methods"].pop("rs_grpo")
    for sweep in cfg["sweeps"]:
        sweep["methods"] = ["risky" if m == "rs_grpo" else m for m in sweep["methods"]]
    cells = G.expand(cfg)
    assert len(cells) == 32
    assert {c.run for c in cells if c.model == "qwen1p5b" and c.method == "risky"} == {
        "risky-beta0", "risky-beta2", "risky-beta4", "risky-beta8"}
    cell = G.cell_from_path(cfg, "qwen7b", "dapo17k/risky-beta3")
    assert (cell.method, cell.beta, cell.train_set) == ("risky", 3.0, "dapo17k")
    with pytest.raises(G.ConfigError, match="unknown method 'beta4'"):
        G.cell_from_path(cfg, "qwen7b", "beta4")


def test_adding_a_sweep_adds_exactly_its_cells():
    cfg = paper()
    before = {c.id for c in G.expand(cfg)}
    cfg["sweeps"].append({"name": "new", "models": ["qwen3_4b"], "methods": ["base", "chen", "rs_grpo"],
                          "betas": [1, 2]})
    after = {c.id for c in G.expand(cfg)}
    assert after - before == {"qwen3_4b/chen", "qwen3_4b/beta1"}  # base and beta2 already exist


def test_train_settings_merge_order():
    cfg = paper()
    cell = G.cell_from_path(cfg, "qwen7b", "dapo17k/beta2")
    s = G.train_settings(cfg, cell)
    assert s["estimator"] == "rs_grpo" and s["estimator_params"] == {"beta": 2.0}
    assert s["micro_batch_size"] == 4  # model override beats the training default
    assert s["lr"] == 1e-6 and s["train_data"] == "data/train/dapo17k.jsonl" and s["model_dir"] == "models/qwen7b"
    chen = G.train_settings(cfg, G.cell_from_path(cfg, "qwen7b", "chen"))
    assert chen["estimator"] == "passk_chen" and chen["estimator_params"] == {"k": 4}


def test_train_set_extra_fields_reach_the_trainer_spec():
    cfg = paper()
    cfg["train_sets"]["dapo17k"]["extra_fields"] = {"source_name": "data_source"}
    s = G.train_settings(cfg, G.cell_from_path(cfg, "qwen7b", "dapo17k/beta2"))
    # the prepared JSONL holds the field under its record name
    assert s["train_data"] == {"source": "local", "path": "data/train/dapo17k.jsonl",
                               "extra_fields": {"source_name": "source_name"}}
    assert G.train_settings(cfg, G.cell_from_path(cfg, "qwen7b", "beta2"))["train_data"] == \
        "data/train/deepmath103k.jsonl"


def test_cells_table_columns_and_published_mapping():
    cfg = paper()
    rows = {r["cell"]: r for r in cell_index.cells_table(cfg, G.expand(cfg))}
    assert rows["qwen7b/beta2"]["published_method"] == "RS-GRPO"
    assert rows["qwen7b/beta4"]["published_method"] == ""  # the paper reports beta 2 only
    assert rows["qwen7b/base"]["train_set"] == "" and rows["qwen7b/base"]["metrics"] == ""
    assert rows["qwen7b/beta2"]["step_evals"].split(";")[0] == "100:results/qwen7b/beta2/step000100"
    assert rows["qwen7b/beta2"]["step_evals"].split(";")[-1] == "500:results/qwen7b/beta2"
    assert rows["qwen1p5b/walder"]["label"] == "Walder&Karkhanis2025"


def mutate(path, value):
    def apply(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return cfg
    return apply


BAD = [
    (mutate(("sweeps", 0, "models"), ["qwen9b"]),
     "sweeps\\[0\\] \\(table2-qwen-math-1.5b\\).models\\[0\\]: unknown model 'qwen9b'"),
    (mutate(("sweeps", 1, "train_sets"), ["gsm8k"]), "sweeps\\[1\\].*train_sets\\[0\\]: unknown train set 'gsm8k'"),
    (mutate(("sweeps", 2, "methods"), ["base", "ppo"]), "methods\\[1\\]: unknown method 'ppo'"),
    (mutate(("sweeps", 0, "methods"), ["base", "grpo"]),
     "betas: \\[2\\] given, but none of the methods \\['base', 'grpo'\\] takes beta"),
    (mutate(("sweeps", 3, "betas"), []), "methods \\['rs_grpo'\\] need beta"),
    (mutate(("methods", "grpo", "params"), {"scale": "std", "beta": 2}),
     "methods.grpo.params.beta: estimator 'grpo' takes no parameter 'beta'"),
    (mutate(("methods", "rs_grpo", "params"), {"beta": 2}), "methods.rs_grpo.params.beta: set beta in a sweep"),
    (mutate(("methods", "chen", "params"), {}), "methods.chen.params: estimator 'passk_chen' needs \\['k'\\]"),
    (mutate(("methods", "chen", "estimator"), "pass_at_k"), "methods.chen.estimator: unknown estimator 'pass_at_k'"),
    (mutate(("methods", "base", "estimator"), "grpo"), "methods.base.estimator: the base model is not trained"),
    (mutate(("methods", "grpo", "estimator"), None), "methods.grpo.estimator: missing"),
    (mutate(("benchmarks", "math500", "ks"), [1, 64]),
     "benchmarks.math500.ks: k=64 exceeds the 32 samples per problem"),
    (mutate(("models", "qwen7b", "train_set"), "gsm8k"), "models.qwen7b.train_set: unknown train set 'gsm8k'"),
    (mutate(("sweeps", 3, "eval_steps"), [150, "final"]),
     "eval_steps\\[0\\]: step 150 is not a multiple of training.checkpoint_every = 100"),
    (mutate(("sweeps", 3, "eval_steps"), [900]), "step 900 is beyond training.steps = 500"),
    (lambda cfg: {**cfg, "sweeps": cfg["sweeps"] + [{"models": ["qwen7b"], "methods": ["grpo"], "seeds": [1, 2]}]},
     "'qwen7b/grpo' is trained without a seeds list by one sweep and with one by another"),
    (lambda cfg: {**cfg, "sweeps": [{"models": ["qwen7b"], "methods": ["base"], "seeds": [1, 2]}]},
     "sweeps\\[0\\].seeds: \\[1, 2\\] given, but the sweep trains no method"),
]


@pytest.mark.parametrize("change, message", BAD)
def test_inconsistent_config_rejected_with_key_and_value(change, message):
    with pytest.raises(G.ConfigError, match=message):
        G.expand(change(paper()), source="config/grid.yaml")


def test_duplicate_yaml_keys_rejected(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("models:\n  a: {spec: {source: tiny}, train_set: t}\n  a: {spec: {source: tiny}, train_set: u}\n")
    with pytest.raises(G.ConfigError, match="dup.yaml: line 3: duplicate key 'a' \\(first defined on line 2\\)"):
        G.load_yaml_strict(path)
    assert G.load_yaml_strict(REPO / "config/grid.yaml")["bandit"]["seeds"] == 10


# ------------------------------------------------------------------------------- evaluation regimes
CALIBRATE = yaml.safe_load((REPO / "config/calibrate.yaml").read_text())


def with_regimes(regimes: list[str] | None = None, methods=("base",)) -> dict:
    """The paper grid plus two regimes and a sweep sampling qwen7b's and llama8b's base models under them."""
    cfg = paper()
    cfg["regimes"] = {"hot": {"temperature": 1.0, "top_p": 1.0, "template": "chat", "max_tokens": "max"},
                      "cool": {"temperature": 0.6, "label": "cool, the rest as evaluation"}}
    cfg["sweeps"].append({"name": "regimes", "models": ["qwen7b", "llama8b"], "methods": list(methods),
                          "regimes": regimes or ["hot", "cool"]})
    return cfg


def test_a_regime_is_a_base_cell_of_its_own_and_a_grid_without_regimes_is_unchanged():
    cfg = with_regimes()
    cells = G.expand(cfg)
    before = G.expand(paper())
    assert cells[: len(before)] == before and all(c.regime is None for c in before)  # today's cells, same paths
    added = cells[len(before):]
    assert [c.id for c in added] == ["qwen7b/base-regime-hot", "qwen7b/base-regime-cool",
                                     "llama8b/base-regime-hot", "llama8b/base-regime-cool"]
    assert all(c.is_base and c.regime and c.eval_steps == (L.FINAL,) and c.group == c.id for c in added)
    lay = L.Layout()
    assert lay.eval_dir("qwen7b/base-regime-hot", L.FINAL) == "results/qwen7b/base-regime-hot"
    assert lay.samples(lay.eval_dir(added[0].id, L.FINAL), "aime24") == \
        "results/qwen7b/base-regime-hot/samples/aime24.parquet"
    assert (lay.split_regime("base-regime-hot"), lay.split_regime("base"), lay.split_regime("grpo-regime-x")) == (
        ("base", "hot"), ("base", None), ("grpo-regime-x", None))
    for cell in added:  # every path parses back to its cell, in the grid or not
        assert G.cell_from_path(cfg, cell.model, cell.run, cells) == cell
        assert G.cell_from_path(cfg, cell.model, cell.run) == cell
    assert G.cell_from_path(cfg, "qwen1p5b", "base-regime-hot").regime == "hot"  # off the grid


def test_a_regime_overrides_the_evaluation_sampling_of_its_cells_only():
    cfg = with_regimes()
    cells = {c.id: c for c in G.expand(cfg)}
    assert G.sample_settings(cfg, cells["qwen7b/base"]) == {
        "temperature": 0.6, "top_p": 0.95, "template": "plain", "max_tokens": 3072}
    assert G.sample_settings(cfg, cells["qwen7b/base-regime-hot"]) == {
        "temperature": 1.0, "top_p": 1.0, "template": "chat", "max_tokens": G.MAX_TOKENS}
    # a key the regime leaves out keeps the evaluation's value, the template the model's
    assert G.sample_settings(cfg, cells["llama8b/base-regime-cool"]) == {
        "temperature": 0.6, "top_p": 0.95, "template": "chat", "max_tokens": 3072}
    assert G.sample_settings(cfg, cells["qwen7b/beta2"]) == G.sample_settings(cfg, cells["qwen7b/base"])
    assert G.sampling_label(cfg, cells["qwen7b/base-regime-hot"]) == "T 1, top-p 1, chat, max_tokens max"
    assert G.sampling_label(cfg, cells["qwen7b/base-regime-cool"]) == "cool, the rest as evaluation"
    rows = {r["cell"]: r for r in cell_index.cells_table(cfg, cells.values())}
    assert (rows["qwen7b/base-regime-hot"]["regime"], rows["qwen7b/base"]["regime"]) == ("hot", "")
    assert rows["qwen7b/base-regime-hot"]["label"] == "Base (T 1, top-p 1, chat, max_tokens max)"
    assert rows["qwen7b/base-regime-hot"]["published_method"] == "Base" and rows["qwen7b/base"]["label"] == "Base"


def test_calibrate_config_samples_every_paper_base_model_under_every_regime():
    cells = G.expand(copy.deepcopy(CALIBRATE), source="config/calibrate.yaml")
    regimes = CALIBRATE["regimes"]
    assert len(regimes) == 16 and len(cells) == 5 * 16 and all(c.is_base and c.regime for c in cells)
    assert {c.model for c in cells} == set(PAPER["models"])
    assert {(c.model, c.regime) for c in cells} == {(m, r) for m in PAPER["models"] for r in regimes}
    # the grid of regimes: temperature x top-p x template x max tokens
    settings = {(r["temperature"], r["top_p"], r["template"], r["max_tokens"]) for r in regimes.values()}
    assert settings == {(t, p, tpl, mt) for t in (0.6, 1.0) for p in (0.95, 1.0) for tpl in ("chat", "plain")
                        for mt in (3072, G.MAX_TOKENS)}


REGIME_BAD = [
    (lambda cfg: with_regimes(["hot", "warm"]),
     "sweeps\\[4\\] \\(regimes\\).regimes\\[1\\]: unknown regime 'warm' \\(known: cool, hot\\)"),
    (lambda cfg: with_regimes(methods=("base", "grpo")),
     "sweeps\\[4\\] \\(regimes\\).regimes: \\['hot', 'cool'\\] given, but the sweep trains \\['grpo'\\]"),
    (lambda cfg: mutate(("regimes", "hot", "temperature"), -0.5)(with_regimes()),
     "regimes.hot.temperature: must be a number >= 0 \\(0 = greedy\\), got -0.5"),
    (lambda cfg: mutate(("regimes", "hot", "temperature"), "hot")(with_regimes()),
     "regimes.hot.temperature: must be a number >= 0 \\(0 = greedy\\), got 'hot'"),
    (lambda cfg: mutate(("regimes", "hot", "top_p"), 1.5)(with_regimes()),
     "regimes.hot.top_p: must be a number in \\(0, 1\\], got 1.5"),
    (lambda cfg: mutate(("regimes", "hot", "max_tokens"), "lots")(with_regimes()),
     "regimes.hot.max_tokens: must be a positive integer or 'max' .*, got 'lots'"),
    (lambda cfg: mutate(("regimes", "hot", "max_tokens"), 0)(with_regimes()),
     "regimes.hot.max_tokens: must be a positive integer or 'max' .*, got 0"),
    (lambda cfg: mutate(("regimes", "hot", "max_tokens"), 4096)(with_regimes()),
     "regimes.hot.max_tokens: 4096 new tokens leave no room for a prompt in the 4096-token context of model "
     "'qwen7b' \\(models.qwen7b.context_length\\)"),
    (lambda cfg: mutate(("regimes", "hot", "seed"), 3)(with_regimes()),
     "regimes.hot.seed: unknown key 'seed' \\(a regime sets temperature, top_p, template, max_tokens"),
]


@pytest.mark.parametrize("change, message", REGIME_BAD)
def test_bad_regime_rejected_with_file_key_and_value(change, message):
    with pytest.raises(G.ConfigError, match="^config/calibrate.yaml: " + message):
        G.expand(change(None), source="config/calibrate.yaml")


def test_a_regime_path_off_the_config_is_refused():
    cfg = with_regimes()
    for run, message in [("base-regime-warm", "unknown regime 'warm' \\(known: cool, hot\\)"),
                         ("math12k/base-regime-hot", "a regime cell is results/qwen7b/base-regime-hot"),
                         ("base-regime-hot-seed1", "a regime cell is results/qwen7b/base-regime-hot")]:
        with pytest.raises(G.ConfigError, match=f"results/qwen7b/{run}: {message}"):
            G.cell_from_path(cfg, "qwen7b", run)
    with pytest.raises(G.ConfigError, match="unknown regime 'hot' \\(known: none\\)"):
        G.cell_from_path(paper(), "qwen7b", "base-regime-hot")
