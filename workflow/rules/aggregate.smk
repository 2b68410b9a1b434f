rule cell_index:
    """The evaluated grid as tables (cells.csv, benchmarks.csv): the results index the analysis reads."""
    output:
        cells=LAYOUT.cells_index(),
        benchmarks=LAYOUT.benchmarks_index(),
    log:
        LAYOUT.log("cell_index"),
    conda:
        RSGRPO_ENV
    params:
        config=shlex.quote(json.dumps(config, sort_keys=True)),
    shell:
        "python -m rsgrpo cell-index --config-json {params.config}"
        " --out-cells {output.cells} --out-benchmarks {output.benchmarks} > {log} 2>&1"


rule aggregate:
    """Table 2 with bootstrap CIs, RS-GRPO - GRPO with paired CIs, and ours vs the published numbers."""
    input:
        cells=rules.cell_index.output.cells,
        benchmarks=rules.cell_index.output.benchmarks,
        results=aggregate_inputs(),
    output:
        table2=report_table("table2"),
        table2_md=LAYOUT.aggregate_table("table2", "md"),
        diff=report_table("rsgrpo_vs_grpo"),
        diff_md=LAYOUT.aggregate_table("rsgrpo_vs_grpo", "md"),
        published=report_table("published_comparison"),
        published_md=LAYOUT.aggregate_table("published_comparison", "md"),
    log:
        LAYOUT.log("aggregate"),
    conda:
        RSGRPO_ENV
    params:
        outdir=lambda wildcards, output: os.path.dirname(output.table2),
        bootstrap=config["evaluation"]["bootstrap"],
    shell:
        "python -m rsgrpo aggregate --cells {input.cells} --benchmarks {input.benchmarks}"
        " --out {params.outdir} --bootstrap {params.bootstrap} > {log} 2>&1"
