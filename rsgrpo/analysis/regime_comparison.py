"""``python -m rsgrpo regime-comparison`` (rule ``regime_comparison``): which evaluation regimes reproduce
the paper's base rows.

The paper does not state how it sampled its evaluations (temperature, top-p, prompt template, max
tokens), and its Table 2 base rows look regime-specific (base Qwen2.5-Math-7B at 22.5 pass@1 on MATH500,
below general Qwen2.5-7B at 62.8). A config with ``regimes`` (``config/calibrate.yaml``) samples every
base model under each regime, one cell per regime (``results/<model>/base-regime-<name>/``, column
``regime`` of ``cells.csv``); this verb sets each base cell's pass@1 and pass@32 per benchmark, with
their 95% bootstrap CIs over problems, against the paper's Base row of that model. Table 2 repeats a
model's base numbers in each of its settings, so a base cell is compared once per model, whatever
training sets the config has. A base cell without a regime (the ``evaluation`` section's sampling)
is compared too, as regime ``evaluation``.

The numbers are :func:`rsgrpo.analysis.aggregate.build_table2`'s and the comparison
:func:`rsgrpo.analysis.aggregate.build_published_comparison`'s (pass@32 only where our k is exactly 32,
AVG only where our benchmarks are exactly the paper's six), restricted to the base cells. Outputs:

* ``regime_comparison.csv``: one row per (model, regime, benchmark or AVG, metric): ``model_name,
  regime, cell, label, benchmark, benchmark_name, metric, k, ours_pct, ci_low_pct, ci_high_pct,
  published_pct, diff_pct, published_in_ci, reproduced``; ``reproduced``: the published pass@1 *and*
  pass@32 of that benchmark both lie in our CIs (False where either is not comparable).
* ``regime_comparison.md``: per model and benchmark the regimes that reproduce both numbers, the
  regimes' sampling (their labels), and per model every regime's numbers against the paper's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from rsgrpo.analysis.aggregate import TABLE_K, build_published_comparison, build_table2, load_published_table
from rsgrpo.analysis.cell_index import BASE_ESTIMATOR, CellIndex, load_index
from rsgrpo.io import atomic_path

__all__ = ["COLUMNS", "EVALUATION", "BASE", "published_base_rows", "base_index", "build_regime_comparison",
           "regime_markdown", "regime_comparison"]

COLUMNS = ["model_name", "regime", "cell", "label", "benchmark", "benchmark_name", "metric", "k", "ours_pct",
           "ci_low_pct", "ci_high_pct", "published_pct", "diff_pct", "published_in_ci", "reproduced"]
EVALUATION = "evaluation"  # the regime column of a base cell sampled under the evaluation section itself
BASE = "Base"  # the paper's name of the base rows (a cell's published_method)
METRICS = ("pass@1", f"pass@{TABLE_K}")


def published_base_rows(published: pd.DataFrame) -> pd.DataFrame:
    """The paper's Base row of each model, indexed by (model, ``Base``) like the table's (setting, method):
    Table 2 repeats a model's base numbers in every setting of it; ValueError if two settings disagree."""
    base = published[published.index.get_level_values("method") == BASE]
    rows = {}
    for (setting, _), row in base.iterrows():
        model = setting.partition("/")[0]
        if model in rows and not rows[model].equals(row):
            raise ValueError(f"the published Table 2 gives model {model!r} two different Base rows "
                             f"({setting!r} and an earlier setting)")
        rows.setdefault(model, row)
    index = pd.MultiIndex.from_tuples([(m, BASE) for m in rows], names=["setting", "method"])
    return pd.DataFrame(list(rows.values()), index=index, columns=published.columns)


def base_index(index: CellIndex) -> CellIndex:
    """``index`` restricted to its base cells, each once, in one setting per model named after the model
    (its display name, the paper's where it has one)."""
    m = index.memberships
    base = m[m["estimator"] == BASE_ESTIMATOR].drop_duplicates("cell")
    base = base.assign(setting=base["model_display"], train_set="").reset_index(drop=True)
    return CellIndex(index.cells, base, index.benchmarks, index.cells_path, index.benchmarks_path)


def build_regime_comparison(index: CellIndex, published: pd.DataFrame | None = None, *, n_boot: int = 2000,
                            seed: int = 0) -> pd.DataFrame:
    """The rows of ``regime_comparison.csv`` (see the module docstring) for every base cell of ``index``."""
    published = load_published_table() if published is None else published
    sub = base_index(index)
    if sub.memberships.empty:
        return pd.DataFrame(columns=COLUMNS)
    comp = build_published_comparison(build_table2(sub, n_boot=n_boot, seed=seed), sub,
                                      published_base_rows(published))
    regimes = index.cells["regime"].replace("", EVALUATION)
    comp = comp.assign(model_name=comp["setting"], regime=comp["cell"].map(regimes))
    both = comp.groupby(["cell", "benchmark"])["published_in_ci"].agg(["all", "size"])
    ok = both[(both["all"]) & (both["size"] == len(METRICS))].index
    comp["reproduced"] = [key in ok for key in zip(comp["cell"], comp["benchmark"])]
    return comp[COLUMNS].reset_index(drop=True)


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
            + ["| " + " | ".join(row) + " |" for row in body])


def regime_markdown(comp: pd.DataFrame) -> str:
    """``regime_comparison.md``: the summary (per model and benchmark, the regimes that reproduce both
    numbers), the regimes' sampling, then per model each regime's numbers against the paper's."""
    out = ["# Evaluation regimes vs the paper's base rows (Table 2 of arXiv 2509.24261)", "",
           f"A regime reproduces a benchmark when the published base pass@1 and pass@{TABLE_K} both lie inside "
           "our 95% bootstrap CI over problems. Percent points.", ""]
    if comp.empty:
        return "\n".join(out + ["No base cell of this config has a published Base row to compare with (a model "
                                "needs published_name, methods.base published: Base).", ""])
    benches = list(dict.fromkeys(comp["benchmark_name"]))
    body = []
    for model, g in comp.groupby("model_name", sort=False):
        row = [model]
        for bench in benches:
            b = g[g["benchmark_name"] == bench]
            if set(b["metric"]) != set(METRICS):
                row.append("n/a" if b.empty else f"p@{TABLE_K} not comparable")
                continue
            row.append(", ".join(dict.fromkeys(b.loc[b["reproduced"], "regime"])) or "none")
        body.append(row)
    out += ["## Regimes that reproduce both numbers", "", *_md_table(["Model", *benches], body), ""]
    legend = [[r["regime"], "the evaluation section, the model's template" if r["regime"] == EVALUATION
               else r["label"]] for _, r in comp.drop_duplicates(["regime", "label"]).iterrows()]
    out += ["## Regimes", "", *_md_table(["regime", "sampling (cell label)"], legend), ""]
    for model, g in comp.groupby("model_name", sort=False):
        cols = list(dict.fromkeys(zip(g["benchmark_name"], g["metric"])))
        header = ["Regime"]
        for bench, metric in cols:
            pub = g.loc[(g["benchmark_name"] == bench) & (g["metric"] == metric), "published_pct"].iloc[0]
            header.append(f"{bench} p@{metric.removeprefix('pass@')} (paper {pub:.1f})")
        rows = []
        for regime, r in g.groupby("regime", sort=False):
            idx = r.set_index(["benchmark_name", "metric"])
            cells = []
            for key in cols:
                if key not in idx.index:
                    cells.append("")
                    continue
                x = idx.loc[key]
                cells.append(f"{x['ours_pct']:.1f} [{x['ci_low_pct']:.1f}, {x['ci_high_pct']:.1f}]"
                             + ("" if x["published_in_ci"] else "*"))
            rows.append([regime, *cells])
        out += [f"## {model}", "", "Ours [95% CI]; * = the paper's number lies outside our CI.", "",
                *_md_table(header, rows), ""]
    return "\n".join(out)


def regime_comparison(cells: str | Path, benchmarks: str | Path, out_csv: str | Path, out_md: str | Path, *,
                      n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Write ``regime_comparison.csv`` and ``.md`` from the results index; returns the table."""
    if n_boot < 1:
        raise ValueError(f"--bootstrap must be >= 1, got {n_boot}")
    comp = build_regime_comparison(load_index(cells, benchmarks), n_boot=n_boot, seed=seed)
    with atomic_path(out_csv) as tmp:
        comp.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(out_md) as tmp:
        tmp.write_text(regime_markdown(comp) + "\n")
    return comp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cells", required=True, type=Path, help="cells.csv of the evaluated grid")
    parser.add_argument("--benchmarks", required=True, type=Path, help="benchmarks.csv")
    parser.add_argument("--out-csv", required=True, type=Path, help="regime_comparison.csv to write")
    parser.add_argument("--out-md", required=True, type=Path, help="regime_comparison.md to write")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples per CI (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def main(args: argparse.Namespace) -> int:
    comp = regime_comparison(args.cells, args.benchmarks, args.out_csv, args.out_md, n_boot=args.bootstrap,
                             seed=args.seed)
    print(f"{comp['cell'].nunique()} base cells compared; {args.out_csv}, {args.out_md}")
    return 0
