"""``python -m rsgrpo <verb> ...``: one command-line verb per workflow rule.

Naming convention: a workflow rule and its verb share one name (the verb spelled with ``-`` where the
rule uses ``_``), and the verb lives in ``rsgrpo/<stage>/<rule>.py``, where ``<stage>`` is the
subpackage of the workflow stage whose rule file ``workflow/rules/<stage>.smk`` holds the rule: rule
``plot_advantages`` of ``analysis.smk`` runs ``python -m rsgrpo plot-advantages``, which lives in
``rsgrpo/analysis/plot_advantages.py``. tests/test_cli.py checks that rules, verbs and modules match.

Each verb is imported only when that verb runs, so ``python -m rsgrpo bandit`` never pays for
importing transformers. A verb module exposes ``add_arguments(parser)`` and ``main(args) -> int | None``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# verb -> (stage, one-line description), in the workflow's order. Keep in sync with workflow/rules/*.smk.
VERBS: dict[str, tuple[str, str]] = {
    "prepare-model": ("prepare", "model spec -> local HF checkpoint dir (hub, local, smollm2, tiny, random)"),
    "pretrain": ("prepare", "synthetic task -> a tiny transformer pretrained on its demonstrations "
                            "(the miniature experiment's base model)"),
    "prepare-data": ("prepare", "dataset spec (hf | local | generator) -> JSONL of {id, problem, answer}"),
    "train": ("train", "RL training (RS-GRPO and baselines): checkpoints with exact resume, metrics.csv"),
    "sample": ("evaluate", "checkpoint x benchmarks -> parquet of n samples per problem, one per benchmark"),
    "score": ("evaluate", "samples + benchmark -> graded samples parquet + passk.csv (pass@k with bootstrap CI)"),
    "cell-index": ("analysis", "workflow config -> cells.csv and benchmarks.csv (the results index)"),
    "aggregate": ("analysis", "cells.csv + benchmarks.csv -> Table 2, RS-GRPO - GRPO, ours vs published "
                              "(CSV + Markdown, bootstrap CIs)"),
    "regime-comparison": ("analysis", "cells.csv + benchmarks.csv -> which evaluation regimes reproduce the "
                                      "paper's base rows (CSV + Markdown)"),
    "figures": ("analysis", "cells.csv + benchmarks.csv -> pass@k curves, beta ablation, unique answers, "
                            "transition heatmap, entropy"),
    "plot-advantages": ("analysis", "advantage vs reward and vs prompt accuracy (Fig. 2)"),
    "plan": ("plan", "workflow config -> memory per GPU and GPU-hours of every train and sample job (plan.csv)"),
    "bandit": ("bandit", "the paper's 100-armed bandit (Fig. 3): CSV and figure"),
}


def verb_module(verb: str) -> str:
    """The module holding ``verb``: ``rsgrpo.<stage>.<verb with _ for ->``."""
    stage, _ = VERBS[verb]
    return f"rsgrpo.{stage}.{verb.replace('-', '_')}"


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
    _, desc = VERBS[verb]
    # Every verb logs INFO to stderr, which each workflow rule sends to its log file.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    module = importlib.import_module(verb_module(verb))
    parser = argparse.ArgumentParser(prog=f"python -m rsgrpo {verb}", description=desc)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.main(args) or 0)
