"""Group advantage estimators: pure functions over a ``[groups, samples]`` reward tensor.

Every estimator maps the rewards of ``G`` groups (one group = the ``N`` completions sampled for one
prompt) to per-sample advantages of the same shape. Formulas follow RS-GRPO (arXiv 2509.24261, its
risk-sensitive advantage) and the papers it compares against; each docstring names its source.

Public entry points:

* :func:`compute` -- ``compute(name, rewards, **params)`` validates the input and the parameters and
  dispatches to the registered estimator.
* :data:`ESTIMATORS` -- name -> estimator function (``fn(rewards, **params)``), in registration order,
  which is the order of methods in every table and figure (the paper's: GRPO, the pass@k baselines,
  RLOO; then MaxRL, W-REINFORCE, GRPO pass@k; RS-GRPO last).
* :func:`register` -- adds an estimator: a new method is one decorated function here (plus its test);
  the trainer, the config checks and the analysis find it through this registry. :data:`SOURCES`
  holds where each formula comes from (docs/estimators.md shows it).
* :func:`equal_rewards_carry_signal` -- whether a group whose rewards are all equal gets a non-zero
  advantage (no group baseline, as W-REINFORCE): dropping such groups is then not lossless.
* :func:`estimator_params`, :func:`takes_beta`, :func:`default_params` -- what an estimator accepts,
  read from its signature (so "takes beta" is a property of the estimator, not of a method name).

All arithmetic is done in float64 and the result is returned in the reward dtype (float32 for integer
or boolean rewards). No I/O, no model: these functions are safe to call from anywhere.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable

import torch

from rsgrpo.registry import refuse_taken

__all__ = ["ESTIMATORS", "EXAMPLE_PARAMS", "SOURCES", "EQUAL_REWARDS_SIGNAL", "register", "compute",
           "estimator_params", "takes_beta", "default_params", "equal_rewards_carry_signal"]

EPS = 1e-6  # added to the group std by ``grpo`` (the usual GRPO constant)

ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {}
# name -> parameters of one valid call on groups of >= 4 binary rewards (the required ones filled
# in): what generic tests and tools use to exercise every estimator without knowing it.
EXAMPLE_PARAMS: dict[str, dict] = {}
# name -> where the formula comes from: the paper, and the repository@commit of published code we match
SOURCES: dict[str, str] = {}
# name -> whether a group of equal rewards gets a non-zero advantage (estimators without a group baseline)
EQUAL_REWARDS_SIGNAL: dict[str, bool] = {}


def register(name: str, *, source: str, example_params: dict | None = None, equal_rewards_signal: bool = False):
    """Decorator adding ``fn(rewards, **params) -> advantages`` to :data:`ESTIMATORS` as ``name``.

    ``source``: a short citation of the formula (paper; ``owner/repo@commit`` of the code it matches).
    ``example_params``: values for the estimator's required parameters in a valid call on groups of
    at least 4 samples (e.g. ``{"k": 2}``). ``equal_rewards_signal``: true when a group whose rewards are
    all equal gets a non-zero advantage. A name can be registered once: a second estimator of the
    same name would silently change what every existing config means.
    """
    if not (isinstance(source, str) and source.strip()):
        raise ValueError(f"estimator {name!r}: source must name the paper (and code) of the formula, got {source!r}")

    def wrap(fn):
        refuse_taken(ESTIMATORS, name, "advantage estimator")
        ESTIMATORS[name] = fn
        EXAMPLE_PARAMS[name] = dict(example_params or {})
        SOURCES[name] = source
        EQUAL_REWARDS_SIGNAL[name] = bool(equal_rewards_signal)
        return fn

    return wrap


# ---------------------------------------------------------------------------------------------
# validation helpers


def _check_rewards(rewards, *, min_samples: int = 1) -> torch.Tensor:
    """Return ``rewards`` as a float64 tensor after checking shape and values."""
    if not isinstance(rewards, torch.Tensor):
        raise ValueError(
            f"rewards must be a torch.Tensor of shape [groups, samples], got {type(rewards).__name__}"
        )
    if rewards.dim() != 2:
        raise ValueError(
            f"rewards must have shape [groups, samples] (2 dims), got shape {tuple(rewards.shape)}"
        )
    if rewards.is_complex():
        raise ValueError("rewards must be real numbers, got a complex tensor")
    if rewards.shape[1] < min_samples:
        raise ValueError(
            f"this estimator needs at least {min_samples} samples per group, "
            f"got shape {tuple(rewards.shape)}"
        )
    r = rewards.detach().to(torch.float64)
    bad = ~torch.isfinite(r)
    if bad.any():
        g, i = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"rewards must be finite numbers; found {int(bad.sum())} NaN/inf value(s), "
            f"first at [group {g}, sample {i}] = {rewards[g, i].item()}"
        )
    return r


def _check_binary(r: torch.Tensor, name: str) -> None:
    if not bool(((r == 0) | (r == 1)).all()):
        bad = r[(r != 0) & (r != 1)][0].item()
        raise ValueError(
            f"{name} is defined for binary rewards only (each reward 0 or 1), found {bad}; "
            "use rs_grpo, pkpo_walder, grpo, rloo, grpo_passk or max_rl (rewards >= 0) for continuous rewards"
        )


def _check_number(value, param: str, name: str) -> float:
    """A finite real number >= 0 (not a bool), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 <= value < float("inf")):
        raise ValueError(f"{name}: {param} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_k(k, n_samples: int, name: str) -> int:
    whole = isinstance(k, numbers.Integral) or (isinstance(k, float) and k.is_integer())
    if isinstance(k, bool) or not whole:
        raise ValueError(f"{name}: k must be a whole number between 1 and samples ({n_samples}), got {k!r}")
    k = int(k)
    if not 1 <= k <= n_samples:
        raise ValueError(
            f"{name}: k must be between 1 and the number of samples per group ({n_samples}), got k={k}"
        )
    return k


def _choice(value, allowed: tuple[str, ...], param: str, name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: {param} must be one of {list(allowed)}, got {value!r}")
    return value


def _out(adv: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    dtype = rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype()
    return adv.to(device=rewards.device, dtype=dtype)


def _log_comb(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """log C(n, k) for float64 tensors with 0 <= k <= n (no check)."""
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def _comb_ratio(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """C(a, k) / C(b, k) elementwise for integer-valued float64 tensors 0 <= a <= b, b >= k.

    Zero where a < k. Computed in log space, so it stays finite for groups of thousands of samples.
    """
    kk = torch.as_tensor(float(k), dtype=torch.float64)
    a_safe = torch.clamp(a, min=float(k))
    log_ratio = (
        torch.lgamma(a_safe + 1) - torch.lgamma(a_safe - kk + 1) - torch.lgamma(b + 1) + torch.lgamma(b - kk + 1)
    )
    ratio = torch.where(a == b, torch.ones_like(log_ratio), torch.exp(log_ratio))  # exact 1, no lgamma rounding
    return torch.where(a >= k, ratio, torch.zeros_like(a))


# ---------------------------------------------------------------------------------------------
# estimators, in the paper's table order (the registry's order is every table's and figure's)


@register("grpo", source="Shao et al. 2024, arXiv 2402.03300; volcengine/verl@b178a3c (scale none: Dr. GRPO, "
                         "arXiv 2503.20783, sail-sg/understand-r1-zero@dfca49d)")
def grpo(rewards: torch.Tensor, *, scale: str = "std", eps: float = EPS) -> torch.Tensor:
    """GRPO (Shao et al. 2024): ``(r - mean) / (std + eps)`` per group.

    ``scale="std"`` divides by the unbiased group standard deviation (as verl and TRL do);
    ``scale="none"`` returns the mean-centred reward, Dr. GRPO's advantage (Liu et al. 2025, arXiv
    2503.20783; verl's ``norm_adv_by_std_in_grpo=False``). Dr. GRPO = ``grpo`` with ``scale: none`` plus
    ``loss_agg: seq-mean-token-sum-norm`` (its constant length normaliser). Groups with equal rewards get 0.
    """
    _choice(scale, ("std", "none"), "scale", "grpo")
    r = _check_rewards(rewards, min_samples=2 if scale == "std" else 1)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "std":
        centred = centred / (r.std(dim=1, keepdim=True) + _check_number(eps, "eps", "grpo"))
    return _out(centred, rewards)


@register("pkpo_walder", source="Walder & Karkhanis 2025, arXiv 2505.15201", example_params={"k": 2})
def pkpo_walder(rewards: torch.Tensor, *, k: int) -> torch.Tensor:
    """PKPO (Walder & Karkhanis 2025, arXiv 2505.15201) with the "k-1" baseline.

    The unbiased pass@k gradient assigns sample ``i`` the reward
    ``(1/C(N,k)) sum_{S containing i, |S|=k} [max g_S - max g_{S minus i}]`` (max of the empty set = 0).
    With rewards sorted ascending ``g_(1) <= ... <= g_(N)`` this is
    ``A_(i) = (1/C(N,k)) sum_{j<i} C(j-1, k-2) (g_(i) - g_(j))`` for k >= 2 and ``g_i/N`` for k = 1.
    For binary rewards: correct ``C(N-c, k-1)/C(N,k)``, wrong 0. Never negative for k >= 2.
    Continuous rewards allowed; ties give equal advantages.
    """
    r = _check_rewards(rewards)
    n = r.shape[1]
    k = _check_k(k, n, "pkpo_walder")
    if k == 1:
        return _out(r / n, rewards)
    g, order = torch.sort(r, dim=1, stable=True)
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=r.device)  # 1-based sorted rank
    # weight of a lower-ranked sample j: C(j-1, k-2) / C(N, k), zero when j-1 < k-2
    valid = rank - 1 >= k - 2
    log_w = _log_comb(torch.clamp(rank - 1, min=k - 2.0), torch.tensor(k - 2.0, dtype=torch.float64))
    log_w = log_w - _log_comb(torch.tensor(float(n), dtype=torch.float64), torch.tensor(float(k), dtype=torch.float64))
    w = torch.where(valid, torch.exp(log_w), torch.zeros_like(log_w))
    # A_(i) = g_(i) * sum_{j<i} w_j - sum_{j<i} w_j g_(j): exclusive prefix sums
    w_prefix = torch.cumsum(w, dim=0) - w
    wg = w * g
    wg_prefix = torch.cumsum(wg, dim=1) - wg
    sorted_adv = g * w_prefix - wg_prefix
    adv = torch.empty_like(sorted_adv).scatter_(1, order, sorted_adv)
    return _out(adv, rewards)


@register("passk_mahdavi", source="Mahdavi et al. 2025 (their code: variant plugin, normalize true)",
          example_params={"k": 2})
def passk_mahdavi(
    rewards: torch.Tensor,
    *,
    k: int,
    variant: str = "unbiased",
    normalize: bool = False,
    scale: str = "std",
) -> torch.Tensor:
    """Pass@K reweighting of Mahdavi et al. 2025: GRPO advantage times a per-sample weight.

    The weight estimates ``d/dp [1-(1-p)^K] = K (1-p)^(K-1)``:

    * ``variant="plugin"``: ``K (1 - c/N)^(K-1)`` with the group accuracy plugged in;
    * ``variant="unbiased"``: the leave-one-out unbiased estimate from the other ``N-1`` samples,
      ``K C(N-1-c_{-i}, K-1) / C(N-1, K-1)`` (``c_{-i}`` = correct among the others). For a correct
      sample this is ``K C(N-c, K-1)/C(N-1, K-1)``, which vanishes above accuracy ``1-(K-1)/N`` as the
      RS-GRPO paper describes. Which variant the RS-GRPO paper's baseline used is not published.

    ``normalize=True`` rescales the weights so that their mean over the groups with a learning
    signal (``0 < c < N``) is 1, as the authors' code does: all-solved and all-failed groups have a
    zero GRPO advantage and must not dilute the rescaling. ``scale`` is passed to the GRPO part.
    Binary rewards only. The authors' code uses ``variant="plugin"`` with ``normalize=True``.
    """
    r = _check_rewards(rewards, min_samples=2 if scale == "std" else 1)
    _check_binary(r, "passk_mahdavi")
    _choice(variant, ("plugin", "unbiased"), "variant", "passk_mahdavi")
    if not isinstance(normalize, bool):
        raise ValueError(f"passk_mahdavi: normalize must be true or false, got {normalize!r}")
    n = r.shape[1]
    k = _check_k(k, n, "passk_mahdavi")
    base = grpo(r, scale=scale)
    c = r.sum(dim=1, keepdim=True)
    if variant == "plugin":
        weight = (k * (1.0 - c / n) ** (k - 1)).expand_as(r)
    else:
        if n < 2:
            raise ValueError("passk_mahdavi: variant='unbiased' needs at least 2 samples per group")
        wrong_others = (n - 1) - (c - r)
        weight = k * _comb_ratio(wrong_others, torch.full_like(r, float(n - 1)), k - 1)
    if normalize:
        signal = ((c > 0) & (c < n)).squeeze(1)
        mean_weight = weight[signal].mean() if bool(signal.any()) else weight.new_zeros(())
        if mean_weight > 0:
            weight = weight / mean_weight
    return _out(base * weight, rewards)


@register("passk_chen", source="Chen et al. 2025, arXiv 2508.10751", example_params={"k": 2})
def passk_chen(rewards: torch.Tensor, *, k: int) -> torch.Tensor:
    """Pass@k training advantage of Chen et al. 2025 (arXiv 2508.10751), analytic form.

    With ``c`` correct of ``N``: ``R = 1 - C(N-c,k)/C(N,k)``, ``sigma = sqrt(R(1-R))``;
    correct: ``(1-R)/sigma``; wrong: ``(1 - R - C(N-c-1,k-1)/C(N-1,k-1))/sigma``; 0 where sigma = 0.
    Equals the average, over the k-subsets containing a sample, of the subset-level GRPO advantage
    (subset reward = max, population std). Binary rewards only.
    """
    r = _check_rewards(rewards)
    _check_binary(r, "passk_chen")
    n = r.shape[1]
    k = _check_k(k, n, "passk_chen")
    c = r.sum(dim=1, keepdim=True)
    nn = torch.full_like(c, float(n))
    big_r = 1.0 - _comb_ratio(nn - c, nn, k)
    # R is exactly 0 (no correct sample) or 1 (fewer than k wrong) in the degenerate groups: no signal
    informative = (c > 0) & (nn - c >= k)
    sigma = torch.where(informative, torch.sqrt(torch.clamp(big_r * (1.0 - big_r), min=0.0)), torch.zeros_like(big_r))
    all_wrong_given_wrong = _comb_ratio(nn - c - 1, nn - 1, k - 1)
    numerator = torch.where(r == 1, 1.0 - big_r, 1.0 - big_r - all_wrong_given_wrong)
    safe_sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    adv = torch.where(sigma > 0, numerator / safe_sigma, torch.zeros_like(numerator))
    return _out(adv, rewards)


@register("rloo", source="Ahmadian et al. 2024, arXiv 2402.14740")
def rloo(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j``."""
    r = _check_rewards(rewards, min_samples=2)
    n = r.shape[1]
    adv = (r - r.mean(dim=1, keepdim=True)) * (n / (n - 1))
    return _out(adv, rewards)


@register("max_rl", source="Tajwar et al. 2026, arXiv 2602.02710; PrimeIntellect-ai/prime-rl@559b447")
def max_rl(rewards: torch.Tensor) -> torch.Tensor:
    """MaxRL (Tajwar et al. 2026, arXiv 2602.02710): ``(r - mean) / mean`` per group, 0 where the mean is 0.

    Dividing by the group mean (the pass rate ``p``) instead of the std makes the gradient unbiased
    for the order-``N`` truncation of the maximum-likelihood objective ``log p``: a correct sample gets
    ``(1-p)/p``, a wrong one -1. As prime-rl's ``MaxRLAlgorithm`` and the paper's Algorithm 1: no eps, a
    group of mean 0 gets 0 (the authors' verl code adds 1e-6 to the mean and divides by N). Rewards must
    be >= 0 (prime-rl assumes it; a mean near 0 of mixed signs would blow up). For binary rewards it is
    the beta -> infinity limit of ``beta * rs_grpo`` (the error is O(e^-beta)).
    """
    r = _check_rewards(rewards)
    if bool((r < 0).any()):
        raise ValueError(f"max_rl: rewards must be >= 0 (the group mean is a pass rate), found {r.min().item()}")
    mean = r.mean(dim=1, keepdim=True)
    safe = torch.where(mean > 0, mean, torch.ones_like(mean))
    return _out(torch.where(mean > 0, (r - mean) / safe, torch.zeros_like(r)), rewards)


@register("w_reinforce", source="Zhu et al. 2025, arXiv 2506.01347; TianHongZXY/RLVR-Decomposed@a5d4e7c",
          equal_rewards_signal=True)
def w_reinforce(rewards: torch.Tensor, *, positive_advantage_weight: float = 0.1) -> torch.Tensor:
    """W-REINFORCE (Zhu et al. 2025, arXiv 2506.01347): correct samples ``positive_advantage_weight``, wrong -1.

    Weighted REINFORCE without a baseline: ``lambda`` times positive-sample reinforcement plus
    negative-sample reinforcement (NSR). As the authors' ``compute_psr_nsr_outcome_advantage`` with
    ``advantage=weighted``: reward 1 -> ``positive_advantage_weight * 1``, reward 0 -> ``0 - 1``. The
    parameter is their config key (the paper's lambda); 0.1 is their recommended value (their
    ppo_trainer.yaml default 1 is plain REINFORCE on +-1). Not group-relative: all-correct and all-wrong
    groups carry signal, which dynamic sampling would drop. Binary rewards only.
    """
    r = _check_rewards(rewards)
    _check_binary(r, "w_reinforce")
    weight = _check_number(positive_advantage_weight, "positive_advantage_weight", "w_reinforce")
    return _out(torch.where(r == 1, weight * r, r - 1.0), rewards)


@register("grpo_passk", source="Tang et al. 2025, arXiv 2503.19595; volcengine/verl@b178a3c")
def grpo_passk(rewards: torch.Tensor, *, scale: str = "std", eps: float = EPS) -> torch.Tensor:
    """GRPO pass@k (Tang et al. 2025, arXiv 2503.19595) as verl's ``grpo_passk``: the best sample gets
    ``(r_max - r_second_max) / (std + eps)``, every other sample 0.

    The leave-one-out advantage of the group's best-of-``N`` reward (pass@k with k = ``N``): leaving out
    any sample but a unique best does not change the max, so tied best samples get 0 as well. With
    binary rewards only a group with exactly one correct sample has signal. ``scale="std"`` divides by
    the unbiased group std (verl's default ``norm_adv_by_std_in_grpo=True``), ``scale="none"`` does not.
    """
    _choice(scale, ("std", "none"), "scale", "grpo_passk")
    r = _check_rewards(rewards, min_samples=2)
    top = torch.topk(r, 2, dim=1)
    gap = top.values[:, :1] - top.values[:, 1:]  # 0 for a tied best, whichever of them topk returned
    if scale == "std":
        gap = gap / (r.std(dim=1, keepdim=True) + _check_number(eps, "eps", "grpo_passk"))
    return _out(torch.zeros_like(r).scatter_(1, top.indices[:, :1], gap), rewards)


@register("rs_grpo", source="RS-GRPO, arXiv 2509.24261")
def rs_grpo(rewards: torch.Tensor, *, beta=2.0) -> torch.Tensor:
    """RS-GRPO risk-seeking advantage (arXiv 2509.24261, the risk-sensitive advantage).

    ``A_i = (1/beta) (exp(beta r_i) / mean_j exp(beta r_j) - 1)``; beta = 0 gives ``r_i - mean(r)``.
    ``beta`` is a number >= 0 or a tensor of shape ``[groups]`` (one beta per group); the default 2
    is the value the authors recommend.

    Stable form: with ``u = r - max(r)`` (so ``beta u <= 0``),
    ``log(exp(beta r_i)/mean exp(beta r)) = beta u_i - log1p(mean_j expm1(beta u_j))``, then
    ``A = expm1(.)/beta``. This is exact in both regimes: no overflow for large ``beta * r`` and no
    cancellation as ``beta -> 0`` (where ``A -> r - mean``). No std normalisation, no clipping.
    """
    r = _check_rewards(rewards)
    b = (torch.as_tensor(beta, dtype=torch.float64) if not isinstance(beta, torch.Tensor)
         else beta.detach().to(torch.float64))
    if b.dim() == 0:
        b = b.expand(r.shape[0])
    if b.dim() != 1 or b.shape[0] != r.shape[0]:
        raise ValueError(
            f"rs_grpo: beta must be a number or a tensor of shape [groups]={r.shape[0]}, got shape {tuple(b.shape)}"
        )
    if not bool(torch.isfinite(b).all()) or bool((b < 0).any()):
        raise ValueError(f"rs_grpo: beta must be a finite number >= 0 (0 = risk-neutral), got {beta!r}")
    return _out(rs_grpo_kernel(r, b.to(r.device)[:, None]), rewards)


def rs_grpo_kernel(r: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The RS-GRPO arithmetic without validation: float64 ``r [G, N]``, ``beta [G, 1]`` >= 0.

    Callers that validated their inputs once may use it directly; everyone else calls ``rs_grpo``.
    ``rsgrpo.bandit._rs_grpo_np`` is its numpy twin (tests pin the two equal).
    """
    u = r - r.max(dim=1, keepdim=True).values
    log_weight = beta * u - torch.log1p(torch.expm1(beta * u).mean(dim=1, keepdim=True))
    safe_beta = torch.where(beta > 0, beta, torch.ones_like(beta))
    risk_seeking = torch.expm1(log_weight) / safe_beta
    neutral = r - r.mean(dim=1, keepdim=True)
    return torch.where(beta > 0, risk_seeking, neutral)


# ---------------------------------------------------------------------------------------------
# public dispatch


def estimator_params(name: str) -> dict[str, object]:
    """Parameters an estimator accepts, with their defaults (``inspect.Parameter.empty`` = required)."""
    fn = _lookup(name)
    sig = inspect.signature(fn)
    return {p.name: p.default for p in list(sig.parameters.values())[1:]}


def takes_beta(name: str) -> bool:
    """Whether estimator ``name`` has a risk parameter ``beta`` (sweeps give it per cell, beta
    schedules ramp it)."""
    return "beta" in estimator_params(name)


def equal_rewards_carry_signal(name: str) -> bool:
    """Whether estimator ``name`` gives a group of equal rewards a non-zero advantage (it has no group
    baseline): dynamic sampling, which drops such groups, then changes what the method optimises."""
    _lookup(name)
    return EQUAL_REWARDS_SIGNAL[name]


def default_params(name: str) -> dict[str, object]:
    """The estimator's optional parameters with their defaults (the values a method gets when its
    config gives none; rs_grpo's beta 2 is the paper's recommendation)."""
    return {p: d for p, d in estimator_params(name).items() if d is not inspect.Parameter.empty}


def _lookup(name: str):
    if name not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; allowed: {sorted(ESTIMATORS)}")
    return ESTIMATORS[name]


def compute(name: str, rewards: torch.Tensor, **params) -> torch.Tensor:
    """Advantages of estimator ``name`` for ``rewards`` of shape ``[groups, samples]`` (same shape out).

    Raises ValueError naming the problem for an unknown estimator, an unknown or missing parameter,
    a reward tensor of the wrong shape or with NaN/inf, and out-of-range parameters.
    """
    fn = _lookup(name)
    accepted = estimator_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        shown = {p: ("required" if d is inspect.Parameter.empty else d) for p, d in accepted.items()}
        raise ValueError(f"{name}: unknown parameter(s) {unknown}; allowed parameters: {shown or 'none'}")
    missing = [p for p, d in accepted.items() if d is inspect.Parameter.empty and p not in params]
    if missing:
        raise ValueError(f"{name}: missing required parameter(s) {missing}")
    return fn(rewards, **params)
