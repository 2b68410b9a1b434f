"""The train config's ``lora`` block: LoRA training (PEFT) instead of full fine-tuning.

``lora: null`` (the default) trains every weight. A mapping trains low-rank adapters on the target
modules with the base frozen::

    lora: {rank: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}

Keys left out take :data:`DEFAULTS`. ``target_modules``: ``all-linear`` (every linear layer of the
decoder, the output head excepted: PEFT's ``all-linear``) or a list of module names, each matched as
PEFT matches them (the last component(s) of a module's name: ``q_proj``, ``mlp.down_proj``).
Whether the names match a layer of the model is checked against its ``config.json`` before the
weights load (:func:`rsgrpo.train.lora.check_targets`).

Torch-free: imported by :func:`rsgrpo.train.config.validate`.
"""

from __future__ import annotations

from rsgrpo.train.config_values import config_error

__all__ = ["DEFAULTS", "check", "hash_skips"]

DEFAULTS = {"rank": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": "all-linear"}
ALL_LINEAR = "all-linear"
# Modules whose adapters could not be merged into what a Hugging Face checkpoint stores
# (an embedding tied to the output head holds one tensor for both).
UNMERGEABLE = ("lm_head", "embed_tokens")


def hash_skips(cfg) -> set[str]:
    """``lora: null`` trains as before the key existed: left out of the hash, so earlier runs resume."""
    return {"lora"} if cfg.lora is None else set()


def check(cfg, source: str) -> None:
    """Check ``cfg.lora`` and fill in its defaults (in ``cfg``); ValueError naming the key and value."""
    block = cfg.lora
    if block is None:
        return
    if not isinstance(block, dict):
        raise config_error(source, "lora", block, "must be a mapping {rank, alpha, dropout, target_modules} or null")
    unknown = sorted(set(block) - set(DEFAULTS))
    if unknown:
        raise config_error(source, f"lora.{unknown[0]}", block[unknown[0]],
                           f"unknown key; allowed keys: {sorted(DEFAULTS)}")
    full = {**DEFAULTS, **block}

    def need(key, ok, problem):
        if not ok:
            raise config_error(source, f"lora.{key}", full[key], problem)

    rank, alpha, dropout, targets = full["rank"], full["alpha"], full["dropout"], full["target_modules"]
    need("rank", isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1, "must be an integer >= 1")
    need("alpha", isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0,
         "must be a number > 0 (the adapter's update is scaled by alpha / rank)")
    need("dropout", isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1,
         "must be in [0, 1)")
    if isinstance(targets, str):
        need("target_modules", targets == ALL_LINEAR, f"must be {ALL_LINEAR!r} or a list of module names")
    else:
        need("target_modules", isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets),
             f"must be {ALL_LINEAR!r} or a non-empty list of module names")
        bad = [t for t in targets if t.split(".")[-1] in UNMERGEABLE] + [""]
        need("target_modules", not bad[0],
             f"{bad[0]!r}: an adapter on the embedding or the output head cannot be merged into the weights a "
             "checkpoint and the rollout engine hold (the two share one tensor when tied); target the decoder's "
             "linear layers")
    full["rank"], full["alpha"], full["dropout"] = int(rank), float(alpha), float(dropout)
    if isinstance(targets, list):
        full["target_modules"] = list(targets)
    cfg.lora = full
