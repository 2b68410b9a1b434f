"""Schedules over training steps: beta of the advantage estimator and the learning rate.

Pure functions of the config and the step, so a checkpoint's "scheduler state" is just its step.
"""

from __future__ import annotations

import math

from rsgrpo.train.config import TrainConfig

__all__ = ["beta_at", "lr_at"]


def beta_at(cfg: TrainConfig, step: int) -> float | None:
    """The beta used at 0-based ``step`` (None when the estimator has no beta).

    linear: ``start + (end - start) * t``; cosine: ``start + (end - start) * (1 - cos(pi t)) / 2``,
    with ``t = min(step, R - 1) / (R - 1)`` and ``R`` = beta_ramp_steps (0 = steps); ``R = 1`` gives end.
    """
    if cfg.beta_schedule == "constant":
        beta = (cfg.estimator_params or {}).get("beta")
        if beta is None:
            from rsgrpo import estimators

            beta = estimators.default_params(cfg.estimator).get("beta")
        return None if beta is None else float(beta)
    ramp = cfg.beta_ramp_steps or cfg.steps
    t = 1.0 if ramp <= 1 else min(step, ramp - 1) / (ramp - 1)
    if cfg.beta_schedule == "cosine":
        t = (1.0 - math.cos(math.pi * t)) / 2.0
    return float(cfg.beta_start + (cfg.beta_end - cfg.beta_start) * t)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of 0-based ``step``: linear warm-up to ``lr`` over ``warmup_steps``, then constant.

    A pure function of the step, so the "scheduler state" of a checkpoint is just the step.
    """
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr
