"""The bandit reproduces the paper's Fig. 3 outcome and equals the one-update-at-a-time reference."""

import numpy as np
import pytest
import torch

from rsgrpo.bandit.simulation import BanditSpec, arm_rewards, initial_logits, sample_arms, simulate, simulate_reference


def test_reward_landscape_and_initial_policy():
    r = arm_rewards()
    assert int(r.argmax()) == 40 and r[40].item() == pytest.approx(1.0, abs=1e-10)  # + 0.5 e^-24.5 from the other bump
    assert r[75].item() == pytest.approx(0.6, abs=1e-9)
    # arm 75 is a local optimum: its neighbours are worse
    assert r[74] < r[75] > r[76]
    pi = torch.softmax(initial_logits(), 0)
    assert (pi @ r).item() == pytest.approx(0.3745, abs=5e-4)
    assert initial_logits().mean().abs().item() < 1e-12


def test_inverse_cdf_sampling_matches_probabilities():
    probs = torch.tensor([[0.1, 0.6, 0.3]], dtype=torch.float64)
    u = torch.rand(1, 200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    counts = torch.bincount(sample_arms(probs, u)[0], minlength=3).double() / 200_000
    assert torch.allclose(counts, probs[0], atol=5e-3)
    edge = sample_arms(probs, torch.tensor([[0.0, 0.1, 0.7, 0.9999999999]], dtype=torch.float64))
    assert edge.tolist() == [[0, 1, 2, 2]]


def test_vectorised_equals_reference_loop():
    spec = BanditSpec(updates=400, record_every=100)
    res = simulate([0.0, 2.0, 8.0], [3, 11], spec)
    for b, beta in enumerate([0.0, 2.0, 8.0]):
        for s, seed in enumerate([3, 11]):
            theta = torch.tensor(simulate_reference(beta, seed, spec))
            expected = (torch.softmax(theta, 0) @ arm_rewards()).item()
            assert res.final_expected_reward[b, s] == pytest.approx(expected, abs=1e-10)


def test_run_does_not_depend_on_other_betas_in_batch():
    spec = BanditSpec(updates=300, record_every=100)
    alone = simulate([4.0], [5], spec)
    together = simulate([0.0, 4.0, 64.0], [5], spec)
    assert np.array_equal(alone.reward_ma[0], together.reward_ma[1])


def test_deterministic_for_fixed_seed():
    spec = BanditSpec(updates=500, record_every=50)
    a = simulate([2.0, 8.0], 2, spec)
    b = simulate([2.0, 8.0], 2, spec)
    assert np.array_equal(a.reward_ma, b.reward_ma) and np.array_equal(a.entropy, b.entropy)
    c = simulate([2.0, 8.0], [7, 8], spec)
    assert not np.array_equal(a.reward_ma, c.reward_ma)


def test_published_outcome():
    """Paper Fig. 3: beta 0 and 2 end near 0.6, beta >= 4 end >= 0.95, beta 8 crosses 0.9 first."""
    betas = [0, 2, 4, 8, 16, 32, 64]
    res = simulate(betas, 3)
    final = res.reward_ma[:, :, -1]
    assert np.all(np.abs(final[:2] - 0.6) < 0.03), final[:2]
    assert np.all(final[2:] >= 0.95), final[2:]
    crossing = res.crossing_samples(0.9)
    assert np.isnan(crossing[0]) and np.isnan(crossing[1])
    assert np.nanargmin(crossing) == betas.index(8), dict(zip(betas, crossing))
    assert crossing[-1] > 150_000  # very large beta is slower again (paper: ~264k)
    assert res.samples[-1] == 400_000 and res.reward_ma.shape == (7, 3, 500)


def test_entropy_starts_high_and_collapses():
    res = simulate([0.0, 8.0], 1, BanditSpec(updates=5000, record_every=100))
    assert res.entropy[:, 0, 0].min() > 3.5
    assert res.entropy[:, 0, -1].max() < 1.5


@pytest.mark.parametrize("kwargs, message", [({"updates": 0}, "updates"), ({"lr": 0.0}, "lr")])
def test_bad_spec(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BanditSpec(**kwargs)


def test_bad_betas():
    with pytest.raises(ValueError, match=">= 0"):
        simulate([-1.0], 1, BanditSpec(updates=10))


def test_numpy_rs_grpo_twin_equals_the_estimator():
    from rsgrpo.bandit.simulation import _rs_grpo_np
    from rsgrpo.estimators import compute

    rng = np.random.default_rng(0)
    r = rng.random((40, 16))
    r[:5] = (r[:5] < 0.3).astype(float)
    betas = rng.choice([0.0, 0.5, 2.0, 8.0, 64.0], size=40)
    expected = compute("rs_grpo", torch.from_numpy(r), beta=torch.from_numpy(betas)).numpy()
    np.testing.assert_allclose(_rs_grpo_np(r, betas[:, None]), expected, rtol=1e-12, atol=1e-14)
