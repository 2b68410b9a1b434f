"""LoRA next to full fine-tuning for every model of a workflow config that trains (the ``plan`` verb's
``results/plan/lora_vs_full.csv`` and ``.md``, ``LAYOUT.lora_vs_full``; columns in docs/cluster.md): GB per
GPU, the fewest GPUs each fits on, GPU-hours and checkpoint sizes, priced as :mod:`rsgrpo.plan.plan`
prices a training job."""

from __future__ import annotations

from rsgrpo import capacity, capacity_lora
from rsgrpo.capacity import Shape
from rsgrpo.plan.rows import gb, lora_label, markdown_table, planned_cells, price_training, ranks_of, train_config

LORA_TITLE = "LoRA vs full fine-tuning, per model"
VARIANT_COLUMNS = ["run", "states_gb", "gb_per_gpu", "engine_gb", "fits", "gpus_needed", "gpu_hours", "checkpoint_gb"]
LORA_COLUMNS = (["model", "params_b", "gpus", "zero_stage", "gpu_memory_gb", "lora", "lora_from", "adapter_params_m"]
                + [f"{variant}_{c}" for c in VARIANT_COLUMNS for variant in ("full", "lora")])
MAX_GPUS_TRIED = 64  # the most GPUs the search for the fewest that fit tries
NO_GPUS = "-"  # gpus_needed of a CPU model


def _fits_entirely(row: dict) -> bool:
    """A train row fits its GPU, its engine holds a sequence and its engine share fits: nothing of it is
    among :func:`rsgrpo.plan.plan.misfits`."""
    return bool(row["fits"] and row["engine_fits"] and row["engine_share_fits"])


def _gpus_needed(cfg, model: dict, cell, shape: Shape, assume: dict) -> int | str:
    """The fewest GPUs (data-parallel ranks, at the cell's ZeRO stage) on which training ``cfg`` fits
    entirely; :data:`NO_GPUS` for a CPU model, ``>``:data:`MAX_GPUS_TRIED` when none does."""
    if int(model.get("gpus", 0)) == 0:
        return NO_GPUS
    for gpus in range(1, MAX_GPUS_TRIED + 1):  # memory per GPU only falls with more of them
        if _fits_entirely(price_training(cfg, {**model, "gpus": gpus, "nodes": 1}, cell, shape, assume)):
            return gpus
    return f">{MAX_GPUS_TRIED}"


def _trainer_gb(cfg, model: dict, shape: Shape, assume: dict) -> tuple[float, float]:
    """(model states and reference model, those plus the update's peak): GB per GPU the trainer needs
    without its rollout engine, on the GPUs of ``model``."""
    job = capacity.train_job(cfg, ranks=ranks_of(model)[2], prompt_tokens=int(assume["prompt_tokens"]))
    states = sum(capacity.model_states(shape, job).values())
    if cfg.kl_coef > 0:
        states += capacity.reference_model(shape, job)
    return gb(states), gb(states + sum(capacity.update_memory(shape, job).values()))


def lora_comparison(config: dict, layout=None) -> list[dict]:
    """LoRA next to full fine-tuning, one row per model with a training cell (columns
    :data:`LORA_COLUMNS`, documented in docs/cluster.md). Full fine-tuning is the model's first training
    cell without ``lora`` (or its first LoRA cell with ``lora: null``); LoRA is the model's first LoRA
    cell, else that full cell with the ``lora`` block of the config's first LoRA cell, else with
    :data:`rsgrpo.train.config_lora.DEFAULTS` (``lora_from`` says which). Both are priced on the model's
    GPUs, and the fewest GPUs each fits on is searched."""
    from rsgrpo.layout import LAYOUT
    from rsgrpo.train.config_lora import DEFAULTS

    layout = layout or LAYOUT
    assume = config["plan"]
    cells, shapes, _ = planned_cells(config, layout, [])
    configs = {c: train_config(config, c, layout) for c in cells if not c.is_base}
    lora_cells = [c for c, cfg in configs.items() if cfg.lora is not None]
    fallback = (lora_cells[0].id, configs[lora_cells[0]].lora) if lora_cells else ("defaults", dict(DEFAULTS))
    rows = []
    for key in dict.fromkeys(c.model for c in configs):
        model, shape = config["models"][key], shapes[key]
        own = [c for c in configs if c.model == key]
        full_cell = next((c for c in own if configs[c].lora is None), own[0])
        full = configs[full_cell] if configs[full_cell].lora is None else train_config(
            config, full_cell, layout, lora=None, note=" (lora: null)")
        lora_cell = next((c for c in own if c in lora_cells), None)
        if lora_cell is not None:
            lora_from, lora = lora_cell.id, configs[lora_cell]
        else:
            lora_cell, (lora_from, block) = full_cell, fallback
            lora = train_config(config, full_cell, layout, lora=block, note=f" (lora of {lora_from})")
        row = {"model": key, "params_b": round(shape.params / 1e9, 3)}
        for name, cfg, cell in (("full", full, full_cell), ("lora", lora, lora_cell)):
            priced = price_training(cfg, model, cell, shape, assume)
            states, trainer = _trainer_gb(cfg, model, shape, assume)
            row.update({f"{name}_run": cell.run, f"{name}_states_gb": states, f"{name}_gb_per_gpu": trainer,
                        f"{name}_engine_gb": priced["engine_gb"], f"{name}_fits": _fits_entirely(priced),
                        f"{name}_gpus_needed": _gpus_needed(cfg, model, cell, shape, assume),
                        f"{name}_gpu_hours": priced["gpu_hours"], f"{name}_checkpoint_gb": priced["checkpoint_gb"]})
            row.update(gpus=priced["gpus"], gpu_memory_gb=priced["gpu_memory_gb"])
        same = full.zero_stage == lora.zero_stage  # else "full/lora": the two cells set different stages
        job = capacity.train_job(lora, ranks=1, prompt_tokens=int(assume["prompt_tokens"]))
        row.update(zero_stage=full.zero_stage if same else f"{full.zero_stage}/{lora.zero_stage}",
                   lora=lora_label(job.lora), lora_from=lora_from,
                   adapter_params_m=round(capacity_lora.adapter_params(shape, job.lora) / 1e6, 2))
        rows.append({c: row[c] for c in LORA_COLUMNS})
    return rows


def lora_markdown(rows: list[dict]) -> str:
    """The comparison as a Markdown section: its heading and every column but the runs and ``fits``."""
    if not rows:
        return f"## {LORA_TITLE}\n\nNo model of the config trains."
    shown = [c for c in LORA_COLUMNS if c not in ("full_run", "lora_run", "full_fits", "lora_fits")]
    return f"## {LORA_TITLE}\n\n" + markdown_table(rows, shown)
