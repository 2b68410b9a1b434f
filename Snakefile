# rsgrpo: the experiment as a DAG. Every rule is a thin call of `python -m rsgrpo <verb>`;
# all computation lives in the rsgrpo package. Config: config/grid.yaml (the paper's grid) by
# default, `--configfile config/demo.yaml` for the offline demo (see README.md).
#
# Targets: `all` (everything), one cell (`results/qwen7b/beta4/passk.csv`), one checkpoint of a cell
# (`results/qwen7b/beta4/step000100/passk.csv`), `results/bandit/bandit.png`, ...

# The paper grid unless --configfile names other files. (A plain `configfile:` would be merged with
# every --configfile, so the demo would inherit the paper's models and benchmarks.)
if not workflow.overwrite_configfiles:

    configfile: "config/grid.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/bandit.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    input:
        rules.bandit.output,
        rules.plot_advantages.output,
        final_outputs(),
        rules.aggregate.output if CELLS else [],
        rules.figures.output if CELLS else [],
    default_target: True
