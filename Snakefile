# rsgrpo: the experiment as a DAG. Every rule is a thin call of `python -m rsgrpo <verb>`;
# all computation lives in the rsgrpo package. Config: config/grid.yaml (the paper's grid) by
# default, `--configfile config/demo.yaml` for the offline demo (see README.md).

configfile: "config/grid.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/bandit.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        rules.bandit.output,
        rules.plot_advantages.output,
    default_target: True
