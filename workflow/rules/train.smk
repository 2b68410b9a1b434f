rule train:
    """RL training of one cell. The resumable run directory (checkpoints, optimizer and RNG state)
    lives outside the declared outputs under runs/, so a retried or restarted job continues from its
    last complete checkpoint instead of starting over. `--nproc` ranks per node (one per GPU, or
    models.<key>.cpu_processes on CPU) are started by the train verb itself under
    torch.distributed.run; a job of several nodes (models.<key>.nodes) starts one launcher per node.
    The verb also keeps every attempt's output in the run directory's log: Snakemake empties the
    rule's log before a retry."""
    input:
        model=lambda wc: LAYOUT.model_dir(wc.model),
        data=lambda wc: LAYOUT.train_data(cell_of(wc).train_set),
    output:
        manifest=LAYOUT.manifest(LAYOUT.cell_dir("{model}/{run}")),
        metrics=LAYOUT.metrics(LAYOUT.cell_dir("{model}/{run}")),
    log:
        LAYOUT.log("train/{model}/{run}"),
    conda:
        software_env
    threads: lambda wc: max(2, train_ranks_per_node(wc))
    resources:
        gpu=lambda wc: model_gpus(wc) * model_nodes(wc),  # the job's total: --gpus=N
        nodes=model_nodes,
        # one SLURM task per node: the slurm plugin submits a job without GPUs with --ntasks=<tasks>
        # (1 by default, which shrinks a job of several nodes to one); for a GPU job it would read
        # `tasks` as --ntasks-per-gpu unless tasks_per_gpu is set, and 0 adds no such flag
        tasks=model_nodes,
        tasks_per_gpu=0,
        runtime=planned("train", "runtime"),
        mem_mb=planned("train", "mem_mb"),
    params:
        run_dir=lambda wc: LAYOUT.run_dir(f"{wc.model}/{wc.run}"),
        settings=lambda wc: set_flags(train_settings(cell_of(wc))),
        nproc=train_ranks_per_node,
    shell:
        "python -m rsgrpo train --nproc {params.nproc} --run-dir {params.run_dir} {params.settings}"
        " --out-manifest {output.manifest} --out-metrics {output.metrics} > {log} 2>&1"
