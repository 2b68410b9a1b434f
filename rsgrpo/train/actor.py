"""The trainable policy of a run: the model in a DeepSpeed engine with AdamW, the frozen reference
model (only with a KL term), and the micro-batched forward and backward passes of the update stage.

Precision (config key ``precision``): ``fp32`` trains the fp32 model directly; ``bf16-mixed`` runs
the model in bf16 under DeepSpeed's bf16 mode, whose ZeRO optimizers keep fp32 master weights,
fp32 gradient accumulation and fp32 AdamW state (the way verl and OpenRLHF train). The masters
start from the exact weights of the source (the initial model, or a checkpoint's fp32 masters), not
from their bf16 rounding.

Every rank holds one :class:`Actor`. With several ranks every forward (ZeRO-3 gathers parameters in
it) and every backward (gradients are reduced in it) is a collective, so each rank runs the same
number of micro-batches, padding with a fully masked dummy batch where it has fewer sequences than
the busiest rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rsgrpo.train.config import TrainConfig, compute_dtype
from rsgrpo.train.distributed import collectives, zero_state
from rsgrpo.train.loss import Batch, build_batch, policy_loss, to_token_layout, token_logprobs

__all__ = ["Actor", "UpdateStats", "deepspeed_config"]


@dataclass(frozen=True)
class UpdateStats:
    """What one update reports: loss, clip fraction, KL and gradient norm averaged over its
    ``ppo_epochs`` optimizer steps and the whole global batch, the lr, and the token entropy of this
    rank's pairs under the policy before the update (sum and token count, summed over ranks by the
    caller). :meth:`none` is a step without an update."""

    loss: float
    clip_frac: float
    kl: float
    grad_norm: float
    lr: float
    entropy_sum: float = 0.0
    entropy_tokens: int = 0

    @classmethod
    def none(cls, lr: float) -> UpdateStats:
        nan = float("nan")
        return cls(loss=nan, clip_frac=nan, kl=nan, grad_norm=nan, lr=lr)

Pair = tuple[Sequence[int], Sequence[int]]  # (prompt token ids, completion token ids)


def deepspeed_config(cfg: TrainConfig) -> dict:
    """DeepSpeed config dict. Gradient accumulation is unmanaged: the actor calls ``backward`` once
    per micro-batch (losses pre-scaled for the token mean) and ``step`` once per optimizer step,
    because the number of micro-batches varies from step to step with dynamic sampling."""
    zero: dict[str, Any] = {"stage": int(cfg.zero_stage)}
    if cfg.zero_stage == 3:
        # Left on, DeepSpeed's zero.Init(module=...) replaces torch.nn.functional.linear with its own
        # autograd function for the whole process and never restores it: the vLLM engine built next to
        # the actor would run every linear of its compiled graphs through DeepSpeed's wrapper.
        zero["memory_efficient_linear"] = False
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(cfg.grad_clip),
        "zero_optimization": zero,
        "steps_per_print": 10 ** 12,
        "wall_clock_breakdown": False,
    }
    if cfg.offload_optimizer:
        # Optimizer state (AdamW moments, fp32 master weights) in host memory; the torch AdamW we
        # pass keeps running there (DeepSpeed's fused CPU Adam would need a C++ build).
        zero["offload_optimizer"] = {"device": "cpu"}
        config["zero_force_ds_cpu_optimizer"] = False
    if cfg.precision == "bf16-mixed":
        config["bf16"] = {"enabled": True}
        config["data_types"] = {"grad_accum_dtype": "fp32"}
        # Without it ZeRO-2/3 reduce-scatter every micro-batch's gradients in bf16 (the default follows
        # the compute dtype) before the fp32 accumulation; verl and OpenRLHF reduce in fp32 too.
        config["communication_data_type"] = "fp32"
    return config


class Actor:
    """Policy model + DeepSpeed engine (+ reference model), loaded from ``source`` (the initial
    model or the checkpoint a run resumes from); ``masters``: the fp32 master weights by parameter
    name of the checkpoint a bf16-mixed run resumes from (default: the source's weights)."""

    def __init__(self, cfg: TrainConfig, source: str, masters: Mapping[str, torch.Tensor] | None = None):
        import deepspeed

        from rsgrpo.prepare.loading import SafetensorsWeights, load_policy

        self.cfg = cfg
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
        self.model, self.tokenizer = load_policy(source, dtype=compute_dtype(cfg))
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
        self.engine, _, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer,
                                                    config=deepspeed_config(cfg))
        if cfg.precision == "bf16-mixed":  # masters from the exact fp32 values, not the bf16 rounding
            zero_state.load_master_weights(self.model, masters if masters is not None else SafetensorsWeights(source))
        # The torch optimizer that owns the moments: AdamW itself (stage 0) or the AdamW over the
        # flat fp32 partitions inside DeepSpeed's ZeRO optimizer (stages 1-3).
        self.inner_optimizer = zero_state.inner_optimizer(self.engine)
        self.model.train()
        self.ref_model = None
        if cfg.kl_coef > 0:
            self.ref_model, _ = load_policy(cfg.model_dir, dtype=compute_dtype(cfg), device=self.device)
            self.ref_model.eval()
            for param in self.ref_model.parameters():
                param.requires_grad_(False)

    # -- micro-batches ---------------------------------------------------------------------------
    def _micro_batch_count(self, n_pairs: int) -> int:
        """Micro-batches every rank runs: the busiest rank's count (a collective)."""
        size = self.cfg.micro_batch_size
        return int(collectives.all_reduce([-(-n_pairs // size)], "max")[0])

    def _dummy_batch(self) -> Batch:
        """One pad-token "prompt" and one pad-token "completion", fully masked: contributes nothing."""
        batch = build_batch([([self.pad_id], [self.pad_id])], self.pad_id)
        batch.completion_mask.zero_()
        return batch

    def _micro_batches(self, pairs: Sequence[Pair], count: int | None = None):
        """``(rows, batch)`` per micro-batch of ``pairs`` (``count`` of them, default: the busiest
        rank's count); ``rows`` is empty for a padding batch."""
        size = self.cfg.micro_batch_size
        count = self._micro_batch_count(len(pairs)) if count is None else count
        for index in range(count):
            rows = list(range(index * size, min((index + 1) * size, len(pairs))))
            yield rows, (build_batch([pairs[r] for r in rows], self.pad_id) if rows else self._dummy_batch())

    # -- forwards --------------------------------------------------------------------------------
    def logprobs(self, pairs: Sequence[Pair], *, with_entropy: bool = False, reference: bool = False):
        """No-grad completion-token log-probs (and entropies) of every pair, one tensor per pair,
        under the policy (or the reference model)."""
        model = self.ref_model if reference else self.model
        logps, entropies = [], []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for rows, batch in self._micro_batches(pairs):
                logp, entropy = token_logprobs(model, batch.to(self.device), self.cfg.temperature,
                                               with_entropy=with_entropy, chunk_tokens=self.cfg.logprob_chunk_tokens)
                mask = batch.completion_mask[:, 1:]
                for row in range(len(rows)):
                    keep = mask[row].bool()
                    logps.append(logp[row].cpu()[keep].clone())
                    if entropy is not None:
                        entropies.append(entropy[row].cpu()[keep].clone())
        model.train(was_training)
        return logps, entropies

    # -- the update ------------------------------------------------------------------------------
    def update(self, pairs: Sequence[Pair], advantages: torch.Tensor, lr: float,
               old_logp: list[torch.Tensor] | None = None) -> UpdateStats:
        """PPO update on this rank's ``pairs`` with one advantage per pair.

        ``old_logp``: per-pair completion-token log-probs of the policy before the update. When not
        given: with ``ppo_epochs`` 1 the update is on-policy and the old log-probs are the detached
        log-probs of its own forward (ratio 1, no extra pass); with more epochs a no-grad pass
        computes them first. Every rank calls this together (a rank may have no pairs). The entropy
        comes from the first epoch's forward.

        Token mean over the GLOBAL batch: each rank divides its token sum by ``n_global / W`` and
        DeepSpeed averages gradients over the W ranks, so the gradient is that of
        ``sum over all tokens / n_global`` whatever the number of ranks.
        """
        if old_logp is None and self.cfg.ppo_epochs > 1:
            old_logp, _ = self.logprobs(pairs)
        ref_logp = self.logprobs(pairs, reference=True)[0] if self.ref_model is not None else None
        n_global = collectives.all_reduce([sum(len(completion) for _, completion in pairs)])[0]
        for group in self.inner_optimizer.param_groups:
            group["lr"] = lr
        totals = {"loss": 0.0, "clipped": 0.0, "kl": 0.0, "tokens": 0.0, "grad_norm": 0.0,
                  "entropy_sum": 0.0, "entropy_tokens": 0}
        count = self._micro_batch_count(len(pairs))
        for epoch in range(self.cfg.ppo_epochs):
            self._optimizer_step(pairs, count, advantages, old_logp, ref_logp, n_global, totals,
                                 with_entropy=epoch == 0)
        epochs, world = self.cfg.ppo_epochs, collectives.info().world_size
        loss, clipped, kl, tokens = collectives.all_reduce(
            [totals["loss"], totals["clipped"], totals["kl"], totals["tokens"]])
        return UpdateStats(loss=loss / world / epochs, clip_frac=clipped / max(tokens, 1.0), kl=kl / max(tokens, 1.0),
                           grad_norm=totals["grad_norm"] / epochs, lr=lr, entropy_sum=totals["entropy_sum"],
                           entropy_tokens=totals["entropy_tokens"])

    def _optimizer_step(self, pairs, count, advantages, old_logp, ref_logp, n_global, totals, *,
                        with_entropy: bool) -> None:
        """Backward over the ``count`` micro-batches, then one optimizer step; add the stats to
        ``totals``. ``old_logp`` None: on-policy, the old log-probs are this forward's, detached."""
        epoch_loss = 0.0
        for index, (rows, batch) in enumerate(self._micro_batches(pairs, count)):
            mask = batch.completion_mask[:, 1:].to(self.device)
            logp, entropy = token_logprobs(self.engine, batch.to(self.device), self.cfg.temperature,
                                           with_entropy=with_entropy, chunk_tokens=self.cfg.logprob_chunk_tokens)
            old = logp.detach() if old_logp is None else self._token_layout(old_logp, rows, mask)
            ref = None if ref_logp is None else self._token_layout(ref_logp, rows, mask)
            adv = (advantages[rows] if rows else torch.zeros(1)).to(self.device)
            loss, stats = policy_loss(logp, old, adv, mask, clip_low=self.cfg.clip_low, clip_high=self.cfg.clip_high,
                                      n_tokens=n_global / collectives.info().world_size, ref_logp=ref,
                                      kl_coef=self.cfg.kl_coef)
            # The boundary tells DeepSpeed when the step's gradients are complete (it then averages them
            # over the ranks for stages 0-1); ZeRO-2/3 reduce-scatter each micro-batch's gradients as
            # they come, in fp32 under bf16-mixed (communication_data_type).
            self.engine.set_gradient_accumulation_boundary(index == count - 1)
            self.engine.backward(loss, scale_wrt_gas=False)
            epoch_loss += float(loss.detach())
            for key in ("clipped", "kl", "tokens"):
                totals[key] += stats[key]
            if entropy is not None:
                totals["entropy_sum"] += float((entropy.double() * mask).sum())
                totals["entropy_tokens"] += int(mask.sum())
        grad_norm = self._grad_norm_before_step()
        self.engine.step()
        if grad_norm is None:
            reported = self.engine.get_global_grad_norm()
            grad_norm = float(reported) if reported is not None else float("nan")
        totals["loss"] += epoch_loss
        totals["grad_norm"] += grad_norm

    def _token_layout(self, per_pair: list[torch.Tensor], rows: list[int], mask: torch.Tensor) -> torch.Tensor:
        """Per-pair token values in the micro-batch's ``[B, L-1]`` layout (zeros for a padding batch)."""
        if not rows:
            return torch.zeros(mask.shape, device=self.device)
        return to_token_layout(per_pair, rows, mask.cpu()).to(self.device)

    def _grad_norm_before_step(self) -> float | None:
        """Global L2 grad norm (pre-clip) for ZeRO stage 0, where DeepSpeed does not report it.
        (At the accumulation boundary the gradients are already averaged over the ranks.)"""
        if self.cfg.zero_stage != 0:
            return None
        norms = [p.grad.detach().float().norm() for p in self.model.parameters() if p.grad is not None]
        if not norms:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack(norms)))

    # -- weights and optimizer state -------------------------------------------------------------
    def full_weights(self, *, include_aliases: bool = True):
        """``(name, full tensor)`` of every weight; a collective under ZeRO-3 (gathered by buckets)."""
        return zero_state.gathered_parameters(self.model, include_aliases=include_aliases)

    def resume_tensors(self, *, rank: int, world_size: int):
        """This rank's share of what resume needs beyond the HF weights: AdamW moments and, for
        bf16-mixed, fp32 masters (a collective every rank iterates; see
        :func:`rsgrpo.train.distributed.zero_state.owned_state_tensors`)."""
        return zero_state.owned_state_tensors(self.engine, self.model, rank=rank, world_size=world_size,
                                              masters=self.cfg.precision == "bf16-mixed")

    def write_checkpoint_files(self, writer, *, rank: int, world_size: int, is_main: bool) -> None:
        """This rank's part of a checkpoint (:class:`rsgrpo.train.checkpoint.CheckpointWriter`): its
        share of the optimizer state, and on rank 0 the HF weights. Every rank calls it: assembling
        each state tensor is a collective, and so is the ZeRO-3 gather of the weights (bucket by
        bucket; rank 0 writes them, the others only take part)."""
        writer.write_resume(self.resume_tensors(rank=rank, world_size=world_size))
        if self.cfg.zero_stage == 3:
            weights = self.full_weights(include_aliases=False)
            if is_main:
                writer.write_weights(self.model, self.tokenizer, weights)
            else:
                for _ in weights:
                    pass
        elif is_main:
            writer.write_model(self.model, self.tokenizer)

    def sync_engine(self, engine) -> None:
        """Hand the rollout engine the current weights: the module itself, or under ZeRO-3 (where the
        module holds one partition) the full weights gathered bucket by bucket, a collective."""
        if self.cfg.zero_stage == 3:
            engine.load_named_weights(self.full_weights())
        else:
            engine.load_weights(self.model)

    def optimizer_step_count(self) -> int:
        return zero_state.optimizer_step_count(self.engine)

    def load_optimizer_state(self, state: dict) -> None:
        zero_state.load_full_optimizer_state(self.engine, self.model, state)
