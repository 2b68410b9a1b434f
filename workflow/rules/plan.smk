rule plan:
    """Memory per GPU and GPU-hours of every train and sample job of the config, before any runs, and per
    model LoRA next to full fine-tuning (GB per GPU, GPUs needed, GPU-hours); the config check has already
    refused a job that does not fit its GPU. A sampling job's size is the benchmark's problem count once
    the benchmark is prepared (before, the config's assumption): the rule waits for the benchmarks, so the
    plan it writes does not depend on the order jobs ran in."""
    input:
        expand(LAYOUT.benchmark_data("{bench}"), bench=BENCHMARKS),
    output:
        csv=report(LAYOUT.plan_csv(), caption="../report/plan.rst", category="Plan"),
        lora_csv=report(
            LAYOUT.lora_vs_full("csv"),
            caption="../report/plan.rst",
            category="Plan",
        ),
        lora_md=LAYOUT.lora_vs_full("md"),
    log:
        LAYOUT.log("plan"),
    conda:
        RSGRPO_ENV
    params:
        config=shlex.quote(json.dumps(config, sort_keys=True)),
    shell:
        "python -m rsgrpo plan --config-json {params.config} --out {output.csv}"
        " --lora-csv {output.lora_csv} --lora-md {output.lora_md} > {log} 2>&1"
