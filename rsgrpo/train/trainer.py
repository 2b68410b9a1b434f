"""The RL loop of ``python -m rsgrpo train`` (GRPO family with RS-GRPO advantages), resumable.

One step is a pipeline of named stages passing one :class:`~rsgrpo.train.rollout.Rollout`:

1. **generate** -- the next ``prompts_per_step`` prompts of the data order (:mod:`rsgrpo.train.data_order`:
   a seeded, epoch-wise shuffled stream, this rank's block of it), ``samples_per_prompt`` completions
   each from the rollout engine, every prompt seeded by its place among the step's prompts (not its
   rank);
2. **reward** -- one reward per completion from the reward named by ``reward_kind``
   (:mod:`rsgrpo.train.rewards`, which also says what "solved" means and may return the answers it
   extracted), plus DAPO's length penalty with ``overlong: penalty``; the set of prompts solved so far
   is updated;
3. **select** -- dynamic sampling: groups whose rewards are all equal carry no signal for any
   registered estimator and are dropped; while fewer than ``prompts_per_step`` groups with signal are
   collected (over every rank, in data order), stages 1-3 run again on the next prompts, at most
   ``max_gen_rounds`` rounds, and the step keeps the first ``prompts_per_step`` (verl's DAPO recipe;
   without refill the batch would shrink as training saturates, and differently per estimator). The
   data position is the number of prompts drawn. A step with no group selected makes no update but
   is counted and logged;
4. **advantages** -- ``rsgrpo.estimators.compute(estimator, rewards[G, N], **params)`` over the selected
   groups of every rank, on every rank, beta taken from the beta schedule when the estimator has one;
5. **update** -- ``ppo_epochs`` optimizer steps of the PPO clipped objective on this rank's kept
   completions (without those cut at ``max_new_tokens`` under ``overlong: mask``; :mod:`rsgrpo.train.loss`,
   run by :class:`rsgrpo.train.actor.Actor`), and the new weights pushed to the rollout engine;
6. **metrics row** -- one :class:`~rsgrpo.train.metrics.MetricsRow` in ``metrics.csv`` and the ``logging``
   sinks, summed over the ranks; every ``rollout_log_every`` steps the first groups of the step go to
   ``rollouts/`` (:mod:`rsgrpo.train.rollout_log`).

Checkpoints (:mod:`rsgrpo.train.checkpoint`) are atomic and carry everything exact resume needs; a run
killed at any moment and restarted with the same command continues from the last complete checkpoint
and, on CPU in float32, ends with bit-identical weights and metrics (apart from wall-clock columns).
SIGTERM, SIGUSR1 or SIGURG (a cluster's preemption or time-limit warning) is a stop request
(:mod:`rsgrpo.train.preemption`): the step in progress finishes, is checkpointed, and the run raises
:class:`~rsgrpo.train.preemption.Preempted`, so the restarted command loses no finished step.

The loop is injectable for tests: :class:`Trainer` accepts ``records``, an ``engine_factory`` and a
``prompt_fn`` instead of the data / engine / prompt-template modules (rewards are injected by
registering one in :mod:`rsgrpo.train.rewards` and naming it in ``reward_kind``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsgrpo import estimators
from rsgrpo.prepare.loading import check_gradient_checkpointing
from rsgrpo.train import checkpoint as ckpt
from rsgrpo.train import data_order, engines, lora, preemption, rewards, rollout_log, sinks
from rsgrpo.train.actor import Actor, UpdateStats
from rsgrpo.train.config import TrainConfig, compute_dtype, config_hash
from rsgrpo.train.distributed import collectives, launch
from rsgrpo.train.engines.base import GenerationAbandoned, SamplingParams, row_seed
from rsgrpo.train.metrics import MetricsLog, MetricsRow, step_row
from rsgrpo.train.rollout import Rollout
from rsgrpo.train.run_dir import RunDirectory
from rsgrpo.train.schedules import beta_at, lr_at
from rsgrpo.train.training_set import build_prompts, load_training_set

__all__ = ["Trainer"]

log = logging.getLogger(__name__)


class _Abandoned(Exception):
    """A stop request arrived while step ``args[0]`` was generating: its rollouts are dropped."""


def free_cached_memory() -> None:
    """Return the caching allocator's unused blocks to the GPU (nothing to do on CPU): what the
    update freed must be free for vLLM to map, which allocates outside torch's cache."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def engine_share(cfg: TrainConfig, model_dir: str, *, ranks: int, prompt_tokens: int) -> float:
    """vLLM's ``gpu_memory_utilization`` beside this trainer: the share the plan prints
    (:func:`rsgrpo.capacity.colocated_engine_share`), from the model's config.json and this GPU."""
    from rsgrpo import capacity

    config = json.loads((Path(model_dir) / "config.json").read_text())
    job = capacity.train_job(cfg, ranks=ranks, prompt_tokens=prompt_tokens)
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    share = capacity.colocated_engine_share(capacity.model_shape(config), job, total, kl_reference=cfg.kl_coef > 0)
    if not share["fits"] or share["kv_room_bytes"] <= 0:
        raise ValueError(
            f"no room for a colocated vLLM engine on this GPU ({total / 1e9:.1f} GB): the trainer keeps "
            f"{share['resident_bytes'] / 1e9:.1f} GB resident during generation (zero_stage {cfg.zero_stage}, "
            f"{ranks} rank(s)), plus a {share['margin_bytes'] / 1e9:.1f} GB margin, and the engine needs "
            f"{(share['weights_bytes'] + share['overhead_bytes']) / 1e9:.1f} GB before its KV cache; use more GPUs "
            "(a higher zero_stage partitions more), offload_optimizer, or set engine_options.gpu_memory_utilization")
    log.info("vLLM share of the GPU: %.3f (KV cache room %.1f GB)", share["share"], share["kv_room_bytes"] / 1e9)
    return share["share"]


class Trainer:
    """One RL run in ``run_dir``; call :meth:`run`.

    Injection points (tests, benchmarks): ``records`` (list of ``{id, problem, answer, ...}``),
    ``engine_factory(model, tokenizer, model_dir) -> engine`` and ``prompt_fn(problem) -> prompt``.
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | os.PathLike | None = None, *,
                 records: list[dict] | None = None, engine_factory=None,
                 prompt_fn: Callable[[str], Any] | None = None):
        run_dir = run_dir if run_dir is not None else cfg.run_dir
        if not run_dir:
            raise ValueError("run_dir is required (config key run_dir or --run-dir)")
        if not cfg.model_dir:
            raise ValueError("model_dir is required (config key model_dir)")
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.hash = config_hash(cfg)
        self._records, self._engine_factory, self._prompt_fn = records, engine_factory, prompt_fn
        self.metrics: list[dict] = []
        self.solved: set[str] = set()
        self.start_step = 0
        self.data_position = 0  # prompts drawn from the data order so far
        self.metrics_log: MetricsLog | None = None
        self.stop: preemption.StopRequest | None = None  # installed by run()

    # -- setup: resume state, then model and optimizer, then rollout engine ----------------------
    def setup(self) -> None:
        cfg = self.cfg
        # The process group comes first: every rank must agree on what it resumes from.
        self.dist = collectives.init_distributed(timeout_minutes=cfg.collective_timeout_minutes)
        if self.dist.world_size > 1:  # which node each rank runs on: the log shows who joined the launch
            log.info("rank %d of %d on node %s (local rank %d)", self.dist.rank, self.dist.world_size,
                     collectives.node_name(), self.dist.local_rank)
        launch.check_rank_split(cfg.prompts_per_step, self.dist.world_size)
        self._check_before_loading(cfg.model_dir)  # config-only checks; a checkpoint's config.json is the same
        resume_from, state = self._resume_state()
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)
        source = str(resume_from) if resume_from is not None else cfg.model_dir
        self.prompts, max_model_len = build_prompts(cfg, self.data.records, source, self._prompt_fn)
        self.actor = Actor(cfg, source, masters=state["masters"] if state is not None else None)
        self.start_step = int(state["step"]) if state is not None else 0  # the engine's seed needs it
        self.engine = self._make_engine(source, max_model_len)
        if self.dist.is_main:
            log.info("rollout engine: %s", self.engine.describe())
        if state is not None:
            self._restore(state, resume_from)
        if self.dist.is_main:
            self.metrics_log = MetricsLog.open(cfg, self.run_dir, start_step=self.start_step, rows=self.metrics)

    def _check_before_loading(self, source: str) -> None:
        """Checks that read only the model's config and tokenizer, before any weights load."""
        if self.dist.is_main:
            sinks.check_available(self.cfg.logging)
        if self._engine_factory is None:
            engines.resolve_engine_kind(self.cfg.engine)  # no silent fallback to transformers on a GPU machine
        if self.cfg.gradient_checkpointing:
            check_gradient_checkpointing(source)
        if self.cfg.lora is not None:
            lora.check_targets(self.cfg.lora, source, "train config")
        if torch.cuda.is_available() and self.cfg.precision == "fp32" and self.dist.is_main:
            log.warning("precision fp32 on a GPU: training and rollouts in fp32 (twice the memory, several times "
                        "slower); the workflow's GPU configs use precision: bf16-mixed, zero_stage >= 1")

    def _resume_state(self):
        """Lock and tidy the run dir, load the training records, and return the newest complete
        checkpoint's ``(path, state)`` (``(None, None)`` for a fresh run)."""
        self.run_directory = RunDirectory(self.cfg, self.run_dir, self.dist, self.hash)
        self.run_directory.open()
        self.data = load_training_set(self.cfg, self._records, prompt_fn=self._prompt_fn)
        return self.run_directory.resume_state(self.data.hash)

    def _make_engine(self, source: str, max_model_len: int):
        """The rollout engine, in the compute dtype, sharing the trainer's GPU. Under ZeRO-3 the
        module holds only this rank's partition: the engine keeps a full copy of its own (loaded from
        the same checkpoint), refreshed by a gather. A vLLM engine's sampler is seeded per rank and
        per start step (its requests are unseeded, see ``COLOCATED_VLLM_DEFAULTS``), and on a GPU it
        gets the share of the GPU the plan computes (:func:`engine_share`) unless the config sets one."""
        shared = self.actor.model if self.cfg.zero_stage != 3 else None
        if self.cfg.lora is not None and engines.resolve_engine_kind(self.cfg.engine) == "vllm":
            shared = None  # the engine loads the merged weights of source; PEFT's module has other names
        if self._engine_factory is not None:
            return self._engine_factory(shared, self.actor.tokenizer, source)
        cfg = self.cfg
        options = dict(cfg.engine_options)
        if engines.resolve_engine_kind(cfg.engine) == "vllm":
            options.setdefault("seed", row_seed(cfg.seed, self.dist.rank, self.start_step) % 2 ** 31)
            if torch.cuda.is_available() and "gpu_memory_utilization" not in options:
                options["gpu_memory_utilization"] = engine_share(cfg, source, ranks=self.dist.world_size,
                                                                 prompt_tokens=max_model_len - cfg.max_new_tokens)
        return engines.make_engine(cfg.engine, model_dir=source, model=shared, tokenizer=self.actor.tokenizer,
                                   dtype=compute_dtype(cfg), batch_size=cfg.hf_batch_size, colocated=True,
                                   max_model_len=max_model_len, **options)

    def _restore(self, state: dict, path: Path) -> None:
        """Optimizer, RNG, step, solved set and metric rows of a checkpoint's state."""
        self.actor.load_optimizer_state(state["optimizer"])
        ckpt.restore_rng(state["rng"])
        self.start_step = int(state["step"])
        self.solved = set(state["solved_ids"])
        self.metrics = [dict(row) for row in state["metrics"]]
        self.data_position = int(state["data_position"])
        log.info("resuming from %s (step %d) with %d rank(s)", path, self.start_step, self.dist.world_size)

    # -- one step --------------------------------------------------------------------------------
    def train_step(self, step: int) -> MetricsRow:
        """Run step ``step`` (0-based) on every rank together and return its (global) metric row."""
        rollout = self.collect(step)
        self.compute_advantages(rollout)
        update = self.update(rollout)
        row = self.metrics_row(rollout, update)
        if self.cfg.rollout_log_every and row.step % self.cfg.rollout_log_every == 0:
            self.log_rollouts(rollout, row.step)
        return row

    def collect(self, step: int) -> Rollout:
        """Rounds of generate, reward and select until ``prompts_per_step`` groups with a learning
        signal are selected or ``max_gen_rounds`` rounds are spent (one round without dynamic
        sampling). Every round draws the next ``prompts_per_step`` prompts of the data order."""
        cfg = self.cfg
        rollout = Rollout(step, start=self.data_position)
        before = (set(self.solved), ckpt.capture_rng())  # the state a stop request returns to
        while True:
            try:
                self.generate(rollout)
            except GenerationAbandoned:  # this rank's stop request: the agreement below says so to all
                pass
            if self._stop_agreed():  # abandon the step: the last completed one is checkpointed at once
                self.solved = before[0]
                ckpt.restore_rng(before[1])
                raise _Abandoned(step)
            self.reward(rollout)
            self.select(rollout)
            if (not cfg.dynamic_sampling or len(rollout.selected) >= cfg.prompts_per_step
                    or rollout.gen_rounds >= cfg.max_gen_rounds):
                break
        self.engine.sleep()  # free the engine's GPU memory for the update
        self.data_position = rollout.start + rollout.gen_rounds * cfg.prompts_per_step
        return rollout

    def generate(self, rollout: Rollout) -> None:
        """One round: this rank's block of the next ``prompts_per_step`` prompts, sampled."""
        cfg = self.cfg
        first_offset = rollout.gen_rounds * cfg.prompts_per_step
        indices = data_order.stream_indices(len(self.data.records), cfg.seed, rollout.start + first_offset,
                                            cfg.prompts_per_step)
        mine, first = data_order.rank_slice(indices, self.dist.rank, self.dist.world_size)
        step_seed = cfg.seed * 1_000_003 + rollout.step
        params = SamplingParams(n=cfg.samples_per_prompt, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=cfg.max_new_tokens, seed=step_seed, logprobs=True)
        # A prompt's samples are seeded by its place among the step's prompts, not by its rank: the
        # rollouts of a step do not depend on the number of ranks.
        offsets = [first_offset + first + position for position in range(len(mine))]
        seeds = [row_seed(step_seed, offset) for offset in offsets]
        started = time.perf_counter()
        rollout.completions += self.engine.generate([self.prompts[i] for i in mine], params, seeds=seeds,
                                                    should_stop=lambda: self.stop is not None and self.stop.requested)
        rollout.indices += mine
        rollout.offsets += offsets
        rollout.gen_rounds += 1
        rollout.timings["generate"] += time.perf_counter() - started

    def reward(self, rollout: Rollout) -> None:
        """Rewards of the groups generated since the last call, the overlong penalty, the solved set."""
        cfg = self.cfg
        started = time.perf_counter()
        done = 0 if rollout.scores is None else rollout.scores.shape[0]
        new = rollout.completions[done:]
        records = [self.data.records[i] for i in rollout.indices[done:]]
        per_completion = [record for record in records for _ in range(cfg.samples_per_prompt)]
        flat = [c for group in new for c in group]
        out = rewards.compute(
            cfg.reward_kind, completions=[c.text for c in flat],
            answers=[str(record["answer"]) for record in per_completion],
            problems=[str(record["problem"]) for record in per_completion], records=per_completion,
            settings={"workers": cfg.grading_workers, "timeout": cfg.grading_timeout})
        scores = torch.tensor(out.values, dtype=torch.float64).view(len(new), -1)
        shaped = scores
        if cfg.overlong == "penalty":
            penalty = rewards.overlong_penalty([len(c.token_ids) for c in flat], max_tokens=cfg.max_new_tokens,
                                               buffer=cfg.overlong_buffer)
            shaped = scores + torch.tensor(penalty, dtype=torch.float64).view(len(new), -1)
        per_group = cfg.samples_per_prompt
        answers = None if out.answers is None else [out.answers[g * per_group:(g + 1) * per_group]
                                                    for g in range(len(new))]
        solved = (scores >= rewards.solved_at(cfg.reward_kind)).any(dim=1)
        rollout.add_scores(scores, shaped, solved, answers)
        rollout.timings["grade"] += time.perf_counter() - started
        newly_solved = [str(record["id"]) for record, hit in zip(records, solved.tolist()) if hit]
        for ids in collectives.all_gather_json(newly_solved):
            self.solved.update(ids)

    def select(self, rollout: Rollout) -> None:
        """Dynamic sampling: the first ``prompts_per_step`` groups of the step (in data order, over
        every rank) whose rewards are not all equal, which carry no signal for any registered
        estimator; without dynamic sampling, every group."""
        done = len(rollout.all_rewards)
        mine = rollout.rewards[done // self.dist.world_size:].tolist()  # this rank's share of the new round
        for rows in collectives.all_gather_json(mine):  # rank blocks are contiguous: step order
            rollout.all_rewards += rows
        if not self.cfg.dynamic_sampling:
            rollout.selected = list(range(len(rollout.all_rewards)))
            return
        with_signal = [offset for offset, row in enumerate(rollout.all_rewards) if max(row) > min(row)]
        rollout.selected = with_signal[:self.cfg.prompts_per_step]

    def compute_advantages(self, rollout: Rollout) -> None:
        """Advantages of the selected groups, computed over the step's whole selected batch on every
        rank (so batch-level estimators see the same batch whatever the rank count); this rank keeps
        its own groups' rows."""
        cfg = self.cfg
        rollout.beta = beta_at(cfg, rollout.step)
        params = dict(cfg.estimator_params or {})
        if estimators.takes_beta(cfg.estimator) and rollout.beta is not None:
            params["beta"] = rollout.beta
        row_of = {offset: row for row, offset in enumerate(rollout.selected)}
        rollout.kept = torch.tensor([offset in row_of for offset in rollout.offsets], dtype=torch.bool)
        rollout.advantages = torch.zeros(len(rollout.offsets), cfg.samples_per_prompt, dtype=torch.float32)
        if rollout.selected:
            chosen = torch.tensor([rollout.all_rewards[offset] for offset in rollout.selected], dtype=torch.float64)
            batch = estimators.compute(cfg.estimator, chosen, **params).to(torch.float32)
            for group, offset in enumerate(rollout.offsets):
                if offset in row_of:
                    rollout.advantages[group] = batch[row_of[offset]]

    def update(self, rollout: Rollout) -> UpdateStats:
        """The PPO update on the kept completions (if any rank kept any), then the weight push
        (always: the sleeping engine discarded its weights). The entropy metric comes from the
        update's forward, the mismatch between the engine's and the trainer's log-probs too (checked
        against ``mismatch_max_k3`` at steps 0 and 1 and every ``mismatch_check_every`` steps)."""
        cfg = self.cfg
        started = time.perf_counter()
        pairs = rollout.pairs
        kept = rollout.kept_rows(skip_truncated=cfg.overlong == "mask")
        stats = UpdateStats.none(lr_at(cfg, rollout.step))
        sampled = rollout.sampling_logprobs
        # every rank takes part in the update's collectives, so all must agree on measuring
        measured = collectives.all_reduce([float(sampled is None)], "max")[0] == 0
        if collectives.all_reduce([len(kept)], "max")[0] > 0:  # any rank has something to learn
            kept_pairs = [pairs[i] for i in kept]
            if cfg.ppo_epochs > 1:  # off-policy epochs need the pre-update log-probs
                rollout.old_logprobs = self.actor.logprobs(kept_pairs)[0]
            check = rollout.step in (0, 1) or rollout.step % cfg.mismatch_check_every == 0
            stats = self.actor.update(kept_pairs, rollout.advantages.reshape(-1)[kept], stats.lr,
                                      old_logp=rollout.old_logprobs,
                                      sampling_logp=[sampled[i] for i in kept] if measured else None,
                                      check_step=rollout.step if check else None)
        self.push_weights()
        rollout.timings["update"] = time.perf_counter() - started
        return stats

    def metrics_row(self, rollout: Rollout, update: UpdateStats) -> MetricsRow:
        return step_row(rollout, update, solved_at=rewards.solved_at(self.cfg.reward_kind),
                        cumulative_solve_rate=len(self.solved) / self.data.n_unique,
                        prompts_drawn=self.data_position, prompts_per_step=self.cfg.prompts_per_step,
                        skip_truncated=self.cfg.overlong == "mask")

    def log_rollouts(self, rollout: Rollout, step: int) -> None:
        """The step's first ``rollout_log_groups`` groups (data order, every rank) to
        ``rollouts/step-NNNNNN.jsonl`` and the sinks (rank 0 writes)."""
        mine = rollout_log.rank_groups(rollout, self.data.records, self.prompts, step=step,
                                       limit=self.cfg.rollout_log_groups)
        groups = sorted((g for part in collectives.all_gather_json(mine) for g in part), key=lambda g: g["position"])
        if self.dist.is_main:
            rollout_log.write_rollouts(self.run_dir, step, groups)
            if self.metrics_log is not None:
                self.metrics_log.text(step, "rollouts", rollout_log.to_markdown(groups))

    def push_weights(self) -> None:
        """Make the rollout engine generate with the trainer's current weights (collective under
        ZeRO-3, where the full weights are gathered bucket by bucket), in the order colocated peers
        use (verl, OpenRLHF): the update's cached blocks are returned to the GPU, the engine's weights
        memory is mapped, the weights are pushed, the gather's cache is returned, and only then is the
        KV cache mapped -- the update's and the engine's memory are never reserved at once."""
        free_cached_memory()
        self.engine.wake_up(("weights",))
        self.actor.sync_engine(self.engine)
        free_cached_memory()
        self.engine.wake_up(("kv_cache",))

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, step_done: int) -> Path | None:
        """Checkpoint ``step_done`` with the trainer's state (:meth:`RunDirectory.save`, a collective)."""
        return self.run_directory.save(step_done, self.actor, {
            "data_position": self.data_position, "solved_ids": sorted(self.solved),
            "metrics": [dict(row) for row in self.metrics], "data_hash": self.data.hash,
            "training_set": self.data.metadata()})

    # -- main loop -------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train from the last checkpoint (or the start) to ``cfg.steps``; return the manifest."""
        self.setup()
        cfg = self.cfg
        self.stop = stop = preemption.StopRequest().install()
        try:
            for step in range(self.start_step, cfg.steps):
                try:
                    row = self.train_step(step)
                except _Abandoned:  # a stop request during generation: keep what was complete
                    if self.run_directory.newest_step != step and step > 0:
                        self.save(step)
                    raise preemption.Preempted(step, stop.signal_name) from None
                self.metrics.append(row.as_dict())
                if self.metrics_log is not None:
                    self.metrics_log.append(row)
                done = step + 1
                # every rank takes part, so all of them stop after the same step (a collective per step)
                stopping = self._stop_agreed()
                if done == cfg.steps or stopping or self.run_directory.due(done):
                    self.save(done)
                if stopping and done < cfg.steps:
                    raise preemption.Preempted(done, stop.signal_name)
        except preemption.Preempted:
            self.run_directory.close()
            raise
        finally:
            stop.restore()
            if self.metrics_log is not None:
                self.metrics_log.close()
            if hasattr(self, "engine"):
                self.engine.close()
        return self.run_directory.finish(self.metrics[-1]["step"] if self.metrics else 0,
                                         training_set=self.data.metadata())

    def _stop_agreed(self) -> bool:
        """Has any rank been asked to stop? (A collective: every rank gets the same answer.)"""
        requested = self.stop is not None and self.stop.requested
        return collectives.all_reduce([float(requested)], op="max")[0] > 0
