"""Advantage estimators vs closed forms, worked values and brute-force enumeration over k-subsets."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from rsgrpo.estimators import (
    ESTIMATORS,
    EXAMPLE_PARAMS,
    SOURCES,
    compute,
    default_params,
    equal_rewards_carry_signal,
    estimator_params,
    register,
    takes_beta,
)


def binary_closed_form(beta: float, n: int, c: int) -> tuple[float, float]:
    """RS-GRPO advantages ``(A+, A-)`` of a binary group with ``c`` of ``n`` correct (arXiv 2509.24261).

    ``A+ = (1/beta)(e^beta / (1 + p(e^beta - 1)) - 1)``, ``A- = (1/beta)(1 / (1 + p(e^beta - 1)) - 1)``,
    ``p = c/n``; beta = 0 gives ``(1-p, -p)``. The paper's own formula: the oracle the estimator and the
    figure are tested against.
    """
    p = c / n
    if beta == 0:
        return 1.0 - p, -p
    denom = 1.0 + p * math.expm1(beta)
    return (math.exp(beta) / denom - 1.0) / beta, (1.0 / denom - 1.0) / beta



def binary_group(n, c):
    r = torch.zeros(1, n, dtype=torch.float64)
    r[0, :c] = 1.0
    return r


# ------------------------------------------------------------------------------------- RS-GRPO


@pytest.mark.parametrize(
    "c, a_pos, a_neg", [(1, 2.140, -0.143), (8, 0.381, -0.381), (15, 0.029, -0.429)]
)
def test_rs_grpo_worked_values_from_paper(c, a_pos, a_neg):
    adv = compute("rs_grpo", binary_group(16, c), beta=2.0)[0]
    assert adv[0].item() == pytest.approx(a_pos, abs=1e-3)  # paper rounds to 3 decimals
    assert adv[-1].item() == pytest.approx(a_neg, abs=1e-3)


@pytest.mark.parametrize("beta", [0.5, 2.0, 4.0, 8.0, 64.0])
@pytest.mark.parametrize("n", [2, 5, 16, 64])
def test_rs_grpo_binary_closed_form_every_count(beta, n):
    for c in range(1, n):
        adv = compute("rs_grpo", binary_group(n, c), beta=beta)[0]
        a_pos, a_neg = binary_closed_form(beta, n, c)
        assert adv[:c].numpy() == pytest.approx(np.full(c, a_pos), rel=1e-9, abs=1e-12)
        assert adv[c:].numpy() == pytest.approx(np.full(n - c, a_neg), rel=1e-9, abs=1e-12)


def test_rs_grpo_matches_direct_formula_on_continuous_rewards():
    gen = torch.Generator().manual_seed(0)
    r = torch.rand(50, 12, generator=gen, dtype=torch.float64)
    for beta in (0.3, 2.0, 7.0):
        e = torch.exp(beta * r)
        direct = (e / e.mean(dim=1, keepdim=True) - 1.0) / beta
        torch.testing.assert_close(compute("rs_grpo", r, beta=beta), direct, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", [0.1, 2.0, 8.0, 64.0])
def test_rs_grpo_zero_mean_and_bounds(beta):
    gen = torch.Generator().manual_seed(1)
    n = 32
    r = torch.cat([torch.rand(100, n, generator=gen), (torch.rand(100, n, generator=gen) < 0.2).float()]).double()
    adv = compute("rs_grpo", r, beta=beta)
    assert adv.sum(dim=1).abs().max().item() < 1e-9 * max(1.0, n / beta)
    assert adv.min().item() >= -1 / beta - 1e-12
    assert adv.max().item() <= (n - 1) / beta + 1e-12
    # the lower bound is approached when one sample dominates a large-beta group
    lone = torch.zeros(1, n, dtype=torch.float64)
    lone[0, 0] = 1.0
    hi = compute("rs_grpo", lone, beta=200.0)[0]
    assert hi[0].item() == pytest.approx((n - 1) / 200.0, rel=1e-6)
    assert hi[1].item() == pytest.approx(-1 / 200.0, rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 2.0, 64.0])
def test_rs_grpo_equal_rewards_give_zero(beta):
    r = torch.full((3, 8), 0.7, dtype=torch.float64)
    assert compute("rs_grpo", r, beta=beta).abs().max().item() == 0.0


def test_rs_grpo_beta_zero_and_limit_are_mean_centred_not_std_scaled():
    gen = torch.Generator().manual_seed(2)
    r = torch.rand(20, 16, generator=gen, dtype=torch.float64) * 3
    centred = r - r.mean(dim=1, keepdim=True)
    torch.testing.assert_close(compute("rs_grpo", r, beta=0.0), centred, rtol=0, atol=0)
    for beta, tol in ((1e-3, 5e-3), (1e-6, 5e-6), (1e-12, 1e-10)):
        torch.testing.assert_close(compute("rs_grpo", r, beta=beta), centred, rtol=0, atol=tol)


def test_rs_grpo_extreme_beta_and_group_size_is_finite():
    gen = torch.Generator().manual_seed(3)
    r = (torch.rand(4, 1024, generator=gen) < 0.01).float()
    r[0] = 0.0
    r[1] = 1.0
    r[2, :] = 0.0
    r[2, 5] = 1.0
    adv = compute("rs_grpo", r, beta=64.0)
    assert torch.isfinite(adv).all()
    assert adv.dtype == torch.float32
    assert adv[2, 5].item() == pytest.approx(1023 / 64, rel=1e-5)
    # continuous rewards spanning a large range with beta 64: still finite and zero-mean
    wide = torch.linspace(-20, 20, 1024, dtype=torch.float64)[None]
    adv = compute("rs_grpo", wide, beta=64.0)
    assert torch.isfinite(adv).all() and abs(adv.sum().item()) < 1e-6


def test_rs_grpo_per_group_beta_tensor():
    r = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    adv = compute("rs_grpo", r, beta=torch.tensor([0.0, 4.0]))
    torch.testing.assert_close(adv[0], compute("rs_grpo", r[:1], beta=0.0)[0])
    torch.testing.assert_close(adv[1], compute("rs_grpo", r[1:], beta=4.0)[0])


def test_rs_grpo_shifts_weight_to_hard_prompts():
    """The paper's point: relative to GRPO, correct answers on low-accuracy prompts get more credit."""
    hard, easy = binary_group(16, 1), binary_group(16, 15)
    assert compute("rs_grpo", hard, beta=4.0)[0, 0] > compute("rs_grpo", hard, beta=0.0)[0, 0]
    assert compute("rs_grpo", easy, beta=4.0)[0, 0] < compute("rs_grpo", easy, beta=0.0)[0, 0]


# ------------------------------------------------------------------------------------- brute force


def subsets_with(n, k, i):
    return [s for s in itertools.combinations(range(n), k) if i in s]


def chen_brute(r, k):
    """Average over k-subsets containing i of the subset-level GRPO advantage (max reward, population std)."""
    n = len(r)
    subsets = list(itertools.combinations(range(n), k))
    subset_reward = {s: max(r[j] for j in s) for s in subsets}
    mean = sum(subset_reward.values()) / len(subsets)
    std = math.sqrt(sum((v - mean) ** 2 for v in subset_reward.values()) / len(subsets))
    if std == 0:
        return [0.0] * n
    return [
        sum((subset_reward[s] - mean) / std for s in subsets_with(n, k, i)) / len(subsets_with(n, k, i))
        for i in range(n)
    ]


def walder_brute(r, k):
    """(1/C(N,k)) sum over k-subsets S containing i of [max g_S - max g_{S minus i}], max(empty) = 0."""
    n = len(r)
    total = math.comb(n, k)
    out = []
    for i in range(n):
        acc = 0.0
        for s in subsets_with(n, k, i):
            rest = [r[j] for j in s if j != i]
            acc += max(r[j] for j in s) - (max(rest) if rest else 0.0)
        out.append(acc / total)
    return out


def mahdavi_unbiased_weight_brute(r, k):
    """K times the fraction of (K-1)-subsets of the *other* samples that are all wrong."""
    n = len(r)
    out = []
    for i in range(n):
        others = [r[j] for j in range(n) if j != i]
        subsets = list(itertools.combinations(others, k - 1))
        out.append(k * sum(1 for s in subsets if all(v == 0 for v in s)) / len(subsets))
    return out


def binary_cases(max_n=10):
    for n in range(2, max_n + 1):
        for c in range(0, n + 1):
            for k in range(1, n + 1):
                yield n, c, k


def test_passk_chen_equals_brute_force_for_every_small_case():
    for n, c, k in binary_cases():
        r = [1.0] * c + [0.0] * (n - c)
        perm = np.random.default_rng(n * 100 + c).permutation(n)  # position must not matter
        r = [r[p] for p in perm]
        got = compute("passk_chen", torch.tensor([r], dtype=torch.float64), k=k)[0].tolist()
        assert got == pytest.approx(chen_brute(r, k), abs=1e-10), (n, c, k)


def test_passk_chen_zero_once_fewer_than_k_wrong():
    adv = compute("passk_chen", binary_group(10, 8), k=3)  # 2 wrong < k
    assert adv.abs().max().item() == 0.0
    assert compute("passk_chen", binary_group(10, 7), k=3).abs().max().item() > 0


def test_pkpo_walder_binary_equals_brute_force_and_closed_form():
    for n, c, k in binary_cases():
        r = [1.0] * c + [0.0] * (n - c)
        got = compute("pkpo_walder", torch.tensor([r], dtype=torch.float64), k=k)[0].tolist()
        assert got == pytest.approx(walder_brute(r, k), abs=1e-12), (n, c, k)
        expected_correct = math.comb(n - c, k - 1) / math.comb(n, k)
        assert got[:c] == pytest.approx([expected_correct] * c, abs=1e-12)
        assert got[c:] == [0.0] * (n - c)


def test_pkpo_walder_continuous_equals_brute_force_with_ties():
    rng = np.random.default_rng(5)
    for n in range(1, 9):
        for k in range(1, n + 1):
            for _ in range(3):
                r = rng.choice([0.0, 0.25, 0.5, 0.9, 1.0, -0.3], size=n).tolist()  # ties on purpose
                got = compute("pkpo_walder", torch.tensor([r], dtype=torch.float64), k=k)[0].tolist()
                assert got == pytest.approx(walder_brute(r, k), abs=1e-12), (r, k)


def test_pkpo_walder_never_negative_and_sums_to_pass_at_k_gradient_weight():
    gen = torch.Generator().manual_seed(7)
    r = torch.rand(30, 16, generator=gen, dtype=torch.float64)
    adv = compute("pkpo_walder", r, k=4)
    assert adv.min().item() >= 0.0


def test_passk_mahdavi_unbiased_equals_brute_force():
    for n, c, k in binary_cases(8):
        r = [1.0] * c + [0.0] * (n - c)
        rt = torch.tensor([r], dtype=torch.float64)
        got = compute("passk_mahdavi", rt, k=k, variant="unbiased")[0].numpy()
        grpo = compute("grpo", rt)[0].numpy()
        expected = grpo * np.array(mahdavi_unbiased_weight_brute(r, k))
        assert got == pytest.approx(expected, abs=1e-10), (n, c, k)


def test_passk_mahdavi_unbiased_weight_is_unbiased_for_k_one_minus_p_power():
    """E over X ~ Bin(N-1, p) of K C(N-1-X, K-1)/C(N-1, K-1) equals K (1-p)^(K-1), exactly."""
    p = Fraction(3, 10)
    for n in (4, 9, 16):
        for k in range(1, n + 1):
            expectation = sum(
                math.comb(n - 1, x) * p**x * (1 - p) ** (n - 1 - x)
                * Fraction(math.comb(n - 1 - x, k - 1), math.comb(n - 1, k - 1))
                for x in range(n)
            )
            assert expectation == (1 - p) ** (k - 1)


def test_passk_mahdavi_plugin_and_normalize():
    r = torch.cat([binary_group(8, 2), binary_group(8, 6)])
    grpo = compute("grpo", r)
    got = compute("passk_mahdavi", r, k=3, variant="plugin")
    w = torch.tensor([[3 * (1 - 2 / 8) ** 2], [3 * (1 - 6 / 8) ** 2]], dtype=torch.float64)
    torch.testing.assert_close(got, grpo * w)
    norm = compute("passk_mahdavi", r, k=3, variant="plugin", normalize=True)
    torch.testing.assert_close(norm, grpo * w / w.mean())  # both groups carry signal: the plain mean
    # groups without signal (all wrong, all right) do not enter the rescaling (the authors' code)
    mixed = torch.cat([r, torch.zeros(1, 8, dtype=r.dtype), torch.ones(1, 8, dtype=r.dtype)])
    torch.testing.assert_close(compute("passk_mahdavi", mixed, k=3, variant="plugin", normalize=True)[:2],
                               grpo * w / w.mean())


def test_passk_mahdavi_normalized_plugin_gives_the_authors_numbers():
    """The example of the authors' code: rewards [[1,0,0,0],[0,0,0,0]], K=2 -> [1.5, -0.5, -0.5, -0.5]
    (batch-wide rescaling, which counted the all-wrong group, gave [1.286, -0.429, ...])."""
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    got = compute("passk_mahdavi", r, k=2, variant="plugin", normalize=True)
    torch.testing.assert_close(got, torch.tensor([[1.5, -0.5, -0.5, -0.5], [0.0, 0.0, 0.0, 0.0]]))
    # no group with signal: nothing to rescale, all zero
    torch.testing.assert_close(compute("passk_mahdavi", r[1:], k=2, variant="plugin", normalize=True),
                               torch.zeros(1, 4))
    # the unbiased variant gives no signal to correct samples once accuracy > 1 - (K-1)/N
    hi = compute("passk_mahdavi", binary_group(8, 7), k=3, variant="unbiased")
    assert hi[0, 0].item() == 0.0


# ------------------------------------------------------------------------------------- GRPO, RLOO


def test_grpo_std_and_none():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    std = compute("grpo", r)
    expected = (r[0] - 0.5) / (r[0].std() + 1e-6)
    torch.testing.assert_close(std[0], expected)
    assert std[1].abs().max().item() == 0.0
    torch.testing.assert_close(compute("grpo", r, scale="none")[0], r[0] - 0.5)


def test_rloo_equals_leave_one_out_brute_force():
    gen = torch.Generator().manual_seed(9)
    r = torch.rand(5, 7, generator=gen, dtype=torch.float64)
    got = compute("rloo", r)
    for g in range(5):
        for i in range(7):
            others = torch.cat([r[g, :i], r[g, i + 1 :]])
            assert got[g, i].item() == pytest.approx((r[g, i] - others.mean()).item(), abs=1e-12)


# ------------------------------------------------------------------------------------- validation


def test_registry_order_is_the_papers_table_order():
    # tables and figures order methods by registration: GRPO, the pass@k baselines and RLOO in the paper's
    # order, then the later baselines, RS-GRPO last; an estimator registered elsewhere comes after them
    names = list(ESTIMATORS)
    order = ["grpo", "pkpo_walder", "passk_mahdavi", "passk_chen", "rloo", "max_rl", "w_reinforce", "grpo_passk",
             "rs_grpo"]
    assert names[:len(order)] == order


def test_register_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="'grpo' is already registered"):
        register("grpo", source="a paper")(lambda rewards: rewards)
    assert ESTIMATORS["grpo"].__name__ == "grpo"


def test_register_needs_a_source_and_every_estimator_has_one():
    with pytest.raises(TypeError, match="source"):
        register("test_estimators_no_source")
    with pytest.raises(ValueError, match="'test_estimators_no_source': source must name the paper"):
        register("test_estimators_no_source", source="  ")
    assert "test_estimators_no_source" not in ESTIMATORS
    assert all(SOURCES.get(name, "").strip() for name in ESTIMATORS)
    assert "arXiv 2509.24261" in SOURCES["rs_grpo"] and "arXiv 2505.15201" in SOURCES["pkpo_walder"]


def test_takes_beta_and_defaults_come_from_the_signature():
    assert [n for n in ESTIMATORS if takes_beta(n)] == ["rs_grpo"]
    assert default_params("rs_grpo") == {"beta": 2.0}
    assert default_params("passk_chen") == {}  # k is required
    assert "k" in estimator_params("passk_chen")


@pytest.mark.parametrize(
    "name, rewards, params, message",
    [
        ("nope", torch.zeros(2, 4), {}, "unknown advantage estimator 'nope'; allowed: \\['grpo'"),
        ("grpo", torch.zeros(8), {}, "shape \\[groups, samples\\]"),
        ("grpo", torch.zeros(2, 3, 4), {}, "got shape \\(2, 3, 4\\)"),
        ("rs_grpo", torch.tensor([[0.0, float("nan")]]), {"beta": 2.0}, "NaN/inf.*group 0, sample 1"),
        ("rs_grpo", torch.tensor([[0.0, float("inf")]]), {"beta": 2.0}, "finite"),
        ("rs_grpo", torch.zeros(2, 4), {"beta": -1.0}, "beta must be a finite number >= 0"),
        ("rs_grpo", torch.zeros(2, 4), {"beta": float("nan")}, "beta must be a finite number >= 0"),
        ("rs_grpo", torch.zeros(2, 4), {"beta": torch.ones(3)}, "shape \\[groups\\]=2"),
        ("passk_chen", torch.zeros(2, 4), {"k": 5},
         "k must be between 1 and the number of samples per group \\(4\\), got k=5"),
        ("passk_chen", torch.zeros(2, 4), {"k": 0}, "got k=0"),
        ("passk_chen", torch.zeros(2, 4), {"k": 1.5}, "whole number"),
        ("passk_chen", torch.zeros(2, 4), {}, "missing required parameter\\(s\\) \\['k'\\]"),
        ("passk_chen", torch.full((2, 4), 0.5), {"k": 2}, "binary rewards only"),
        ("pkpo_walder", torch.zeros(2, 4), {"k": 9}, "got k=9"),
        ("passk_mahdavi", torch.zeros(2, 4), {"k": 2, "variant": "magic"},
         "variant must be one of \\['plugin', 'unbiased'\\]"),
        ("grpo", torch.zeros(2, 4), {"scale": "mad"}, "scale must be one of \\['std', 'none'\\]"),
        ("grpo", torch.zeros(2, 4), {"beta": 2.0}, "unknown parameter\\(s\\) \\['beta'\\]; allowed parameters"),
        ("rloo", torch.zeros(2, 1), {}, "at least 2 samples"),
        ("grpo", [[1.0, 0.0]], {}, "must be a torch.Tensor"),
        ("grpo", torch.zeros(2, 4), {"eps": -1e-6}, "grpo: eps must be a finite number >= 0, got -1e-06"),
        ("max_rl", torch.tensor([[0.5, -0.25]]), {}, "max_rl: rewards must be >= 0 .*found -0.25"),
        ("w_reinforce", torch.full((2, 4), 0.5), {}, "w_reinforce is defined for binary rewards only.*found 0.5"),
        ("w_reinforce", torch.zeros(2, 4), {"positive_advantage_weight": -0.1},
         "w_reinforce: positive_advantage_weight must be a finite number >= 0, got -0.1"),
        ("w_reinforce", torch.zeros(2, 4), {"positive_advantage_weight": float("inf")}, "got inf"),
        ("w_reinforce", torch.zeros(2, 4), {"positive_advantage_weight": True}, "got True"),
        ("w_reinforce", torch.zeros(2, 4), {"positive_advantage_weight": "0.1"}, "got '0.1'"),
        ("w_reinforce", torch.zeros(2, 4), {"lambda": 0.1}, "unknown parameter.*positive_advantage_weight"),
        ("grpo_passk", torch.zeros(2, 1), {}, "at least 2 samples"),
        ("grpo_passk", torch.zeros(2, 4), {"scale": "mad"}, "grpo_passk: scale must be one of \\['std', 'none'\\]"),
        ("grpo_passk", torch.zeros(2, 4), {"eps": float("nan")}, "grpo_passk: eps must be a finite number >= 0"),
        ("grpo_passk", torch.zeros(2, 4), {"k": 2}, "unknown parameter\\(s\\) \\['k'\\]"),
    ],
)
def test_bad_input_raises_clear_value_error(name, rewards, params, message):
    with pytest.raises(ValueError, match=message):
        compute(name, rewards, **params)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_output_keeps_shape_and_dtype(name):
    params = EXAMPLE_PARAMS[name]
    r = (torch.rand(3, 6) < 0.5).to(torch.float32)
    out = compute(name, r, **params)
    assert out.shape == r.shape and out.dtype == torch.float32, name
    assert compute(name, r.to(torch.int64), **params).dtype == torch.float32


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_groups_of_equal_rewards_carry_no_signal_unless_registered_so(name):
    # what makes dynamic sampling (dropping such groups) lossless; an estimator without a group baseline
    # (W-REINFORCE) says so at registration, and the trainer can ask equal_rewards_carry_signal
    r = torch.tensor([[0.0] * 6, [1.0] * 6])
    largest = compute(name, r, **EXAMPLE_PARAMS[name]).abs().max().item()
    assert (largest > 0) == equal_rewards_carry_signal(name), name
