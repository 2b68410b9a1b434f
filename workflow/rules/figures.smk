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
