# Analysis (rsgrpo.analysis): the results index, Table 2 and its comparisons, figures, Fig. 2.


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


rule regime_comparison:
    """Which evaluation regimes reproduce the paper's base rows: every base cell vs Table 2's Base row."""
    input:
        cells=rules.cell_index.output.cells,
        benchmarks=rules.cell_index.output.benchmarks,
        results=regime_inputs(),
    output:
        csv=report(
            LAYOUT.regime_comparison("csv"),
            caption="../report/regime_comparison.rst",
            category="Tables",
        ),
        md=LAYOUT.regime_comparison("md"),
    log:
        LAYOUT.log("regime_comparison"),
    conda:
        RSGRPO_ENV
    params:
        bootstrap=config["evaluation"]["bootstrap"],
    shell:
        "python -m rsgrpo regime-comparison --cells {input.cells} --benchmarks {input.benchmarks}"
        " --out-csv {output.csv} --out-md {output.md} --bootstrap {params.bootstrap} > {log} 2>&1"


rule figures:
    """pass@k curves, beta ablation, unique answers, transition heatmap, entropy (those the grid allows)."""
    input:
        cells=rules.cell_index.output.cells,
        benchmarks=rules.cell_index.output.benchmarks,
        results=aggregate_inputs(),
    output:
        report(
            directory(LAYOUT.result_figures_dir()),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Results figures",
            labels={"figure": "{name}"},
        ),
    log:
        LAYOUT.log("figures"),
    conda:
        RSGRPO_ENV
    shell:
        "python -m rsgrpo figures --cells {input.cells} --benchmarks {input.benchmarks} --out {output} > {log} 2>&1"


rule plot_advantages:
    """Paper Fig. 2: RS-GRPO advantage vs reward and vs prompt accuracy."""
    output:
        png=report(
            LAYOUT.advantages("png"),
            caption="../report/advantages.rst",
            category="Advantages (Fig. 2)",
        ),
        pdf=LAYOUT.advantages("pdf"),
    log:
        LAYOUT.log("plot_advantages"),
    conda:
        RSGRPO_ENV
    resources:
        runtime=10,
        mem_mb=1000,
    params:
        betas=space_separated(config["figures"]["advantage_betas"]),
        outdir=lambda wildcards, output: os.path.dirname(output.png),
    shell:
        "python -m rsgrpo plot-advantages --betas {params.betas} --out {params.outdir} > {log} 2>&1"
