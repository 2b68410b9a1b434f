"""Estimators that follow published code, against independent re-implementations of that code.

Each reference below is a loop over groups written from reading the named function at the named commit
(float64 here, whatever precision the original uses; torch's mean and std where the original calls them,
so that a group of equal rewards rounds alike); the estimator must equal it to float64 round-off
on random groups and on the edge cases, for group sizes 2 to 64. The last tests pin the two limits of
RS-GRPO: ``beta * A_rs_grpo -> A_max_rl`` (binary rewards, error O(e^-beta)) and ``A -> r - mean`` at beta 0.
"""

import math

import pytest
import torch

from rsgrpo.estimators import EPS, SOURCES, compute, equal_rewards_carry_signal

PRIME_RL_COMMIT = "559b44772e471d1538537b8805cc77f3824a5e64"
RLVR_DECOMPOSED_COMMIT = "a5d4e7c1df6016ebd7396bd6db83d885120adb6d"
VERL_COMMIT = "b178a3cd56f58b2d502255daba591e92833930a7"
UNDERSTAND_R1_ZERO_COMMIT = "dfca49dd460ee7cc8e4a5a162c876a7fd6993b87"

SIZES = [2, 3, 4, 5, 8, 16, 33, 64]


# ------------------------------------------------------------------------------- references


def max_rl_reference(group: list[float]) -> list[float]:
    """PrimeIntellect-ai/prime-rl, src/prime_rl/orchestrator/algo/max_rl.py, MaxRLAlgorithm.score_group,
    commit 559b44772e471d1538537b8805cc77f3824a5e64: per group, zeros if the mean reward is <= 0, else
    (reward - mean) / mean; no eps."""
    mean = _mean(group)
    if mean <= 0:
        return [0.0] * len(group)
    return [(x - mean) / mean for x in group]


def w_reinforce_reference(scores: list[float], lengths: list[int], positive_advantage_weight: float,
                          width: int = 6) -> list[list[float]]:
    """TianHongZXY/RLVR-Decomposed, verl/trainer/ppo/core_algos.py, compute_psr_nsr_outcome_advantage with
    advantage='weighted', commit a5d4e7c1df6016ebd7396bd6db83d885120adb6d, on token level as it runs: the
    reward manager puts the score on the last response token (kl_coef 0: rewards = scores), returns are
    the reversed discounted sums (gamma 1) reset by the response mask; a response whose score sums to 1
    has its returns multiplied by positive_advantage_weight, one whose score sums to 0 gets 1 subtracted;
    then everything is multiplied by the mask. Returns the per-token advantages, one row per response."""
    rows = []
    for score, length in zip(scores, lengths):
        mask = [1.0 if t < length else 0.0 for t in range(width)]
        rewards = [score if t == length - 1 else 0.0 for t in range(width)]
        returns, running = [0.0] * width, 0.0
        for t in reversed(range(width)):
            running = rewards[t] + 1.0 * running
            returns[t] = running
            running = running * mask[t]
        if sum(rewards) == 1:
            adv = [x * positive_advantage_weight for x in returns]
        elif sum(rewards) == 0:
            adv = [x - 1 for x in returns]
        else:
            adv = list(returns)
        rows.append([a * m for a, m in zip(adv, mask)])
    return rows


def _mean(group: list[float]) -> float:
    return torch.tensor(group, dtype=torch.float64).mean().item()


def _std(group: list[float]) -> float:
    """torch.std's default: the unbiased (n - 1) standard deviation."""
    return torch.tensor(group, dtype=torch.float64).std().item()


def grpo_passk_reference(group: list[float], norm_adv_by_std_in_grpo: bool, epsilon: float = 1e-6) -> list[float]:
    """volcengine/verl, verl/trainer/ppo/core_algos.py, compute_grpo_passk_outcome_advantage, commit
    b178a3cd56f58b2d502255daba591e92833930a7: per group (>= 2 samples), the best sample (torch.topk's
    first index) gets r_max - r_second_max, divided by (std + epsilon) when norm_adv_by_std_in_grpo;
    every other sample 0. Which of tied best samples topk returns does not matter: their gap is 0."""
    if len(group) < 2:
        raise ValueError("Pass@k requires at least 2 samples per group")
    i_max = max(range(len(group)), key=lambda i: group[i])
    second = max(group[j] for j in range(len(group)) if j != i_max)
    advantage = group[i_max] - second
    if norm_adv_by_std_in_grpo:
        advantage = advantage / (_std(group) + epsilon)
    out = [0.0] * len(group)
    out[i_max] = advantage
    return out


def verl_grpo_reference(group: list[float], norm_adv_by_std_in_grpo: bool, epsilon: float = 1e-6) -> list[float]:
    """volcengine/verl, verl/trainer/ppo/core_algos.py, compute_grpo_outcome_advantage, commit
    b178a3cd56f58b2d502255daba591e92833930a7: a group of one has mean 0 and std 1; otherwise the mean and
    the unbiased std; (score - mean) / (std + epsilon), or score - mean when not norm_adv_by_std_in_grpo."""
    if len(group) == 1:
        mean, std = 0.0, 1.0
    else:
        mean, std = _mean(group), _std(group)
    if norm_adv_by_std_in_grpo:
        return [(x - mean) / (std + epsilon) for x in group]
    return [x - mean for x in group]


def dr_grpo_reference(group: list[float]) -> list[float]:
    """sail-sg/understand-r1-zero, train_zero_math.py, ZeroMathLearner.compute_monte_carlo_advantages with
    critic_type='drgrpo', commit dfca49dd460ee7cc8e4a5a162c876a7fd6993b87: reward minus the group mean."""
    mean = _mean(group)
    return [x - mean for x in group]


# ------------------------------------------------------------------------------- cases


def binary_groups(n: int, seed: int) -> torch.Tensor:
    """Random binary groups plus the edge cases: all zero, all one, exactly one correct (first, last,
    random position), exactly one wrong."""
    gen = torch.Generator().manual_seed(seed)
    rows = [(torch.rand(6, n, generator=gen, dtype=torch.float64) < p).double() for p in (0.1, 0.5, 0.9)]
    edge = torch.zeros(6, n, dtype=torch.float64)
    edge[1] = 1.0
    edge[2, 0] = edge[3, n - 1] = 1.0
    edge[4, int(torch.randint(n, (1,), generator=gen))] = 1.0
    edge[5] = 1.0
    edge[5, int(torch.randint(n, (1,), generator=gen))] = 0.0
    return torch.cat([*rows, edge])


def continuous_groups(n: int, seed: int) -> torch.Tensor:
    """Random rewards in [0, 1], ties (values from a small set), a tied best, all equal, one tiny reward."""
    gen = torch.Generator().manual_seed(seed)
    uniform = torch.rand(8, n, generator=gen, dtype=torch.float64)
    levels = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    ties = levels[torch.randint(4, (8, n), generator=gen)]
    tied_best = torch.rand(2, n, generator=gen, dtype=torch.float64) * 0.5
    tied_best[:, 0] = tied_best[:, -1] = 0.9
    equal = torch.full((2, n), 0.7, dtype=torch.float64)
    tiny = torch.zeros(1, n, dtype=torch.float64)
    tiny[0, -1] = 1e-300  # the mean is tiny but > 0: the correct sample gets N - 1, the others -1
    return torch.cat([uniform, ties, tied_best, equal, tiny])


def apply(reference, groups: torch.Tensor, **kw) -> torch.Tensor:
    return torch.tensor([reference(row.tolist(), **kw) for row in groups], dtype=torch.float64)


def assert_roundoff_equal(got: torch.Tensor, expected: torch.Tensor):
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13 * scale)


# ------------------------------------------------------------------------------- MaxRL


@pytest.mark.parametrize("n", SIZES)
def test_max_rl_equals_prime_rl(n):
    for groups in (binary_groups(n, n), continuous_groups(n, 100 + n)):
        assert_roundoff_equal(compute("max_rl", groups), apply(max_rl_reference, groups))


@pytest.mark.parametrize("n", SIZES)
def test_max_rl_binary_closed_form(n):
    """Correct samples (1 - p)/p = (N - c)/c, wrong ones -1, every c; all-wrong groups 0."""
    for c in range(n + 1):
        r = torch.zeros(1, n, dtype=torch.float64)
        r[0, :c] = 1.0
        adv = compute("max_rl", r)[0]
        expected = [0.0] * n if c == 0 else [(n - c) / c] * c + [-1.0] * (n - c)
        assert adv.tolist() == pytest.approx(expected, rel=1e-14, abs=1e-14), c


def test_max_rl_is_per_group_and_takes_groups_of_one():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(compute("max_rl", r), torch.tensor([[3.0, -1.0, -1.0, -1.0],
                                                                   [0.0, 0.0, -1.0, 1.0], [0.0] * 4]))
    assert compute("max_rl", torch.tensor([[0.3], [0.0]])).tolist() == [[0.0], [0.0]]


# ------------------------------------------------------------------------------- W-REINFORCE


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("weight", [0.1, 0.0, 1.0, 0.37])
def test_w_reinforce_equals_rlvr_decomposed_on_every_token(n, weight):
    groups = binary_groups(n, 7 * n)
    adv = compute("w_reinforce", groups, positive_advantage_weight=weight)
    gen = torch.Generator().manual_seed(n)
    for g, row in enumerate(groups):
        lengths = torch.randint(1, 7, (n,), generator=gen).tolist()
        tokens = w_reinforce_reference(row.tolist(), lengths, weight)
        for i, length in enumerate(lengths):
            # every response token carries the sequence's advantage, padding none
            assert tokens[i] == [adv[g, i].item()] * length + [0.0] * (6 - length), (g, i)


def test_w_reinforce_default_is_the_authors_recommended_lambda_and_has_no_baseline():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0] * 4, [0.0] * 4])
    expected = torch.tensor([[0.1, -1.0, -1.0, -1.0], [0.1] * 4, [-1.0] * 4])
    torch.testing.assert_close(compute("w_reinforce", r), expected)
    # no group baseline: all-correct and all-wrong groups carry signal, so dropping them is not lossless
    assert equal_rewards_carry_signal("w_reinforce")
    assert not any(equal_rewards_carry_signal(n) for n in ("grpo", "max_rl", "grpo_passk", "rs_grpo"))


# ------------------------------------------------------------------------------- GRPO pass@k


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("scale, norm", [("std", True), ("none", False)])
def test_grpo_passk_equals_verl(n, scale, norm):
    for groups in (binary_groups(n, 3 * n), continuous_groups(n, 300 + n)):
        expected = apply(grpo_passk_reference, groups, norm_adv_by_std_in_grpo=norm)
        assert_roundoff_equal(compute("grpo_passk", groups, scale=scale), expected)


def test_grpo_passk_worked_values():
    r = torch.tensor([[0.2, 0.9, 0.5, 0.9], [0.2, 0.9, 0.5, 0.4], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]],
                     dtype=torch.float64)
    got = compute("grpo_passk", r, scale="none")
    torch.testing.assert_close(got, torch.tensor([[0.0] * 4, [0.0, 0.4, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0] * 4],
                                                 dtype=torch.float64))
    # binary, one correct of N: 1 / (std + eps) with std = sqrt(1/N)
    assert compute("grpo_passk", r[2:3])[0, 0].item() == pytest.approx(1 / (0.5 + EPS), rel=1e-14)


# ------------------------------------------------------------------------------- Dr. GRPO


@pytest.mark.parametrize("n", SIZES)
def test_grpo_equals_verl_grpo_and_scale_none_is_dr_grpo(n):
    for groups in (binary_groups(n, 5 * n), continuous_groups(n, 500 + n)):
        none = compute("grpo", groups, scale="none")
        assert_roundoff_equal(none, apply(verl_grpo_reference, groups, norm_adv_by_std_in_grpo=False))
        assert_roundoff_equal(none, apply(dr_grpo_reference, groups))
        assert_roundoff_equal(compute("grpo", groups), apply(verl_grpo_reference, groups, norm_adv_by_std_in_grpo=True))


def test_grpo_scale_none_on_a_group_of_one_is_dr_grpo_not_verl():
    # verl special-cases a group of one (mean 0: the advantage is the reward); Dr. GRPO's code and grpo give 0
    r = torch.tensor([[0.8]], dtype=torch.float64)
    assert compute("grpo", r, scale="none").item() == 0.0 == dr_grpo_reference([0.8])[0]
    assert verl_grpo_reference([0.8], norm_adv_by_std_in_grpo=False) == [0.8]


def test_sources_name_the_commits_the_references_were_read_at():
    assert f"PrimeIntellect-ai/prime-rl@{PRIME_RL_COMMIT[:7]}" in SOURCES["max_rl"]
    assert f"TianHongZXY/RLVR-Decomposed@{RLVR_DECOMPOSED_COMMIT[:7]}" in SOURCES["w_reinforce"]
    assert f"volcengine/verl@{VERL_COMMIT[:7]}" in SOURCES["grpo_passk"]
    assert f"volcengine/verl@{VERL_COMMIT[:7]}" in SOURCES["grpo"]
    assert f"sail-sg/understand-r1-zero@{UNDERSTAND_R1_ZERO_COMMIT[:7]}" in SOURCES["grpo"]


# ------------------------------------------------------------------------------- limits of RS-GRPO

LIMIT_BETAS = [8.0, 32.0, 128.0, 512.0]
LIMIT_SIZES = [2, 4, 8, 16, 64]


def rs_minus_max_rl(beta: float, n: int, c: int) -> tuple[float, float]:
    """Exact ``beta * A_rs - A_max_rl`` for a binary group with c of n correct: with
    ``beta * A+ = n e^beta / (c e^beta + n - c) - 1`` and ``beta * A- = n / (c e^beta + n - c) - 1``,
    correct ``-n (n - c) e^-beta / (c (c + (n - c) e^-beta))``, wrong ``n e^-beta / (c + (n - c) e^-beta)``
    (written with e^-beta: no overflow at beta 512)."""
    d = c + (n - c) * math.exp(-beta)
    return -n * (n - c) * math.exp(-beta) / (c * d), n * math.exp(-beta) / d


def limit_errors() -> dict[float, tuple[float, float]]:
    """beta -> (max over N, c of the measured |beta A_rs - A_max_rl|, max of the exact one)."""
    out = {}
    for beta in LIMIT_BETAS:
        measured = exact = 0.0
        for n in LIMIT_SIZES:
            groups = torch.tensor([[1.0] * c + [0.0] * (n - c) for c in range(1, n)], dtype=torch.float64)
            err = (beta * compute("rs_grpo", groups, beta=beta) - compute("max_rl", groups)).abs()
            measured = max(measured, err.max().item())
            exact = max(exact, *(abs(e) for c in range(1, n) for e in rs_minus_max_rl(beta, n, c)))
        out[beta] = (measured, exact)
    return out


def test_beta_times_rs_grpo_tends_to_max_rl_at_rate_e_minus_beta():
    """``|beta A_rs - A_max_rl| = e^-beta n (n-c) / (c (c + (n-c) e^-beta))`` (correct) and
    ``e^-beta n / (c + (n-c) e^-beta)`` (wrong): so ``e^beta |error|`` is bounded by n (n-c) / c^2 and n / c,
    its limits. The estimator must follow this to round-off; below round-off (beta >= 128) it is exact."""
    for beta in LIMIT_BETAS:
        for n in LIMIT_SIZES:
            groups = torch.tensor([[1.0] * c + [0.0] * (n - c) for c in range(1, n)], dtype=torch.float64)
            diff = beta * compute("rs_grpo", groups, beta=beta) - compute("max_rl", groups)
            for c in range(1, n):
                pos, neg = rs_minus_max_rl(beta, n, c)
                roundoff = 1e-14 * n  # A_max_rl is at most n - 1
                assert abs(diff[c - 1, 0].item() - pos) <= roundoff, (beta, n, c)
                assert abs(diff[c - 1, -1].item() - neg) <= roundoff, (beta, n, c)
                # the rate: e^beta |error| is bounded by its beta -> infinity limit, and near it
                lim_pos, lim_neg = n * (n - c) / c**2, n / c
                assert abs(pos) * math.exp(beta) <= lim_pos * (1 + 1e-15)
                assert abs(neg) * math.exp(beta) <= lim_neg * (1 + 1e-15)
                assert abs(pos) * math.exp(beta) >= lim_pos / (1 + (n - c) / c * math.exp(-beta)) * (1 - 1e-15)
                if abs(pos) > 1e6 * roundoff:  # the measured error itself shows the rate (beta 8)
                    assert abs(diff[c - 1, 0].item()) * math.exp(beta) == pytest.approx(
                        lim_pos / (1 + (n - c) / c * math.exp(-beta)), rel=1e-6)
    errors = limit_errors()
    print("max |beta A_rs - A_max_rl| over N in", LIMIT_SIZES, "(measured, exact):",
          {b: (f"{m:.3e}", f"{e:.3e}") for b, (m, e) in errors.items()})
    # beta 8: n = 64, c = 1, correct sample: 64 * 63 / (e^8 + 63)
    assert errors[8.0][0] == pytest.approx(64 * 63 / (math.exp(8) + 63), rel=1e-12)
    assert errors[32.0][0] == pytest.approx(64 * 63 / (math.exp(32) + 63), rel=1e-2)
    assert errors[128.0][0] < 1e-12 and errors[512.0][0] < 1e-12  # the exact error is 1e-52, 2e-219


@pytest.mark.parametrize("n", SIZES)
def test_rs_grpo_small_beta_is_mean_centring_plus_the_first_order_term(n):
    """``A = (r - mean) + (beta/2) ((r - mean)^2 - var) + O(beta^2)`` (var: population): at beta 1e-8 and
    1e-12 the estimator equals its beta = 0 branch plus that term to round-off, so it tends to r - mean."""
    for groups in (binary_groups(n, 11 * n), continuous_groups(n, 1100 + n)[:-1] * 4.0):
        zero = compute("rs_grpo", groups, beta=0.0)
        torch.testing.assert_close(zero, groups - groups.mean(dim=1, keepdim=True), rtol=0, atol=0)
        first = ((zero**2) - (zero**2).mean(dim=1, keepdim=True)) / 2
        for beta in (1e-8, 1e-12):
            got = compute("rs_grpo", groups, beta=beta)
            torch.testing.assert_close(got, zero + beta * first, rtol=0, atol=1e-14)
            assert (got - zero).abs().max().item() <= beta * first.abs().max().item() + 1e-14
