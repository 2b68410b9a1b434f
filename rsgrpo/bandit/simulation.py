"""The paper's 100-armed bandit (RS-GRPO Fig. 3), vectorised across betas and seeds.

Specification (arXiv 2509.24261, Fig. 3; from the authors' released bandit script, GitHub Jackory/RS-GRPO):

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
between streams. Pure computation, no I/O: the CLI lives in :mod:`rsgrpo.bandit.bandit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

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
    """Per-seed uniform draws, produced in chunks: seed s always sees the same sequence.

    ``copies`` repeats the seed block (one copy per beta: common random numbers) once per chunk.
    """

    def __init__(self, seeds: Sequence[int], width: int, chunk: int = 2048, copies: int = 1):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.width, self.chunk, self.copies = width, chunk, copies
        self.buffer, self.pos = None, chunk

    def next(self) -> np.ndarray:
        """``[copies * seeds, width]`` uniforms in [0, 1) for one update."""
        if self.pos == self.chunk:
            block = torch.stack(
                [torch.rand(self.chunk, self.width, generator=g, dtype=torch.float64) for g in self.gens], dim=1
            )
            self.buffer = block.repeat(1, self.copies, 1).numpy()
            self.pos = 0
        u = self.buffer[self.pos]
        self.pos += 1
        return u


def sample_arms(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: ``probs [R, A]``, ``uniforms [R, S]`` in [0, 1) -> arm indices ``[R, S]``."""
    cdf = torch.cumsum(probs, dim=-1)
    cdf[..., -1] = 1.0  # guard against the sum rounding below a uniform draw
    return torch.searchsorted(cdf, uniforms, right=True).clamp_(max=probs.shape[-1] - 1)


def simulate(betas: Sequence[float], seeds: int | Sequence[int] = 10, spec: BanditSpec = BanditSpec()) -> BanditResult:
    """Run the bandit for every (beta, seed) pair at once. ``seeds``: a count (0..n-1) or explicit list."""
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

    # numpy in the loop: on [70, 100] arrays torch's per-op overhead costs twice the arithmetic
    rewards_of_arm = arm_rewards().numpy()
    theta = np.tile(initial_logits().numpy(), (runs, 1))  # run index = beta_index * n_seed + seed_index
    beta_per_run = np.repeat(np.array(betas), n_seed)[:, None]
    risk_seeking = beta_per_run > 0
    safe_beta = np.where(risk_seeking, beta_per_run, 1.0)
    streams = _UniformStreams(seed_list, m, copies=n_beta)
    flat_offset = (np.arange(runs) * N_ARMS)[:, None]

    # ring buffer of the last `moving_average` sampled rewards per run
    window = spec.moving_average
    ring = np.zeros((runs, window))
    ring_fill = 0
    offsets = np.arange(m)
    n_points = spec.updates // spec.record_every
    reward_ma = np.empty((runs, n_points))
    entropy = np.empty((runs, n_points))
    samples = np.empty(n_points, dtype=np.int64)
    point = 0
    scale = spec.lr / m
    for update in range(1, spec.updates + 1):
        probs = _softmax(theta)
        arms = _sample_arms_np(probs, streams.next())  # same uniforms for every beta
        r = rewards_of_arm[arms]
        w = _rs_grpo_np(r, beta_per_run, risk_seeking, safe_beta)
        # sum_i w_i (onehot(a_i) - pi) = per-arm sums of w - (sum_i w_i) pi
        grad = np.bincount((flat_offset + arms).ravel(), weights=w.ravel(),
                           minlength=runs * N_ARMS).reshape(runs, N_ARMS)
        grad -= w.sum(axis=1, keepdims=True) * probs
        theta += scale * grad

        start = ((update - 1) * m) % window
        if start + m <= window:
            ring[:, start : start + m] = r
        else:
            ring[:, (start + offsets) % window] = r
        ring_fill = min(ring_fill + m, window)
        if update % spec.record_every == 0 and point < n_points:
            new_probs = _softmax(theta)
            reward_ma[:, point] = ring[:, :ring_fill].mean(axis=1)
            entropy[:, point] = -(new_probs * np.log(np.maximum(new_probs, 1e-300))).sum(axis=1)
            samples[point] = update * m
            point += 1

    final = _softmax(theta) @ rewards_of_arm
    shape = (n_beta, n_seed)
    return BanditResult(
        betas=betas,
        seeds=seed_list,
        samples=samples,
        reward_ma=reward_ma.reshape(shape + (n_points,)),
        entropy=entropy.reshape(shape + (n_points,)),
        final_expected_reward=final.reshape(shape),
    )


def _softmax(theta: np.ndarray) -> np.ndarray:
    z = np.exp(theta - theta.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _sample_arms_np(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling row by row (as :func:`sample_arms`) in one searchsorted call.

    Row r's CDF and uniforms are shifted by r, which makes the concatenated CDF sorted; the shift
    moves rounding by ~1e-14, so a draw could change only within ~1e-14 of a CDF boundary.
    """
    rows, arms = probs.shape
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0
    shift = np.arange(rows, dtype=np.float64)[:, None]
    flat = np.searchsorted((cdf + shift).ravel(), (uniforms + shift).ravel(), side="right")
    return np.minimum(flat.reshape(uniforms.shape) - (np.arange(rows) * arms)[:, None], arms - 1)


def _rs_grpo_np(r: np.ndarray, beta: np.ndarray, risk_seeking=None, safe_beta=None) -> np.ndarray:
    """numpy twin of :func:`rsgrpo.estimators.rs_grpo_kernel` (same stable form; tests pin them equal).

    ``risk_seeking = beta > 0`` and ``safe_beta`` (beta, 1 where beta = 0) may be passed precomputed.
    """
    if risk_seeking is None:
        risk_seeking = beta > 0
        safe_beta = np.where(risk_seeking, beta, 1.0)
    u = r - r.max(axis=1, keepdims=True)
    log_weight = beta * u - np.log1p(np.expm1(beta * u).mean(axis=1, keepdims=True))
    return np.where(risk_seeking, np.expm1(log_weight) / safe_beta, r - r.mean(axis=1, keepdims=True))


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
        arms = np.minimum(np.searchsorted(cdf, streams.next()[0], side="right"), N_ARMS - 1)
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
