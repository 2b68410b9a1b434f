"""The paper's 100-armed bandit (RS-GRPO Fig. 3), vectorised across betas and seeds.

Specification (PAPER.md section 4, from the authors' released script):

* 100 arms, deterministic reward ``r(a) = 0.1 + 0.9 exp(-(a-40)^2/50) + 0.5 exp(-(a-75)^2/50)``:
  global optimum arm 40 (reward 1.0), local optimum arm 75 (reward 0.6).
* Softmax policy on logits ``theta``, initialised from ``p0(a) ~ exp(-0.5((a-75)/5)^2) + 0.1`` as
  ``theta0 = log(p0 + 1e-8) - mean(log(p0 + 1e-8))`` (initial expected reward ~0.3745).
* Each update samples 16 arms from the policy, weights them with the RS-GRPO advantage of their
  rewards (beta = 0: ``r - mean``) and takes a plain SGD step
  ``theta += lr * (1/16) sum_i w_i (onehot(a_i) - pi)`` with lr 0.1.

All ``len(betas) * seeds`` bandits advance together as one ``[runs, arms]`` array program; the only
Python loop is over updates, which are inherently sequential. Arms are drawn by inverse-CDF sampling
from per-seed uniform streams shared by every beta (common random numbers), so a (beta, seed) run does
not depend on which other betas are simulated beside it and differences between betas are not noise
between streams. Pure computation, no I/O: the CLI lives in :mod:`rsgrpo.bandit_cli`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from rsgrpo.advantages import rs_grpo

N_ARMS = 100
GLOBAL_ARM, LOCAL_ARM = 40, 75


@dataclass(frozen=True)
class BanditSpec:
    """Settings of the bandit experiment; defaults are the paper's."""

    updates: int = 25_000
    samples_per_update: int = 16
    lr: float = 0.1
    moving_average: int = 1000  # samples in the reward moving average (paper: 1000)
    record_every: int = 50  # record reward_ma and entropy every this many updates

    def __post_init__(self):
        for name in ("updates", "samples_per_update", "moving_average", "record_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"BanditSpec.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"BanditSpec.lr must be > 0, got {self.lr}")


def arm_rewards() -> torch.Tensor:
    """Deterministic reward of each of the 100 arms (float64)."""
    a = torch.arange(N_ARMS, dtype=torch.float64)
    return 0.1 + 0.9 * torch.exp(-((a - GLOBAL_ARM) ** 2) / 50) + 0.5 * torch.exp(-((a - LOCAL_ARM) ** 2) / 50)


def initial_logits() -> torch.Tensor:
    """``theta0`` of the released script: a policy peaked on the local optimum (arm 75)."""
    a = torch.arange(N_ARMS, dtype=torch.float64)
    p0 = torch.exp(-0.5 * ((a - LOCAL_ARM) / 5) ** 2) + 0.1
    p0 = p0 / p0.sum()
    log_p = torch.log(p0 + 1e-8)
    return log_p - log_p.mean()


@dataclass
class BanditResult:
    """Recorded curves: arrays of shape ``[len(betas), seeds, points]``."""

    betas: list[float]
    seeds: list[int]
    samples: np.ndarray  # [points] samples drawn so far at each record point
    reward_ma: np.ndarray  # moving average of sampled rewards over the last ``moving_average`` samples
    entropy: np.ndarray  # policy entropy (nats)
    final_expected_reward: np.ndarray  # [len(betas), seeds] E_pi[r] after the last update

    def crossing_samples(self, threshold: float) -> np.ndarray:
        """Samples at which the seed-mean ``reward_ma`` first exceeds ``threshold`` (NaN if never), per beta."""
        mean = self.reward_ma.mean(axis=1)
        out = np.full(len(self.betas), np.nan)
        for b in range(len(self.betas)):
            above = np.flatnonzero(mean[b] > threshold)
            if above.size:
                out[b] = self.samples[above[0]]
        return out


class _UniformStreams:
    """Per-seed uniform draws, produced in chunks: seed s always sees the same sequence."""

    def __init__(self, seeds: Sequence[int], width: int, chunk: int = 2048):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.width, self.chunk = width, chunk
        self.buffer, self.pos = None, chunk

    def next(self) -> torch.Tensor:
        """``[seeds, width]`` uniforms in [0, 1) for one update."""
        if self.pos == self.chunk:
            self.buffer = torch.stack(
                [torch.rand(self.chunk, self.width, generator=g, dtype=torch.float64) for g in self.gens], dim=1
            )
            self.pos = 0
        u = self.buffer[self.pos]
        self.pos += 1
        return u


def sample_arms(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: ``probs [R, A]``, ``uniforms [R, S]`` in [0, 1) -> arm indices ``[R, S]``."""
    cdf = torch.cumsum(probs, dim=-1)
    cdf[..., -1] = 1.0  # guard against the sum rounding below a uniform draw
    return torch.searchsorted(cdf, uniforms, right=True).clamp_(max=probs.shape[-1] - 1)


@contextlib.contextmanager
def _small_tensor_mode():
    """One intra-op thread (the arrays are tiny: thread hand-offs cost more than they save, badly so
    on a busy machine) and flush-to-zero (converged policies put most arms at denormal probabilities,
    which are ~100x slower on x86). Restores both settings afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flushed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if flushed:
            torch.set_flush_denormal(False)


def simulate(betas: Sequence[float], seeds: int | Sequence[int] = 10, spec: BanditSpec = BanditSpec()) -> BanditResult:
    """Run the bandit for every (beta, seed) pair at once. ``seeds``: a count (0..n-1) or explicit list."""
    with _small_tensor_mode():
        return _simulate(betas, seeds, spec)


def _simulate(betas, seeds, spec: BanditSpec) -> BanditResult:
    betas = [float(b) for b in betas]
    if not betas:
        raise ValueError("need at least one beta")
    if any(not np.isfinite(b) or b < 0 for b in betas):
        raise ValueError(f"betas must be finite and >= 0, got {betas}")
    seed_list = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("need at least one seed")
    n_beta, n_seed, m = len(betas), len(seed_list), spec.samples_per_update
    runs = n_beta * n_seed

    rewards_of_arm = arm_rewards()
    theta = initial_logits().repeat(runs, 1)  # run index = beta_index * n_seed + seed_index
    beta_per_run = torch.tensor(betas, dtype=torch.float64).repeat_interleave(n_seed)
    streams = _UniformStreams(seed_list, m)
    run_rows = torch.arange(runs)[:, None]

    # ring buffer of the last `moving_average` sampled rewards per run
    window = spec.moving_average
    ring = torch.zeros(runs, window, dtype=torch.float64)
    ring_fill = 0
    offsets = torch.arange(m)
    n_points = spec.updates // spec.record_every
    reward_ma = np.empty((runs, n_points))
    entropy = np.empty((runs, n_points))
    samples = np.empty(n_points, dtype=np.int64)
    point = 0
    scale = spec.lr / m
    for update in range(1, spec.updates + 1):
        probs = torch.softmax(theta, dim=-1)
        u = streams.next().repeat(n_beta, 1)  # same uniforms for every beta (common random numbers)
        arms = sample_arms(probs, u)
        r = rewards_of_arm[arms]
        w = rs_grpo(r, beta=beta_per_run)
        # sum_i w_i (onehot(a_i) - pi) = counts_w - (sum_i w_i) pi
        grad = torch.zeros_like(theta).index_put_((run_rows.expand_as(arms), arms), w, accumulate=True)
        grad -= w.sum(dim=1, keepdim=True) * probs
        theta += scale * grad

        ring[:, ((update - 1) * m + offsets) % window] = r
        ring_fill = min(ring_fill + m, window)
        if update % spec.record_every == 0 and point < n_points:
            new_probs = torch.softmax(theta, dim=-1)
            reward_ma[:, point] = ring[:, :ring_fill].mean(dim=1).numpy()
            entropy[:, point] = (-(new_probs * torch.log(new_probs.clamp_min(1e-300))).sum(dim=1)).numpy()
            samples[point] = update * m
            point += 1

    final = (torch.softmax(theta, dim=-1) @ rewards_of_arm).numpy()
    shape = (n_beta, n_seed)
    return BanditResult(
        betas=betas,
        seeds=seed_list,
        samples=samples,
        reward_ma=reward_ma.reshape(shape + (n_points,)),
        entropy=entropy.reshape(shape + (n_points,)),
        final_expected_reward=final.reshape(shape),
    )


def simulate_reference(beta: float, seed: int, spec: BanditSpec = BanditSpec()) -> np.ndarray:
    """One bandit, one update at a time in plain numpy, as the authors' script does.

    The baseline for the speed benchmark and an independent check of :func:`simulate`: it draws arms
    from the same per-seed uniform stream and returns the final logits.
    """
    rewards_of_arm = arm_rewards().numpy()
    theta = initial_logits().numpy().copy()
    streams = _UniformStreams([seed], spec.samples_per_update)
    m = spec.samples_per_update
    for _ in range(spec.updates):
        z = np.exp(theta - theta.max())
        pi = z / z.sum()
        cdf = np.cumsum(pi)
        cdf[-1] = 1.0
        arms = np.minimum(np.searchsorted(cdf, streams.next()[0].numpy(), side="right"), N_ARMS - 1)
        r = rewards_of_arm[arms]
        if beta == 0:
            w = r - r.mean()
        else:
            e = np.exp(beta * r)
            w = (e / e.mean() - 1.0) / beta
        grad = np.zeros(N_ARMS)
        for arm, wi in zip(arms, w):
            onehot = np.zeros(N_ARMS)
            onehot[arm] = 1.0
            grad += wi * (onehot - pi)
        theta = theta + spec.lr * grad / m
    return theta
