# Model and dataset preparation. Local rules: on a cluster they run on the login node, which usually
# is the one with hub access.


localrules:
    prepare_model,
    prepare_data,


rule prepare_model:
    """Model spec -> a local Hugging Face checkpoint directory."""
    output:
        directory(f"{LAYOUT.models}/{{model}}"),
    log:
        f"{LOGS}/prepare_model/{{model}}.log",
    params:
        spec=lambda wc: shlex.quote(json.dumps(config["models"][wc.model]["spec"])),
    conda:
        RSGRPO_ENV
    shell:
        "python -m rsgrpo prepare-model --spec {params.spec} --out {output} > {log} 2>&1"


rule prepare_data:
    """Dataset spec (hub, local file or offline generator) -> JSONL of {id, problem, answer}."""
    output:
        f"{LAYOUT.data}/{{kind}}/{{name}}.jsonl",
    log:
        f"{LOGS}/prepare_data/{{kind}}/{{name}}.log",
    wildcard_constraints:
        kind="train|benchmarks",
    params:
        spec=dataset_spec,
    conda:
        RSGRPO_ENV
    shell:
        "python -m rsgrpo prepare-data --spec {params.spec} --out {output} > {log} 2>&1"
