"""Which strategy the demo's policies use: per cell and benchmark of a finished ``make demo``, the share of
completions that follow the rare (worked) strategy, that strategy's accuracy, and the overall accuracy.

The demo's tables say *whether* a method solves the carry problems; this says *how*: the base model
writes the worked column addition in about a tenth of its completions, and a method either drops it
(the dominant strategy's local optimum) or switches to it. Strategies are told apart by
:func:`rsgrpo.prepare.synthetic.strategy_of` (an answer boxed at once is the dominant strategy).

    python scripts/demo_strategies.py [--results results] [--model adder]

Prints one row per cell and benchmark, then the mean over each configuration's seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from rsgrpo.analysis.cell_files import read_table
from rsgrpo.layout import GRADED, Layout
from rsgrpo.prepare.synthetic import strategy_of


def strategy_table(results: Path, model: str) -> pd.DataFrame:
    """One row per (cell, benchmark) of ``results/<model>/*/graded.parquet``."""
    layout = Layout(results=str(results))
    rows = []
    for path in sorted(Path(layout.cell_dir(model)).glob(f"*/{GRADED}")):
        cell = path.parent.name
        graded = read_table(path, "graded", ["benchmark", "text", "correct"])
        graded = graded.assign(rare=[strategy_of(t) == "rare" for t in graded["text"]])
        for bench, g in graded.groupby("benchmark", sort=True):
            rare = g[g["rare"]]
            rows.append({"cell": cell, "group": Layout().split_seed(cell)[0], "benchmark": bench,
                         "rare_share": g["rare"].mean(),
                         "rare_accuracy": rare["correct"].mean() if len(rare) else float("nan"),
                         "accuracy": g["correct"].mean(), "completions": len(g)})
    if not rows:
        raise SystemExit(f"no {GRADED} under {layout.cell_dir(model)}/: run `make demo` first")
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="the demo's results folder")
    parser.add_argument("--model", default="adder", help="the model key of config/demo.yaml")
    args = parser.parse_args(argv)
    table = strategy_table(args.results, args.model)
    columns = ["rare_share", "rare_accuracy", "accuracy"]
    with pd.option_context("display.width", 120, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
        print("\nmean over seeds:")
        print(table.groupby(["group", "benchmark"], sort=False)[columns].mean().to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
