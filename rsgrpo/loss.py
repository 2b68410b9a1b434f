"""The policy-gradient math of one micro-batch: batch layout, per-token log-probs, the PPO loss.

Pure tensor functions (no optimizer, no ranks, no I/O): the trainer's update stage
(:mod:`rsgrpo.actor`) feeds them micro-batches, and the tests compare them with explicit loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Batch", "build_batch", "token_logprobs", "policy_loss", "to_token_layout"]


@dataclass
class Batch:
    """Right-padded ``prompt + completion`` sequences of one micro-batch.

    ``completion_mask[i, t] = 1`` where token ``t`` of row ``i`` is a completion token; right padding
    keeps the default position ids (0..L-1) correct without passing them.
    """

    input_ids: torch.Tensor       # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    completion_mask: torch.Tensor  # [B, L] float

    def to(self, device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device))


def build_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> Batch:
    """Batch of ``(prompt_ids, completion_ids)`` pairs (right padding)."""
    width = max(len(prompt) + len(completion) for prompt, completion in pairs)
    ids = torch.full((len(pairs), width), int(pad_id), dtype=torch.long)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    completion_mask = torch.zeros((len(pairs), width), dtype=torch.float32)
    for row, (prompt, completion) in enumerate(pairs):
        seq = list(prompt) + list(completion)
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
        completion_mask[row, len(prompt): len(seq)] = 1.0
    return Batch(ids, attention, completion_mask)


def token_logprobs(model, batch: Batch, temperature: float = 1.0, *, with_entropy: bool = False):
    """Per-token log-probs of the realised tokens (shape ``[B, L-1]``, aligned with ``mask[:, 1:]``).

    Logits are divided by the rollout temperature so the ratio is taken under the policy that
    actually sampled. With ``with_entropy`` also returns the per-token entropy of that distribution.
    """
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = torch.gather(logp_all, -1, batch.input_ids[:, 1:, None]).squeeze(-1)
    if not with_entropy:
        return logp, None
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *,
                clip_low: float, clip_high: float, n_tokens: int | float,
                ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0):
    """PPO clipped objective with asymmetric clip, summed over tokens and divided by ``n_tokens``.

    ``adv`` is one advantage per sequence (``[B]``) or per token (``[B, T]``). Per token:
    ``l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`` with ``r = exp(logp - old_logp)``,
    plus ``kl_coef * k3`` where ``k3 = exp(ref - logp) - (ref - logp) - 1`` (non-negative, unbiased
    KL(pi || ref) estimate). Token-mean over the WHOLE batch: the caller passes the total number of
    completion tokens of the batch, so micro-batch losses add up to the token mean (each token has
    the same weight whatever the length of its sequence -- the DAPO "token-level" loss).

    Returns ``(loss, stats)``, stats holding token SUMS (``clipped``, ``kl``, ``tokens``) so they can
    be aggregated across micro-batches.
    """
    if adv.dim() == 1:
        adv = adv[:, None]
    ratio = torch.exp(logp - old_logp)
    surr1 = -adv * ratio
    surr2 = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(surr1, surr2)
    clipped = (surr2 > surr1).to(mask.dtype)
    kl_sum = torch.zeros((), dtype=per_token.dtype)
    if ref_logp is not None and kl_coef > 0:
        log_ratio_ref = ref_logp - logp
        kl = torch.exp(log_ratio_ref) - log_ratio_ref - 1.0
        per_token = per_token + kl_coef * kl
        kl_sum = (kl.detach() * mask).sum()
    loss = (per_token * mask).sum() / n_tokens
    stats = {"clipped": float((clipped * mask).sum()), "kl": float(kl_sum), "tokens": float(mask.sum())}
    return loss, stats


def to_token_layout(per_sequence: Sequence[torch.Tensor], rows: Sequence[int], mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence completion-token values (``per_sequence[r]`` for each ``r`` in ``rows``) placed in
    the ``[B, L-1]`` layout of ``mask`` (zeros elsewhere)."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    out[mask.bool()] = torch.cat([per_sequence[r] for r in rows]).to(torch.float32)
    return out
