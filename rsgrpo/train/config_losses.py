"""The train config's checks of the policy loss and its aggregation (``policy_loss``, ``loss_agg``,
``clip_low``, ``clip_high``, ``clip_ratio_c``): names, ranges, the clip defaults of each loss, and the
combinations refused with their reason. What each registered loss cannot be combined with is declared
with it (:class:`rsgrpo.train.policy_losses.PolicyLoss`).

Imported by :func:`rsgrpo.train.config.validate` only (it imports torch through the registries);
:func:`hash_skips` is torch-free.
"""

from __future__ import annotations

from rsgrpo.train.config_values import config_error

__all__ = ["check", "hash_skips"]


def hash_skips(cfg) -> set[str]:
    """The new keys at their defaults train as before they existed: left out of the config hash, so
    runs written before them still resume."""
    defaults = {"policy_loss": "ppo_clip", "loss_agg": "token-mean", "clip_ratio_c": None}
    return {key for key, value in defaults.items() if getattr(cfg, key) == value}


def check(cfg, source: str) -> None:
    """Check the keys and resolve ``clip_low`` / ``clip_high`` null to the loss's defaults (in ``cfg``)."""
    from rsgrpo.train.policy_losses import LOSS_AGGS, POLICY_LOSSES

    def need(key, ok, problem):
        if not ok:
            raise config_error(source, key, getattr(cfg, key), problem)

    need("policy_loss", cfg.policy_loss in POLICY_LOSSES, f"must be one of {list(POLICY_LOSSES)}")
    need("loss_agg", cfg.loss_agg in LOSS_AGGS, f"must be one of {list(LOSS_AGGS)}")
    name, spec = cfg.policy_loss, POLICY_LOSSES[cfg.policy_loss]
    if cfg.clip_low is None:
        cfg.clip_low = spec.clip_low
    if cfg.clip_high is None:
        cfg.clip_high = spec.clip_high
    if spec.unbounded_below:
        need("clip_low", cfg.clip_low >= 0, f"must be >= 0 for policy_loss {name} (>= 1: no lower bound)")
    else:
        need("clip_low", 0 <= cfg.clip_low < 1, "must be in [0, 1)")
    need("clip_high", cfg.clip_high >= 0, "must be >= 0")
    if cfg.clip_ratio_c is not None:
        need("clip_ratio_c", spec.dual_clip,
             f"the dual clip is a ppo_clip setting; policy_loss {name} has none (verl's compute_policy_loss_"
             f"{name} neither): remove it or set it to null")
        need("clip_ratio_c", cfg.clip_ratio_c > 1,
             "must be > 1 or null: the dual clip caps a negative-advantage token's loss at -A * clip_ratio_c, "
             "above the ratio's clip range (verl asserts clip_ratio_c > 1)")
    if spec.loss_aggs is not None:
        need("loss_agg", cfg.loss_agg in spec.loss_aggs,
             f"policy_loss {name} is defined with loss_agg {' or '.join(spec.loss_aggs)}: its objective is a "
             "mean over completions of one sequence-level term each, and any other aggregation weighs a "
             f"completion by its length (verl's compute_policy_loss_{name} aggregates with "
             f"{spec.loss_aggs[0]} whatever loss_agg_mode says); set loss_agg: {spec.loss_aggs[0]}")
    if cfg.rollout_correction == "tis":
        need("rollout_correction", spec.token_weights,
             f"policy_loss {name} gives every token of a completion one sequence-level ratio; tis's per-token "
             "weights would weigh the tokens of a completion differently, which is no longer its objective: "
             "use rollout_correction: mis (sequence-level) or none")
