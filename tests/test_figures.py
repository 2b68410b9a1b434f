"""``rsgrpo.analysis.figures`` (and the numbers of ``rsgrpo.analysis.figure_data``) on synthetic result
trees: files, panels, plotted numbers, the transition matrix and the unique-answer count against
hand-made cases, and graceful skipping."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from math import comb

import numpy as np
import pandas as pd
import pytest
import synthetic_results as syn

from rsgrpo.analysis import figure_data as fd
from rsgrpo.analysis import figures as rf
from rsgrpo.analysis.cell_index import load_index
from rsgrpo.cli import main as cli_main
from rsgrpo.evaluate.passk import pass_at_k, seed_bootstrap_ci


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The default synthetic grid rendered once (PNG + PDF); each figure's axes recorded before close."""
    tree = syn.write_tree(tmp_path_factory.mktemp("synthetic"), seed=2)
    return (tree, *_render(tree, tmp_path_factory.mktemp("figures"), formats=("pdf",)))


def _render(tree, out, formats):
    """(out, written, seen): the figures of ``tree`` rendered into ``out``, each one's axes recorded
    before the figure is closed."""
    seen = {}
    original = rf.save_figure

    def spy(fig, path, formats=None):
        seen[path.stem] = list(fig.axes)
        return original(fig, path, formats)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rf, "save_figure", spy)
        written = rf.make_figures(tree.cells_csv, tree.benchmarks_csv, out, formats=formats)
    return out, written, seen


def test_every_figure_written_as_png_and_pdf_and_indexed(rendered):
    tree, out, written, _ = rendered
    assert list(written) == list(rf.FIGURES)
    for name, paths in written.items():
        assert sorted(p.name for p in paths) == [f"{name}.pdf", f"{name}.png"]
        assert all(p.stat().st_size > 5_000 for p in paths)
    index = (out / "figures.txt").read_text().splitlines()
    assert index == [f"{name}\t{name}.png\t{name}.pdf" for name in rf.FIGURES]


def test_passk_curves_panels_and_values(rendered):
    tree, _, _, seen = rendered
    axes = seen["passk_curves"]
    assert len(axes) == 2 * 3  # settings x benchmarks
    assert [len(ax.get_lines()) for ax in axes] == [5, 5, 5, 3, 3, 3]  # cells per setting (Base included)
    assert axes[0].get_xscale() == "log"
    # top-left panel: 7B setting, aime24; the GRPO line is its passk.csv in percent
    passk = pd.read_csv(tree.root / "qwen7b/deepmath103k/grpo/eval/step_30/passk.csv")
    passk = passk[passk["benchmark"] == "aime24"]
    grpo = next(line for line in axes[0].get_lines() if line.get_label() == "GRPO")
    np.testing.assert_allclose(grpo.get_xdata(), passk["k"])
    np.testing.assert_allclose(grpo.get_ydata(), 100 * passk["pass_at_k"])
    assert len(axes[0].collections) == 5  # one CI band per line
    assert max(axes[2].get_lines()[0].get_xdata()) == 16  # toy has n = 16 samples


def test_beta_ablation_panels_and_values(rendered):
    tree, _, _, seen = rendered
    axes = seen["beta_ablation"]
    assert len(axes) == 4  # one setting (the 7B one has betas 2 and 4) x 4 panels
    assert [sorted(line.get_label() for line in ax.get_lines()) for ax in axes] == [
        ["GRPO", "RS-GRPO (β=2)", "RS-GRPO (β=4)"]] * 4
    pass1 = {line.get_label(): line for line in axes[2].get_lines()}["RS-GRPO (β=4)"]
    assert list(pass1.get_xdata()) == [0, 10, 20, 30]  # step 0 is the base model
    benches = [b.key for b in tree.benchmarks]
    for x, y in zip(pass1.get_xdata(), pass1.get_ydata()):
        cell = "qwen7b/base" if x == 0 else "qwen7b/deepmath103k/rs_grpo_beta4"
        step = 0 if x == 0 else int(x)
        expected = np.mean([tree.counts[(cell, step, b)].mean() / bs.n for b, bs in zip(benches, tree.benchmarks)])
        assert y == pytest.approx(100 * expected)
    # pass@32 panel: largest k <= 32 per benchmark (16 on toy), averaged
    pass32 = {line.get_label(): line for line in axes[3].get_lines()}["GRPO"]
    final = [np.mean([1 - comb(bs.n - int(c), min(32, bs.n)) / comb(bs.n, min(32, bs.n))
                      for c in tree.counts[("qwen7b/deepmath103k/grpo", 30, bs.key)]]) for bs in tree.benchmarks]
    assert pass32.get_ydata()[-1] == pytest.approx(100 * np.mean(final), abs=1e-6)
    metrics = pd.read_csv(tree.root / "qwen7b/deepmath103k/grpo/train/metrics.csv")
    solve = {line.get_label(): line for line in axes[0].get_lines()}["GRPO"]
    np.testing.assert_allclose(solve.get_ydata(), metrics["cumulative_solve_rate"])


def test_other_figures_panels(rendered):
    _, out, _, seen = rendered
    assert len(seen["unique_answers"]) == 2  # one panel per setting
    assert [len(ax.patches) for ax in seen["unique_answers"]] == [5 * 3, 3 * 3]  # cells x benchmarks bars
    assert len(seen["transition_heatmap"]) == 3  # GRPO -> beta 2 and beta 4 (7B), GRPO -> beta 2 (1.5B)
    assert len(seen["entropy"]) == 2
    assert [len(ax.get_lines()) for ax in seen["entropy"]] == [4, 2]  # trained runs per setting


def test_transition_matrix_csv_matches_the_counts(rendered):
    tree, out, _, _ = rendered
    tm = pd.read_csv(out / "transition_matrix.csv")
    for (_setting, a, b), g in tm.groupby(["setting", "from_cell", "to_cell"], sort=False):
        m = g.pivot(index="from_bin", columns="to_bin", values="count").loc[list(fd.ACCURACY_BINS),
                                                                           list(fd.ACCURACY_BINS)].to_numpy()
        c_from = np.concatenate([tree.counts[(a, 30, bs.key)] for bs in tree.benchmarks])
        n_from = np.concatenate([np.full(bs.n_problems, bs.n) for bs in tree.benchmarks])
        c_to = np.concatenate([tree.counts[(b, 30, bs.key)] for bs in tree.benchmarks])
        assert m.sum() == 90
        # row sums = problems per source bin, column sums = problems per target bin (independent binning)
        bins = lambda c, n: np.searchsorted([0, 0.2, 0.4, 0.6, 0.8], c / n, side="left")  # noqa: E731
        np.testing.assert_array_equal(m.sum(axis=1), np.bincount(bins(c_from, n_from), minlength=6))
        np.testing.assert_array_equal(m.sum(axis=0), np.bincount(bins(c_to, n_from), minlength=6))


def test_transition_matrix_hand_made_case():
    n = np.full(8, 10)
    c_from = np.array([0, 0, 1, 2, 3, 6, 10, 9])
    c_to = np.array([0, 4, 2, 5, 8, 6, 10, 10])
    # bins from: 0,0,1,1,2,3,5,5   to: 0,2,1,3,4,3,5,5
    expected = np.zeros((6, 6), dtype=int)
    for i, j in [(0, 0), (0, 2), (1, 1), (1, 3), (2, 4), (3, 3), (5, 5), (5, 5)]:
        expected[i, j] += 1
    np.testing.assert_array_equal(fd.transition_matrix(c_from, n, c_to, n), expected)
    # bin edges: exactly 0.2 is in (0, 0.2]; anything above in (0.2, 0.4]; 1.0 in (0.8, 1]
    np.testing.assert_array_equal(fd.accuracy_bins([0, 1, 3, 4, 5, 12, 13, 15], np.full(8, 15)),
                                  [0, 1, 1, 2, 2, 4, 5, 5])
    with pytest.raises(ValueError, match="0 <= correct <= n"):
        fd.accuracy_bins([3], [2])
    with pytest.raises(ValueError, match="same problems"):
        fd.transition_matrix([1, 2], [4, 4], [1], [4])


def test_unique_correct_ratio_hand_made():
    graded = pd.DataFrame({
        "benchmark": ["b"] * 8 + ["c"],
        "problem_id": ["p1"] * 5 + ["p2"] * 2 + ["p3"] + ["p1"],
        "text": ["x  y", "x y", " x y\n", "z", "w", "a", "a", "q", "x y"],
        "correct": [True, True, True, True, False, False, False, True, True],
    })
    got = fd.unique_correct_ratio(graded).set_index(["benchmark", "problem_id"])
    assert got.loc[("b", "p1")].tolist() == [4, 2]  # "x y" three times (whitespace variants) + "z"
    assert got.loc[("b", "p2")].tolist() == [0, 0]  # nothing correct
    assert got.loc[("b", "p3")].tolist() == [1, 1]
    assert got.loc[("c", "p1")].tolist() == [1, 1]  # same id in another benchmark is another problem
    assert fd.normalize_text("  a \t b\n\nc ") == "a b c" and fd.normalize_text(None) == ""
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['text'\]"):
        fd.unique_correct_ratio(graded.drop(columns=["text"]))


def test_unique_answers_csv_matches_an_independent_count(rendered):
    tree, out, _, _ = rendered
    table = pd.read_csv(out / "unique_answers.csv")
    cell = "qwen7b/deepmath103k/rs_grpo_beta2"
    graded = pd.read_parquet(tree.root / cell / "eval/step_30/graded.parquet")
    for bench, g in graded.groupby("benchmark"):
        ratios = []
        for _, p in g[g["correct"]].groupby("problem_id"):
            texts = [" ".join(t.split()) for t in p["text"]]
            ratios.append(len(set(texts)) / len(texts))
        row = table[(table["cell"] == cell) & (table["benchmark"] == bench)].iloc[0]
        assert row["unique_ratio"] == pytest.approx(np.mean(ratios))
        assert row["n_problems_with_correct"] == len(ratios)


def test_skips_figures_without_inputs(tmp_path):
    """Base models only: no training runs, so beta ablation, transitions and entropy are skipped."""
    cells = [syn.CellSpec(model="m", model_name="M", method="base", label="Base"),
             syn.CellSpec(model="k", model_name="K", method="base", label="Base")]
    tree = syn.write_tree(tmp_path / "tree", cells, [syn.BenchSpec("b1", "", 5, 4)], seed=0)
    out = tmp_path / "figs"
    assert cli_main(["figures", "--cells", str(tree.cells_csv), "--benchmarks", str(tree.benchmarks_csv),
                     "--out", str(out), "--formats", "png"]) == 0
    index = (out / "figures.txt").read_text().splitlines()
    assert [line for line in index if not line.startswith("#")] == [
        "passk_curves\tpassk_curves.png", "unique_answers\tunique_answers.png"]
    assert sorted(line for line in index if line.startswith("#")) == [
        "# skipped beta_ablation: no setting has two or more RS-GRPO runs (betas)",
        "# skipped entropy: no cell has a metrics.csv",
        "# skipped transition_heatmap: no setting has both a 'grpo' and a 'rs_grpo' cell"]
    assert sorted(p.name for p in out.iterdir()) == ["figures.txt", "passk_curves.csv", "passk_curves.png",
                                                     "unique_answers.csv", "unique_answers.png"]


def test_transition_source_and_target_by_label(tmp_path):
    q = dict(model="m", model_name="M", train_set="t", eval_steps=(1,))
    cells = [syn.CellSpec(**q, method="grpo", label="GRPO", transform=syn.grpo_like),
             syn.CellSpec(**q, method="chen", label="Chen2025", transform=syn.chen_like)]
    tree = syn.write_tree(tmp_path / "tree", cells, [syn.BenchSpec("b1", "", 7, 4)], seed=0)
    grid = load_index(tree.cells_csv, tree.benchmarks_csv)
    assert fd.transition_pairs(grid, "Chen2025", "grpo") == [("M/t", "m/t/chen", "m/t/grpo")]
    assert fd.transition_pairs(grid, "grpo", "rs_grpo") == []
    rf.house_style()
    (png,) = rf.plot_transition_heatmap(grid, tmp_path, (), "GRPO", "chen")
    assert png.stat().st_size > 5_000
    tm = pd.read_csv(tmp_path / "transition_matrix.csv")
    assert tm["count"].sum() == 7 and set(tm["to_cell"]) == {"m/t/chen"}
    with pytest.raises(rf.Skip, match="no setting has both a 'walder' and a 'chen' cell"):
        rf.plot_transition_heatmap(grid, tmp_path, (), "walder", "chen")


def test_metrics_missing_column_is_named(tmp_path):
    q = dict(model="m", model_name="M", train_set="t", eval_steps=(1,))
    tree = syn.write_tree(tmp_path / "tree", [syn.CellSpec(**q, method="grpo", label="GRPO")],
                          [syn.BenchSpec("b1", "", 3, 2)], seed=0)
    metrics = tree.root / "m/t/grpo/train/metrics.csv"
    pd.read_csv(metrics).drop(columns=["entropy"]).to_csv(metrics, index=False)
    with pytest.raises(ValueError, match=r"metrics file '.*metrics\.csv' lacks column\(s\) \['entropy'\]"):
        rf.make_figures(tree.cells_csv, tree.benchmarks_csv, tmp_path / "figs", formats=())


def test_graded_without_text_is_named(tmp_path):
    tree = syn.write_tree(tmp_path / "tree", [syn.CellSpec(model="m", model_name="M", method="base", label="Base")],
                          [syn.BenchSpec("b1", "", 3, 2)], seed=0)
    graded = tree.root / "m/base/eval/graded.parquet"
    pd.read_parquet(graded).drop(columns=["text"]).to_parquet(graded)
    with pytest.raises(ValueError, match=r"graded file '.*graded\.parquet' lacks column\(s\) \['text'\]"):
        rf.make_figures(tree.cells_csv, tree.benchmarks_csv, tmp_path / "figs", formats=())


def test_ablation_and_heatmap_find_their_cells_after_renaming_the_method_keys(tmp_path):
    """RS-GRPO and GRPO are found by estimator: with both config keys renamed the beta ablation and
    the default transition heatmap (grpo -> rs_grpo) still find the same cells, with the same colours."""
    renames = {"rs_grpo": "risk_seeking", "grpo": "vanilla"}
    cells = syn.rename_methods(syn.default_cells(), renames)
    ids = {old.cell: new.cell for old, new in zip(syn.default_cells(), cells)}
    plain = load_index(syn.write_tree(tmp_path / "plain", seed=2).cells_csv, tmp_path / "plain/benchmarks.csv")
    tree = syn.write_tree(tmp_path / "renamed", cells, seed=2)
    renamed = load_index(tree.cells_csv, tree.benchmarks_csv)
    assert set(renamed.memberships["method"]).isdisjoint(renames)

    def ablation(index):
        return [(s, list(g["group"])) for s, g in fd.ablation_settings(index)]

    assert ablation(renamed) == [(s, [ids[c] for c in cs]) for s, cs in ablation(plain)]
    assert len(ablation(renamed)) == 1 and len(ablation(renamed)[0][1]) == 3  # GRPO + betas 2 and 4
    assert fd.transition_pairs(renamed, "grpo", "rs_grpo") == [
        (s, ids[a], ids[b]) for s, a, b in fd.transition_pairs(plain, "grpo", "rs_grpo")]
    assert len(fd.transition_pairs(renamed, "grpo", "rs_grpo")) == 3
    colors_plain, colors_renamed = rf._colors(plain.memberships), rf._colors(renamed.memberships)
    assert {ids[c]: col for c, col in colors_plain.items()} == colors_renamed
    out = tmp_path / "figs"
    written = rf.make_figures(tree.cells_csv, tree.benchmarks_csv, out, formats=())
    assert list(written) == list(rf.FIGURES)  # nothing skipped
    tm = pd.read_csv(out / "transition_matrix.csv")
    assert set(tm["from_cell"]) == {ids["qwen7b/deepmath103k/grpo"], ids["qwen15b/deepmath103k/grpo"]}


# ------------------------------------------------------------------------------------ seed replicates
SEEDED_BENCHES = [syn.BenchSpec("b1", "B1", 10, 8), syn.BenchSpec("b2", "B2", 6, 8)]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Base, GRPO, RS-GRPO beta 2 and beta 4, three seeds each (offsets -0.1, 0, +0.1), rendered as PNG."""
    tree = syn.write_tree(tmp_path_factory.mktemp("seeded"), syn.seeded_cells(), SEEDED_BENCHES, seed=3)
    return (tree, *_render(tree, tmp_path_factory.mktemp("seeded_figures"), formats=()))


GROUPS = {"Base": "demo/base", "GRPO (3 seeds)": "demo/arith/grpo",
          "RS-GRPO (β=2) (3 seeds)": "demo/arith/rs_grpo_beta2", "RS-GRPO (β=4) (3 seeds)": "demo/arith/rs_grpo_beta4"}


def _replicates(tree, group: str) -> list[str]:
    return [c.cell for c in tree.cells if c.group == group]


def test_seeded_figures_all_written_one_entry_per_group(seeded):
    _, out, written, seen = seeded
    assert list(written) == list(rf.FIGURES)
    for name in ("passk_curves", "entropy"):
        labels = [t.get_text() for ax in seen[name] if ax.get_legend() for t in ax.get_legend().get_texts()]
        expected = list(GROUPS) if name == "passk_curves" else list(GROUPS)[1:]  # entropy: trained groups only
        assert labels == expected, name
    ablation_labels = [t.get_text() for t in seen["beta_ablation"][0].get_legend().get_texts()]
    assert ablation_labels == list(GROUPS)[1:]


def test_seeded_passk_curves_pool_the_seeds(seeded):
    tree, _, _, seen = seeded
    axes = seen["passk_curves"]
    assert len(axes) == 2 and [len(ax.get_lines()) for ax in axes] == [4, 4]
    assert [len(ax.collections) for ax in axes] == [4, 4]  # one band per group
    for line in axes[0].get_lines():
        group = GROUPS[line.get_label()]
        cells = _replicates(tree, group)
        ks = list(line.get_xdata())
        assert ks == [1, 2, 4, 8]
        expected = [np.mean([1 - comb(8 - int(c), k) / comb(8, k) for cell in cells
                             for c in tree.counts[(cell, tree.final_step(cell), "b1")]]) for k in ks]
        np.testing.assert_allclose(line.get_ydata(), 100 * np.array(expected), atol=1e-9)
    # the band of a 3-seed group is the seeds x problems bootstrap
    grpo = next(i for i, line in enumerate(axes[0].get_lines()) if line.get_label() == "GRPO (3 seeds)")
    values = np.array([pass_at_k(8, tree.counts[(cell, 4, "b1")], [1, 2, 4, 8])
                       for cell in _replicates(tree, "demo/arith/grpo")])
    ci = seed_bootstrap_ci(values, n_boot=fd.BAND_BOOT, seed=0)
    band = axes[0].collections[grpo].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(100 * ci.low.min()) and band[:, 1].max() == pytest.approx(
        100 * ci.high.max())
    # the numbers behind the lines and bands
    table = pd.read_csv(seeded[1] / "passk_curves.csv")
    rows = table[(table["group"] == "demo/arith/grpo") & (table["benchmark"] == "b1")].sort_values("k")
    assert list(rows["k"]) == [1, 2, 4, 8] and set(rows["n_seeds"]) == {3} and set(rows["label"]) == {"GRPO"}
    np.testing.assert_allclose(rows[["pass_at_k", "ci_low", "ci_high"]].to_numpy().T, [ci.mean, ci.low, ci.high],
                               rtol=1e-5)
    assert len(table[table["benchmark"] == "b1"]) == 4 * 4  # 4 groups x 4 ks


def test_seeded_beta_ablation_mean_and_min_max_band(seeded):
    tree, _, _, seen = seeded
    axes = seen["beta_ablation"]
    assert len(axes) == 4 and [len(ax.get_lines()) for ax in axes] == [3] * 4
    assert [len(ax.collections) for ax in axes] == [3] * 4  # a min-max band per group
    metrics = [pd.read_csv(tree.root / c / "train/metrics.csv") for c in _replicates(tree, "demo/arith/rs_grpo_beta4")]
    solve = next(line for line in axes[0].get_lines() if line.get_label() == "RS-GRPO (β=4) (3 seeds)")
    rates = np.stack([m["cumulative_solve_rate"] for m in metrics])
    np.testing.assert_allclose(solve.get_ydata(), rates.mean(axis=0))
    band = axes[0].collections[[line.get_label() for line in axes[0].get_lines()].index(solve.get_label())]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(rates.min()) and ys.max() == pytest.approx(rates.max())
    # test pass@1: mean over seeds of the benchmark-averaged pass@1 at each checkpoint, step 0 = base
    pass1 = next(line for line in axes[2].get_lines() if line.get_label() == "GRPO (3 seeds)")
    assert list(pass1.get_xdata()) == [0, 2, 4]
    for x, y in zip(pass1.get_xdata(), pass1.get_ydata()):
        cells = ["demo/base"] if x == 0 else _replicates(tree, "demo/arith/grpo")
        expected = np.mean([np.mean([tree.counts[(c, int(x), b.key)].mean() / b.n for b in SEEDED_BENCHES])
                            for c in cells])
        assert y == pytest.approx(100 * expected)


def test_seeded_unique_answers_and_transitions_pool_the_seeds(seeded):
    tree, out, _, seen = seeded
    table = pd.read_csv(out / "unique_answers.csv")
    assert len(table) == 4 * 2 and set(table.loc[table["cell"] != "demo/base", "n_seeds"]) == {3}
    assert [len(ax.patches) for ax in seen["unique_answers"]] == [4 * 2]
    ratios, with_correct = [], 0
    for cell in _replicates(tree, "demo/arith/rs_grpo_beta2"):
        graded = pd.read_parquet(tree.root / cell / "eval/step_4/graded.parquet")
        for _, p in graded[(graded["benchmark"] == "b2") & graded["correct"]].groupby("problem_id"):
            texts = [" ".join(t.split()) for t in p["text"]]
            ratios.append(len(set(texts)) / len(texts))
            with_correct += 1
    row = table[(table["cell"] == "demo/arith/rs_grpo_beta2") & (table["benchmark"] == "b2")].iloc[0]
    assert row["unique_ratio"] == pytest.approx(np.mean(ratios)) and row["n_problems_with_correct"] == with_correct

    tm = pd.read_csv(out / "transition_matrix.csv")
    assert list(dict.fromkeys(zip(tm["from_cell"], tm["to_cell"]))) == [
        ("demo/arith/grpo", "demo/arith/rs_grpo_beta2"), ("demo/arith/grpo", "demo/arith/rs_grpo_beta4")]
    g = tm[tm["to_cell"] == "demo/arith/rs_grpo_beta4"]
    m = g.pivot(index="from_bin", columns="to_bin", values="count").loc[list(fd.ACCURACY_BINS),
                                                                       list(fd.ACCURACY_BINS)].to_numpy()

    def pooled(group):  # c and n summed over the seeds, problems of both benchmarks
        c = np.concatenate([sum(tree.counts[(cell, 4, b.key)] for cell in _replicates(tree, group))
                            for b in SEEDED_BENCHES])
        return c, np.full(len(c), 3 * 8)

    np.testing.assert_array_equal(m, fd.transition_matrix(*pooled("demo/arith/grpo"),
                                                          *pooled("demo/arith/rs_grpo_beta4")))
    assert m.sum() == 16  # problems, not (seed, problem) pairs
    entropy = seen["entropy"][0]
    assert len(entropy.get_lines()) == 3 and len(entropy.collections) == 3


def test_one_beta_with_several_seeds_is_no_ablation(tmp_path):
    """Three seeds of a single RS-GRPO beta are not a beta ablation: that figure is skipped."""
    tree = syn.write_tree(tmp_path / "tree", syn.seeded_cells(seeds=(0, 1), rs_betas=(2.0,), steps=(1,)),
                          [syn.BenchSpec("b1", "", 4, 4)], seed=0)
    index = load_index(tree.cells_csv, tree.benchmarks_csv)
    assert fd.ablation_settings(index) == []
    rf.house_style()
    with pytest.raises(rf.Skip, match="two or more RS-GRPO runs"):
        rf.plot_beta_ablation(index, tmp_path, ())
    assert fd.transition_pairs(index, "grpo", "demo/arith/rs_grpo_beta2-seed1") == [
        ("Demo/arith", "demo/arith/grpo", "demo/arith/rs_grpo_beta2")]  # a replicate's id finds its group
