"""The trainable policy of a run: the model in a DeepSpeed engine with AdamW, the frozen reference
model (only with a KL term), and the micro-batched forward and backward passes of the update stage.

Precision (config key ``precision``): ``fp32`` trains the fp32 model directly; ``bf16-mixed`` runs
the model in bf16 under DeepSpeed's bf16 mode, whose ZeRO optimizers keep fp32 master weights,
fp32 gradient accumulation and fp32 AdamW state (the way verl and OpenRLHF train). The masters
start from the exact weights of the source (the initial model, or a checkpoint's fp32 masters), not
from their bf16 rounding.

Every rank holds one :class:`Actor`. With several ranks every forward (ZeRO-3 gathers parameters in
it) and every backward (gradients are reduced in it) is a collective, so each rank runs the same
number of micro-batches, padding with a fully masked dummy batch where it has fewer micro-batches
than the busiest rank (:mod:`rsgrpo.train.micro_batches` plans them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rsgrpo.train import lora, micro_batches, mismatch
from rsgrpo.train.config import TrainConfig, compute_dtype
from rsgrpo.train.distributed import collectives, zero_state
from rsgrpo.train.loss import build_batch, padding_batch, policy_loss, to_token_layout, token_logprobs
from rsgrpo.train.policy_losses import Denominators

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
    # the rollout engine's token log-probs against the trainer's (rsgrpo.train.mismatch; NaN when
    # the engine returned none) and the share the rollout correction acted on (tis: capped tokens,
    # mis: masked completions; 0 without one)
    mismatch_k3: float = float("nan")
    mismatch_abs_mean: float = float("nan")
    mismatch_abs_max: float = float("nan")
    correction_frac: float = float("nan")

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
        # pass keeps running there (DeepSpeed's fused CPU Adam would need a C++ build). Pinned
        # (page-locked) host buffers: the gradient and weight copies between GPU and host run at full
        # bandwidth and asynchronously; pageable ones are staged through a bounce buffer. Stated
        # here rather than left to DeepSpeed's default, which has been False in earlier releases.
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
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
    name of the checkpoint a bf16-mixed run resumes from (default: the source's weights).

    With ``cfg.lora`` the model is the base (``source`` is then always the initial model) with LoRA
    adapters attached (:mod:`rsgrpo.train.lora`); ``masters`` are the adapters' fp32 values (default:
    their initialisation), whatever the precision."""

    def __init__(self, cfg: TrainConfig, source: str, masters: Mapping[str, torch.Tensor] | None = None):
        import deepspeed

        from rsgrpo.prepare.loading import SafetensorsWeights, load_policy

        self.cfg = cfg
        if cfg.lora is not None:  # a checkpoint's weights are merged: the base comes from model_dir, the adapters
            source = cfg.model_dir  # from masters
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
        # ZeRO-3: built partitioned (deepspeed.zero.Init), so no rank holds the whole model on its
        # GPU; stages 0-2 hold it whole anyway (DeepSpeed moves it to the GPU).
        self.model, self.tokenizer = load_policy(source, dtype=compute_dtype(cfg),
                                                 zero3_config=deepspeed_config(cfg) if cfg.zero_stage == 3 else None)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora is not None:
            self.model = lora.attach(self.model, cfg.lora, adapters=masters)
            masters = lora.adapter_values(self.model)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        optimizer = torch.optim.AdamW([p for _, p in zero_state.trainable_parameters(self.model)], lr=cfg.lr,
                                      weight_decay=cfg.weight_decay, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      eps=cfg.adam_eps)
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
    def _plan(self, pairs: Sequence[Pair]) -> tuple[list[list[int]], int]:
        """This rank's micro-batches (row indices, :func:`rsgrpo.train.micro_batches.plan`) and how
        many every rank runs: the busiest rank's count (a collective)."""
        lengths = [len(prompt) + len(completion) for prompt, completion in pairs]
        rows = micro_batches.plan(lengths, max_rows=self.cfg.micro_batch_size, max_tokens=self.cfg.micro_batch_tokens)
        return rows, int(collectives.all_reduce([len(rows)], "max")[0])

    def _micro_batches(self, pairs: Sequence[Pair], plan: tuple[list[list[int]], int] | None = None):
        """``(rows, batch)`` per micro-batch of ``plan`` (default: :meth:`_plan`); ``rows`` is empty for
        a padding batch (fully masked: it contributes nothing)."""
        rows_of, count = self._plan(pairs) if plan is None else plan
        for index in range(count):
            rows = rows_of[index] if index < len(rows_of) else []
            yield rows, (build_batch([pairs[r] for r in rows], self.pad_id) if rows else padding_batch(self.pad_id))

    # -- forwards --------------------------------------------------------------------------------
    def logprobs(self, pairs: Sequence[Pair], *, with_entropy: bool = False, reference: bool = False):
        """No-grad completion-token log-probs (and entropies) of every pair, one tensor per pair,
        under the policy (or the reference model)."""
        model = self.ref_model if reference else self.model
        logps, entropies = [None] * len(pairs), [None] * len(pairs)  # filled by row: the plan may reorder
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for rows, batch in self._micro_batches(pairs):
                logp, entropy = token_logprobs(model, batch.to(self.device), self.cfg.temperature,
                                               with_entropy=with_entropy, chunk_tokens=self.cfg.logprob_chunk_tokens)
                mask = batch.completion_mask[:, 1:]
                for index, row in enumerate(rows):
                    keep = mask[index].bool()
                    logps[row] = logp[index].cpu()[keep].clone()
                    if entropy is not None:
                        entropies[row] = entropy[index].cpu()[keep].clone()
        model.train(was_training)
        return logps, (entropies if with_entropy else [])

    # -- the update ------------------------------------------------------------------------------
    def update(self, pairs: Sequence[Pair], advantages: torch.Tensor, lr: float,
               old_logp: list[torch.Tensor] | None = None, sampling_logp: list[torch.Tensor] | None = None,
               check_step: int | None = None) -> UpdateStats:
        """PPO update on this rank's ``pairs`` with one advantage per pair.

        ``old_logp``: per-pair completion-token log-probs of the policy before the update. When not
        given: with ``ppo_epochs`` 1 the update is on-policy and the old log-probs are the detached
        log-probs of its own forward (ratio 1, no extra pass); with more epochs (or ``rollout_correction:
        mis``, which must know which completions to leave out before the token mean is fixed) a no-grad
        pass computes them first. Every rank calls this together (a rank may have no pairs). The
        entropy comes from the first epoch's forward.

        ``sampling_logp``: the rollout engine's log-probs of the same tokens. The update then measures
        the mismatch (:mod:`rsgrpo.train.mismatch`) against the old log-probs, applies the config's
        ``rollout_correction``, and with ``check_step`` raises
        :class:`~rsgrpo.train.mismatch.RolloutMismatchError` above ``mismatch_max_k3`` BEFORE the
        optimizer step, so no update is made on a policy other than the one that sampled.

        The loss (``loss_agg``) is over the GLOBAL batch: the step's completion tokens and completions
        over every rank are counted once, each rank divides its micro-batches' sums by those counts
        over W (:class:`~rsgrpo.train.policy_losses.Denominators`) and DeepSpeed averages gradients over
        the W ranks, so the gradient is that of e.g. ``sum over all tokens / all tokens`` (token-mean) or
        ``sum over all completions of their token mean / all completions`` whatever the micro-batches
        and the number of ranks. A completion is never split across micro-batches, so its own token
        count (and GSPO's sequence ratio) is that of its row.
        """
        cfg = self.cfg
        measured, masked = None, None
        if sampling_logp is not None and cfg.rollout_correction == "mis":
            pairs, advantages, old_logp, sampling_logp, measured, masked = self._mask_mismatched(
                pairs, advantages, old_logp, sampling_logp, check_step)
            if masked[0] == masked[1]:  # every completion of every rank masked: nothing to learn from
                return dataclasses.replace(UpdateStats.none(lr), **measured, correction_frac=1.0)
        elif old_logp is None and cfg.ppo_epochs > 1:
            old_logp, _ = self.logprobs(pairs)
        ref_logp = self.logprobs(pairs, reference=True)[0] if self.ref_model is not None else None
        n_tokens, n_sequences = collectives.all_reduce([sum(len(completion) for _, completion in pairs),
                                                        sum(1 for _, completion in pairs if completion)])
        world = collectives.info().world_size
        denominators = Denominators(n_tokens / world, n_sequences / world, float(cfg.max_new_tokens))
        for group in self.inner_optimizer.param_groups:
            group["lr"] = lr
        totals = {key: 0.0 for key in ("loss", "clipped", "kl", "tokens", "capped", "entropy_sum", "entropy_tokens",
                                       "grad_norm")}
        plan = self._plan(pairs)
        for epoch in range(cfg.ppo_epochs):
            measure = epoch == 0 and sampling_logp is not None and measured is None
            sums = self._optimizer_step(pairs, plan, advantages, old_logp, ref_logp, denominators, totals,
                                        sampling_logp=sampling_logp, first=epoch == 0, measure=measure,
                                        check_step=check_step)
            measured = measured or sums
        epochs = cfg.ppo_epochs
        loss, clipped, kl, tokens, capped = collectives.all_reduce(
            [totals["loss"], totals["clipped"], totals["kl"], totals["tokens"], totals["capped"]])
        correction = {"none": 0.0, "tis": capped / max(tokens, 1.0),
                      "mis": masked[0] / max(masked[1], 1.0) if masked else float("nan")}[cfg.rollout_correction]
        return UpdateStats(loss=loss / world / epochs, clip_frac=clipped / max(tokens, 1.0), kl=kl / max(tokens, 1.0),
                           grad_norm=totals["grad_norm"] / epochs, lr=lr, entropy_sum=totals["entropy_sum"],
                           entropy_tokens=int(totals["entropy_tokens"]), **(measured or {}),
                           correction_frac=correction if sampling_logp is not None else float("nan"))

    def _mask_mismatched(self, pairs, advantages, old_logp, sampling_logp, check_step):
        """``rollout_correction: mis``: the pairs (advantages, log-probs) whose sequence ratio lies within
        the cap, the mismatch measured over all of them (checked with ``check_step``), and ``[masked,
        total]`` completions over every rank. The old log-probs come from a no-grad pass when not
        given: the masked completions must be known before the token mean is."""
        if old_logp is None:
            old_logp, _ = self.logprobs(pairs)
        measured = self._mismatch(mismatch.pair_sums(old_logp, sampling_logp), check_step)
        accepted = mismatch.mis_accepted(old_logp, sampling_logp, self.cfg.rollout_correction_cap)
        keep = [i for i, ok in enumerate(accepted) if ok]
        masked = collectives.all_reduce([len(pairs) - len(keep), len(pairs)])
        return ([pairs[i] for i in keep], advantages[keep], [old_logp[i] for i in keep],
                [sampling_logp[i] for i in keep], measured, masked)

    def _mismatch(self, local_sums: torch.Tensor, check_step: int | None) -> dict[str, float]:
        """The mismatch over every rank from this rank's :func:`~rsgrpo.train.mismatch.token_sums`
        (a collective), checked against ``mismatch_max_k3`` when ``check_step`` is given."""
        k3_sum, abs_sum, abs_max, tokens = local_sums.tolist()
        k3_sum, abs_sum, tokens = collectives.all_reduce([k3_sum, abs_sum, tokens])
        abs_max = collectives.all_reduce([abs_max], "max")[0]
        out = mismatch.summary([k3_sum, abs_sum, abs_max, tokens])
        if check_step is not None:
            mismatch.check_bound(out["mismatch_k3"], self.cfg.mismatch_max_k3, step=check_step,
                                 abs_mean=out["mismatch_abs_mean"], abs_max=out["mismatch_abs_max"])
        return out

    def _optimizer_step(self, pairs, plan, advantages, old_logp, ref_logp, denominators, totals, *,
                        sampling_logp, first: bool, measure: bool, check_step: int | None) -> dict[str, float] | None:
        """Backward over the micro-batches of ``plan`` (:meth:`_plan`), then one optimizer step; add the
        stats to ``totals``. ``old_logp`` None: on-policy, the old log-probs are this forward's, detached.
        ``first``: the first epoch, which computes the entropy. ``measure``: the mismatch against
        ``sampling_logp`` is measured (and checked, see :meth:`update`) before the optimizer step and
        returned. Statistics stay on the device until the step ends: one host sync per step, not
        several per micro-batch."""
        cfg = self.cfg
        keys = ("loss", "clipped", "kl", "tokens", "capped", "entropy_sum", "entropy_tokens")
        acc = {key: torch.zeros((), dtype=torch.float64, device=self.device) for key in keys}
        sums = torch.zeros(len(mismatch.SUM_FIELDS), dtype=torch.float64, device=self.device)
        for index, (rows, batch) in enumerate(self._micro_batches(pairs, plan)):
            mask = batch.completion_mask[:, 1:].to(self.device)
            logp, entropy = token_logprobs(self.engine, batch.to(self.device), cfg.temperature,
                                           with_entropy=first, chunk_tokens=cfg.logprob_chunk_tokens)
            old = logp.detach() if old_logp is None else self._token_layout(old_logp, rows, mask)
            ref = None if ref_logp is None else self._token_layout(ref_logp, rows, mask)
            weights = None
            if sampling_logp is not None:
                sums, weights = self._rollout_terms(old, self._token_layout(sampling_logp, rows, mask), mask, sums,
                                                    acc, measure=measure)
            adv = (advantages[rows] if rows else torch.zeros(1)).to(self.device)
            loss, stats = policy_loss(logp, old, adv, mask, kind=cfg.policy_loss, loss_agg=cfg.loss_agg,
                                      clip_low=cfg.clip_low, clip_high=cfg.clip_high, clip_ratio_c=cfg.clip_ratio_c,
                                      n_tokens=denominators.tokens, n_sequences=denominators.sequences,
                                      horizon=denominators.horizon, ref_logp=ref, kl_coef=cfg.kl_coef,
                                      token_weights=weights)
            # The boundary tells DeepSpeed when the step's gradients are complete (it then averages them
            # over the ranks for stages 0-1); ZeRO-2/3 reduce-scatter each micro-batch's gradients as
            # they come, in fp32 under bf16-mixed (communication_data_type).
            self.engine.set_gradient_accumulation_boundary(index == plan[1] - 1)
            self.engine.backward(loss, scale_wrt_gas=False)
            acc["loss"] += loss.detach()
            for key in ("clipped", "kl", "tokens"):
                acc[key] += stats[key]
            if entropy is not None:
                acc["entropy_sum"] += (entropy.double() * mask).sum()
                acc["entropy_tokens"] += mask.sum()
        measured = self._mismatch(sums, check_step) if measure else None
        grad_norm = self._grad_norm_before_step()
        self.engine.step()
        if grad_norm is None:
            reported = self.engine.get_global_grad_norm()
            grad_norm = float(reported) if reported is not None else float("nan")
        for key, value in zip(keys, torch.stack([acc[key] for key in keys]).tolist()):
            totals[key] += value
        totals["grad_norm"] += grad_norm
        return measured

    def _rollout_terms(self, old, sampled, mask, sums, acc, *, measure: bool):
        """One micro-batch's part of the mismatch sums (when ``measure``) and its ``tis`` token weights
        (None without that correction; the capped tokens counted in ``acc``)."""
        cap = self.cfg.rollout_correction_cap
        if measure:
            sums = mismatch.combine(sums, mismatch.token_sums(old, sampled, mask))
        if self.cfg.rollout_correction != "tis":
            return sums, None
        acc["capped"] += ((torch.exp(old - sampled) > cap) * mask).sum()
        return sums, mismatch.tis_weights(old, sampled, cap)

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
    def full_weights(self, *, include_aliases: bool = True, to_host: bool = False):
        """``(name, full tensor)`` of every weight; a collective under ZeRO-3 (gathered by buckets).
        The tensors are the live (gathered) ones on the device, or host copies with ``to_host``
        (:func:`rsgrpo.train.distributed.zero_state.gathered_parameters`)."""
        weights = zero_state.gathered_parameters(self.model, include_aliases=include_aliases, to_host=to_host)
        return weights if self.cfg.lora is None else lora.merged_weights(weights, self.cfg.lora)

    def resume_tensors(self, *, rank: int, world_size: int):
        """This rank's share of what resume needs beyond the HF weights: AdamW moments and, for
        bf16-mixed, fp32 masters (a collective every rank iterates; see
        :func:`rsgrpo.train.distributed.zero_state.owned_state_tensors`)."""
        return zero_state.owned_state_tensors(self.engine, self.model, rank=rank, world_size=world_size,
                                              masters=self.cfg.precision == "bf16-mixed" or self.cfg.lora is not None)

    def write_checkpoint_files(self, writer, *, rank: int, world_size: int, is_main: bool) -> None:
        """This rank's part of a checkpoint (:class:`rsgrpo.train.checkpoint.CheckpointWriter`): its
        share of the optimizer state, and on rank 0 the HF weights. Every rank calls it: assembling
        each state tensor is a collective, and so is the ZeRO-3 gather of the weights (bucket by
        bucket; rank 0 copies each gathered tensor to the host and writes it, the others only take
        part: they copy and keep nothing)."""
        writer.write_resume(self.resume_tensors(rank=rank, world_size=world_size))
        if self.cfg.zero_stage == 3 or self.cfg.lora is not None:  # gathered, or merged: written tensor by tensor
            weights = self.full_weights(include_aliases=False, to_host=is_main)
            if is_main:
                writer.write_weights(self.hf_model, self.tokenizer, weights)
            else:
                for _ in weights:
                    pass
        elif is_main:
            writer.write_model(self.model, self.tokenizer)

    def sync_engine(self, engine) -> None:
        """Hand the rollout engine the current weights: the module itself, or under ZeRO-3 (where the
        module holds one partition) the full weights gathered bucket by bucket, a collective. The
        gathered tensors go to the engine as they are, on the device: the engine copies each into
        its own weights, and each bucket is released once the engine has taken it."""
        if self.cfg.zero_stage == 3 or (self.cfg.lora is not None and getattr(engine, "model", None) is not self.model):
            engine.load_named_weights(self.full_weights())  # gathered, or merged: by the base model's names
        else:
            engine.load_weights(self.model)  # the engine shares the module (LoRA: it runs the adapters unmerged)

    @property
    def hf_model(self) -> torch.nn.Module:
        """The Hugging Face model (the base model inside PEFT's wrapper with LoRA): its config and
        generation config are what a checkpoint's weights are saved with."""
        return self.model.get_base_model() if self.cfg.lora is not None else self.model

    def optimizer_step_count(self) -> int:
        return zero_state.optimizer_step_count(self.engine)

    def load_optimizer_state(self, state: dict) -> None:
        zero_state.load_full_optimizer_state(self.engine, self.model, state)
