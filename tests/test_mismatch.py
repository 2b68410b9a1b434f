"""Rollout log-probs against the trainer's: the mismatch metrics, the corrections (tis, mis) against the
formulas of verl's rollout correction and TRL's vLLM importance sampling, the fail-fast bound, and the
whole loop: the transformers engine in fp32 measures ~0, an engine that never receives the new
weights stops the run within one step."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from rsgrpo.train import mismatch  # noqa: E402
from rsgrpo.train.config import from_dict  # noqa: E402
from rsgrpo.train.engines.hf import HFEngine  # noqa: E402
from rsgrpo.train.loss import policy_loss  # noqa: E402
from rsgrpo.train.metrics import METRIC_COLUMNS  # noqa: E402
from rsgrpo.train.rewards import register  # noqa: E402
from rsgrpo.train.trainer import Trainer  # noqa: E402

TRAIN = torch.tensor([[-1.0, -0.2, -3.0, 0.0], [-0.5, -2.5, -0.1, -0.7]])
ROLLOUT = torch.tensor([[-1.1, -0.2, -1.0, -9.0], [-0.4, -2.0, -0.1, -5.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


def test_token_sums_equal_a_loop_over_the_tokens():
    k3 = absolute = largest = tokens = 0.0
    for i in range(2):
        for t in range(4):
            if MASK[i, t]:
                d = float(TRAIN[i, t]) - float(ROLLOUT[i, t])
                k3 += math.exp(d) - 1 - d
                absolute += abs(d)
                largest = max(largest, abs(d))
                tokens += 1
    sums = mismatch.token_sums(TRAIN, ROLLOUT, MASK).tolist()
    assert sums == pytest.approx([k3, absolute, largest, tokens], rel=1e-12)
    assert largest == pytest.approx(4.3)  # the masked position (d = 9) is not counted
    per_pair = [TRAIN[0, :3], TRAIN[1]], [ROLLOUT[0, :3], ROLLOUT[1]]
    assert mismatch.pair_sums(*per_pair).tolist() == pytest.approx(sums, rel=1e-12)
    halves = [mismatch.token_sums(TRAIN[i:i + 1], ROLLOUT[i:i + 1], MASK[i:i + 1]) for i in range(2)]
    assert mismatch.combine(*halves).tolist() == pytest.approx(sums, rel=1e-12)  # micro-batches add up
    out = mismatch.summary(sums)
    assert out == pytest.approx({"mismatch_k3": k3 / 7, "mismatch_abs_mean": absolute / 7, "mismatch_abs_max": 4.3})
    assert all(math.isnan(v) for v in mismatch.summary([0, 0, 0, 0]).values())


def test_tis_weights_are_truncated_token_ratios():
    """verl (token IS): w_t = min(pi_old / pi_rollout, C); TRL: clamp(exp(old - sampling), max=cap)."""
    weights = mismatch.tis_weights(TRAIN, ROLLOUT, 2.0)
    for i in range(2):
        for t in range(4):
            assert float(weights[i, t]) == pytest.approx(min(math.exp(float(TRAIN[i, t]) - float(ROLLOUT[i, t])), 2.0))
    assert not weights.requires_grad


def test_tis_weights_multiply_each_tokens_ppo_term_and_not_the_kl():
    logp = TRAIN.clone().requires_grad_(True)
    old = TRAIN - 0.1
    ref = TRAIN + 0.3
    adv = torch.tensor([1.0, -2.0])
    weights = mismatch.tis_weights(old, ROLLOUT, 2.0)
    loss, _ = policy_loss(logp, old, adv, MASK, clip_low=0.2, clip_high=0.28, n_tokens=7, ref_logp=ref,
                          kl_coef=0.5, token_weights=weights)
    total = 0.0
    for i in range(2):
        for t in range(4):
            if not MASK[i, t]:
                continue
            r = math.exp(float(logp[i, t].detach() - old[i, t]))
            a = float(adv[i])
            ppo = max(-a * r, -a * min(max(r, 0.8), 1.28))
            k = float(ref[i, t] - logp[i, t].detach())
            total += float(weights[i, t]) * ppo + 0.5 * (math.exp(k) - k - 1)
    assert loss.item() == pytest.approx(total / 7, rel=1e-6)


def test_mis_keeps_a_sequence_whose_ratio_lies_within_the_cap():
    """verl's sequence rejection: accept iff 1/C <= prod_t pi_old / pi_rollout <= C."""
    train = [torch.tensor([-1.0, -1.0]), torch.tensor([-1.0, -1.0]), torch.tensor([-1.0] * 2000),
             torch.tensor([-1.0])]
    # log ratios: ln 2 - 1e-6 (in), ln 2 + 1e-3 (out), -2000 * 1e-3 = -2 < -ln 2 (out), 0 (in)
    rollout = [torch.tensor([-1.0, -1.0 - math.log(2.0) + 1e-6]), torch.tensor([-1.0, -1.0 - math.log(2.0) - 1e-3]),
               torch.tensor([-0.999] * 2000), torch.tensor([-1.0])]
    assert mismatch.mis_accepted(train, rollout, 2.0) == [True, False, False, True]


def test_the_bound_names_the_likely_causes_and_lets_nan_and_zero_pass():
    mismatch.check_bound(float("nan"), 0.05, step=3, abs_mean=0.0, abs_max=0.0)
    mismatch.check_bound(5.0, 0.0, step=3, abs_mean=1.0, abs_max=2.0)  # 0 = log only
    mismatch.check_bound(0.05, 0.05, step=3, abs_mean=1.0, abs_max=2.0)  # at the bound: fine
    with pytest.raises(mismatch.RolloutMismatchError) as err:
        mismatch.check_bound(0.2, 0.05, step=3, abs_mean=0.4, abs_max=2.0)
    message = str(err.value)
    for fragment in ("step 3", "0.2", "mismatch_max_k3 = 0.05", "stale weights", "dtype", "top_p",
                     "rollout_correction"):
        assert fragment in message


# ------------------------------------------------------------------------------------------------
# the whole loop on the tiny model with the real transformers engine
# ------------------------------------------------------------------------------------------------
RECORDS = [{"id": str(i), "problem": f"{i}+{i}", "answer": str(2 * i)} for i in range(4)]


@register("test_mismatch_even_length")
def even_length(*, completions, answers, problems, records):
    """Varies on a random model (so groups carry a signal and the update moves the weights)."""
    return [float(len(c) % 2 == 0) for c in completions]


def _trainer(model_dir, run_dir, *, engine_factory=None, **overrides):
    cfg = dict(model_dir=str(model_dir), steps=3, prompts_per_step=4, samples_per_prompt=4, max_new_tokens=6,
               lr=1e-4, micro_batch_size=8, engine="hf", progress=False, seed=0, estimator="grpo",
               estimator_params={}, reward_kind="test_mismatch_even_length", max_gen_rounds=1, logging=[],
               rollout_log_every=0, grading_workers=0)
    cfg.update(overrides)
    return Trainer(from_dict(cfg), run_dir, records=RECORDS, prompt_fn=lambda p: f"Q: {p}\nA:",
                   engine_factory=engine_factory)


def _stale_engine(model, tokenizer, source):
    """A transformers engine with its own copy of the weights that never receives the new ones:
    what a missed push after sleep looks like."""
    engine = HFEngine(source, tokenizer=tokenizer)
    engine.load_weights = lambda _model: None
    engine.load_named_weights = lambda _weights: None
    return engine


def test_a_shared_fp32_engine_measures_no_mismatch(tiny_model_dir, tmp_path):
    assert {"mismatch_k3", "mismatch_abs_mean", "mismatch_abs_max", "correction_frac"} <= set(METRIC_COLUMNS)
    trainer = _trainer(tiny_model_dir, tmp_path / "run", steps=2)
    trainer.run()
    rows = trainer.metrics
    assert len(rows) == 2 and all(row["grad_norm"] > 0 for row in rows)
    for row in rows:  # the engine's decode (KV cache, left padding) and the trainer's forward agree
        assert 0 <= row["mismatch_k3"] < 1e-9 and row["mismatch_abs_max"] < 1e-4
        assert row["correction_frac"] == 0.0


def test_an_engine_with_stale_weights_stops_the_run_within_one_step(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path / "run", lr=3e-2, engine_factory=_stale_engine,
                       mismatch_max_k3=0.01)
    with pytest.raises(mismatch.RolloutMismatchError, match="step 1: .*stale weights"):
        trainer.run()
    # step 0 (before any push) matched and trained; step 1 stopped before its optimizer step
    assert [row["step"] for row in trainer.metrics] == [1]
    assert trainer.metrics[0]["mismatch_k3"] < 1e-9


@pytest.mark.parametrize("correction", ["tis", "mis"])
def test_the_corrections_act_on_a_mismatched_engine(tiny_model_dir, tmp_path, correction):
    """With the bound off, the stale engine's gap shows in the metrics and the correction acts on it:
    tis caps token weights, mis masks whole completions."""
    trainer = _trainer(tiny_model_dir, tmp_path / "run", lr=3e-2, engine_factory=_stale_engine, mismatch_max_k3=0,
                       rollout_correction=correction, rollout_correction_cap=1.05)
    trainer.run()
    first, *later = trainer.metrics
    assert first["correction_frac"] == 0.0  # step 0: same weights on both sides
    assert max(row["mismatch_k3"] for row in later) > 0.01
    assert max(row["correction_frac"] for row in later) > 0
