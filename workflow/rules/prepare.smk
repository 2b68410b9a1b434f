# Model and dataset preparation. Local rules: on a cluster they run on the login node, which usually
# is the one with hub access.


localrules:
    prepare_model,
    prepare_data,


rule prepare_model:
    """Model spec -> a local Hugging Face checkpoint directory."""
    output:
        directory(LAYOUT.model_dir("{model}")),
    log:
        LAYOUT.log("prepare_model/{model}"),
    wildcard_constraints:
        model=model_keys(pretrained=False),
    conda:
        RSGRPO_ENV
    params:
        spec=lambda wc: shlex.quote(json.dumps(config["models"][wc.model]["spec"])),
    shell:
        "python -m rsgrpo prepare-model --spec {params.spec} --out {output} > {log} 2>&1"


rule pretrain:
    """Synthetic task -> a tiny transformer pretrained on its demonstrations (spec source pretrain)."""
    output:
        directory(LAYOUT.model_dir("{model}")),
    log:
        LAYOUT.log("pretrain/{model}"),
    wildcard_constraints:
        model=model_keys(pretrained=True),
    conda:
        RSGRPO_ENV
    threads: 2
    params:
        spec=lambda wc: shlex.quote(json.dumps(config["models"][wc.model]["spec"])),
    shell:
        "OMP_NUM_THREADS={threads} python -m rsgrpo pretrain --spec {params.spec} --out {output} > {log} 2>&1"


rule prepare_data:
    """Dataset spec (hub, local file or offline generator) -> JSONL of {id, problem, answer}."""
    output:
        LAYOUT.data_file("{kind}", "{name}"),
    log:
        LAYOUT.log("prepare_data/{kind}/{name}"),
    wildcard_constraints:
        kind=f"{LAYOUT.TRAIN_DATA}|{LAYOUT.BENCHMARK_DATA}",
    conda:
        RSGRPO_ENV
    params:
        spec=dataset_spec,
    shell:
        "python -m rsgrpo prepare-data --spec {params.spec} --out {output} > {log} 2>&1"
