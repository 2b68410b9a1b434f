"""``python -m rsgrpo train``: the RL loop (GRPO family with RS-GRPO advantages), resumable.

One step (PAPER.md sections 1 and 6):

1. take the next ``prompts_per_step`` records of a seeded, epoch-wise shuffled order (the order of
   epoch ``e`` is a pure function of ``(seed, e)``, so the data position is just the step);
2. generate ``samples_per_prompt`` completions each with the rollout engine (seed ``f(seed, step)``);
3. reward them with :func:`rsgrpo.grading.compute_rewards`;
4. advantages ``rsgrpo.advantages.compute(method, rewards[G, N], **params)``, rs_grpo's beta taken
   from the beta schedule;
5. dynamic sampling: drop groups whose rewards are all equal (their advantage is 0 for every
   estimator that centres rewards); when every group is dropped the step makes no update but is
   counted and logged;
6. old log-probs (and the token entropy metric) from the trainer's own no-grad forward, then
   ``ppo_epochs`` optimizer steps of the PPO clipped objective with separate low/high clip
   (clip-higher), TOKEN-MEAN over all completion tokens of the batch, plus an optional k3 KL to
   the frozen initial policy; AdamW through a DeepSpeed engine (ZeRO stage configurable), gradient
   clipping by DeepSpeed;
7. push the weights to the rollout engine.

Checkpoints (``rsgrpo.checkpoint``) are atomic and carry everything exact resume needs; a run killed
at any moment and restarted with the same command continues from the last complete checkpoint and,
on CPU in float32, ends with bit-identical weights and metrics (apart from wall-clock columns).

The loop is injectable for tests: :class:`Trainer` accepts ``records``, an ``engine`` and a
``reward_fn`` instead of the real data / rollout / grading modules.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import advantages
from . import checkpoint as ckpt
from . import distributed as dist_utils
from .distributed import init_distributed
from .io import atomic_path
from .trainconfig import TrainConfig, beta_at, config_hash, load_config, lr_at, to_dict

__all__ = ["Trainer", "policy_loss", "token_logprobs", "build_batch", "METRIC_COLUMNS",
           "TIMING_COLUMNS", "add_arguments", "main", "init_distributed"]

log = logging.getLogger("rsgrpo.train")

METRIC_COLUMNS = [
    "step", "beta", "reward_mean", "solved_frac", "cumulative_solve_rate", "groups_kept", "entropy",
    "response_len_mean", "clip_frac", "kl", "grad_norm", "loss", "lr", "time_generate", "time_grade",
    "time_update", "tokens_per_s",
]
# Wall-clock columns: the only ones that differ between a resumed and an uninterrupted run.
TIMING_COLUMNS = ["time_generate", "time_grade", "time_update", "tokens_per_s"]


# ------------------------------------------------------------------------------------------------
# math: batch layout, log-probs, loss
# ------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """Right-padded ``prompt + completion`` sequences of one micro-batch.

    ``completion_mask[i, t] = 1`` where token ``t`` of row ``i`` is a completion token; right padding
    keeps the default position ids (0..L-1) correct without passing them.
    """

    input_ids: torch.Tensor       # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    completion_mask: torch.Tensor  # [B, L] float

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device))


def build_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> Batch:
    """Batch of ``(prompt_ids, completion_ids)`` pairs (right padding)."""
    width = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), width), int(pad_id), dtype=torch.long)
    attn = torch.zeros((len(pairs), width), dtype=torch.long)
    comp = torch.zeros((len(pairs), width), dtype=torch.float32)
    for i, (p, c) in enumerate(pairs):
        seq = list(p) + list(c)
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[i, : len(seq)] = 1
        comp[i, len(p): len(seq)] = 1.0
    return Batch(ids, attn, comp)


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
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1.0
        per_token = per_token + kl_coef * kl
        kl_sum = (kl.detach() * mask).sum()
    loss = (per_token * mask).sum() / n_tokens
    stats = {"clipped": float((clipped * mask).sum()), "kl": float(kl_sum), "tokens": float(mask.sum())}
    return loss, stats


# ------------------------------------------------------------------------------------------------
# DeepSpeed
# ------------------------------------------------------------------------------------------------
def deepspeed_config(cfg: TrainConfig) -> dict:
    """DeepSpeed config dict. Gradient accumulation is unmanaged: the trainer calls ``backward``
    once per micro-batch (losses pre-scaled for the token mean) and ``step`` once per optimizer
    step, because the number of micro-batches varies from step to step with dynamic sampling."""
    zero: dict[str, Any] = {"stage": int(cfg.zero_stage)}
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
    return config


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------
RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


def _records_hash(records: list[dict]) -> str:
    """Fingerprint of the training records (ids, problems, answers, order) guarding resume."""
    import hashlib

    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([str(r["id"]), str(r["problem"]), str(r["answer"])]).encode())
    return h.hexdigest()


def _fmt(v) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


class Trainer:
    """One RL run in ``run_dir``; call :meth:`run`.

    Injection points (tests, benchmarks): ``records`` (list of ``{id, problem, answer}``),
    ``engine_factory(model, tokenizer, model_dir) -> engine`` and ``reward_fn(golds, texts)``.
    Anything not injected comes from ``rsgrpo.data`` / ``rsgrpo.rollout`` / ``rsgrpo.grading``.
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | os.PathLike | None = None, *,
                 records: list[dict] | None = None, engine_factory=None, reward_fn: RewardFn | None = None,
                 prompt_fn: Callable[[str], Any] | None = None):
        self.cfg = cfg
        run_dir = run_dir if run_dir is not None else cfg.run_dir
        if not run_dir:
            raise ValueError("run_dir is required (config key run_dir or --run-dir)")
        if not cfg.model_dir:
            raise ValueError("model_dir is required (config key model_dir)")
        self.run_dir = Path(run_dir)
        self.hash = config_hash(cfg)
        self._records = records
        self._engine_factory = engine_factory
        self._reward_fn = reward_fn
        self._prompt_fn = prompt_fn
        self.metrics: list[dict] = []
        self.solved: set[str] = set()
        self.start_step = 0
        self._perm_cache: dict[int, list[int]] = {}
        self._tb = None
        self._lock = None  # the run-dir lock (rank 0), held from setup to the end of run

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load data, model (from the last complete checkpoint if any), DeepSpeed engine, rollout
        engine, reference model; restore the trainer state when resuming."""
        from .models import load_policy

        cfg = self.cfg
        # The process group comes first: every rank must agree on what it resumes from.
        self.dist = init_distributed()
        check_rank_split(cfg, self.dist.world_size)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock = ckpt.lock_run_dir(self.run_dir)
            for p in ckpt.clean_incomplete(self.run_dir):
                log.info("removed incomplete checkpoint %s", p)
        dist_utils.barrier()
        latest = ckpt.latest_checkpoint(self.run_dir)
        state = None
        if latest is not None:
            state = ckpt.load_state(latest[1])
            if state["config_hash"] != self.hash:
                raise ValueError(
                    f"run_dir {str(self.run_dir)!r} holds checkpoints of a different config "
                    f"(hash {state['config_hash'][:12]} vs {self.hash[:12]}); use a new run_dir or the "
                    "original config")
        self.records = self._records if self._records is not None else self._load_records()
        if not self.records:
            raise ValueError("train_data holds no records")
        self.n_unique = len({str(r["id"]) for r in self.records})
        self.data_hash = _records_hash(self.records)
        if state is not None and state.get("data_hash") != self.data_hash:
            raise ValueError(f"train_data changed since the checkpoint in {str(self.run_dir)!r} was written "
                             "(different records); resume needs the same data -- use a new run_dir")

        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)

        source = latest[1] if latest is not None else cfg.model_dir
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
        self.model, self.tokenizer = load_policy(source, dtype=cfg.dtype)
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                          else self.tokenizer.eos_token_id)
        self.prompts = [self._build_prompt(r["problem"]) for r in self.records]

        import deepspeed

        optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
        self.ds, _, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer,
                                                config=deepspeed_config(cfg))
        # The torch optimizer that owns the moments: AdamW itself (stage 0) or the AdamW over the
        # flat fp32 partitions inside DeepSpeed's ZeRO optimizer (stages 1-3).
        self.inner_opt = dist_utils._inner_optimizer(self.ds)
        self.model.train()

        self.ref_model = None
        if cfg.kl_coef > 0:
            self.ref_model, _ = load_policy(cfg.model_dir, dtype=cfg.dtype, device=self.device)
            self.ref_model.eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)

        # Under ZeRO-3 the module holds only this rank's partition: the rollout engine keeps a full
        # copy of its own (loaded from the same checkpoint) and is refreshed by a gather each step.
        shared = self.model if cfg.zero_stage != 3 else None
        if self._engine_factory is not None:
            self.engine = self._engine_factory(shared, self.tokenizer, str(source))
        else:
            from .rollout import make_engine

            self.engine = make_engine(cfg.engine, model_dir=str(source), model=shared,
                                      tokenizer=self.tokenizer, dtype=cfg.dtype,
                                      batch_size=cfg.engine_batch_size, **cfg.engine_options)

        if state is not None:
            dist_utils.load_full_optimizer_state(self.ds, self.model, state["optimizer"])
            ckpt.restore_rng(state["rng"])
            self.start_step = int(state["step"])
            self.solved = set(state["solved_ids"])
            self.metrics = [dict(m) for m in state["metrics"]]
            expected = self.start_step * cfg.prompts_per_step
            if int(state["data_position"]) != expected:
                raise ValueError(f"checkpoint {latest[1]}: data_position {state['data_position']} "
                                 f"!= step x prompts_per_step = {expected}")
            log.info("resuming from %s (step %d) with %d rank(s)", latest[1], self.start_step,
                     self.dist.world_size)
        if self.dist.is_main:
            self._write_metrics_file()
            self._open_tensorboard()

    def _load_records(self) -> list[dict]:
        from .data import load_records

        spec = self.cfg.train_data
        if spec is None:
            raise ValueError("train_data is required (config key train_data)")
        if isinstance(spec, str):
            spec = {"source": "local", "path": spec}
        return load_records(spec)

    def _build_prompt(self, problem: str):
        if self._prompt_fn is not None:
            return self._prompt_fn(problem)
        from .data import build_prompt

        return build_prompt(problem, template=self.cfg.prompt_template, tokenizer=self.tokenizer)

    def _open_tensorboard(self) -> None:
        if not self.cfg.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        except Exception as exc:  # tensorboard is an optional extra
            log.warning("tensorboard logging disabled: %s", exc)
            self._tb = None

    # -- data order ------------------------------------------------------------------------------
    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perm_cache:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._perm_cache = {epoch: torch.randperm(len(self.records), generator=g).tolist()}
        return self._perm_cache[epoch]

    def step_indices(self, step: int) -> list[int]:
        """Record indices of ``step``: positions ``[step P, (step+1) P)`` of the epoch-wise shuffled
        stream (every record once per epoch, a fresh permutation per epoch)."""
        m = len(self.records)
        out = []
        for q in range(step * self.cfg.prompts_per_step, (step + 1) * self.cfg.prompts_per_step):
            out.append(self._perm(q // m)[q % m])
        return out

    # -- one step --------------------------------------------------------------------------------
    # With several ranks every forward (ZeRO-3 gathers parameters in it) and every backward
    # (gradients are reduced in it) is a collective: each rank runs the same number of micro-batches,
    # padding with a masked dummy batch where it has fewer sequences than the busiest rank.
    def _micro_batches(self, n_pairs: int) -> int:
        mb = self.cfg.micro_batch_size
        local = -(-n_pairs // mb)
        return int(dist_utils.all_reduce([local], "max")[0])

    def _dummy_batch(self) -> Batch:
        """One pad-token "prompt" and one pad-token "completion", fully masked: contributes nothing."""
        batch = build_batch([([self.pad_id], [self.pad_id])], self.pad_id)
        batch.completion_mask.zero_()
        return batch

    def _forward_all(self, model, pairs, *, with_entropy: bool):
        """No-grad per-token log-probs (and entropies) of every pair, in micro-batches."""
        mb = self.cfg.micro_batch_size
        logps, ents = [], []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for b in range(self._micro_batches(len(pairs))):
                chunk = pairs[b * mb:(b + 1) * mb]
                batch = build_batch(chunk, self.pad_id) if chunk else self._dummy_batch()
                lp, ent = token_logprobs(model, batch.to(self.device), self.cfg.temperature,
                                         with_entropy=with_entropy)
                mask = batch.completion_mask[:, 1:]
                for i in range(len(chunk)):
                    m = mask[i].bool()
                    logps.append(lp[i].cpu()[m].clone())
                    if ent is not None:
                        ents.append(ent[i].cpu()[m].clone())
        model.train(was_training)
        return logps, ents

    @staticmethod
    def _scatter(per_seq: list[torch.Tensor], idx: Sequence[int], mask: torch.Tensor) -> torch.Tensor:
        """Per-sequence completion-token values -> the ``[B, L-1]`` layout of ``mask``."""
        out = torch.zeros(mask.shape, dtype=torch.float32)
        out[mask.bool()] = torch.cat([per_seq[i] for i in idx]).to(torch.float32)
        return out

    def update(self, pairs, adv: torch.Tensor, step: int, old_logp: list[torch.Tensor] | None = None) -> dict:
        """PPO update on this rank's ``pairs`` (``(prompt_ids, completion_ids)``) with per-sequence ``adv``.

        ``old_logp``: per-sequence completion-token log-probs of the policy before the update
        (computed here by a no-grad forward when not given). Every rank calls this together (a rank
        may have no pairs). Returns loss / clip_frac / kl / grad_norm (averages over the
        ``ppo_epochs`` optimizer steps, over the whole global batch) and the lr.

        Token mean over the GLOBAL batch: each rank divides its token sum by ``n_global / W`` and
        DeepSpeed averages gradients over the W ranks, so the gradient is that of
        ``sum over all tokens / n_global`` whatever the number of ranks.
        """
        cfg = self.cfg
        world = self.dist.world_size
        if old_logp is None:
            old_logp, _ = self._forward_all(self.model, pairs, with_entropy=False)
        ref_logp = self._forward_all(self.ref_model, pairs, with_entropy=False)[0] \
            if self.ref_model is not None else None
        n_global = dist_utils.all_reduce([sum(len(c) for _, c in pairs)])[0]
        lr = lr_at(cfg, step)
        for group in self.inner_opt.param_groups:
            group["lr"] = lr
        tot = {"loss": 0.0, "clipped": 0.0, "kl": 0.0, "tokens": 0.0, "grad_norm": 0.0}
        mb = cfg.micro_batch_size
        n_mb = self._micro_batches(len(pairs))
        for _ in range(cfg.ppo_epochs):
            loss_sum = 0.0
            for b in range(n_mb):
                idx = list(range(b * mb, min((b + 1) * mb, len(pairs))))
                if idx:
                    batch = build_batch([pairs[i] for i in idx], self.pad_id)
                    mask = batch.completion_mask[:, 1:]
                    old = self._scatter(old_logp, idx, mask)
                    ref = self._scatter(ref_logp, idx, mask) if ref_logp is not None else None
                    a = adv[idx]
                else:
                    batch = self._dummy_batch()
                    mask = batch.completion_mask[:, 1:]
                    old, ref, a = torch.zeros(mask.shape), None, torch.zeros(1)
                    if ref_logp is not None:
                        ref = torch.zeros(mask.shape)
                lp, _ = token_logprobs(self.ds, batch.to(self.device), cfg.temperature)
                lp = lp.float()
                dev = lp.device
                loss, st = policy_loss(lp, old.to(dev), a.to(dev), mask.to(dev), clip_low=cfg.clip_low,
                                       clip_high=cfg.clip_high, n_tokens=n_global / world,
                                       ref_logp=None if ref is None else ref.to(dev), kl_coef=cfg.kl_coef)
                # Gradients are reduced across ranks once, after the last micro-batch.
                self.ds.set_gradient_accumulation_boundary(b == n_mb - 1)
                self.ds.backward(loss, scale_wrt_gas=False)
                loss_sum += float(loss.detach())
                for k in ("clipped", "kl", "tokens"):
                    tot[k] += st[k]
            grad_norm = self._grad_norm_before_step()
            self.ds.step()
            if grad_norm is None:
                gn = self.ds.get_global_grad_norm()
                grad_norm = float(gn) if gn is not None else float("nan")
            tot["loss"] += loss_sum
            tot["grad_norm"] += grad_norm
        e = cfg.ppo_epochs
        loss_total, clipped, kl, tokens = dist_utils.all_reduce(
            [tot["loss"], tot["clipped"], tot["kl"], tot["tokens"]])
        return {"loss": loss_total / world / e, "clip_frac": clipped / max(tokens, 1.0),
                "kl": kl / max(tokens, 1.0), "grad_norm": tot["grad_norm"] / e, "lr": lr}

    def _grad_norm_before_step(self) -> float | None:
        """Global L2 grad norm (pre-clip) for ZeRO stage 0, where DeepSpeed does not report it.
        (At the accumulation boundary the gradients are already averaged over the ranks.)"""
        if self.cfg.zero_stage != 0:
            return None
        norms = [p.grad.detach().float().norm() for p in self.model.parameters() if p.grad is not None]
        if not norms:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack(norms)))

    def _wake_engine(self) -> None:
        wake = getattr(self.engine, "wake_up", None)
        if wake is not None:
            wake()

    def rank_slice(self, step: int) -> tuple[list[int], int]:
        """This rank's record indices of ``step`` and the position of its first prompt in the step.

        The step's ``prompts_per_step`` prompts are split into equal contiguous blocks, one per rank;
        each rank samples, grades and computes advantages for whole groups, so group statistics
        never need another rank's samples.
        """
        idx = self.step_indices(step)
        per = len(idx) // self.dist.world_size
        first = self.dist.rank * per
        return idx[first:first + per], first

    def push_weights(self) -> None:
        """Make the rollout engine generate with the trainer's current weights (collective under
        ZeRO-3, where the full weights are gathered bucket by bucket). A sleeping engine (vLLM
        sleep mode: its GPU memory was freed for the update) is woken first."""
        self._wake_engine()
        if self.cfg.zero_stage == 3:
            self.engine.load_named_weights(dist_utils.gathered_parameters(self.model))
        else:
            self.engine.load_weights(self.model)

    def train_step(self, step: int) -> dict:
        """Run step ``step`` (0-based) on every rank together and return its (global) metric row."""
        from .rollout import SamplingParams, row_seed

        cfg = self.cfg
        idx, first = self.rank_slice(step)
        recs = [self.records[i] for i in idx]
        step_seed = cfg.seed * 1_000_003 + step
        params = SamplingParams(n=cfg.samples_per_prompt, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=cfg.max_new_tokens, seed=step_seed)
        # A prompt's samples are seeded by its position in the global step, not on its rank: the
        # rollouts of a step do not depend on the number of ranks.
        seeds = [row_seed(step_seed, first + k) for k in range(len(idx))]
        self._wake_engine()
        t0 = time.perf_counter()
        comps = self.engine.generate([self.prompts[i] for i in idx], params, seeds=seeds)
        t1 = time.perf_counter()
        sleep = getattr(self.engine, "sleep", None)  # free the engine's GPU memory for the update
        if sleep is not None:
            sleep()
        flat = [c for group in comps for c in group]
        golds = [str(r["answer"]) for r in recs for _ in range(cfg.samples_per_prompt)]
        rewards_list = self.reward([c.text for c in flat], golds)
        t2 = time.perf_counter()
        g, n = len(recs), cfg.samples_per_prompt
        rewards = torch.tensor(rewards_list, dtype=torch.float64).view(g, n)
        beta = beta_at(cfg, step)
        mparams = dict(cfg.method_params or {})
        if "beta" in advantages.estimator_params(cfg.method) and beta is not None:
            mparams["beta"] = beta
        adv = advantages.compute(cfg.method, rewards, **mparams).to(torch.float32)

        solved_groups = (rewards >= 1.0).any(dim=1)
        newly_solved = [str(r["id"]) for r, s in zip(recs, solved_groups.tolist()) if s]
        for ids in dist_utils.all_gather_json(newly_solved):
            self.solved.update(ids)
        keep = (rewards.max(dim=1).values > rewards.min(dim=1).values) if cfg.dynamic_sampling \
            else torch.ones(g, dtype=torch.bool)
        pairs_all = [(c.prompt_token_ids, c.token_ids) for c in flat]
        # One no-grad pass over every sampled completion gives the entropy metric and the old
        # log-probs of the kept ones (the trainer's own numbers, not the engine's).
        old_all, ents = self._forward_all(self.model, pairs_all, with_entropy=True)
        ent_sum = float(torch.cat(ents).double().sum()) if ents else 0.0
        ent_tokens = sum(e.numel() for e in ents)
        kept_rows = [gi * n + j for gi in range(g) if keep[gi] for j in range(n)
                     if len(pairs_all[gi * n + j][1]) > 0]
        upd = {"loss": float("nan"), "clip_frac": float("nan"), "kl": float("nan"),
               "grad_norm": float("nan"), "lr": lr_at(cfg, step)}
        if dist_utils.all_reduce([len(kept_rows)], "max")[0] > 0:  # any rank has something to learn
            flat_adv = adv.reshape(-1)
            upd = self.update([pairs_all[i] for i in kept_rows], flat_adv[kept_rows], step,
                              old_logp=[old_all[i] for i in kept_rows])
            self.push_weights()
        t3 = time.perf_counter()
        gen_tokens = sum(len(c.token_ids) for c in flat)
        (reward_sum, solved_n, kept_n, ent_sum, ent_tokens, gen_tokens, n_seq) = dist_utils.all_reduce(
            [float(rewards.sum()), float(solved_groups.sum()), float(keep.sum()), ent_sum, ent_tokens,
             gen_tokens, len(flat)])
        t_gen, t_grade, t_update = dist_utils.all_reduce([t1 - t0, t2 - t1, t3 - t2], "max")
        row = {
            "step": step + 1,
            "beta": float("nan") if beta is None else float(beta),
            "reward_mean": reward_sum / n_seq,
            "solved_frac": solved_n / cfg.prompts_per_step,
            "cumulative_solve_rate": len(self.solved) / self.n_unique,
            "groups_kept": int(kept_n),
            "entropy": ent_sum / ent_tokens if ent_tokens else float("nan"),
            "response_len_mean": gen_tokens / n_seq,
            "clip_frac": upd["clip_frac"], "kl": upd["kl"], "grad_norm": upd["grad_norm"],
            "loss": upd["loss"], "lr": upd["lr"],
            "time_generate": t_gen, "time_grade": t_grade, "time_update": t_update,
            "tokens_per_s": gen_tokens / max(t_gen, 1e-9),
        }
        return row

    def reward(self, texts: Sequence[str], golds: Sequence[str]) -> list[float]:
        if self._reward_fn is not None:
            return [float(x) for x in self._reward_fn(golds, texts)]
        from .grading import compute_rewards

        return compute_rewards(golds, texts, kind=self.cfg.reward_kind, workers=self.cfg.grading_workers,
                               timeout=self.cfg.grading_timeout)

    # -- bookkeeping -----------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.csv"

    def _write_metrics_file(self) -> None:
        """(Re)write metrics.csv from the in-memory rows: on resume this drops rows written after
        the checkpoint by the killed process, which the resumed run recomputes identically."""
        with atomic_path(self.metrics_path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(METRIC_COLUMNS)
            for row in self.metrics:
                w.writerow([_fmt(row[c]) for c in METRIC_COLUMNS])

    def _append_metrics(self, row: dict) -> None:
        with open(self.metrics_path, "a", newline="") as fh:
            csv.writer(fh).writerow([_fmt(row[c]) for c in METRIC_COLUMNS])
            fh.flush()
        if self._tb is not None:
            for c in METRIC_COLUMNS[1:]:
                v = row[c]
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{c}", v, row["step"])
            self._tb.flush()

    def save(self, step_done: int) -> Path | None:
        """Checkpoint ``step_done`` (every rank calls it: gathering the optimizer state, and the
        weights under ZeRO-3, are collectives); rank 0 writes it, the others wait for the rename.
        Returns the checkpoint path on rank 0, None elsewhere."""
        # a collective for ZeRO 1-3; at stage 0 only the writer needs the copy
        optimizer = dist_utils.full_optimizer_state(self.ds, self.model) \
            if self.dist.is_main or self.cfg.zero_stage > 0 else None
        weights = dict(dist_utils.gathered_parameters(self.model, include_aliases=False)) \
            if self.cfg.zero_stage == 3 else None
        path = None
        if self.dist.is_main:
            state = {
                "step": step_done,
                "optimizer": optimizer,
                "rng": ckpt.capture_rng(),
                "data_position": step_done * self.cfg.prompts_per_step,
                "solved_ids": sorted(self.solved),
                "metrics": [dict(m) for m in self.metrics],
                "config_hash": self.hash,
                "data_hash": self.data_hash,
                "config": json.dumps(to_dict(self.cfg), sort_keys=True, default=str),
                "world_size": self.dist.world_size,
            }
            path = ckpt.save_checkpoint(self.run_dir, step_done, model=self.model, tokenizer=self.tokenizer,
                                        state=state, state_dict=weights)
            ckpt.prune(self.run_dir, self.cfg.keep_last)
        dist_utils.barrier()
        return path

    def write_manifest(self) -> dict:
        done = self.metrics[-1]["step"] if self.metrics else 0
        ckpts = ckpt.complete_checkpoints(self.run_dir)
        manifest = {
            "final_step": done,
            "steps": self.cfg.steps,
            "run_dir": str(self.run_dir),
            "checkpoints": [{"step": s, "path": str(p)} for s, p in ckpts],
            "final_checkpoint": str(ckpts[-1][1]) if ckpts else None,
            "config_hash": self.hash,
            "config": to_dict(self.cfg),
        }
        with atomic_path(self.run_dir / "manifest.json") as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        return manifest

    # -- main loop -------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train from the last checkpoint (or the start) to ``cfg.steps``; return the manifest."""
        self.setup()
        cfg = self.cfg
        main_rank = self.dist.is_main
        bar = None
        if cfg.progress and main_rank:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.start_step, desc="train", unit="step",
                       file=sys.stderr, dynamic_ncols=True)
        try:
            for step in range(self.start_step, cfg.steps):
                row = self.train_step(step)
                self.metrics.append(row)
                if main_rank:
                    self._append_metrics(row)
                done = step + 1
                if done == cfg.steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                    self.save(done)
                if bar is not None:
                    bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kept=row["groups_kept"],
                                    ent=f"{row['entropy']:.3f}")
                    bar.update(1)
                elif main_rank:
                    log.info("step %d reward %.4f kept %d", done, row["reward_mean"], row["groups_kept"])
        finally:
            if bar is not None:
                bar.close()
            if self._tb is not None:
                self._tb.close()
            close = getattr(getattr(self, "engine", None), "close", None)
            if close is not None:
                close()
        manifest = None
        try:
            if main_rank:
                manifest = self.write_manifest()
        finally:
            if self._lock is not None:  # held until the manifest is written
                self._lock.close()
                self._lock = None
        dist_utils.barrier()
        return manifest


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None,
                        help="YAML config (keys = TrainConfig fields, see config/train_defaults.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (value parsed as YAML); repeatable")
    parser.add_argument("--run-dir", default=None, help="run directory (overrides config run_dir)")
    parser.add_argument("--out-manifest", default=None, help="also copy manifest.json to this path")
    parser.add_argument("--out-metrics", default=None, help="also copy metrics.csv to this path")
    parser.add_argument("--nproc", type=int, default=1,
                        help="data-parallel ranks per node (GPUs per node; CPU: gloo processes). With more "
                             "than 1, or in a SLURM job of several nodes, the command starts itself again "
                             "under torch.distributed.run")


def _copy(src: Path, dst: str) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def check_rank_split(cfg: TrainConfig, ranks: int) -> None:
    """Each rank takes an equal block of every step's prompts: refuse a batch that does not divide."""
    if cfg.prompts_per_step % ranks:
        raise ValueError(f"key 'prompts_per_step': {cfg.prompts_per_step} prompts cannot be split evenly "
                         f"over {ranks} ranks; use a multiple of the rank count")


def _argv_without_nproc(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if args.nproc < 1:
        print(f"rsgrpo train: error: --nproc must be >= 1 (got {args.nproc})", file=sys.stderr)
        return 2
    nodes = dist_utils.slurm_job_nodes()
    if (args.nproc > 1 or nodes > 1) and not dist_utils.under_launcher():
        # Validate before starting N processes that would all fail the same way.
        try:
            check_rank_split(load_config(args.config, list(args.overrides or [])), args.nproc * nodes)
        except ValueError as exc:
            print(f"rsgrpo train: error: {exc}", file=sys.stderr)
            return 2
        argv = sys.argv[1:]
        if argv and argv[0] != "train":  # called as `python -m rsgrpo train ...`: argv[0] is the verb
            argv = ["train", *argv]
        return dist_utils.relaunch(args.nproc, _argv_without_nproc(argv))
    overrides = list(args.overrides or [])
    if args.run_dir:
        overrides.append(f"run_dir={json.dumps(args.run_dir)}")
    try:
        cfg = load_config(args.config, overrides)
        trainer = Trainer(cfg)
    except ValueError as exc:  # a user error in the config: the message says what and where
        print(f"rsgrpo train: error: {exc}", file=sys.stderr)
        return 2
    trainer.run()
    if trainer.dist.is_main:
        if args.out_manifest:
            _copy(trainer.run_dir / "manifest.json", args.out_manifest)
        if args.out_metrics:
            _copy(trainer.metrics_path, args.out_metrics)
    return 0
