"""The policy losses of the update and how their token terms become the step's loss (pure tensor math).

Two registries, each entry one function (a new loss or aggregation is one decorated function here):

* :data:`POLICY_LOSSES` -- config key ``policy_loss``: ``fn(logp, old_logp, adv, mask, *, clip_low,
  clip_high, clip_ratio_c) -> (per_token, clipped)``, the ``[B, T]`` loss term of every token (to be
  aggregated) and which tokens a clip acted on (the ``clip_frac`` metric). Each entry declares its
  default clip ranges and the settings it cannot be combined with (:class:`PolicyLoss`; the config
  checks them, :mod:`rsgrpo.train.config_losses`).
* :data:`LOSS_AGGS` -- config key ``loss_agg``: ``fn(per_token, mask, denominators) -> loss`` of one
  micro-batch, with the denominators of the WHOLE step (:class:`Denominators`), so the micro-batch
  losses of every rank add up to the step's loss whatever the micro-batches and the number of ranks.

The losses follow verl (volcengine/verl, ``verl/trainer/ppo/core_algos.py`` at commit
b178a3cd56f58b2d502255daba591e92833930a7: ``compute_policy_loss_vanilla``, ``compute_policy_loss_gspo``,
``compute_policy_loss_cispo``, ``agg_loss``); tests/test_loss.py holds a reference implementation of each
and checks losses and gradients against them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rsgrpo.registry import refuse_taken

__all__ = ["POLICY_LOSSES", "LOSS_AGGS", "PolicyLoss", "Denominators", "register_policy_loss", "register_loss_agg",
           "policy_loss"]

LOG_RATIO_BOUND = 20.0  # verl clamps log(pi / pi_old) to [-20, 20] before exp (vanilla, cispo)
GSPO_LOG_RATIO_MAX = 10.0  # verl clamps GSPO's token-level log ratio at 10 (numerical stability)


@dataclass(frozen=True)
class PolicyLoss:
    """A registered policy loss: its function, default clip ranges (what ``clip_low`` / ``clip_high``
    null resolve to) and what it cannot be combined with."""

    fn: Callable
    clip_low: float
    clip_high: float
    # the loss_agg its objective is defined with (None: any)
    loss_aggs: tuple[str, ...] | None = None
    # whether per-token weights (rollout_correction: tis) fit its objective
    token_weights: bool = True
    # whether it has the dual clip of clip_ratio_c
    dual_clip: bool = False
    # whether clip_low may be >= 1 (no lower bound on the ratio); otherwise it must lie in [0, 1)
    unbounded_below: bool = False


@dataclass(frozen=True)
class Denominators:
    """The step's counts each micro-batch's loss is divided by: ``tokens`` (completion tokens) and
    ``sequences`` (completions with at least one token) of the whole step over every rank, each
    DIVIDED BY THE NUMBER OF RANKS (DeepSpeed averages the ranks' gradients, so each rank's share of
    the sum is scaled up by it), and ``horizon``, the constant of ``seq-mean-token-sum-norm``
    (``max_new_tokens``)."""

    tokens: float
    sequences: float | None = None
    horizon: float | None = None


POLICY_LOSSES: dict[str, PolicyLoss] = {}
LOSS_AGGS: dict[str, Callable] = {}


def register_policy_loss(name: str, *, clip_low: float, clip_high: float, **limits):
    """Decorator adding a policy loss to :data:`POLICY_LOSSES` (``limits``: the other fields of
    :class:`PolicyLoss`)."""

    def wrap(fn):
        refuse_taken(POLICY_LOSSES, name, "policy loss", owner=lambda entry: entry.fn)
        POLICY_LOSSES[name] = PolicyLoss(fn, clip_low, clip_high, **limits)
        return fn

    return wrap


def register_loss_agg(name: str):
    """Decorator adding a loss aggregation to :data:`LOSS_AGGS`."""

    def wrap(fn):
        refuse_taken(LOSS_AGGS, name, "loss aggregation")
        LOSS_AGGS[name] = fn
        return fn

    return wrap


# -- policy losses -------------------------------------------------------------------------------
@register_policy_loss("ppo_clip", clip_low=0.2, clip_high=0.28, dual_clip=True)
def ppo_clip(logp, old_logp, adv, mask, *, clip_low, clip_high, clip_ratio_c=None):
    """PPO's clipped objective with asymmetric clip (DAPO's clip-higher: 0.2 / 0.28), verl's
    ``vanilla``: ``l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`` with ``r = pi / pi_old``.
    With ``clip_ratio_c`` (dual clip, arXiv 1912.09729; verl's default 3.0, off here unless set) a
    negative-advantage token's loss is capped at ``-A * clip_ratio_c``. Clipped: the tokens whose
    term a clip holds (no gradient)."""
    ratio = torch.exp(torch.clamp(logp - old_logp, -LOG_RATIO_BOUND, LOG_RATIO_BOUND))
    surr1 = -adv * ratio
    surr2 = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(surr1, surr2)
    clipped = surr2 > surr1
    if clip_ratio_c is not None:
        surr3 = -adv * clip_ratio_c
        negative = adv < 0
        clipped = clipped | (negative & (per_token > surr3))
        per_token = torch.where(negative, torch.minimum(surr3, per_token), per_token)
    return per_token, clipped


@register_policy_loss("gspo", clip_low=3e-4, clip_high=4e-4, loss_aggs=("seq-mean-token-mean",),
                      token_weights=False)
def gspo(logp, old_logp, adv, mask, *, clip_low, clip_high, clip_ratio_c=None):
    """GSPO (arXiv 2507.18071): one importance ratio per completion, the geometric mean of its token
    ratios ``s = exp(mean_t log(pi / pi_old))``, clipped with GSPO's small ranges (the paper's 3e-4 /
    4e-4). As verl: each token carries ``s_t = sg(s) * pi_t / sg(pi_t)`` (value ``s``, gradient
    ``s * grad log pi_t``), so with the per-completion token mean (``seq-mean-token-mean``) the
    gradient is the paper's ``-A s (1/|y|) sum_t grad log pi_t``. Clipped: every token of a completion
    whose ratio was clipped."""
    lengths = mask.sum(-1).clamp(min=1)
    seq_log_ratio = ((logp - old_logp) * mask).sum(-1) / lengths
    log_ratio = torch.clamp(logp - logp.detach() + seq_log_ratio.detach()[:, None], max=GSPO_LOG_RATIO_MAX)
    ratio = torch.exp(log_ratio)
    surr1 = -adv * ratio
    surr2 = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(surr1, surr2), surr2 > surr1


@register_policy_loss("cispo", clip_low=10.0, clip_high=0.2, unbounded_below=True)
def cispo(logp, old_logp, adv, mask, *, clip_low, clip_high, clip_ratio_c=None):
    """CISPO (MiniMax-M1, arXiv 2506.13585): REINFORCE weighted by the clipped, detached importance
    ratio, ``l = -sg(clip(r, 1 - clip_low, 1 + clip_high)) * A * log pi``: every token keeps a gradient,
    only its weight is bounded. Defaults: verl's CISPO example (clip_low 10, i.e. no lower bound,
    as the paper; clip_high 0.2). Clipped: the tokens whose weight a bound changed."""
    ratio = torch.exp(torch.clamp(logp - old_logp, -LOG_RATIO_BOUND, LOG_RATIO_BOUND))
    weight = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return -weight.detach() * adv * logp, ratio != weight


# -- aggregations --------------------------------------------------------------------------------
@register_loss_agg("token-mean")
def token_mean(per_token, mask, den: Denominators):
    """Sum over the step's tokens / its tokens: every token weighs the same (DAPO's token-level loss)."""
    return (per_token * mask).sum() / den.tokens


@register_loss_agg("seq-mean-token-mean")
def seq_mean_token_mean(per_token, mask, den: Denominators):
    """Each completion's token mean, averaged over the step's completions (GRPO's, GSPO's)."""
    per_sequence = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_sequence.sum() / _needed(den.sequences, "sequences")


@register_loss_agg("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(per_token, mask, den: Denominators):
    """Each completion's token sum divided by a constant, the horizon (``max_new_tokens``), averaged
    over the step's completions (Dr.GRPO's constant normalisation; TRL's ``dr_grpo``)."""
    return (per_token * mask).sum() / (_needed(den.horizon, "horizon") * _needed(den.sequences, "sequences"))


def _needed(value, name):
    if value is None:
        raise ValueError(f"this loss aggregation needs the step's {name}")
    return value


# -- the loss of one micro-batch ---------------------------------------------------------------------
def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *,
                clip_low: float, clip_high: float, n_tokens: float, n_sequences: float | None = None,
                horizon: float | None = None, kind: str = "ppo_clip", loss_agg: str = "token-mean",
                clip_ratio_c: float | None = None, ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0,
                token_weights: torch.Tensor | None = None):
    """The loss of one micro-batch: the ``kind`` policy loss of every token, times ``token_weights``
    (``[B, T]``, detached: the truncated importance weights of ``rollout_correction: tis``,
    :mod:`rsgrpo.train.mismatch`), plus ``kl_coef * k3`` (``k3 = exp(ref - logp) - (ref - logp) - 1``,
    the non-negative unbiased estimate of KL(pi || ref)), aggregated by ``loss_agg`` with the step's
    denominators ``n_tokens``, ``n_sequences`` (each rank's share, :class:`Denominators`) and ``horizon``.

    ``adv`` is one advantage per sequence (``[B]``) or per token (``[B, T]``). Returns ``(loss, stats)``,
    stats holding token SUMS (``clipped``, ``kl``, ``tokens``) as detached 0-d tensors on the loss's
    device, so they add up across micro-batches without a host sync each.
    """
    if adv.dim() == 1:
        adv = adv[:, None]
    loss_fn = POLICY_LOSSES[kind].fn
    per_token, clipped = loss_fn(logp, old_logp, adv, mask, clip_low=clip_low, clip_high=clip_high,
                                 clip_ratio_c=clip_ratio_c)
    if token_weights is not None:
        per_token = per_token * token_weights
    kl_sum = torch.zeros((), dtype=per_token.dtype, device=per_token.device)
    if ref_logp is not None and kl_coef > 0:
        log_ratio_ref = ref_logp - logp
        kl = torch.exp(log_ratio_ref) - log_ratio_ref - 1.0
        per_token = per_token + kl_coef * kl
        kl_sum = (kl.detach() * mask).sum()
    loss = LOSS_AGGS[loss_agg](per_token, mask, Denominators(n_tokens, n_sequences, horizon))
    stats = {"clipped": (clipped.to(mask.dtype) * mask).sum().detach(), "kl": kl_sum.detach(),
             "tokens": mask.sum().detach()}
    return loss, stats
