rule sample:
    """Checkpoint x benchmark -> n completions per problem (resumable in chunks)."""
    input:
        unpack(sample_inputs),
    output:
        f"{RESULTS}/{{model}}/{{evalrun}}/samples/{{bench}}.parquet",
    log:
        f"{LOGS}/sample/{{model}}/{{evalrun}}/{{bench}}.log",
    params:
        checkpoint=checkpoint_dir,
        args=sample_args,
    threads: 2
    resources:
        gpu=lambda wc: min(1, model_gpus(wc)),
    conda:
        RSGRPO_ENV
    shell:
        "python -m rsgrpo sample --model {params.checkpoint} --benchmark {input.benchmark}"
        " --out {output} {params.args} --no-progress > {log} 2>&1"


rule score:
    """Grade every benchmark's samples of one checkpoint -> graded samples + pass@k with CIs."""
    input:
        samples=expand(f"{RESULTS}/{{{{model}}}}/{{{{evalrun}}}}/samples/{{bench}}.parquet", bench=BENCHMARKS),
        benchmarks=expand(LAYOUT.benchmark_data("{bench}"), bench=BENCHMARKS),
    output:
        graded=f"{RESULTS}/{{model}}/{{evalrun}}/graded.parquet",
        passk=f"{RESULTS}/{{model}}/{{evalrun}}/passk.csv",
    log:
        f"{LOGS}/score/{{model}}/{{evalrun}}.log",
    params:
        names=space_separated(BENCHMARKS),
        workers="" if config["evaluation"]["workers"] is None else f"--workers {config['evaluation']['workers']}",
        timeout=config["evaluation"]["timeout"],
        bootstrap=config["evaluation"]["bootstrap"],
    threads: 2
    conda:
        RSGRPO_ENV
    shell:
        "python -m rsgrpo score --samples {input.samples} --benchmark {input.benchmarks}"
        " --benchmark-name {params.names} --out-graded {output.graded} --out-passk {output.passk}"
        " {params.workers} --timeout {params.timeout} --bootstrap {params.bootstrap} > {log} 2>&1"
