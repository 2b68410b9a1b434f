rule cell_index:
    """The evaluated grid as tables (cells.csv, benchmarks.csv): the aggregate step's index."""
    output:
        cells=f"{RESULTS}/aggregate/cells.csv",
        benchmarks=f"{RESULTS}/aggregate/benchmarks.csv",
    log:
        f"{LOGS}/cell_index.log",
    params:
        config=shlex.quote(json.dumps(config, sort_keys=True)),
    conda:
        RSGRPO_ENV
    shell:
        "python -m rsgrpo grid --config-json {params.config}"
        " --out-cells {output.cells} --out-benchmarks {output.benchmarks} > {log} 2>&1"


rule aggregate:
    """Table 2 with bootstrap CIs, RS-GRPO - GRPO with paired CIs, and ours vs the published numbers."""
    input:
        cells=rules.cell_index.output.cells,
        benchmarks=rules.cell_index.output.benchmarks,
        results=aggregate_inputs(),
    output:
        table2=report_table("table2", "table2"),
        table2_md=f"{RESULTS}/aggregate/table2.md",
        diff=report_table("rsgrpo_vs_grpo", "rsgrpo_vs_grpo"),
        diff_md=f"{RESULTS}/aggregate/rsgrpo_vs_grpo.md",
        published=report_table("published_comparison", "published_comparison"),
        published_md=f"{RESULTS}/aggregate/published_comparison.md",
    log:
        f"{LOGS}/aggregate.log",
    params:
        outdir=lambda wildcards, output: os.path.dirname(output.table2),
        bootstrap=config["evaluation"]["bootstrap"],
    conda:
        RSGRPO_ENV
    shell:
        "python -m rsgrpo aggregate --cells {input.cells} --benchmarks {input.benchmarks}"
        " --out {params.outdir} --bootstrap {params.bootstrap} > {log} 2>&1"


rule figures:
    """pass@k curves, beta ablation, unique answers, transition heatmap, entropy (those the grid allows)."""
    input:
        cells=rules.cell_index.output.cells,
        benchmarks=rules.cell_index.output.benchmarks,
        results=aggregate_inputs(),
    output:
        report(
            directory(f"{RESULTS}/figures/results"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Results figures",
            labels={"figure": "{name}"},
        ),
    log:
        f"{LOGS}/figures.log",
    conda:
        RSGRPO_ENV
    shell:
        "python -m rsgrpo plots --cells {input.cells} --benchmarks {input.benchmarks} --out {output} > {log} 2>&1"
