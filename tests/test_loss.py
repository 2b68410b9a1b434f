"""The log-prob computation of the update: chunked over completion positions only, equal to the
naive full-vocabulary computation, and far lighter at paper-like lengths."""

import math

import pytest
import torch
from peak_memory import logprob_peaks_mb

from rsgrpo.train.loss import build_batch, naive_token_logprobs, token_logprobs


def tiny_lm(vocab: int = 97, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    return Qwen2ForCausalLM(config)


def random_pairs(vocab: int, lengths: list[tuple[int, int]], seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    def tokens(n):
        return torch.randint(1, vocab, (n,), generator=gen).tolist()

    return [(tokens(p), tokens(c)) for p, c in lengths]


@pytest.mark.parametrize("chunk", [None, 1, 3, 7, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_and_entropy_equal_the_naive_ones(chunk, temperature):
    model = tiny_lm()
    batch = build_batch(random_pairs(97, [(5, 9), (2, 14), (11, 1), (1, 6)]), pad_id=0)
    mask = batch.completion_mask[:, 1:]
    logp, entropy = token_logprobs(model, batch, temperature, with_entropy=True, chunk_tokens=chunk)
    ref_logp, ref_entropy = naive_token_logprobs(model, batch, temperature, with_entropy=True)
    torch.testing.assert_close(logp, ref_logp * mask, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy, ref_entropy * mask, rtol=0, atol=1e-5)
    assert (logp[mask == 0] == 0).all() and entropy.requires_grad is False
    # gradients of a weighted sum equal too (each chunk is recomputed in the backward pass)
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(2)) * mask
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad((logp * weights).sum(), params)
    ref_grads = torch.autograd.grad((naive_token_logprobs(model, batch, temperature)[0] * weights).sum(), params)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_a_batch_without_completion_tokens_still_reaches_every_weight():
    """A rank's padding micro-batch: zero log-probs, but a backward that gives every weight a (zero)
    gradient, because with several ranks every backward is a collective."""
    model = tiny_lm()
    batch = build_batch([([3], [4])], pad_id=0)
    batch.completion_mask.zero_()
    logp, _ = token_logprobs(model, batch, chunk_tokens=4)
    assert logp.abs().sum() == 0
    logp.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in model.parameters())


def test_generation_still_sees_the_plain_output_layer():
    model = tiny_lm()
    batch = build_batch(random_pairs(97, [(4, 4)]), pad_id=0)
    before = model(input_ids=batch.input_ids).logits
    token_logprobs(model, batch, chunk_tokens=2)  # installs the chunked entry point on the head
    torch.testing.assert_close(model(input_ids=batch.input_ids).logits, before)


def test_chunked_logprobs_peak_memory_is_at_least_3x_lower():
    """One micro-batch of B 4 x L 2048 with a 32k vocabulary, forward and backward: the naive path
    holds [B, L, V] float32 logits and their log-softmax, the chunked one a chunk of them."""
    naive, chunked = logprob_peaks_mb()
    print(f"peak MB: naive {naive:.0f}, chunked {chunked:.0f}, ratio {naive / chunked:.1f}")
    assert naive > 1500  # the [4, 2048, 32000] float32 logits alone are 1 GB
    assert naive >= 3 * chunked


# ------------------------------------------------------------------------------------------------
# policy losses and aggregations against verl
# ------------------------------------------------------------------------------------------------
# Reference implementations written here, following how verl implements them: volcengine/verl,
# verl/trainer/ppo/core_algos.py at commit b178a3cd56f58b2d502255daba591e92833930a7 -- `agg_loss`,
# `compute_policy_loss_vanilla`, `compute_policy_loss_gspo`, `compute_policy_loss_cispo` (verl's
# `config.global_batch_info` passed as keyword arguments; `rollout_is_weights` multiplied in).
# Every function is run in float64 and differentiated by autograd.
VERL_COMMIT = "b178a3cd56f58b2d502255daba591e92833930a7"


def verl_agg_loss(loss_mat, loss_mask, mode, *, dp_size=1, batch_num_tokens=None, global_batch_size=None,
                  loss_scale_factor=None):
    """verl's ``agg_loss``, as it is at VERL_COMMIT."""
    if mode == "token-mean":
        tokens = loss_mask.sum() if batch_num_tokens is None else batch_num_tokens
        return (loss_mat * loss_mask).sum() / tokens * dp_size
    if mode == "seq-mean-token-mean":
        counts = loss_mask.sum(-1)
        seq_losses = (loss_mat * loss_mask).sum(-1) / (counts + 1e-8)
        present = (counts > 0).double()
        sequences = present.sum() if global_batch_size is None else global_batch_size
        return (seq_losses * present).sum() / sequences * dp_size
    if mode == "seq-mean-token-sum-norm":  # no division by the sequences, no dp_size at this commit
        scale = loss_mask.shape[-1] if loss_scale_factor is None else loss_scale_factor
        return (loss_mat * loss_mask).sum(-1).sum() / scale
    raise ValueError(mode)


def _masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def verl_vanilla(old, logp, adv, mask, *, lo, hi, c, mode, weights=None, **info):
    """``compute_policy_loss_vanilla``: (loss, clipfrac, clipfrac_lower)."""
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - lo, 1 + hi)
    clip1 = torch.maximum(pg1, pg2)
    clipfrac = _masked_mean((pg2 > pg1).double(), mask)
    pg3 = -adv * c
    clip2 = torch.min(pg3, clip1)
    clipfrac_lower = _masked_mean((clip1 > pg3).double() * (adv < 0).double(), mask)
    losses = torch.where(adv < 0, clip2, clip1)
    if weights is not None:
        losses = losses * weights
    return verl_agg_loss(losses, mask, mode, **info), clipfrac, clipfrac_lower


def verl_gspo(old, logp, adv, mask, *, lo, hi, weights=None, **info):
    """``compute_policy_loss_gspo`` (which aggregates with seq-mean-token-mean whatever it is asked)."""
    lengths = mask.sum(-1).clamp(min=1)
    seq_kl = ((logp - old) * mask).sum(-1) / lengths
    log_ratio = torch.clamp(logp - logp.detach() + seq_kl.detach().unsqueeze(-1), max=10.0)
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - lo, 1 + hi)
    losses = torch.maximum(pg1, pg2)
    if weights is not None:
        losses = losses * weights
    return verl_agg_loss(losses, mask, "seq-mean-token-mean", **info), _masked_mean((pg2 > pg1).double(), mask), losses


def verl_cispo(old, logp, adv, mask, *, lo, hi, mode, weights=None, **info):
    """``compute_policy_loss_cispo``: (loss, clipfrac)."""
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    clipped_ratio = torch.clamp(ratio, 1 - lo, 1 + hi)
    losses = -clipped_ratio.detach() * adv * logp
    if weights is not None:
        losses = losses * weights
    return verl_agg_loss(losses, mask, mode, **info), _masked_mean((ratio != clipped_ratio).double(), mask)


AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
LOSSES = ["ppo_clip", "gspo", "cispo"]
HORIZON = 12


def random_step(seed: int, *, noise: float, rows: int = 7, width: int = 9):
    """Random log-probs, old log-probs ``noise`` away, per-sequence advantages and right-padded masks
    of lengths 1..width (one of each extreme), float64."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=gen)
    lengths[0], lengths[1] = 1, width
    mask = (torch.arange(width)[None, :] < lengths[:, None]).double()
    logp = -3 * torch.rand(rows, width, generator=gen, dtype=torch.float64) * mask
    old = (logp + noise * torch.randn(rows, width, generator=gen, dtype=torch.float64)) * mask
    adv = torch.randn(rows, generator=gen, dtype=torch.float64)
    weights = torch.rand(rows, width, generator=gen, dtype=torch.float64) * 2
    return logp, old, adv, mask, weights


def verl_reference(kind, agg, logp, old, adv, mask, *, lo, hi, c=None, weights=None):
    """(loss, clipped tokens) of verl for the whole step as one batch on one rank; for
    seq-mean-token-sum-norm divided by the completions (what verl's dp_actor does through its
    micro-batch scale micro/mini-batch size, and TRL's dr_grpo; see docs/training.md)."""
    info = {"batch_num_tokens": mask.sum(), "global_batch_size": (mask.sum(-1) > 0).sum().double(),
            "loss_scale_factor": HORIZON}
    adv2 = adv[:, None].expand_as(logp)
    tokens = mask.sum()
    if kind == "ppo_clip":
        loss, frac, lower = verl_vanilla(old, logp, adv2, mask, lo=lo, hi=hi, c=math.inf if c is None else c,
                                         mode=agg, weights=weights, **info)
        clipped = (frac + lower) * tokens
    elif kind == "gspo":
        loss, frac, losses = verl_gspo(old, logp, adv2, mask, lo=lo, hi=hi, weights=weights, **info)
        if agg != "seq-mean-token-mean":  # verl's gspo has one aggregation; the others on its token terms
            loss = verl_agg_loss(losses, mask, agg, **info)
        clipped = frac * tokens
    else:
        loss, frac = verl_cispo(old, logp, adv2, mask, lo=lo, hi=hi, mode=agg, weights=weights, **info)
        clipped = frac * tokens
    if agg == "seq-mean-token-sum-norm":
        loss = loss / info["global_batch_size"]
    return loss, clipped


CLIPS = {"ppo_clip": [(0.2, 0.28, None), (0.2, 0.28, 3.0)], "gspo": [(3e-4, 4e-4, None), (0.2, 0.28, None)],
         "cispo": [(10.0, 0.2, None), (0.2, 0.28, None)]}


def ours(kind, agg, logp, old, adv, mask, *, lo, hi, c=None, weights=None, rows=None, world=1):
    from rsgrpo.train.loss import policy_loss

    rows = list(range(len(logp))) if rows is None else rows
    sequences = float((mask.sum(-1) > 0).sum())
    return policy_loss(logp[rows], old[rows], adv[rows], mask[rows], kind=kind, loss_agg=agg, clip_low=lo,
                       clip_high=hi, clip_ratio_c=c, n_tokens=float(mask.sum()) / world,
                       n_sequences=sequences / world, horizon=HORIZON,
                       token_weights=None if weights is None else weights[rows])


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("noise", [1e-4, 0.3, 1.5])
def test_policy_losses_equal_verls_with_their_gradients(kind, agg, noise):
    """Every policy loss x aggregation on random steps (lengths 1..9, ratios near 1 to far off, with and
    without per-token weights): the loss, its gradient w.r.t. the log-probs and the clipped tokens
    equal verl's (VERL_COMMIT)."""
    seen_clipped = 0.0
    for seed in range(3):
        logp, old, adv, mask, weights = random_step(seed, noise=noise)
        for lo, hi, c in CLIPS[kind]:
            for w in (None, weights):
                a = logp.clone().requires_grad_(True)
                loss, stats = ours(kind, agg, a, old, adv, mask, lo=lo, hi=hi, c=c, weights=w)
                b = logp.clone().requires_grad_(True)
                ref, clipped = verl_reference(kind, agg, b, old, adv, mask, lo=lo, hi=hi, c=c, weights=w)
                # 1e-7: verl's seq-mean-token-mean divides by (tokens + 1e-8), ~1e-8 of a one-token completion's term
                torch.testing.assert_close(loss, ref, rtol=1e-7, atol=1e-7)
                (grad,), (ref_grad,) = torch.autograd.grad(loss, a), torch.autograd.grad(ref, b)
                torch.testing.assert_close(grad * mask, ref_grad * mask, rtol=1e-7, atol=1e-7)
                assert float(stats["clipped"]) == pytest.approx(float(clipped), abs=1e-9)
                assert float(stats["tokens"]) == float(mask.sum())
                seen_clipped += float(clipped)
    assert seen_clipped > 0 or noise == 1e-4  # the clips acted (at 1e-4 only GSPO's small ranges do)


def test_the_losses_on_hand_made_values():
    """Ratio 1 (on-policy): ppo_clip and gspo give -A per token, cispo -A log pi; token-mean weighs the
    tokens, seq-mean-token-mean the completions, seq-mean-token-sum-norm the token sums / the horizon."""
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    expected = {"token-mean": -(2 * 3 - 1) / 4, "seq-mean-token-mean": -(2 - 1) / 2,
                "seq-mean-token-sum-norm": -(2 * 3 - 1) / HORIZON / 2}
    for agg, value in expected.items():
        for kind in ("ppo_clip", "gspo"):
            loss, _ = ours(kind, agg, logp, logp, adv, mask, lo=0.2, hi=0.28)
            assert loss.item() == pytest.approx(value)
    loss, _ = ours("cispo", "token-mean", logp, logp, adv, mask, lo=10.0, hi=0.2)
    assert loss.item() == pytest.approx(-(2 * -6.0 - 1 * -0.5) / 4)
    # gspo: one ratio per completion, the geometric mean of its token ratios
    old = logp - torch.tensor([[0.3, -0.1, 0.1], [0.0, 0.0, 0.0]])
    ratio = math.exp((0.3 - 0.1 + 0.1) / 3)
    loss, stats = ours("gspo", "seq-mean-token-mean", logp, old, adv, mask, lo=3e-4, hi=4e-4)
    assert loss.item() == pytest.approx(-(2 * min(ratio, 1 + 4e-4) - 1) / 2)
    assert float(stats["clipped"]) == 3  # every token of the clipped completion


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("kind", LOSSES)
def test_micro_batch_losses_add_up_to_the_step_loss_in_any_split_and_on_any_rank_count(kind, agg):
    """With the step's denominators, the micro-batch losses of any split and order of the rows add up to
    the loss of the whole step (and their gradients); split over 2 ranks, each dividing by its share
    of the denominators, the mean of the ranks' sums (DeepSpeed's gradient average) is the same."""
    logp, old, adv, mask, weights = random_step(4, noise=0.3, rows=8)
    lo, hi, c = CLIPS[kind][0]
    a = logp.clone().requires_grad_(True)
    full, _ = ours(kind, agg, a, old, adv, mask, lo=lo, hi=hi, c=c, weights=weights)
    (full_grad,) = torch.autograd.grad(full, a)
    gen = torch.Generator().manual_seed(5)
    splits = [[[r] for r in range(8)], [[3, 1, 6], [0, 2], [7, 5, 4]], [torch.randperm(8, generator=gen).tolist()]]
    for split in splits:
        b = logp.clone().requires_grad_(True)
        total = sum(ours(kind, agg, b, old, adv, mask, lo=lo, hi=hi, c=c, weights=weights, rows=rows)[0]
                    for rows in split)
        torch.testing.assert_close(total, full, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(torch.autograd.grad(total, b)[0], full_grad, rtol=1e-12, atol=1e-14)
    ranks = [[[0, 5], [2]], [[1, 3, 4, 6, 7]]]  # uneven: 3 and 5 rows
    b = logp.clone().requires_grad_(True)
    per_rank = [sum(ours(kind, agg, b, old, adv, mask, lo=lo, hi=hi, c=c, weights=weights, rows=rows, world=2)[0]
                    for rows in micro) for micro in ranks]
    averaged = sum(per_rank) / 2
    torch.testing.assert_close(averaged, full, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.autograd.grad(averaged, b)[0], full_grad, rtol=1e-12, atol=1e-14)
