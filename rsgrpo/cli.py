"""``python -m rsgrpo <verb> ...``: one command-line verb per workflow rule.

Naming convention: a workflow rule, its verb and the module holding that verb share one name, the
verb spelled with ``-`` where the rule and the module use ``_`` (rule ``plot_advantages`` runs
``python -m rsgrpo plot-advantages``, which lives in ``rsgrpo/plot_advantages.py``). Where a module
does more than its verb the verb keeps the rule's name and the module says what it holds:
``bandit`` lives in ``rsgrpo/bandit_cli.py`` (``rsgrpo/bandit.py`` is the pure simulation),
``prepare-model`` in ``rsgrpo/models.py``, ``prepare-data`` in ``rsgrpo/data.py``.
tests/test_cli.py checks that the rules of ``workflow/rules/*.smk`` and these verbs match.

Each verb is imported only when that verb runs, so ``python -m rsgrpo bandit`` never pays for
importing transformers. A verb module exposes ``add_arguments(parser)`` and ``main(args) -> int | None``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# verb -> (module, one-line description), in the workflow's order. Keep in sync with workflow/rules/*.smk.
VERBS: dict[str, tuple[str, str]] = {
    "prepare-model": ("rsgrpo.models", "model spec -> local HF checkpoint dir (hub, local, smollm2, tiny)"),
    "pretrain": ("rsgrpo.pretrain", "synthetic task -> a tiny transformer pretrained on its demonstrations "
                                    "(the miniature experiment's base model)"),
    "prepare-data": ("rsgrpo.data", "dataset spec (hf | local | generator) -> JSONL of {id, problem, answer}"),
    "plan": ("rsgrpo.plan", "workflow config -> memory per GPU and GPU-hours of every train and sample job (plan.csv)"),
    "train": ("rsgrpo.train", "RL training (RS-GRPO and baselines): checkpoints with exact resume, metrics.csv"),
    "sample": ("rsgrpo.sample", "checkpoint x benchmark -> parquet of n samples per problem"),
    "score": ("rsgrpo.score", "samples + benchmark -> graded samples parquet + passk.csv (pass@k with bootstrap CI)"),
    "cell-index": ("rsgrpo.cell_index", "workflow config -> cells.csv and benchmarks.csv (the results index)"),
    "aggregate": ("rsgrpo.aggregate", "cells.csv + benchmarks.csv -> Table 2, RS-GRPO - GRPO, ours vs published "
                                      "(CSV + Markdown, bootstrap CIs)"),
    "figures": ("rsgrpo.figures", "cells.csv + benchmarks.csv -> pass@k curves, beta ablation, unique answers, "
                                  "transition heatmap, entropy"),
    "bandit": ("rsgrpo.bandit_cli", "the paper's 100-armed bandit (Fig. 3): CSV and figure"),
    "plot-advantages": ("rsgrpo.plot_advantages", "advantage vs reward and vs prompt accuracy (Fig. 2)"),
}


def _usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = ["usage: python -m rsgrpo <verb> [options]", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {desc}" for verb, (_, desc) in VERBS.items()]
    lines += ["", "python -m rsgrpo <verb> --help shows a verb's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"rsgrpo: unknown verb {verb!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, desc = VERBS[verb]
    # Every verb logs INFO to stderr, which each workflow rule sends to its log file.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m rsgrpo {verb}", description=desc)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.main(args) or 0)
