rule plot_advantages:
    """Paper Fig. 2: RS-GRPO advantage vs reward and vs prompt accuracy."""
    output:
        png=report(
            f"{RESULTS}/figures/advantages.png",
            caption="../report/advantages.rst",
            category="Advantages (Fig. 2)",
        ),
        pdf=f"{RESULTS}/figures/advantages.pdf",
    log:
        f"{LOGS}/plot_advantages.log",
    params:
        betas=space_separated(config["figures"]["advantage_betas"]),
        outdir=lambda wildcards, output: os.path.dirname(output.png),
    conda:
        RSGRPO_ENV
    resources:
        runtime=10,
        mem_mb=1000,
    shell:
        "python -m rsgrpo plot-advantages --betas {params.betas} --out {params.outdir} > {log} 2>&1"
