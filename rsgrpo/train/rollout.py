"""The value one training step passes from stage to stage (:mod:`rsgrpo.train.trainer`).

A :class:`Rollout` is this rank's batch of one step, filled in stage by stage: generate adds the
completions, the reward stage their rewards (and the answers a reward extracted), select the groups
with a learning signal, advantages their advantages, update the pre-update log-probs where it needs
them. The metrics row and the rollout logs read it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rsgrpo.train.engines.base import Completion

__all__ = ["Rollout"]


@dataclass
class Rollout:
    """One step's batch on this rank. The per-group lists hold this rank's groups of every
    generation round, in data order."""

    step: int
    start: int                               # data position (prompts drawn so far) at the step's start
    indices: list[int] = field(default_factory=list)     # record index of each group of this rank
    offsets: list[int] = field(default_factory=list)     # each group's place among the step's prompts
    completions: list[list[Completion]] = field(default_factory=list)  # [groups][samples_per_prompt]
    # final answers the reward extracted, [groups][samples_per_prompt]; None for a reward that extracts none
    answers: list[list[str | None]] | None = None
    scores: torch.Tensor | None = None       # [G, N] float64: the reward (reward stage)
    rewards: torch.Tensor | None = None      # [G, N] float64: the reward plus any overlong penalty
    solved: torch.Tensor | None = None       # [G] bool: some completion reached the reward's solved_at
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
    timings: dict[str, float] = field(default_factory=lambda: {"generate": 0.0, "grade": 0.0, "update": 0.0})

    @property
    def flat(self) -> list[Completion]:
        return [completion for group in self.completions for completion in group]

    @property
    def pairs(self) -> list[tuple[list[int], list[int]]]:
        return [(c.prompt_token_ids, c.token_ids) for c in self.flat]

    @property
    def sampling_logprobs(self) -> list[torch.Tensor] | None:
        """Each completion's token log-probs as the rollout engine sampled them (in :attr:`pairs`
        order); None when the engine returned none."""
        flat = self.flat
        if not flat or any(c.logprobs is None for c in flat):
            return None
        return [torch.tensor(c.logprobs, dtype=torch.float32) for c in flat]

    def add_scores(self, scores: torch.Tensor, shaped: torch.Tensor, solved: torch.Tensor,
                   answers: list[list[str | None]] | None) -> None:
        """Append the reward stage's results for the groups generated since its last call."""
        if self.scores is None:
            self.scores, self.rewards, self.solved, self.answers = scores, shaped, solved, answers
            return
        self.scores = torch.cat([self.scores, scores])
        self.rewards = torch.cat([self.rewards, shaped])
        self.solved = torch.cat([self.solved, solved])
        if self.answers is not None and answers is not None:
            self.answers += answers

    def kept_rows(self, *, skip_truncated: bool = False) -> list[int]:
        """Flat indices of the kept groups' non-empty completions (without those cut at the length
        limit when ``skip_truncated``)."""
        per_group = len(self.completions[0]) if self.completions else 0
        return [group * per_group + j for group, is_kept in enumerate(self.kept.tolist()) if is_kept
                for j, c in enumerate(self.completions[group])
                if c.token_ids and not (skip_truncated and not c.finished)]
