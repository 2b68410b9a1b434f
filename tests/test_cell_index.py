"""``rsgrpo.analysis.cell_index`` with seed replicates: the ``seed`` and ``group`` columns written by
``cells_table``, their validation on reading (errors name file, column and value), the groups of
:class:`CellIndex` (display order, replicates by seed) and the stacked counts of a group; and the
columns ``rsgrpo.analysis.cell_files`` reads from the files train writes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synthetic_results as syn
import yaml

from rsgrpo import grid as G
from rsgrpo.analysis import cell_files, cell_index
from rsgrpo.train.metrics import METRIC_COLUMNS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Base, GRPO and RS-GRPO beta 2 / beta 4, three seeds each; cells.csv rows shuffled."""
    tree = syn.write_tree(tmp_path_factory.mktemp("seeded"), syn.seeded_cells(steps=(1,)),
                          [syn.BenchSpec("b1", "", 6, 4), syn.BenchSpec("b2", "", 4, 4)], seed=4)
    cells = pd.read_csv(tree.cells_csv, dtype=str, keep_default_na=False)
    cells.sample(frac=1.0, random_state=3).to_csv(tree.cells_csv, index=False)  # order by seed is ours to make
    return tree


def test_cells_table_writes_seed_and_group():
    cfg = yaml.safe_load((REPO / "config/grid.yaml").read_text())
    cfg = copy.deepcopy(cfg)
    for sweep in cfg["sweeps"]:  # a configuration trained by several sweeps gets the same seeds in each
        sweep["seeds"] = [0, 1, 2]
    cells = G.expand(cfg)
    rows = {r["cell"]: r for r in cell_index.cells_table(cfg, cells)}
    assert list(next(iter(rows.values()))) == cell_index.CELL_COLUMNS
    seeded = [r for r in rows.values() if r["seed"] != ""]
    assert seeded and {r["seed"] for r in seeded} == {0, 1, 2}
    for r in seeded:
        assert r["cell"] == f"{r['group']}-seed{r['seed']}"
        assert r["label"] == rows[r["cell"]]["label"] and "seed" not in r["label"]
    base = next(r for r in rows.values() if r["cell"].endswith("/base"))
    assert base["seed"] == "" and base["group"] == base["cell"]
    unseeded = [r for r in rows.values() if r["seed"] == ""]
    assert all(r["group"] == r["cell"] for r in unseeded)
    assert {c.group for c in cells} == {r["group"] for r in rows.values()}


def test_groups_in_display_order_with_replicates_by_seed(tree):
    index = cell_index.load_index(tree.cells_csv, tree.benchmarks_csv)
    g = index.groups
    assert list(g["label"]) == ["Base", "GRPO", "RS-GRPO (β=2)", "RS-GRPO (β=4)"]
    assert list(g["n_seeds"]) == [1, 3, 3, 3]
    grpo = g[g["group"] == "demo/arith/grpo"].iloc[0]
    assert grpo["cells"] == tuple(f"demo/arith/grpo-seed{s}" for s in (0, 1, 2)) and grpo["seeds"] == (0, 1, 2)
    assert g.iloc[0]["seeds"] == (None,) and g.iloc[0]["cells"] == ("demo/base",)
    assert index.replicates("demo/arith/rs_grpo_beta4") == [f"demo/arith/rs_grpo_beta4-seed{s}" for s in (0, 1, 2)]
    # memberships: a group's replicates next to each other, by seed
    m = index.memberships
    assert list(m["cell"]) == [c for cells in g["cells"] for c in cells]
    assert m["seed"].dtype == "Int64" and pd.isna(m.loc[0, "seed"])
    assert list(index.with_estimator(g, cell_index.RS_GRPO_ESTIMATOR)["group"]) == [
        "demo/arith/rs_grpo_beta2", "demo/arith/rs_grpo_beta4"]
    with pytest.raises(KeyError, match="no group 'nope'"):
        index.replicates("nope")


def test_group_counts_stack_the_replicates(tree):
    index = cell_index.load_index(tree.cells_csv, tree.benchmarks_csv)
    counts = index.group_counts("demo/arith/grpo")
    assert list(counts) == ["b1", "b2"]
    b1 = counts["b1"]
    assert b1.cells == tuple(f"demo/arith/grpo-seed{s}" for s in (0, 1, 2))
    assert b1.c.shape == (3, 6) and (b1.n == 4).all()
    for i, s in enumerate((0, 1, 2)):
        np.testing.assert_array_equal(b1.c[i], tree.counts[(f"demo/arith/grpo-seed{s}", 1, "b1")])
    np.testing.assert_allclose(b1.per_problem(1), b1.c / 4)
    pooled = b1.pooled()
    np.testing.assert_array_equal(pooled.c, b1.c.sum(axis=0))
    assert (pooled.n == 12).all() and list(pooled.problem_ids) == list(b1.problem_ids)
    sub = b1.subset(b1.problem_ids[[1, 4]])
    np.testing.assert_array_equal(sub.c, b1.c[:, [1, 4]])


def _edit(tree, tmp_path, edit) -> Path:
    cells = pd.read_csv(tree.cells_csv, dtype=str, keep_default_na=False)
    path = tmp_path / "cells.csv"
    edit(cells.set_index("cell", drop=False)).to_csv(path, index=False)
    return path


def _set(cell: str, col: str, value: str):
    def edit(df):
        df.loc[cell, col] = value
        return df
    return edit


ERRORS = {
    "seed column missing": (lambda d: d.drop(columns=["seed"]), r"cells file .* lacks column\(s\) \['seed'\]"),
    "group column missing": (lambda d: d.drop(columns=["group"]), r"lacks column\(s\) \['group'\]"),
    "seed not a number": (_set("demo/arith/grpo-seed1", "seed", "one"),
                          r"cell 'demo/arith/grpo-seed1': column 'seed' must be a non-negative integer or empty, "
                          r"got 'one'"),
    "negative seed": (_set("demo/arith/grpo-seed1", "seed", "-1"), r"column 'seed' must be .* got '-1'"),
    "group empty": (_set("demo/arith/grpo-seed1", "group", ""), r"column 'group' is empty in row \d+"),
    "seed repeated": (_set("demo/arith/grpo-seed1", "seed", "2"),
                      r"column 'seed' repeats 2 in group 'demo/arith/grpo'"),
    "replicates disagree": (_set("demo/arith/rs_grpo_beta2-seed2", "beta", "3"),
                            r"cells 'demo/arith/rs_grpo_beta2-seed\d' and 'demo/arith/rs_grpo_beta2-seed2' share "
                            r"group 'demo/arith/rs_grpo_beta2' but differ in column 'beta' \('2' vs '3'\)"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_seed_and_group_errors(tree, tmp_path, case):
    edit, pattern = ERRORS[case]
    with pytest.raises(ValueError, match=pattern):
        cell_index.load_index(_edit(tree, tmp_path, edit), tree.benchmarks_csv)


def test_replicates_with_different_problems_are_refused(tree, tmp_path):
    graded = pd.read_parquet(tree.root / "demo/arith/grpo-seed2/eval/step_1/graded.parquet")
    graded = graded.assign(problem_id=graded["problem_id"].str.replace("b1-000", "b1-999"))
    path = tmp_path / "graded.parquet"
    graded.to_parquet(path)
    index = cell_index.load_index(_edit(tree, tmp_path, _set("demo/arith/grpo-seed2", "graded", str(path))),
                                  tree.benchmarks_csv)
    with pytest.raises(ValueError, match=r"graded files .* group 'demo/arith/grpo'\) hold different problems on "
                                         r"benchmark 'b1' \(e.g. \['b1-000', 'b1-999'\]\)"):
        index.group_counts("demo/arith/grpo")


def test_unseeded_cell_joins_its_seeded_group_first(tree, tmp_path):
    """A sweep without seeds listing a seeded configuration: its cell is one more replicate, first."""
    def edit(df):
        row = df.loc["demo/arith/grpo-seed0"].copy()
        row["cell"], row["seed"] = "demo/arith/grpo", ""
        return pd.concat([df, row.to_frame().T], ignore_index=True)

    index = cell_index.load_index(_edit(tree, tmp_path, edit), tree.benchmarks_csv)
    grpo = index.groups[index.groups["group"] == "demo/arith/grpo"].iloc[0]
    assert grpo["cells"][0] == "demo/arith/grpo" and grpo["seeds"] == (None, 0, 1, 2) and grpo["n_seeds"] == 4


def test_metrics_read_are_columns_train_writes(tmp_path):
    """The analysis reads metrics.csv by the names train writes it with: every column it needs is one
    of train's, and a file with all of train's columns reads."""
    assert set(cell_files.METRICS_READ) <= set(METRIC_COLUMNS)
    path = tmp_path / "metrics.csv"
    pd.DataFrame([dict.fromkeys(METRIC_COLUMNS, 1.0) | {"step": s} for s in (2, 1)]).to_csv(path, index=False)
    assert list(cell_files.read_metrics(path)["step"]) == [1, 2]
