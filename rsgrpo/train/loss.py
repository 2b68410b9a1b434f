"""The policy-gradient math of one micro-batch: batch layout, per-token log-probs, and the policy loss
(:func:`policy_loss`, from :mod:`rsgrpo.train.policy_losses`, which holds the losses and aggregations).

Pure tensor functions (no optimizer, no ranks, no I/O): the trainer's update stage
(:mod:`rsgrpo.train.actor`) feeds them micro-batches, and the tests compare them with explicit loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from rsgrpo.train.policy_losses import policy_loss

__all__ = ["Batch", "build_batch", "padding_batch", "token_logprobs", "naive_token_logprobs", "policy_loss",
           "to_token_layout"]


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


def padding_batch(pad_id: int) -> Batch:
    """One pad-token "prompt" and one pad-token "completion", fully masked: contributes nothing. What a
    rank runs where it has fewer micro-batches than the busiest rank (every forward and backward is a
    collective there)."""
    batch = build_batch([([pad_id], [pad_id])], pad_id)
    batch.completion_mask.zero_()
    return batch


def token_logprobs(model, batch: Batch, temperature: float = 1.0, *, with_entropy: bool = False,
                   chunk_tokens: int | None = None):
    """Per-token log-probs of the realised tokens (shape ``[B, L-1]``, aligned with ``mask[:, 1:]``).

    Logits are divided by the rollout temperature so the ratio is taken under the policy that
    actually sampled. With ``with_entropy`` also returns the per-token entropy of that distribution
    (detached: a metric). Both are zero outside the completion tokens.

    Memory: the output layer and the log-softmax run only on completion positions, ``chunk_tokens``
    at a time (None: all at once), and with gradients and several chunks each chunk is recomputed in
    the backward pass (activation checkpointing), so no ``[B, L, vocab]`` float32 tensor is ever
    held: at most one chunk's ``[chunk_tokens, vocab]`` logits. The chunks run inside ONE call of the output layer
    (:func:`_chunked_head`), so under ZeRO-3 every rank gathers its weight once per forward and once
    per backward whatever its number of tokens. ``model`` is a causal LM (or a DeepSpeed engine
    around one) whose forward takes ``logits_to_keep`` and that has ``get_decoder()`` and
    ``get_output_embeddings()``, as transformers LMs have.
    """
    module = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    hidden = _final_hidden_states(model, module, batch)
    mask = batch.completion_mask[:, 1:].bool()
    states = hidden[:, :-1][mask]  # [T, H]: the positions that predict a completion token
    targets = batch.input_ids[:, 1:][mask]
    logp = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)
    entropy = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device) if with_entropy else None
    head = _chunked_head(module.get_output_embeddings())
    if len(targets):
        token_logp, token_entropy = head(states, targets=targets, temperature=temperature,
                                         with_entropy=with_entropy, chunk_tokens=chunk_tokens)
        logp = logp.masked_scatter(mask, token_logp)
        if with_entropy:
            entropy = entropy.masked_scatter(mask, token_entropy.detach())
    else:
        # No completion token (a rank's padding micro-batch): still call the output layer, and keep
        # every weight in the graph with a zero contribution -- with several ranks every forward and
        # backward is a collective (ZeRO-3 gathers, gradient reduction) that every rank must join.
        token_logp, _ = head(hidden[:1, 0], targets=batch.input_ids[:1, 0], temperature=temperature)
        logp = logp + 0.0 * token_logp.sum()
    return logp, entropy


def _final_hidden_states(model, module, batch: Batch) -> torch.Tensor:
    """The decoder's output ``[B, L, H]`` (after the final norm), from a forward of the whole model
    that computes the logits of one position only (``logits_to_keep=1``). The whole model runs, not
    just its decoder: DeepSpeed ZeRO-3 keeps its gradient bookkeeping in the root module's hooks
    (calling the decoder alone loses the gradient of tied embeddings)."""
    captured = {}

    def keep_output(_module, _inputs, output):
        captured["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = module.get_decoder().register_forward_hook(keep_output)
    try:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured["hidden"]


def _chunked_head(head: torch.nn.Module) -> torch.nn.Module:
    """Give the output layer a second way to be called: ``head(states, targets=...)`` returns the
    targets' log-probs (and entropies) computed chunk by chunk from its own plain forward; called
    without ``targets`` it is the plain layer (generation, the naive path). Installed once per module."""
    if getattr(head, "_plain_forward", None) is None:
        plain = head.forward

        def forward(states, targets=None, *, temperature=1.0, with_entropy=False, chunk_tokens=None):
            if targets is None:
                return plain(states)
            return _chunk_loop(plain, states, targets, temperature, with_entropy, chunk_tokens)

        head._plain_forward = plain
        head.forward = forward
    return head


def _chunk_loop(plain, states, targets, temperature, with_entropy, chunk_tokens):
    size = chunk_tokens or max(1, len(targets))
    # Recomputing in the backward pass pays off only with several chunks: a single chunk's logits are
    # the peak either way.
    recompute = torch.is_grad_enabled() and len(targets) > size
    pieces = []
    for start in range(0, len(targets), size):
        args = (plain, states[start:start + size], targets[start:start + size], temperature, with_entropy)
        pieces.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False) if recompute
                      else _chunk_logprobs(*args))
    logp = torch.cat([piece[0] for piece in pieces])
    return logp, (torch.cat([piece[1] for piece in pieces]) if with_entropy else None)


def _chunk_logprobs(plain, states: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool):
    """Log-prob of each target (and the entropy) from hidden ``states`` [c, H]: one chunk's logits."""
    logits = plain(states).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = torch.gather(logp_all, -1, targets[:, None]).squeeze(-1)
    if not with_entropy:
        return logp, logp.new_zeros(())
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def naive_token_logprobs(model, batch: Batch, temperature: float = 1.0, *, with_entropy: bool = False):
    """The reference computation :func:`token_logprobs` must equal: full ``[B, L, vocab]`` float32
    logits and log-softmax (what the trainer did before chunking; kept for tests and benchmarks)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = torch.gather(logp_all, -1, batch.input_ids[:, 1:, None]).squeeze(-1)
    if not with_entropy:
        return logp, None
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def to_token_layout(per_sequence: Sequence[torch.Tensor], rows: Sequence[int], mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence completion-token values (``per_sequence[r]`` for each ``r`` in ``rows``) placed in
    the ``[B, L-1]`` layout of ``mask`` (zeros elsewhere)."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    out[mask.bool()] = torch.cat([per_sequence[r] for r in rows]).to(torch.float32)
    return out
