rule bandit:
    """Paper Fig. 3: the 100-armed bandit for every configured beta and seed."""
    output:
        csv=f"{RESULTS}/bandit/bandit.csv",
        png=report(
            f"{RESULTS}/bandit/bandit.png",
            caption="../report/bandit.rst",
            category="Bandit (Fig. 3)",
        ),
    log:
        f"{LOGS}/bandit.log",
    params:
        betas=space_separated(config["bandit"]["betas"]),
        seeds=config["bandit"]["seeds"],
        updates=config["bandit"]["updates"],
        record_every=config["bandit"]["record_every"],
        outdir=lambda wildcards, output: os.path.dirname(output.csv),
    conda:
        RSGRPO_ENV
    resources:
        runtime=30,
        mem_mb=2000,
    shell:
        "python -m rsgrpo bandit --betas {params.betas} --seeds {params.seeds}"
        " --updates {params.updates} --record-every {params.record_every}"
        " --out {params.outdir} > {log} 2>&1"
