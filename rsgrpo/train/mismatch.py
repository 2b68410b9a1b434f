"""How far the rollout engine's sampling distribution is from the trainer's, and what corrects for it.

Why: the engine that samples (vLLM, bf16 kernels) and the trainer that computes the log-probs of
the PPO ratio (DeepSpeed, other kernels) never give exactly the same distribution, and a bug -- the
engine generating with stale weights after a missed push, another dtype, sampling settings the
trainer does not model -- makes the gap large while training goes on silently with the wrong
policy. Every step therefore measures the gap on the tokens it trains on, and a bound stops the run.

With ``d = log pi_train(a) - log pi_rollout(a)`` for every sampled completion token ``a`` (``pi_train``
= the trainer's policy before the update, ``pi_old`` of PPO):

* ``k3`` -- the k3 estimate of KL(pi_rollout || pi_train) from samples of pi_rollout:
  ``exp(d) - 1 - d`` (non-negative; 0 iff the two agree on the token);
* ``|d|`` -- its mean and max.

Corrections (config key ``rollout_correction``, "decoupled" mode of verl's rollout correction: the
PPO ratio stays ``pi_theta / pi_old``, a second factor corrects ``pi_rollout -> pi_old``):

* ``tis`` -- token-level truncated importance sampling: each token's PPO loss is weighted by
  ``min(exp(d), cap)`` (detached), as verl's token IS and TRL's ``vllm_importance_sampling_correction``;
* ``mis`` -- sequence-level masking (verl's sequence rejection sampling): a completion whose ratio
  ``exp(sum of d)`` lies outside ``[1 / cap, cap]`` is left out of the loss and of the token mean.

Pure tensor functions, no I/O; the actor (:mod:`rsgrpo.train.actor`) feeds them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["RolloutMismatchError", "token_sums", "combine", "pair_sums", "summary", "tis_weights", "mis_accepted",
           "check_bound", "SUM_FIELDS"]

# What token_sums returns, in order: additive over micro-batches and ranks except the max.
SUM_FIELDS = ("k3_sum", "abs_sum", "abs_max", "tokens")


class RolloutMismatchError(RuntimeError):
    """The rollout engine's token log-probs are too far from the trainer's (``mismatch_max_k3``)."""


def token_sums(train_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[k3 sum, |d| sum, |d| max, tokens]`` over the masked tokens, as one float64 tensor on the
    inputs' device (no host sync: the caller adds micro-batches up and reads it once)."""
    mask = mask.to(torch.float64)
    d = (train_logp.detach().to(torch.float64) - rollout_logp.to(torch.float64)) * mask
    k3 = (torch.expm1(d) - d) * mask
    absolute = d.abs()
    return torch.stack([k3.sum(), absolute.sum(), absolute.max() if absolute.numel() else d.new_zeros(()),
                        mask.sum()])


def combine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two :func:`token_sums` as one: the sums added, the larger max."""
    return torch.stack([a[0] + b[0], a[1] + b[1], torch.maximum(a[2], b[2]), a[3] + b[3]])


def pair_sums(train_logp: Sequence[torch.Tensor], rollout_logp: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`token_sums` over per-completion token log-prob tensors (one per completion, same lengths)."""
    if not train_logp:
        return torch.zeros(len(SUM_FIELDS), dtype=torch.float64)
    train = torch.cat([t.reshape(-1) for t in train_logp])
    rollout = torch.cat([t.reshape(-1) for t in rollout_logp]).to(train.device)
    return token_sums(train, rollout, torch.ones_like(train))


def summary(sums: Sequence[float]) -> dict[str, float]:
    """``mismatch_k3``, ``mismatch_abs_mean``, ``mismatch_abs_max`` of summed :data:`SUM_FIELDS`
    (NaN without tokens: a step without an update measures nothing)."""
    k3_sum, abs_sum, abs_max, tokens = (float(v) for v in sums)
    if tokens <= 0:
        nan = float("nan")
        return {"mismatch_k3": nan, "mismatch_abs_mean": nan, "mismatch_abs_max": nan}
    return {"mismatch_k3": k3_sum / tokens, "mismatch_abs_mean": abs_sum / tokens, "mismatch_abs_max": abs_max}


def tis_weights(train_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Token weights ``min(pi_train / pi_rollout, cap)``, detached (a weight, not a path for gradients)."""
    return torch.exp(train_logp.detach() - rollout_logp).clamp(max=float(cap))


def mis_accepted(train_logp: Sequence[torch.Tensor], rollout_logp: Sequence[torch.Tensor], cap: float) -> list[bool]:
    """Per completion: does its sequence ratio ``prod pi_train / pi_rollout`` lie in ``[1 / cap, cap]``?
    (Compared in log space: the product of thousands of token ratios overflows.)"""
    bound = math.log(float(cap))
    out = []
    for train, rollout in zip(train_logp, rollout_logp):
        log_ratio = float((train.detach().to(torch.float64) - rollout.to(torch.float64).to(train.device)).sum())
        out.append(-bound <= log_ratio <= bound)
    return out


def check_bound(k3: float, bound: float, *, step: int, abs_mean: float, abs_max: float) -> None:
    """Raise :class:`RolloutMismatchError` when ``k3`` exceeds ``bound`` (> 0), naming the likely causes."""
    if bound <= 0 or not k3 > bound:  # NaN (nothing measured) passes
        return
    raise RolloutMismatchError(
        f"step {step}: the rollout engine's token log-probs differ from the trainer's by a mean k3 KL of {k3:.4g} "
        f"(mean |delta log p| {abs_mean:.4g}, max {abs_max:.4g}), above mismatch_max_k3 = {bound:g}. Likely causes: "
        "(1) stale weights: the engine did not receive the last weight push (after sleep mode, or a ZeRO-3 gather "
        "that missed tensors); (2) dtype: the engine computes in another precision than the trainer (fp16 vs bf16, "
        "a quantized engine); (3) sampling settings the trainer does not model (top_p / top_k / min_p, repetition "
        "penalties, another temperature). Raise mismatch_max_k3 (0 = log only) if the gap is expected, or set "
        "rollout_correction: tis | mis to correct for it")
