"""`python -m rsgrpo regime-comparison`: which evaluation regimes reproduce the paper's base rows, on a
synthetic result tree whose published numbers are one regime's own (so that regime must reproduce them
and a regime sampling far worse must not)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import synthetic_results as syn

from rsgrpo import cli
from rsgrpo.analysis import regime_comparison as rc
from rsgrpo.analysis.aggregate import load_published_table
from rsgrpo.analysis.cell_index import load_index

N_BOOT = 200
BENCHES = [syn.BenchSpec("aime24", "AIME24", 30, 32), syn.BenchSpec("math500", "MATH500", 40, 32)]
Q7 = dict(model="qwen7b", model_name="Qwen2.5-Math-7B", published_model="Qwen2.5-Math-7B")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """qwen7b: its base model under the evaluation section and under regimes good (the latent
    probabilities) and bad (a fifth of them), and GRPO on two train sets (so the base model belongs to
    two settings of Table 2)."""
    cells = [syn.CellSpec(**Q7, method="base", label="Base", published_method="Base"),
             syn.CellSpec(**Q7, method="base", label="Base (good)", published_method="Base", regime="good"),
             syn.CellSpec(**Q7, method="base", label="Base (bad)", published_method="Base", regime="bad",
                          transform=lambda p: p * 0.2)]
    cells += [syn.CellSpec(**Q7, method="grpo", label="GRPO", published_method="GRPO", train_set=ts,
                           eval_steps=(1,), transform=syn.grpo_like) for ts in ("deepmath103k", "dapo17k")]
    return syn.write_tree(tmp_path_factory.mktemp("regimes"), cells, BENCHES, seed=5)


def published_as(tree, cell: str) -> pd.DataFrame:
    """A published Table 2 whose Base rows (repeated in both settings, as the paper does) are ``cell``'s
    own pass@1 and pass@32, from the drawn counts."""
    row = {}
    for b in BENCHES:
        c = tree.counts[(cell, 0, b.key)]
        row[f"{b.published_name}_p1"], row[f"{b.published_name}_p32"] = 100 * np.mean(c / b.n), 100 * np.mean(c > 0)
    row["AVG_p1"] = (row["AIME24_p1"] + row["MATH500_p1"]) / 2
    row["AVG_p32"] = (row["AIME24_p32"] + row["MATH500_p32"]) / 2
    index = pd.MultiIndex.from_tuples([(f"Qwen2.5-Math-7B/{ts}", "Base") for ts in ("deepmath103k", "dapo17k")],
                                      names=["setting", "method"])
    return pd.DataFrame([row, row], index=index)


def test_the_regime_whose_numbers_the_paper_gives_reproduces_them_and_a_far_one_does_not(tree):
    published = published_as(tree, "qwen7b/base-regime-good")
    comp = rc.build_regime_comparison(load_index(tree.cells_csv, tree.benchmarks_csv), published, n_boot=N_BOOT)
    assert list(comp.columns) == rc.COLUMNS
    # every base cell once (the base model is in two settings), trained cells never; 3 benchmarks x 2 metrics
    assert comp.groupby("regime").size().to_dict() == {"evaluation": 6, "good": 6, "bad": 6}
    assert set(comp["cell"]) == {"qwen7b/base", "qwen7b/base-regime-good", "qwen7b/base-regime-bad"}
    assert set(comp["model_name"]) == {"Qwen2.5-Math-7B"} and set(comp["benchmark_name"]) == {"AIME24", "MATH500",
                                                                                               "AVG"}
    good = comp[comp["regime"] == "good"]
    assert good["diff_pct"].abs().max() < 1e-9 and good["published_in_ci"].all() and good["reproduced"].all()
    bad = comp[comp["regime"] == "bad"].set_index(["benchmark_name", "metric"])
    assert not bad["reproduced"].any()
    # reproduced = pass@1 and pass@32 of the benchmark both inside: AIME24's pass@32 alone is not enough
    assert bad.loc[("AIME24", "pass@32"), "published_in_ci"] and not bad.loc[("AIME24", "pass@1"), "published_in_ci"]
    md = rc.regime_markdown(comp)
    assert "| Qwen2.5-Math-7B | evaluation, good | evaluation, good | evaluation, good |" in md
    assert "| bad | Base (bad) |" in md and "| evaluation | the evaluation section, the model's template |" in md
    assert "| bad | 7.0 [5.1, 9.2]* |" in md  # ours [CI], starred: the paper's number is outside
    assert "AIME24 p@1 (paper 25.5)" in md


def test_the_verb_writes_the_csv_and_markdown(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(rc, "load_published_table", lambda: published_as(tree, "qwen7b/base-regime-bad"))
    out_csv, out_md = tmp_path / "agg" / "regime_comparison.csv", tmp_path / "agg" / "regime_comparison.md"
    assert cli.main(["regime-comparison", "--cells", str(tree.cells_csv), "--benchmarks", str(tree.benchmarks_csv),
                     "--out-csv", str(out_csv), "--out-md", str(out_md), "--bootstrap", str(N_BOOT)]) == 0
    comp = pd.read_csv(out_csv, keep_default_na=False)
    assert comp.loc[comp["reproduced"], "regime"].unique().tolist() == ["bad"]
    assert "| Qwen2.5-Math-7B | bad | bad | bad |" in out_md.read_text()


def test_the_papers_base_rows_are_one_per_model():
    base = rc.published_base_rows(load_published_table())
    assert [m for m, _ in base.index] == ["Qwen2.5-Math-1.5B", "Qwen2.5-Math-7B", "Qwen2.5-7B", "Qwen3-4B-Base",
                                          "Llama-3.1-8B-Instruct"]
    # the rows the calibration is about: base Qwen2.5-Math-7B below general Qwen2.5-7B on MATH500
    assert base.loc[("Qwen2.5-Math-7B", "Base"), "MATH500_p1"] == 22.5
    assert base.loc[("Qwen2.5-7B", "Base"), "MATH500_p1"] == 62.8
    disagree = load_published_table().copy()  # a model's base rows that differ between its settings
    disagree.loc[("Qwen2.5-Math-7B/dapo17k", "Base"), "MATH500_p1"] = 23.0
    with pytest.raises(ValueError, match="'Qwen2.5-Math-7B' two different Base rows \\('Qwen2.5-Math-7B/dapo17k'"):
        rc.published_base_rows(disagree)


def test_a_grid_without_a_published_base_row_says_so(tmp_path):
    cells = [syn.CellSpec(model="toy", model_name="Toy", method="base", label="Base", regime="hot")]
    tree = syn.write_tree(tmp_path, cells, BENCHES, seed=1)
    comp = rc.build_regime_comparison(load_index(tree.cells_csv, tree.benchmarks_csv), n_boot=N_BOOT)
    assert comp.empty and list(comp.columns) == rc.COLUMNS
    assert "No base cell of this config has a published Base row" in rc.regime_markdown(comp)
