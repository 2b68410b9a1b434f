"""``python -m rsgrpo train``: the RL loop (GRPO family with RS-GRPO advantages), resumable.

One step is a pipeline of named stages passing one :class:`Rollout`:

1. **generate** -- the next ``prompts_per_step`` prompts of the data order (:mod:`rsgrpo.data_order`:
   a seeded, epoch-wise shuffled stream, this rank's block of it), ``samples_per_prompt`` completions
   each from the rollout engine, every prompt seeded by its place among the step's prompts (not its
   rank);
2. **score** -- one reward per completion from the reward named by ``reward_kind``
   (:mod:`rsgrpo.rewards`), plus DAPO's length penalty with ``overlong: penalty``; the set of prompts
   solved so far is updated;
3. **select** -- dynamic sampling: groups whose rewards are all equal carry no signal for any
   registered estimator and are dropped; while fewer than ``prompts_per_step`` groups with signal are
   collected (over every rank, in data order), stages 1-3 run again on the next prompts, at most
   ``max_gen_rounds`` rounds, and the step keeps the first ``prompts_per_step`` (verl's DAPO recipe;
   without refill the batch would shrink as training saturates, and differently per method). The
   data position is the number of prompts drawn. A step with no group selected makes no update but
   is counted and logged;
4. **advantages** -- ``rsgrpo.advantages.compute(method, rewards[G, N], **params)`` over the selected
   groups of every rank, beta taken from the beta schedule when the estimator has one;
5. **update** -- ``ppo_epochs`` optimizer steps of the PPO clipped objective on the kept completions
   (without those cut at ``max_new_tokens`` under ``overlong: mask``; :mod:`rsgrpo.loss`, run by
   :class:`rsgrpo.actor.Actor`; with one epoch the update is on-policy and its own forward gives the
   old log-probs and the token entropy metric, with more a no-grad pass computes the old log-probs
   first), and the new weights pushed to the rollout engine;
6. **metrics row** -- one row of ``metrics.csv`` and of the ``logging`` sinks (:mod:`rsgrpo.metrics`,
   :mod:`rsgrpo.sinks`), summed over the ranks; every ``rollout_log_every`` steps the first groups
   of the step go to ``rollouts/`` (:mod:`rsgrpo.rollout_log`).

Checkpoints (``rsgrpo.checkpoint``) are atomic and carry everything exact resume needs; a run killed
at any moment and restarted with the same command continues from the last complete checkpoint and,
on CPU in float32, ends with bit-identical weights and metrics (apart from wall-clock columns).
SIGTERM, SIGUSR1 or SIGURG (a cluster's preemption or time-limit warning) is a stop request
(:mod:`rsgrpo.preemption`): the step in progress finishes, is checkpointed, and the verb exits with
status 75, so the restarted command loses no finished step.

The loop is injectable for tests: :class:`Trainer` accepts ``records``, an ``engine_factory`` and a
``prompt_fn`` instead of the data / rollout / prompt-template modules (rewards are injected by
registering one in :mod:`rsgrpo.rewards` and naming it in ``reward_kind``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsgrpo import estimators
from rsgrpo.io import atomic_path
from rsgrpo.layout import MANIFEST
from rsgrpo.train import checkpoint as ckpt
from rsgrpo.train import data_order, preemption, rewards
from rsgrpo.train import distributed as dist_utils
from rsgrpo.train.actor import Actor
from rsgrpo.train.config import TrainConfig, beta_at, compute_dtype, config_hash, load_config, lr_at, to_dict
from rsgrpo.train.distributed import init_distributed
from rsgrpo.train.engines import Completion
from rsgrpo.train.metrics import METRIC_COLUMNS, TIMING_COLUMNS, MetricsLog

__all__ = ["Trainer", "Rollout", "METRIC_COLUMNS", "TIMING_COLUMNS", "add_arguments", "main"]

log = logging.getLogger(__name__)


def records_hash(records: list[dict]) -> str:
    """Fingerprint of the training records (ids, problems, answers, extra fields, order) guarding
    resume. A record without extra fields hashes as it always has, so older checkpoints resume."""
    digest = hashlib.sha256()
    for record in records:
        item = [str(record["id"]), str(record["problem"]), str(record["answer"])]
        extras = sorted((key, value) for key, value in record.items() if key not in ("id", "problem", "answer"))
        digest.update(json.dumps(item + [extras] if extras else item, default=str).encode())
    return digest.hexdigest()


@dataclass
class Rollout:
    """One step's batch on this rank, filled in stage by stage (see the module docstring). The
    per-group lists hold this rank's groups of every generation round, in data order."""

    step: int
    start: int                               # data position (prompts drawn so far) at the step's start
    indices: list[int] = field(default_factory=list)     # record index of each group of this rank
    offsets: list[int] = field(default_factory=list)     # each group's place among the step's prompts
    completions: list[list[Completion]] = field(default_factory=list)  # [groups][samples_per_prompt]
    extracted: list[list[str | None]] = field(default_factory=list)    # final answers (score)
    scores: torch.Tensor | None = None       # [G, N] float64: the reward (score)
    rewards: torch.Tensor | None = None      # [G, N] float64: the reward plus any overlong penalty (score)
    solved: torch.Tensor | None = None       # [G] bool: some completion has reward >= 1 (score)
    gen_rounds: int = 0                      # rounds of prompts_per_step prompts generated (generate)
    # rewards of every group of every rank in step order (all ranks hold the same list) and the step
    # offsets of the groups the update learns from (select)
    all_rewards: list[list[float]] = field(default_factory=list)
    selected: list[int] = field(default_factory=list)
    beta: float | None = None                # (advantages)
    advantages: torch.Tensor | None = None   # [G, N] float32, 0 for groups not selected (advantages)
    kept: torch.Tensor | None = None         # [G] bool: this rank's selected groups (advantages)
    # log-probs of the kept completions before the update (update; only with ppo_epochs > 1: an
    # on-policy update takes them from its own forward)
    old_logprobs: list[torch.Tensor] | None = None
    entropy_sum: float = 0.0                 # token entropy summed over the updated completions (update)
    entropy_tokens: int = 0
    timings: dict[str, float] = field(default_factory=lambda: {"generate": 0.0, "grade": 0.0, "update": 0.0})

    @property
    def flat(self) -> list[Completion]:
        return [completion for group in self.completions for completion in group]

    @property
    def pairs(self) -> list[tuple[list[int], list[int]]]:
        return [(c.prompt_token_ids, c.token_ids) for c in self.flat]

    def kept_rows(self, *, skip_truncated: bool = False) -> list[int]:
        """Flat indices of the kept groups' non-empty completions (without those cut at the length
        limit when ``skip_truncated``)."""
        per_group = len(self.completions[0]) if self.completions else 0
        return [group * per_group + j for group, is_kept in enumerate(self.kept.tolist()) if is_kept
                for j, c in enumerate(self.completions[group])
                if c.token_ids and not (skip_truncated and not c.finished)]


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
        self._lock = None  # the run-dir lock (rank 0), held from setup to the end of run

    # -- setup: resume state, then model and optimizer, then rollout engine ----------------------
    def setup(self) -> None:
        cfg = self.cfg
        # The process group comes first: every rank must agree on what it resumes from.
        self.dist = init_distributed()
        if self.dist.world_size > 1:  # which node each rank runs on: the log shows who joined the launch
            log.info("rank %d of %d on node %s (local rank %d)", self.dist.rank, self.dist.world_size,
                     dist_utils.node_name(), self.dist.local_rank)
        dist_utils.check_rank_split(cfg.prompts_per_step, self.dist.world_size)
        resume_from, state = self._resume_state()
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)
        source = str(resume_from) if resume_from is not None else cfg.model_dir
        # checks that read the model's config and tokenizer, before any weights load
        if self.dist.is_main:
            from rsgrpo.train.sinks import check_available

            check_available(cfg.logging)
        if self._engine_factory is None:
            from rsgrpo.train.engines import resolve_engine_kind

            resolve_engine_kind(cfg.engine)  # no silent fallback to transformers on a GPU machine
        if cfg.gradient_checkpointing:
            from rsgrpo.prepare.models import check_gradient_checkpointing

            check_gradient_checkpointing(source)
        self.prompts, max_model_len = self._prompts(source)
        self.actor = Actor(cfg, source, masters=state["masters"] if state is not None else None)
        self.engine = self._make_engine(source, max_model_len)
        if self.dist.is_main:
            log.info("rollout engine: %s", self.engine.describe())
        if state is not None:
            self._restore(state, resume_from)
        if self.dist.is_main:
            from rsgrpo.train import sinks

            opened = sinks.open_sinks(cfg.logging, self.run_dir, run_name=self._run_name(), config=to_dict(cfg),
                                      start_step=self.start_step)
            self.metrics_log = MetricsLog(self.run_dir, sinks=opened, progress=cfg.progress, steps=cfg.steps,
                                          start_step=self.start_step)
            self.metrics_log.rewrite(self.metrics)

    def _resume_state(self):
        """Lock and tidy the run dir, load the training records, and return the newest complete
        checkpoint's ``(path, state)`` (``(None, None)`` for a fresh run)."""
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock = ckpt.lock_run_dir(self.run_dir)
            for path in ckpt.clean_incomplete(self.run_dir):
                log.info("removed incomplete checkpoint %s", path)
        dist_utils.barrier()
        self.records = self._records if self._records is not None else self._load_records()
        if not self.records:
            raise ValueError("train_data holds no records")
        self.n_unique = len({str(record["id"]) for record in self.records})
        self.data_hash = records_hash(self.records)
        return ckpt.resume_state(self.run_dir, config_hash=self.hash, data_hash=self.data_hash)

    def _prompts(self, source: str) -> tuple[list, int]:
        """Every record's prompt and the sequence length generation needs (the longest prompt plus
        ``max_new_tokens``), checked against the model's context from its tokenizer and config only."""
        from rsgrpo.prepare.models import load_tokenizer
        from rsgrpo.train.engines import encode_prompts, generation_length

        tokenizer = load_tokenizer(source)
        prompts = [self._build_prompt(record["problem"], tokenizer) for record in self.records]
        needed = generation_length(encode_prompts(tokenizer, prompts), self.cfg.max_new_tokens, source,
                                   key="max_new_tokens")
        return prompts, needed

    def _make_engine(self, source: str, max_model_len: int):
        """The rollout engine, in the compute dtype, sharing the trainer's GPU. Under ZeRO-3 the
        module holds only this rank's partition: the engine keeps a full copy of its own (loaded from
        the same checkpoint), refreshed by a gather."""
        shared = self.actor.model if self.cfg.zero_stage != 3 else None
        if self._engine_factory is not None:
            return self._engine_factory(shared, self.actor.tokenizer, source)
        from rsgrpo.train.engines import make_engine

        cfg = self.cfg
        return make_engine(cfg.engine, model_dir=source, model=shared, tokenizer=self.actor.tokenizer,
                           dtype=compute_dtype(cfg), batch_size=cfg.hf_batch_size, colocated=True,
                           max_model_len=max_model_len, **cfg.engine_options)

    def _restore(self, state: dict, path: Path) -> None:
        """Optimizer, RNG, step, solved set and metric rows of a checkpoint's state."""
        self.actor.load_optimizer_state(state["optimizer"])
        ckpt.restore_rng(state["rng"])
        self.start_step = int(state["step"])
        self.solved = set(state["solved_ids"])
        self.metrics = [dict(row) for row in state["metrics"]]
        self.data_position = int(state["data_position"])
        per_step = self.cfg.prompts_per_step
        if self.data_position < self.start_step * per_step or self.data_position % per_step:
            raise ValueError(f"checkpoint {path}: data_position {self.data_position} is not a multiple of "
                             f"prompts_per_step {per_step} of at least step x prompts_per_step "
                             f"= {self.start_step * per_step}")
        log.info("resuming from %s (step %d) with %d rank(s)", path, self.start_step, self.dist.world_size)

    def _run_name(self) -> str:
        """The run's name for tracking services: its directory relative to the working directory
        (``runs/<model>/<run>`` in the workflow), else its absolute path."""
        path = self.run_dir.resolve()
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def _load_records(self) -> list[dict]:
        from rsgrpo.prepare.data import load_records

        spec = self.cfg.train_data
        if spec is None:
            raise ValueError("train_data is required (config key train_data)")
        return load_records({"source": "local", "path": spec} if isinstance(spec, str) else spec)

    def _build_prompt(self, problem: str, tokenizer):
        if self._prompt_fn is not None:
            return self._prompt_fn(problem)
        from rsgrpo.prepare.data import build_prompt

        return build_prompt(problem, template=self.cfg.prompt_template, tokenizer=tokenizer)

    # the policy's parts, for callers that look inside (tests, benchmarks)
    model = property(lambda self: self.actor.model)
    tokenizer = property(lambda self: self.actor.tokenizer)
    pad_id = property(lambda self: self.actor.pad_id)
    ref_model = property(lambda self: self.actor.ref_model)

    # -- one step --------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        """Run step ``step`` (0-based) on every rank together and return its (global) metric row."""
        rollout = self.collect(step)
        self.compute_advantages(rollout)
        update = self.update(rollout)
        row = self.metrics_row(rollout, update)
        if self.cfg.rollout_log_every and row["step"] % self.cfg.rollout_log_every == 0:
            self.log_rollouts(rollout, row["step"])
        return row

    def collect(self, step: int) -> Rollout:
        """Rounds of generate, score and select until ``prompts_per_step`` groups with a learning
        signal are selected or ``max_gen_rounds`` rounds are spent (one round without dynamic
        sampling). Every round draws the next ``prompts_per_step`` prompts of the data order."""
        cfg = self.cfg
        rollout = Rollout(step, start=self.data_position)
        self._wake_engine()
        while True:
            self.generate(rollout)
            self.score(rollout)
            self.select(rollout)
            if (not cfg.dynamic_sampling or len(rollout.selected) >= cfg.prompts_per_step
                    or rollout.gen_rounds >= cfg.max_gen_rounds):
                break
        sleep = getattr(self.engine, "sleep", None)  # free the engine's GPU memory for the update
        if sleep is not None:
            sleep()
        self.data_position = rollout.start + rollout.gen_rounds * cfg.prompts_per_step
        return rollout

    def generate(self, rollout: Rollout) -> None:
        """One round: this rank's block of the next ``prompts_per_step`` prompts, sampled."""
        from rsgrpo.train.engines import SamplingParams, row_seed

        cfg = self.cfg
        first_offset = rollout.gen_rounds * cfg.prompts_per_step
        indices = data_order.stream_indices(len(self.records), cfg.seed, rollout.start + first_offset,
                                            cfg.prompts_per_step)
        mine, first = data_order.rank_slice(indices, self.dist.rank, self.dist.world_size)
        step_seed = cfg.seed * 1_000_003 + rollout.step
        params = SamplingParams(n=cfg.samples_per_prompt, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=cfg.max_new_tokens, seed=step_seed)
        # A prompt's samples are seeded by its place among the step's prompts, not by its rank: the
        # rollouts of a step do not depend on the number of ranks.
        offsets = [first_offset + first + position for position in range(len(mine))]
        seeds = [row_seed(step_seed, offset) for offset in offsets]
        started = time.perf_counter()
        rollout.completions += self.engine.generate([self.prompts[i] for i in mine], params, seeds=seeds)
        rollout.indices += mine
        rollout.offsets += offsets
        rollout.gen_rounds += 1
        rollout.timings["generate"] += time.perf_counter() - started

    def score(self, rollout: Rollout) -> None:
        """Rewards of the groups generated since the last call, the overlong penalty, the solved set."""
        from rsgrpo.grading import extract_answer

        cfg = self.cfg
        started = time.perf_counter()
        done = 0 if rollout.scores is None else rollout.scores.shape[0]
        new = rollout.completions[done:]
        records = [self.records[i] for i in rollout.indices[done:]]
        per_completion = [record for record in records for _ in range(cfg.samples_per_prompt)]
        flat = [c for group in new for c in group]
        values = rewards.compute(
            cfg.reward_kind, completions=[c.text for c in flat],
            answers=[str(record["answer"]) for record in per_completion],
            problems=[str(record["problem"]) for record in per_completion], records=per_completion,
            settings={"workers": cfg.grading_workers, "timeout": cfg.grading_timeout})
        scores = torch.tensor(values, dtype=torch.float64).view(len(new), -1)
        shaped = scores
        if cfg.overlong == "penalty":
            penalty = rewards.overlong_penalty([len(c.token_ids) for c in flat], max_tokens=cfg.max_new_tokens,
                                               buffer=cfg.overlong_buffer)
            shaped = scores + torch.tensor(penalty, dtype=torch.float64).view(len(new), -1)
        rollout.extracted += [[extract_answer(c.text) for c in group] for group in new]
        solved = (scores >= 1.0).any(dim=1)
        if rollout.scores is None:
            rollout.scores, rollout.rewards, rollout.solved = scores, shaped, solved
        else:
            rollout.scores = torch.cat([rollout.scores, scores])
            rollout.rewards = torch.cat([rollout.rewards, shaped])
            rollout.solved = torch.cat([rollout.solved, solved])
        rollout.timings["grade"] += time.perf_counter() - started
        newly_solved = [str(record["id"]) for record, hit in zip(records, solved.tolist()) if hit]
        for ids in dist_utils.all_gather_json(newly_solved):
            self.solved.update(ids)

    def select(self, rollout: Rollout) -> None:
        """Dynamic sampling: the first ``prompts_per_step`` groups of the step (in data order, over
        every rank) whose rewards are not all equal, which carry no signal for any registered
        estimator; without dynamic sampling, every group."""
        done = len(rollout.all_rewards)
        mine = rollout.rewards[done // self.dist.world_size:].tolist()  # this rank's share of the new round
        for rows in dist_utils.all_gather_json(mine):  # rank blocks are contiguous: step order
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
        params = dict(cfg.method_params or {})
        if estimators.takes_beta(cfg.method) and rollout.beta is not None:
            params["beta"] = rollout.beta
        row_of = {offset: row for row, offset in enumerate(rollout.selected)}
        rollout.kept = torch.tensor([offset in row_of for offset in rollout.offsets], dtype=torch.bool)
        rollout.advantages = torch.zeros(len(rollout.offsets), cfg.samples_per_prompt, dtype=torch.float32)
        if rollout.selected:
            chosen = torch.tensor([rollout.all_rewards[offset] for offset in rollout.selected], dtype=torch.float64)
            batch = estimators.compute(cfg.method, chosen, **params).to(torch.float32)
            for group, offset in enumerate(rollout.offsets):
                if offset in row_of:
                    rollout.advantages[group] = batch[row_of[offset]]

    def update(self, rollout: Rollout) -> dict:
        """The PPO update on the kept completions (if any rank kept any) and the weight push; the
        entropy metric comes from the update's forward. Returns the update's statistics."""
        started = time.perf_counter()
        pairs = rollout.pairs
        kept = rollout.kept_rows(skip_truncated=self.cfg.overlong == "mask")
        stats = {"loss": float("nan"), "clip_frac": float("nan"), "kl": float("nan"),
                 "grad_norm": float("nan"), "lr": lr_at(self.cfg, rollout.step)}
        if dist_utils.all_reduce([len(kept)], "max")[0] > 0:  # any rank has something to learn
            kept_pairs = [pairs[i] for i in kept]
            if self.cfg.ppo_epochs > 1:  # off-policy epochs need the pre-update log-probs
                rollout.old_logprobs = self.actor.logprobs(kept_pairs)[0]
            stats = self.actor.update(kept_pairs, rollout.advantages.reshape(-1)[kept], stats["lr"],
                                      old_logp=rollout.old_logprobs)
            rollout.entropy_sum, rollout.entropy_tokens = stats["entropy_sum"], stats["entropy_tokens"]
            self.push_weights()
        rollout.timings["update"] = time.perf_counter() - started
        return stats

    def metrics_row(self, rollout: Rollout, update: dict) -> dict:
        """The step's row of metrics.csv, over every generated completion of every rank and round
        (the trained-on ones for the advantage columns); the slowest rank's times."""
        cfg = self.cfg
        flat = rollout.flat
        scores = rollout.scores.reshape(-1).tolist()
        adv = rollout.advantages.reshape(-1).tolist()
        trained = rollout.kept_rows(skip_truncated=cfg.overlong == "mask")
        correct = [abs(adv[i]) for i in trained if scores[i] >= 1.0]
        wrong = [abs(adv[i]) for i in trained if scores[i] < 1.0]
        no_answer = sum(answer is None for group in rollout.extracted for answer in group)
        (reward_sum, solved, entropy_sum, entropy_tokens, sequences, no_answer, truncated, correct_sum, correct_n,
         wrong_sum, wrong_n) = dist_utils.all_reduce(
            [sum(scores), float(rollout.solved.sum()), rollout.entropy_sum, rollout.entropy_tokens, len(flat),
             no_answer, sum(not c.finished for c in flat), sum(correct), len(correct), sum(wrong), len(wrong)])
        lengths = [n for part in dist_utils.all_gather_json([len(c.token_ids) for c in flat]) for n in part]
        t_generate, t_grade, t_update = dist_utils.all_reduce(
            [rollout.timings["generate"], rollout.timings["grade"], rollout.timings["update"]], "max")
        drawn = rollout.gen_rounds * cfg.prompts_per_step
        nan = float("nan")
        return {
            "step": rollout.step + 1,
            "beta": nan if rollout.beta is None else float(rollout.beta),
            "reward_mean": reward_sum / sequences,
            "solved_frac": solved / drawn,
            "cumulative_solve_rate": len(self.solved) / self.n_unique,
            "groups_kept": len(rollout.selected),
            "gen_rounds": rollout.gen_rounds,
            "prompts_drawn": self.data_position,
            "no_answer_frac": no_answer / sequences,
            "truncated_frac": truncated / sequences,
            "adv_abs_correct": correct_sum / correct_n if correct_n else nan,
            "adv_abs_wrong": wrong_sum / wrong_n if wrong_n else nan,
            "entropy": entropy_sum / entropy_tokens if entropy_tokens else nan,
            "response_len_mean": sum(lengths) / sequences,
            "response_len_p50": float(np.percentile(lengths, 50)),
            "response_len_p95": float(np.percentile(lengths, 95)),
            "clip_frac": update["clip_frac"], "kl": update["kl"], "grad_norm": update["grad_norm"],
            "loss": update["loss"], "lr": update["lr"],
            "time_generate": t_generate, "time_grade": t_grade, "time_update": t_update,
            "tokens_per_s": sum(lengths) / max(t_generate, 1e-9),
        }

    def log_rollouts(self, rollout: Rollout, step: int) -> None:
        """The step's first ``rollout_log_groups`` groups (data order, every rank) to
        ``rollouts/step-NNNNNN.jsonl`` and the sinks (rank 0 writes)."""
        from rsgrpo.train import rollout_log

        limit = self.cfg.rollout_log_groups
        mine = []
        for group, offset in enumerate(rollout.offsets):
            if offset >= limit:
                continue
            record = self.records[rollout.indices[group]]
            kept = bool(rollout.kept[group])
            mine.append({
                "step": step, "position": rollout.start + offset, "id": str(record["id"]),
                "problem": str(record["problem"]), "prompt": self.prompts[rollout.indices[group]],
                "answer": str(record["answer"]), "kept": kept,
                "completions": [{"text": c.text, "extracted": rollout.extracted[group][j],
                                 "reward": float(rollout.rewards[group, j]),
                                 "advantage": float(rollout.advantages[group, j]) if kept else None,
                                 "tokens": len(c.token_ids), "finished": bool(c.finished)}
                                for j, c in enumerate(rollout.completions[group])]})
        groups = sorted((g for part in dist_utils.all_gather_json(mine) for g in part), key=lambda g: g["position"])
        if self.dist.is_main:
            rollout_log.write_rollouts(self.run_dir, step, groups)
            if self.metrics_log is not None:
                self.metrics_log.text(step, "rollouts", rollout_log.to_markdown(groups))

    def push_weights(self) -> None:
        """Make the rollout engine generate with the trainer's current weights (collective under
        ZeRO-3, where the full weights are gathered bucket by bucket). A sleeping engine (vLLM
        sleep mode: its GPU memory was freed for the update) is woken first."""
        self._wake_engine()
        if self.cfg.zero_stage == 3:
            self.engine.load_named_weights(self.actor.full_weights())
        else:
            self.engine.load_weights(self.actor.model)

    def _wake_engine(self) -> None:
        wake = getattr(self.engine, "wake_up", None)
        if wake is not None:
            wake()

    # -- checkpoints and manifest ----------------------------------------------------------------
    def save(self, step_done: int) -> Path | None:
        """Checkpoint ``step_done``. Every rank calls it and writes its own share of the optimizer
        state (assembling each tensor is a collective, and so is the ZeRO-3 gather of the weights);
        rank 0 writes the HF weights and the trainer state and renames the checkpoint into place.
        Returns the checkpoint path on rank 0, None elsewhere."""
        rank = self.dist.rank
        writer = ckpt.CheckpointWriter(self.run_dir, step_done, rank=rank)
        dist_utils.barrier()  # the temporary directory exists
        writer.write_resume(self.actor.resume_tensors(rank=rank, world_size=self.dist.world_size))
        if self.cfg.zero_stage == 3:  # gathered bucket by bucket on every rank; rank 0 writes them
            weights = self.actor.full_weights(include_aliases=False)
            if self.dist.is_main:
                writer.write_weights(self.actor.model, self.actor.tokenizer, weights)
            else:
                for _ in weights:
                    pass
        elif self.dist.is_main:
            writer.write_model(self.actor.model, self.actor.tokenizer)
        dist_utils.barrier()  # every rank's files are written
        path = None
        if self.dist.is_main:
            path = writer.commit({
                "step": step_done, "optimizer_step": self.actor.optimizer_step_count(), "rng": ckpt.capture_rng(),
                "data_position": self.data_position, "solved_ids": sorted(self.solved),
                "metrics": [dict(row) for row in self.metrics], "config_hash": self.hash,
                "data_hash": self.data_hash, "config": json.dumps(to_dict(self.cfg), sort_keys=True, default=str),
                "world_size": self.dist.world_size,
            })
            ckpt.prune(self.run_dir, self.cfg.keep_last, self.cfg.keep_resumable)
        dist_utils.barrier()
        return path

    def write_manifest(self) -> dict:
        return ckpt.write_manifest(self.run_dir, final_step=self.metrics[-1]["step"] if self.metrics else 0,
                                   steps=self.cfg.steps, config_hash=self.hash, config=to_dict(self.cfg))

    # -- main loop -------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train from the last checkpoint (or the start) to ``cfg.steps``; return the manifest."""
        self.setup()
        cfg = self.cfg
        stop = preemption.StopRequest().install()
        try:
            for step in range(self.start_step, cfg.steps):
                row = self.train_step(step)
                self.metrics.append(row)
                if self.metrics_log is not None:
                    self.metrics_log.append(row)
                done = step + 1
                # every rank takes part, so all of them stop after the same step (a collective per step)
                stopping = dist_utils.all_reduce([float(stop.requested)], op="max")[0] > 0
                if done == cfg.steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or stopping:
                    self.save(done)
                if stopping and done < cfg.steps:
                    raise preemption.Preempted(done, stop.signal_name)
        except preemption.Preempted:
            self._release_lock()
            raise
        finally:
            stop.restore()
            if self.metrics_log is not None:
                self.metrics_log.close()
            close = getattr(getattr(self, "engine", None), "close", None)
            if close is not None:
                close()
        return self._finish()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _finish(self) -> dict | None:
        """Write the manifest (rank 0), then release the run-dir lock; every rank returns together."""
        manifest = None
        try:
            if self.dist.is_main:
                manifest = self.write_manifest()
        finally:
            self._release_lock()  # held until the manifest is written
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


def _error(exc: Exception) -> int:
    print(f"rsgrpo train: error: {exc}", file=sys.stderr)
    return 2


def main(args) -> int:
    if args.nproc < 1:
        return _error(ValueError(f"--nproc must be >= 1 (got {args.nproc})"))
    overrides = list(args.overrides or [])
    if dist_utils.needs_relaunch(args.nproc):
        # Validate before starting N processes that would all fail the same way.
        try:
            cfg = load_config(args.config, overrides)
            dist_utils.check_rank_split(cfg.prompts_per_step, args.nproc * dist_utils.slurm_job_nodes())
        except ValueError as exc:
            return _error(exc)
        return dist_utils.relaunch_verb("train", args.nproc)
    if args.run_dir:
        overrides.append(f"run_dir={json.dumps(args.run_dir)}")
    try:
        trainer = Trainer(load_config(args.config, overrides))
    except ValueError as exc:  # a user error in the config: the message says what and where
        return _error(exc)
    try:
        trainer.run()
    except preemption.Preempted as stopped:
        if trainer.dist.is_main:
            print(f"rsgrpo train: {stopped} (run dir {trainer.run_dir}); exit status "
                  f"{preemption.EXIT_PREEMPTED}", file=sys.stderr)
        return preemption.EXIT_PREEMPTED
    if trainer.dist.is_main:
        if args.out_manifest:
            _copy(trainer.run_dir / MANIFEST, args.out_manifest)
        if args.out_metrics:
            _copy(trainer.metrics_log.path, args.out_metrics)
    return 0
