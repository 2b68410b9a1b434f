# rsgrpo: the experiment of arXiv 2509.24261 (RS-GRPO) as a DAG. Every rule is a thin call of
# `python -m rsgrpo <verb>` (rule name = verb with `_` for `-`); all computation lives in the rsgrpo
# package and every path in rsgrpo/layout.py. Config: config/grid.yaml (the paper's grid) by default,
# `--configfile config/demo.yaml` for the offline demo, `--configfile config/calibrate.yaml` for the
# evaluation regime that reproduces the paper's base rows (first on a new cluster; see config/README.md).
#
# Targets: `all` (everything), one cell (`results/qwen7b/beta4/passk.csv`), one checkpoint of a cell
# (`results/qwen7b/beta4/step000100/passk.csv`), `results/bandit/bandit.png`, ...
from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


# The paper grid unless --configfile names other files. (A plain `configfile:` would be merged with
# every --configfile, so the demo would inherit the paper's models and benchmarks.)
if not workflow.overwrite_configfiles:

    configfile: "config/grid.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/bandit.smk"
include: "workflow/rules/plan.smk"


rule all:
    default_target: True
    input:
        rules.bandit.output,
        rules.plan.output,
        rules.plot_advantages.output,
        final_outputs(),
        rules.aggregate.output if CELLS else [],
        rules.figures.output if CELLS else [],
        rules.regime_comparison.output if REGIMES else [],
