rule sample:
    """Checkpoint -> n completions per problem of every benchmark (one engine; resumable in chunks)."""
    input:
        unpack(sample_inputs),
    output:
        expand(LAYOUT.samples(LAYOUT.cell_dir("{{model}}/{{evalrun}}"), "{bench}"), bench=BENCHMARKS),
    log:
        LAYOUT.log("sample/{model}/{evalrun}"),
    conda:
        software_env
    threads: 2
    resources:
        gpu=lambda wc: min(1, model_gpus(wc)),
        runtime=planned("sample", "runtime"),
        mem_mb=planned("sample", "mem_mb"),
    params:
        checkpoint=checkpoint_dir,
        args=sample_args,
    shell:
        "python -m rsgrpo sample --model {params.checkpoint} --benchmark {input.benchmarks}"
        " --out {output} {params.args} --no-progress > {log} 2>&1"


rule score:
    """Grade every benchmark's samples of one checkpoint -> graded samples + pass@k with CIs."""
    input:
        samples=expand(LAYOUT.samples(LAYOUT.cell_dir("{{model}}/{{evalrun}}"), "{bench}"), bench=BENCHMARKS),
        benchmarks=expand(LAYOUT.benchmark_data("{bench}"), bench=BENCHMARKS),
    output:
        graded=LAYOUT.graded(LAYOUT.cell_dir("{model}/{evalrun}")),
        passk=LAYOUT.passk(LAYOUT.cell_dir("{model}/{evalrun}")),
    log:
        LAYOUT.log("score/{model}/{evalrun}"),
    conda:
        RSGRPO_ENV
    threads: 2
    params:
        names=space_separated(BENCHMARKS),
        workers="" if config["evaluation"]["workers"] is None else f"--workers {config['evaluation']['workers']}",
        timeout=config["evaluation"]["timeout"],
        bootstrap=config["evaluation"]["bootstrap"],
    shell:
        "python -m rsgrpo score --samples {input.samples} --benchmark {input.benchmarks}"
        " --benchmark-name {params.names} --out-graded {output.graded} --out-passk {output.passk}"
        " {params.workers} --timeout {params.timeout} --bootstrap {params.bootstrap} > {log} 2>&1"
