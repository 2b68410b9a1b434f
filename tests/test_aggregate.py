"""``rsgrpo.analysis.aggregate`` (and the index reader ``rsgrpo.analysis.cell_index``) on synthetic
result trees with known truth (tests/synthetic_results.py).

Every table number is checked against an independent computation (math.comb on the generated
counts), the CIs against their nominal coverage of the known population mean, the paired
differences against a constructed improvement / deterioration, the published comparison against
numbers copied by hand from the paper's Table 2 (arXiv 2509.24261), that groups are selected and
ordered by their estimator and not by their method (config) key, and every documented error message.
"""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synthetic_results as syn
import yaml

from rsgrpo import grid as G
from rsgrpo.analysis import aggregate as agg
from rsgrpo.analysis import cell_files, cell_index
from rsgrpo.cli import main as cli_main
from rsgrpo.evaluate.passk import (
    bootstrap_ci,
    paired_seed_difference,
    pass_at_k,
    seed_bootstrap_ci,
    stratified_bootstrap,
    stratified_paired_difference,
)

N_BOOT = 400


def comb_pass_at_k(n: int, c: np.ndarray, k: int) -> float:
    """Mean over problems of 1 - C(n-c, k)/C(n, k), with exact integers."""
    return float(np.mean([1 - math.comb(n - int(ci), k) / math.comb(n, k) for ci in c]))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return syn.write_tree(tmp_path_factory.mktemp("synthetic"), seed=1)


@pytest.fixture(scope="module")
def outputs(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("aggregate")
    written = agg.aggregate(tree.cells_csv, tree.benchmarks_csv, out, n_boot=N_BOOT, seed=0)
    assert sorted(p.name for p in written.values()) == sorted(
        f"{name}.{ext}" for name in ("table2", "rsgrpo_vs_grpo", "published_comparison") for ext in ("csv", "md"))
    return {name: pd.read_csv(out / f"{name}.csv", keep_default_na=False, na_values=[""])
            for name in ("table2", "rsgrpo_vs_grpo", "published_comparison")} | {"dir": out}


# --------------------------------------------------------------------------------------- Table 2
def test_table2_pass_at_k_equals_math_comb(tree, outputs):
    t2 = outputs["table2"]
    bench_n = {b.key: b.n for b in tree.benchmarks}
    checked = 0
    for _, r in t2[t2["benchmark"] != agg.AVG].iterrows():
        counts = tree.counts[(r["cell"], tree.final_step(r["cell"]), r["benchmark"])]
        n = bench_n[r["benchmark"]]
        # pass@32 is the largest k <= 32 the samples allow: 32 for n = 32, 16 for the n = 16 'toy' set
        assert r["k"] == (1 if r["metric"] == "pass@1" else min(32, n))
        assert r["pass_at_k_pct"] == pytest.approx(100 * comb_pass_at_k(n, counts, int(r["k"])), abs=1e-4)
        assert r["ci_low_pct"] <= r["pass_at_k_pct"] <= r["ci_high_pct"]
        assert r["n_problems"] == len(counts) and r["n_samples"] == n
        checked += 1
    assert checked == 2 * 3 * (5 + 3)  # metrics x benchmarks x (7B cells + 1.5B cells)
    # AVG is the unweighted mean over benchmarks; its k is empty because toy's k (16) differs
    for (_setting, _cell, metric), g in t2.groupby(["setting", "cell", "metric"]):
        avg = g[g["benchmark"] == agg.AVG]
        assert avg["pass_at_k_pct"].iloc[0] == pytest.approx(g[g["benchmark"] != agg.AVG]["pass_at_k_pct"].mean(),
                                                            abs=1e-4)
        assert (avg["k"].iloc[0] == 1) if metric == "pass@1" else pd.isna(avg["k"].iloc[0])


def test_table2_ci_is_the_bootstrap_of_the_per_problem_values(tree, outputs):
    t2 = outputs["table2"]
    r = t2[(t2["cell"] == "qwen7b/deepmath103k/grpo") & (t2["benchmark"] == "math500")
           & (t2["metric"] == "pass@32")].iloc[0]
    counts = tree.counts[("qwen7b/deepmath103k/grpo", 30, "math500")]
    ci = bootstrap_ci(pass_at_k(32, counts, 32), n_boot=N_BOOT, seed=0)
    assert (r["ci_low_pct"], r["ci_high_pct"]) == pytest.approx((100 * ci.low, 100 * ci.high), abs=1e-3)


def test_base_row_is_shared_by_every_setting_of_its_model(tmp_path):
    q = dict(model="m", model_name="Model-X")
    cells = [syn.CellSpec(**q, method="base", label="Base"),
             syn.CellSpec(**q, method="grpo", label="GRPO", train_set="setA", eval_steps=(2,), transform=syn.grpo_like),
             syn.CellSpec(**q, method="grpo", label="GRPO", train_set="setB", eval_steps=(2,), transform=syn.chen_like)]
    tree = syn.write_tree(tmp_path, cells, [syn.BenchSpec("b1", "", 6, 4)], seed=3)
    grid = cell_index.load_index(tree.cells_csv, tree.benchmarks_csv)
    t2 = agg.build_table2(grid, n_boot=50)
    assert list(dict.fromkeys(t2["setting"])) == ["Model-X/setA", "Model-X/setB"]
    for setting in ("Model-X/setA", "Model-X/setB"):
        assert list(dict.fromkeys(t2.loc[t2["setting"] == setting, "label"])) == ["Base", "GRPO"]
    base = t2[t2["cell"] == "m/base"]
    assert base.groupby("setting")["pass_at_k_pct"].apply(tuple).nunique() == 1  # identical numbers
    md = agg.table2_markdown(t2)
    assert md.count("| Base |") == 2 and "## Model-X/setA" in md and "b1 p@32†" in md and "b1: k = 4" in md


# --------------------------------------------------------------------------------- CI coverage
def _beta_pass_at_k(a: float, b: float, k: int) -> float:
    """Population pass@k for p ~ Beta(a, b): E[1 - (1-p)^k] = 1 - prod_{j<k} (b+j)/(a+b+j)."""
    return 1.0 - float(np.prod([(b + j) / (a + b + j) for j in range(k)]))


def test_bootstrap_cis_cover_the_true_population_mean_at_the_nominal_rate():
    """Over 200 independent benchmarks drawn from a known problem population, the 95% CI of the
    table (bootstrap over problems) and of the AVG column (stratified bootstrap) must cover the true
    population pass@k about 95% of the time. A CI ignoring problem-level variance (e.g. a binomial CI
    on all samples pooled) covers ~0.77 here; a band of [0.89, 0.99] catches that and an over-wide CI,
    while the percentile bootstrap (~0.94 at 80 problems; slightly anti-conservative) passes."""
    draws, n, p_problems = 200, 8, 80
    populations = [(0.5, 2.5), (2.0, 2.0)]
    hits = {"pass@1": 0, "pass@4": 0, "avg": 0}
    truth_avg = np.mean([_beta_pass_at_k(a, b, 1) for a, b in populations])
    for d in range(draws):
        rng = np.random.default_rng([7, d])
        strata = []
        for i, (a, b) in enumerate(populations):
            probs = rng.beta(a, b, size=p_problems)
            counts = cell_files.Counts(np.arange(p_problems).astype(str), np.full(p_problems, n),
                                       rng.binomial(n, probs))
            strata.append(counts.per_problem(1))
            if i == 0:
                for k, key in ((1, "pass@1"), (4, "pass@4")):
                    ci = bootstrap_ci(counts.per_problem(k), n_boot=500, seed=d)
                    hits[key] += ci.low <= _beta_pass_at_k(a, b, k) <= ci.high
        ci = stratified_bootstrap(strata, n_boot=500, seed=d)
        hits["avg"] += ci.low <= truth_avg <= ci.high
    coverage = {k: v / draws for k, v in hits.items()}
    assert all(0.89 <= c <= 0.99 for c in coverage.values()), coverage


def test_stratified_bootstrap_keeps_each_benchmark_weight():
    # a 1-problem stratum has no variance: the AVG CI is the other stratum's CI halved and shifted
    other = np.linspace(0, 1, 50)
    ci = stratified_bootstrap([np.array([1.0]), other], n_boot=300, seed=4)
    assert ci.mean == pytest.approx((1.0 + other.mean()) / 2)
    assert ci.low >= 0.5 and ci.high <= 1.0 and ci.high - ci.low < 0.5 * (other.max() - other.min())
    with pytest.raises(ValueError, match="at least one stratum"):
        stratified_bootstrap([], n_boot=10)


# ------------------------------------------------------------------------------ paired differences
def test_paired_difference_sign_and_ci_on_constructed_changes(tmp_path):
    """Model 'up': RS-GRPO = GRPO's probabilities + 0.25 on every problem; model 'down': - 0.25."""
    bench = [syn.BenchSpec("b1", "AIME24", 40, 16), syn.BenchSpec("b2", "MATH500", 30, 16)]
    cells = []
    for model, shift in (("up", 0.25), ("down", -0.25)):
        q = dict(model=model, model_name=model.upper(), train_set="ts", eval_steps=(1,))
        base = syn.grpo_like
        cells += [syn.CellSpec(**q, method="grpo", label="GRPO", transform=base),
                  syn.CellSpec(**q, method="rs_grpo", beta=2.0, label="RS",
                               transform=lambda p, s=shift, base=base: base(p) + s)]
    tree = syn.write_tree(tmp_path, cells, bench, seed=5)
    grid = cell_index.load_index(tree.cells_csv, tree.benchmarks_csv)
    diff = agg.build_rsgrpo_vs_grpo(grid, n_boot=500, seed=0)
    t2 = agg.build_table2(grid, n_boot=500, seed=0)
    for model, sign in (("UP", 1), ("DOWN", -1)):
        d = diff[diff["setting"] == f"{model}/ts"]
        assert len(d) == 2 * 3  # (b1, b2, AVG) x (pass@1, pass@32 = pass@16 here: n = 16)
        for _, r in d[d["metric"] == "pass@1"].iterrows():
            assert sign * r["diff_pct"] > 10 and sign * r["ci_low_pct"] > 0 and sign * r["ci_high_pct"] > 0
            assert r["diff_pct"] == pytest.approx(r["rs_grpo_pct"] - r["grpo_pct"])
            if r["benchmark"] == agg.AVG:
                continue
            rs_c = tree.counts[(f"{model.lower()}/ts/rs_grpo_beta2", 1, r["benchmark"])]
            gr_c = tree.counts[(f"{model.lower()}/ts/grpo", 1, r["benchmark"])]
            assert r["diff_pct"] == pytest.approx(100 * (rs_c.mean() - gr_c.mean()) / 16)
            # pairing: the paired CI is narrower than the two marginal CIs' half-widths added up
            marg = t2[(t2["setting"] == f"{model}/ts") & (t2["benchmark"] == r["benchmark"])
                      & (t2["metric"] == "pass@1")]
            half = ((marg["ci_high_pct"] - marg["ci_low_pct"]) / 2).sum()
            assert r["ci_high_pct"] - r["ci_low_pct"] < 2 * half * 0.8
        assert d.loc[d["metric"] == "pass@32", "k"].tolist() == [16, 16, 16]


def test_rsgrpo_vs_grpo_outputs(outputs):
    d = outputs["rsgrpo_vs_grpo"]
    # 7B: beta 2 and beta 4 against GRPO; 1.5B: beta 2 against GRPO; 4 rows (3 benchmarks + AVG) x 2 metrics each
    assert d.groupby(["setting", "rs_cell"]).size().to_dict() == {
        ("Qwen2.5-Math-1.5B/deepmath103k", "qwen15b/deepmath103k/rs_grpo_beta2"): 8,
        ("Qwen2.5-Math-7B/deepmath103k", "qwen7b/deepmath103k/rs_grpo_beta2"): 8,
        ("Qwen2.5-Math-7B/deepmath103k", "qwen7b/deepmath103k/rs_grpo_beta4"): 8}
    assert (d["ci_low_pct"] <= d["diff_pct"]).all() and (d["diff_pct"] <= d["ci_high_pct"]).all()
    md = (outputs["dir"] / "rsgrpo_vs_grpo.md").read_text()
    # the paper's RS-GRPO - GRPO AVG over the same two settings: p@1 (-0.1 + 2.0)/2, p@32 (4.5 + 3.0)/2
    assert "+0.95 (2)" in md and "+3.75 (2)" in md
    beta4_line = next(line for line in md.splitlines() if line.startswith("| RS-GRPO (β=4) - GRPO | 1 |"))
    assert beta4_line.endswith("| n/a | n/a |")  # no published beta-4 run to compare with


# ------------------------------------------------------------------------- methods by estimator
RENAMES = {"rs_grpo": "risk_seeking", "grpo": "vanilla"}  # method keys only; the estimators stay


def test_renamed_method_keys_give_the_same_tables(tree, outputs, tmp_path):
    """The analysis finds RS-GRPO and GRPO by their estimator: renaming the config keys of both (so
    no method key is 'rs_grpo' or 'grpo' any more) changes the cell ids and the method column only."""
    renamed_cells = syn.rename_methods(syn.default_cells(), RENAMES)
    assert not {c.method for c in renamed_cells} & set(RENAMES)
    ids = {old.cell: new.cell for old, new in zip(syn.default_cells(), renamed_cells)}
    assert sum(old != new for old, new in ids.items()) == 5
    renamed = syn.write_tree(tmp_path / "tree", renamed_cells, seed=1)
    out = tmp_path / "out"
    agg.aggregate(renamed.cells_csv, renamed.benchmarks_csv, out, n_boot=N_BOOT, seed=0)
    for name, cell_cols in (("table2", ["cell"]), ("rsgrpo_vs_grpo", ["rs_cell", "grpo_cell"]),
                            ("published_comparison", ["cell"])):
        ours = pd.read_csv(out / f"{name}.csv", keep_default_na=False, na_values=[""])
        expected = outputs[name].copy()
        for col in cell_cols:
            expected[col] = expected[col].map(ids)
        if "method" in expected:
            expected["method"] = expected["method"].replace(RENAMES)
        assert len(ours) > 0
        pd.testing.assert_frame_equal(ours, expected)  # same rows, same order, same numbers
        assert (out / f"{name}.md").read_text() == (outputs["dir"] / f"{name}.md").read_text()


def _index_of_config(config: dict, root: Path) -> cell_index.CellIndex:
    """The results index of a config with empty stand-ins for every result file (the reader only
    checks that they exist)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = cell_index.cells_table(config, G.expand(config))
    for row in rows:
        for col in ("passk", "graded", "metrics"):
            if row[col]:
                (root / row[col]).parent.mkdir(parents=True, exist_ok=True)
                (root / row[col]).touch()
    pd.DataFrame(rows).to_csv(root / "cells.csv", index=False)
    pd.DataFrame(cell_index.benchmarks_table(config)).to_csv(root / "benchmarks.csv", index=False)
    return cell_index.load_index(root / "cells.csv", root / "benchmarks.csv")


def test_row_order_follows_the_estimator_registry_not_the_method_keys(tmp_path):
    """config/grid.yaml with the RS-GRPO and GRPO keys renamed: same settings, same rows in the same
    order (Base, then registry order GRPO, Walder, Mahdavi, Chen, RS-GRPO by beta), same pairs."""
    paper = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/grid.yaml").read_text())
    renamed = copy.deepcopy(paper)
    renamed["methods"] = {RENAMES.get(k, k): v for k, v in renamed["methods"].items()}
    for sweep in renamed["sweeps"]:
        sweep["methods"] = [RENAMES.get(m, m) for m in sweep["methods"]]
    before = _index_of_config(paper, tmp_path / "paper")
    after = _index_of_config(renamed, tmp_path / "renamed")
    assert set(after.memberships["method"]).isdisjoint(RENAMES)
    cols = ["setting", "label", "estimator", "beta", "published_method"]
    pd.testing.assert_frame_equal(after.memberships[cols], before.memberships[cols])
    first = before.memberships[before.memberships["setting"] == "Qwen2.5-Math-1.5B/deepmath103k"]
    assert list(first["label"]) == ["Base", "GRPO", "Walder&Karkhanis2025", "Mahdavi2025", "Chen2025",
                                    "RS-GRPO (β=0)", "RS-GRPO (β=2)", "RS-GRPO (β=4)", "RS-GRPO (β=8)"]
    for index in (before, after):
        pairs = [(s, len(index.with_estimator(g, cell_index.RS_GRPO_ESTIMATOR)),
                  len(index.with_estimator(g, cell_index.GRPO_ESTIMATOR)))
                 for s, g in index.memberships.groupby("setting", sort=False)]
        assert pairs == [("Qwen2.5-Math-1.5B/deepmath103k", 4, 1), ("Qwen2.5-Math-7B/deepmath103k", 4, 1),
                         ("Qwen2.5-Math-7B/dapo17k", 1, 1), ("Qwen2.5-Math-7B/math12k", 1, 1),
                         ("Qwen2.5-7B/math12k", 1, 1), ("Qwen3-4B-Base/math12k", 1, 1),
                         ("Llama-3.1-8B-Instruct/math12k", 1, 1)]


def test_estimator_rank_is_the_registry_order():
    from rsgrpo.estimators import ESTIMATORS

    ranks = [cell_index.estimator_rank(e) for e in ["", *ESTIMATORS, "not_registered"]]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert (cell_index.estimator_rank(cell_index.GRPO_ESTIMATOR)
            < cell_index.estimator_rank(cell_index.RS_GRPO_ESTIMATOR))


# ------------------------------------------------------------------------------ published numbers
def test_published_comparison_picks_the_paper_numbers(outputs):
    comp = outputs["published_comparison"]
    t2 = outputs["table2"]

    def one(cell, setting, bench, metric):
        rows = comp[(comp["cell"] == cell) & (comp["setting"] == setting) & (comp["benchmark"] == bench)
                    & (comp["metric"] == metric)]
        assert len(rows) == 1, (cell, bench, metric)
        return rows.iloc[0]

    s7, s15 = "Qwen2.5-Math-7B/deepmath103k", "Qwen2.5-Math-1.5B/deepmath103k"
    expected = {("qwen7b/deepmath103k/rs_grpo_beta2", s7, "aime24", "pass@1"): 30.2,
                ("qwen7b/deepmath103k/rs_grpo_beta2", s7, "math500", "pass@32"): 95.8,
                ("qwen7b/deepmath103k/grpo", s7, "aime24", "pass@32"): 58.0,
                ("qwen7b/deepmath103k/chen", s7, "math500", "pass@1"): 85.6,
                ("qwen7b/base", s7, "aime24", "pass@1"): 2.9,
                ("qwen15b/base", s15, "math500", "pass@32"): 84.8,
                ("qwen15b/deepmath103k/rs_grpo_beta2", s15, "aime24", "pass@32"): 45.1}
    for key, published in expected.items():
        r = one(*key)
        ours = t2[(t2["cell"] == key[0]) & (t2["setting"] == key[1]) & (t2["benchmark"] == key[2])
                  & (t2["metric"] == key[3])]["pass_at_k_pct"].iloc[0]
        assert r["published_pct"] == published and r["ours_pct"] == pytest.approx(ours)
        assert r["diff_pct"] == pytest.approx(ours - published)
        assert np.sign(r["diff_pct"]) == np.sign(ours - published)
        assert r["published_in_ci"] == (r["ci_low_pct"] <= published <= r["ci_high_pct"])
    # never compared: the unpublished beta-4 run, the unpublished 'toy' benchmark (and its k = 16),
    # and AVG (our benchmarks are not the paper's six)
    assert not (comp["cell"] == "qwen7b/deepmath103k/rs_grpo_beta4").any()
    assert set(comp["benchmark"]) == {"aime24", "math500"}
    assert len(comp) == 2 * 2 * (4 + 3)  # benchmarks x metrics x published cells


def test_published_avg_compared_only_with_the_papers_six_benchmarks(tmp_path):
    six = ["AIME24", "AIME25", "HMMT24", "HMMT25", "CMIMC25", "MATH500"]
    benches = [syn.BenchSpec(name.lower(), name, 4, 32) for name in six]
    q = dict(model="q", model_name="Qwen2.5-7B", published_model="Qwen2.5-7B")
    cells = [syn.CellSpec(**q, method="base", label="Base", published_method="Base"),
             syn.CellSpec(**q, method="grpo", label="GRPO", published_method="GRPO", train_set="math12k",
                          eval_steps=(1,), transform=syn.grpo_like)]
    tree = syn.write_tree(tmp_path, cells, benches, seed=2)
    grid = cell_index.load_index(tree.cells_csv, tree.benchmarks_csv)
    t2 = agg.build_table2(grid, n_boot=50)
    comp = agg.build_published_comparison(t2, grid)
    avg = comp[(comp["benchmark"] == agg.AVG) & (comp["cell"] == "q/math12k/grpo")].set_index("metric")
    assert avg.loc["pass@1", "published_pct"] == 20.2 and avg.loc["pass@32", "published_pct"] == 33.7
    assert len(comp) == 2 * 2 * 7  # cells x metrics x (6 benchmarks + AVG)


def test_published_table_is_package_data():
    pub = agg.load_published_table()
    assert pub.loc[("Qwen2.5-Math-7B/deepmath103k", "RS-GRPO"), "AIME24_p1"] == 30.2
    assert len(pub) == 28
    # the paper's headline: mean over its 7 settings of RS-GRPO - GRPO AVG = +1.29 / +3.64 points
    settings = pub.index.get_level_values(0).unique()
    for col, headline in (("AVG_p1", 1.29), ("AVG_p32", 3.64)):
        diffs = [pub.loc[(s, "RS-GRPO"), col] - pub.loc[(s, "GRPO"), col] for s in settings]
        assert np.mean(diffs) == pytest.approx(headline, abs=0.005)


def test_markdown_tables(outputs):
    md = (outputs["dir"] / "table2.md").read_text()
    assert "## Qwen2.5-Math-7B/deepmath103k" in md and "toy p@32†" in md and "toy: k = 16" in md
    assert "| Method | AIME24 p@1 | AIME24 p@32 |" in md
    first = next(line for line in md.splitlines() if line.startswith("| RS-GRPO (β=2) |"))
    assert first.count("[") == 8  # value [low, high] for 3 benchmarks + AVG, 2 metrics each
    comp_md = (outputs["dir"] / "published_comparison.md").read_text()
    assert "/ 30.2 (" in comp_md


def test_cli_verb(tree, tmp_path):
    assert cli_main(["aggregate", "--cells", str(tree.cells_csv), "--benchmarks", str(tree.benchmarks_csv),
                     "--out", str(tmp_path), "--bootstrap", "20", "--seed", "3"]) == 0
    assert (tmp_path / "table2.csv").stat().st_size > 0 and (tmp_path / "published_comparison.md").is_file()


# ------------------------------------------------------------------------------------- errors
def _edit_cells(tree, tmp_path, edit) -> tuple:
    cells = pd.read_csv(tree.cells_csv, dtype=str, keep_default_na=False)
    cells = edit(cells)
    path = tmp_path / "cells.csv"
    cells.to_csv(path, index=False)
    return path, tree.benchmarks_csv


def _edit_benchmarks(tree, tmp_path, edit) -> tuple:
    b = pd.read_csv(tree.benchmarks_csv, dtype=str, keep_default_na=False)
    path = tmp_path / "benchmarks.csv"
    edit(b).to_csv(path, index=False)
    return tree.cells_csv, path


def _set(df, col, value, row=0):
    df.loc[row, col] = value
    return df


ERRORS = {
    "cells file missing": (lambda t, p: (p / "nope.csv", t.benchmarks_csv), r"cells file '.*nope\.csv' does not exist"),
    "cells column missing": (lambda t, p: _edit_cells(t, p, lambda d: d.drop(columns=["graded"])),
                             r"cells file .* lacks column\(s\) \['graded'\]"),
    "cells empty": (lambda t, p: _edit_cells(t, p, lambda d: d.iloc[:0]), r"cells file .* holds no rows"),
    "cell repeated": (lambda t, p: _edit_cells(t, p, lambda d: _set(d, "cell", d.loc[1, "cell"])),
                      r"column 'cell' repeats 'qwen7b/deepmath103k/grpo'"),
    "label empty": (lambda t, p: _edit_cells(t, p, lambda d: _set(d, "label", "", 2)),
                    r"column 'label' is empty in row 4"),
    "passk file missing": (lambda t, p: _edit_cells(t, p, lambda d: _set(d, "passk", "gone/passk.csv")),
                           r"cell 'qwen7b/base': column 'passk' names 'gone/passk.csv', which does not exist"),
    "bad beta": (lambda t, p: _edit_cells(t, p, lambda d: _set(d, "beta", "two", 2)),
                 r"column 'beta' must be a number or empty, got 'two'"),
    "bad step_evals": (lambda t, p: _edit_cells(t, p, lambda d: _set(d, "step_evals", "ten:/x", 1)),
                       r"column 'step_evals' entry 'ten:/x' is not 'step:dir'"),
    "benchmarks file missing": (lambda t, p: (t.cells_csv, p / "b.csv"), r"benchmarks file '.*b\.csv' does not exist"),
    "benchmarks column missing": (lambda t, p: _edit_benchmarks(t, p, lambda d: d.drop(columns=["ks"])),
                                  r"benchmarks file .* lacks column\(s\) \['ks'\]"),
    "benchmarks empty": (lambda t, p: _edit_benchmarks(t, p, lambda d: d.iloc[:0]),
                         r"benchmarks file .* holds no rows"),
    "bad ks": (lambda t, p: _edit_benchmarks(t, p, lambda d: _set(d, "ks", "1;two")),
               r"benchmark 'aime24'.*column 'ks' must be ';'-separated positive integers"),
    "benchmark not graded": (
        lambda t, p: _edit_benchmarks(t, p, lambda d: pd.concat([d, pd.DataFrame([{"benchmark": "extra",
                                      "published_name": "", "n": "4", "ks": "1"}])], ignore_index=True)),
        r"graded file .* column 'graded', cell 'qwen7b/base'\) has no rows for benchmark\(s\) \['extra'\]"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_error_messages(tree, tmp_path, case):
    make, pattern = ERRORS[case]
    cells, benchmarks = make(tree, tmp_path)
    with pytest.raises(ValueError, match=pattern):
        agg.aggregate(cells, benchmarks, tmp_path / "out", n_boot=10)
    assert not (tmp_path / "out" / "table2.csv").exists()


def test_error_graded_column_and_stale_passk(tree, tmp_path):
    graded = pd.read_parquet(tree.root / "qwen7b/base/eval/graded.parquet")
    bad_graded = tmp_path / "graded.parquet"
    graded.drop(columns=["correct"]).to_parquet(bad_graded)
    cells, bench = _edit_cells(tree, tmp_path, lambda d: _set(d, "graded", str(bad_graded)))
    with pytest.raises(ValueError, match=r"graded file '.*graded\.parquet' lacks column\(s\) \['correct'\]"):
        agg.aggregate(cells, bench, tmp_path / "out", n_boot=10)

    passk = pd.read_csv(tree.root / "qwen7b/base/eval/passk.csv")
    passk.loc[passk["k"] == 1, "pass_at_k"] += 0.01
    stale = tmp_path / "stale_passk.csv"
    passk.to_csv(stale, index=False)
    cells, bench = _edit_cells(tree, tmp_path, lambda d: _set(d, "passk", str(stale)))
    with pytest.raises(ValueError,
                       match=r"passk file '.*stale_passk\.csv' \(cell 'qwen7b/base'\) says pass@1 .* stale"):
        agg.aggregate(cells, bench, tmp_path / "out", n_boot=10)

    with pytest.raises(ValueError, match="--bootstrap must be >= 1"):
        agg.aggregate(tree.cells_csv, tree.benchmarks_csv, tmp_path / "out", n_boot=0)


def test_relative_paths_resolve_against_the_cells_folder(tree, tmp_path):
    """The workflow may write cells.csv with paths relative to its own folder."""
    root = tmp_path / "copy"
    shutil.copytree(tree.root, root)
    cells = pd.read_csv(root / "cells.csv", dtype=str, keep_default_na=False)
    for col in ("passk", "graded", "metrics"):
        cells[col] = [v.replace(str(tree.root) + "/", "") for v in cells[col]]
    cells["step_evals"] = [v.replace(str(tree.root) + "/", "") for v in cells["step_evals"]]
    cells.to_csv(root / "cells.csv", index=False)
    grid = cell_index.load_index(root / "cells.csv", root / "benchmarks.csv")
    assert grid.cells.loc["qwen7b/base", "graded"] == root / "qwen7b/base/eval/graded.parquet"
    steps = cell_index.parse_step_evals(grid.cells.loc["qwen7b/deepmath103k/grpo", "step_evals"], root, where="x")
    assert [s for s, _ in steps] == [10, 20, 30] and all(d.is_dir() for _, d in steps)


# ------------------------------------------------------------------------------------ seed replicates
SEEDED_BENCHES = [syn.BenchSpec("b64a", "AIME24", 10, 64), syn.BenchSpec("b64b", "MATH500", 8, 64)]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Qwen2.5-Math-7B/deepmath103k (so the published comparison applies): Base, and GRPO, RS-GRPO
    beta 2 and beta 4 with three seeds each whose probabilities differ by up to +-0.15; 64 samples."""
    cells = syn.seeded_cells(spread=0.15, steps=(1,), model="q7", model_name="Qwen2.5-Math-7B",
                             train_set="deepmath103k", published=True)
    tree = syn.write_tree(tmp_path_factory.mktemp("seeded"), cells, SEEDED_BENCHES, seed=6)
    out = tmp_path_factory.mktemp("seeded_out")
    agg.aggregate(tree.cells_csv, tree.benchmarks_csv, out, n_boot=N_BOOT, seed=0)
    tables = {name: pd.read_csv(out / f"{name}.csv", keep_default_na=False, na_values=[""])
              for name in ("table2", "rsgrpo_vs_grpo", "published_comparison")}
    return tree, tables, out


def _stacked(tree, group: str, bench: str, k: int) -> np.ndarray:
    """[seeds, problems] pass@k of a group from the generated counts, with math.comb."""
    spec = next(b for b in tree.benchmarks if b.key == bench)
    cells = sorted((c for c in tree.cells if c.group == group), key=lambda c: -1 if c.seed is None else c.seed)
    return np.array([[1 - math.comb(spec.n - int(c), k) / math.comb(spec.n, k)
                      for c in tree.counts[(cell.cell, tree.final_step(cell.cell), bench)]] for cell in cells])


def test_seeded_table2_pools_the_replicates(seeded):
    tree, tables, out = seeded
    t2 = tables["table2"]
    assert list(dict.fromkeys(t2["cell"])) == ["q7/base", "q7/deepmath103k/grpo", "q7/deepmath103k/rs_grpo_beta2",
                                               "q7/deepmath103k/rs_grpo_beta4"]
    assert t2.groupby("cell", sort=False)["n_seeds"].first().tolist() == [1, 3, 3, 3]
    assert list(dict.fromkeys(t2["label"])) == ["Base", "GRPO", "RS-GRPO (β=2)", "RS-GRPO (β=4)"]
    assert set(t2["metric"]) == {"pass@1", "pass@32"}  # Table 2 keeps the paper's two metrics
    for _, r in t2[t2["benchmark"] != agg.AVG].iterrows():
        values = _stacked(tree, r["cell"], r["benchmark"], int(r["k"]))
        assert values.shape[0] == r["n_seeds"]
        # pooled = mean over seeds and problems (pass@1: the mean of c / n over all replicates' problems)
        assert r["pass_at_k_pct"] == pytest.approx(100 * values.mean(), abs=1e-4)
        ci = seed_bootstrap_ci(values, n_boot=N_BOOT, seed=0)
        assert (r["ci_low_pct"], r["ci_high_pct"]) == pytest.approx((100 * ci.low, 100 * ci.high), abs=1e-3)
        assert r["n_problems"] == values.shape[1] and r["n_samples"] == 64
    grpo_p1 = t2[(t2["cell"] == "q7/deepmath103k/grpo") & (t2["benchmark"] == "b64a") & (t2["metric"] == "pass@1")]
    counts = np.stack([tree.counts[(f"q7/deepmath103k/grpo-seed{s}", 1, "b64a")] for s in (0, 1, 2)])
    assert grpo_p1["pass_at_k_pct"].iloc[0] == pytest.approx(100 * counts.sum() / counts.size / 64, abs=1e-4)
    # the seeds disagree (+-0.15): the seed-aware CI is wider than the problem-only CI of the seed mean
    values = _stacked(tree, "q7/deepmath103k/grpo", "b64a", 1)
    problems_only = bootstrap_ci(values.mean(axis=0), n_boot=N_BOOT, seed=0)
    r = grpo_p1.iloc[0]
    assert r["ci_high_pct"] - r["ci_low_pct"] > 1.1 * 100 * (problems_only.high - problems_only.low)
    # AVG: unweighted mean over the benchmarks; its CI the stratified seeds x problems bootstrap
    avg = t2[(t2["cell"] == "q7/deepmath103k/grpo") & (t2["benchmark"] == agg.AVG) & (t2["metric"] == "pass@1")]
    strata = [_stacked(tree, "q7/deepmath103k/grpo", b.key, 1) for b in SEEDED_BENCHES]
    ci = stratified_bootstrap(strata, n_boot=N_BOOT, seed=0)
    assert avg["pass_at_k_pct"].iloc[0] == pytest.approx(100 * np.mean([s.mean() for s in strata]), abs=1e-4)
    assert (avg["ci_low_pct"].iloc[0], avg["ci_high_pct"].iloc[0]) == pytest.approx(
        (100 * ci.low, 100 * ci.high), abs=1e-3)
    md = (out / "table2.md").read_text()
    assert "| GRPO (3 seeds) |" in md and "| Base |" in md and "training seeds" in md


def test_seeded_rsgrpo_vs_grpo_pairs_groups_with_the_largest_k(seeded):
    tree, tables, out = seeded
    d = tables["rsgrpo_vs_grpo"]
    assert d.groupby(["rs_cell", "grpo_cell"], sort=False).size().to_dict() == {
        ("q7/deepmath103k/rs_grpo_beta2", "q7/deepmath103k/grpo"): 9,  # (2 benchmarks + AVG) x 3 metrics
        ("q7/deepmath103k/rs_grpo_beta4", "q7/deepmath103k/grpo"): 9}
    assert set(d["rs_n_seeds"]) == {3} and set(d["grpo_n_seeds"]) == {3}
    assert list(dict.fromkeys(d["metric"])) == ["pass@1", "pass@32", "pass@64"]
    assert set(d.loc[d["metric"] == "pass@64", "k"]) == {64}
    for _, r in d[d["benchmark"] != agg.AVG].iterrows():
        a = _stacked(tree, r["rs_cell"], r["benchmark"], int(r["k"]))
        b = _stacked(tree, r["grpo_cell"], r["benchmark"], int(r["k"]))
        assert r["rs_grpo_pct"] == pytest.approx(100 * a.mean(), abs=1e-4)
        assert r["diff_pct"] == pytest.approx(100 * (a.mean() - b.mean()), abs=1e-4)
        ci = paired_seed_difference(a, b, n_boot=N_BOOT, seed=0)
        assert (r["ci_low_pct"], r["ci_high_pct"]) == pytest.approx((100 * ci.low, 100 * ci.high), abs=1e-3)
    avg64 = d[(d["benchmark"] == agg.AVG) & (d["metric"] == "pass@64")
              & (d["rs_cell"] == "q7/deepmath103k/rs_grpo_beta2")].iloc[0]
    sa = [_stacked(tree, "q7/deepmath103k/rs_grpo_beta2", b.key, 64) for b in SEEDED_BENCHES]
    sb = [_stacked(tree, "q7/deepmath103k/grpo", b.key, 64) for b in SEEDED_BENCHES]
    ci = stratified_paired_difference(sa, sb, n_boot=N_BOOT, seed=0)
    assert avg64["diff_pct"] == pytest.approx(100 * np.mean([x.mean() - y.mean() for x, y in zip(sa, sb)]), abs=1e-4)
    assert (avg64["ci_low_pct"], avg64["ci_high_pct"]) == pytest.approx((100 * ci.low, 100 * ci.high), abs=1e-3)
    md = (out / "rsgrpo_vs_grpo.md").read_text()
    assert "| Comparison | AIME24 p@1 | AIME24 p@32 | AIME24 p@64 | MATH500 p@1 |" in md
    assert "| RS-GRPO (β=2) (3 seeds) - GRPO (3 seeds) |" in md and "largest k the samples allow" in md


def test_seeded_published_comparison_uses_the_pooled_numbers(seeded):
    _, tables, _ = seeded
    comp, t2 = tables["published_comparison"], tables["table2"]
    assert set(comp["cell"]) == {"q7/base", "q7/deepmath103k/grpo", "q7/deepmath103k/rs_grpo_beta2"}
    merged = comp.merge(t2, on=["setting", "cell", "benchmark", "metric"])
    assert len(merged) == len(comp) == 3 * 2 * 2  # groups x benchmarks x metrics (no AVG: not the paper's six)
    np.testing.assert_allclose(merged["ours_pct"], merged["pass_at_k_pct"])


def test_largest_k_only_where_the_samples_exceed_32(tmp_path):
    """pass@64 on the 64-sample benchmark only, and no AVG at 64 (the 8-sample one has no pass@64)."""
    q = dict(model="m", model_name="M", train_set="t", eval_steps=(1,))
    cells = [syn.CellSpec(**q, method="grpo", label="GRPO", transform=syn.grpo_like),
             syn.CellSpec(**q, method="rs_grpo", beta=2.0, label="RS", transform=syn.rs_grpo_like(2.0))]
    tree = syn.write_tree(tmp_path, cells, [syn.BenchSpec("big", "", 6, 64), syn.BenchSpec("small", "", 5, 8)],
                          seed=2)
    grid = cell_index.load_index(tree.cells_csv, tree.benchmarks_csv)
    d = agg.build_rsgrpo_vs_grpo(grid, n_boot=50)
    assert d[["benchmark", "metric"]].apply(tuple, axis=1).tolist() == [
        ("big", "pass@1"), ("big", "pass@32"), ("big", "pass@64"), ("small", "pass@1"), ("small", "pass@32"),
        (agg.AVG, "pass@1"), (agg.AVG, "pass@32")]
    assert d["k"].iloc[:6].tolist() == [1, 32, 64, 1, 8, 1] and pd.isna(d["k"].iloc[6])  # AVG: ks 32 and 8
    assert set(d["rs_n_seeds"]) == {1}
    big = d[d["metric"] == "pass@64"].iloc[0]
    rs = tree.counts[("m/t/rs_grpo_beta2", 1, "big")]
    gr = tree.counts[("m/t/grpo", 1, "big")]
    assert big["diff_pct"] == pytest.approx(100 * (np.mean(rs > 0) - np.mean(gr > 0)))  # pass@n: any correct
    md = agg.rsgrpo_vs_grpo_markdown(d)
    row = next(line for line in md.splitlines() if line.startswith("| RS - GRPO |"))
    assert "big p@64" in md and "small p@64" not in md and row.count("[") == 7
    # with ks capped at 32 there is no larger k to report
    bench = pd.read_csv(tree.benchmarks_csv, dtype=str, keep_default_na=False)
    bench.loc[bench["benchmark"] == "big", "ks"] = "1;2;4;8;16;32"
    bench.to_csv(tmp_path / "b32.csv", index=False)
    d32 = agg.build_rsgrpo_vs_grpo(cell_index.load_index(tree.cells_csv, tmp_path / "b32.csv"), n_boot=50)
    assert set(d32["metric"]) == {"pass@1", "pass@32"}


def test_cross_check_covers_every_replicate(seeded, tmp_path):
    tree, _, _ = seeded
    passk = pd.read_csv(tree.root / "q7/deepmath103k/grpo-seed2/eval/step_1/passk.csv")
    passk.loc[passk["k"] == 1, "pass_at_k"] += 0.01
    stale = tmp_path / "stale_passk.csv"
    passk.to_csv(stale, index=False)
    cells, bench = _edit_cells(tree, tmp_path,
                               lambda d: _set(d, "passk", str(stale), int(np.flatnonzero(
                                   d["cell"] == "q7/deepmath103k/grpo-seed2")[0])))
    with pytest.raises(ValueError, match=r"cell 'q7/deepmath103k/grpo-seed2'\) says pass@1 .* stale"):
        agg.aggregate(cells, bench, tmp_path / "out", n_boot=10)
