rule bandit:
    """Paper Fig. 3: the 100-armed bandit for every configured beta and seed."""
    output:
        csv=LAYOUT.bandit_csv(),
        png=report(
            LAYOUT.bandit_png(),
            caption="../report/bandit.rst",
            category="Bandit (Fig. 3)",
        ),
    log:
        LAYOUT.log("bandit"),
    conda:
        RSGRPO_ENV
    resources:
        runtime=30,
        mem_mb=2000,
    params:
        betas=space_separated(config["bandit"]["betas"]),
        seeds=config["bandit"]["seeds"],
        updates=config["bandit"]["updates"],
        record_every=config["bandit"]["record_every"],
        outdir=lambda wildcards, output: os.path.dirname(output.csv),
    shell:
        "python -m rsgrpo bandit --betas {params.betas} --seeds {params.seeds}"
        " --updates {params.updates} --record-every {params.record_every}"
        " --out {params.outdir} > {log} 2>&1"
