"""Tests of the RL loop: loss math, gradient direction for every estimator, config validation,
beta schedules, the stages of a step, and the real ``python -m rsgrpo train`` command."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from train_helpers import FixedEngine  # noqa: E402

from rsgrpo import estimators  # noqa: E402
from rsgrpo.train.config import TrainConfig, from_dict, load_config  # noqa: E402
from rsgrpo.train.loss import build_batch, policy_loss, token_logprobs  # noqa: E402
from rsgrpo.train.metrics import METRIC_COLUMNS  # noqa: E402
from rsgrpo.train.rewards import RewardOutput, register  # noqa: E402
from rsgrpo.train.schedules import beta_at, lr_at  # noqa: E402
from rsgrpo.train.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


# ------------------------------------------------------------------------------------------------
# loss math on hand-made tensors
# ------------------------------------------------------------------------------------------------
def _direct_loss(logp, old, adv, mask, lo, hi, n_tokens):
    """Reference: an explicit per-token loop of the clipped objective."""
    total, clipped = 0.0, 0
    for i in range(len(logp)):
        for t in range(len(logp[0])):
            if mask[i][t] == 0:
                continue
            r = math.exp(logp[i][t] - old[i][t])
            a = adv[i]
            r_clip = min(max(r, 1 - lo), 1 + hi)
            unclipped, clip_term = -a * r, -a * r_clip
            total += max(unclipped, clip_term)
            clipped += clip_term > unclipped
    return total / n_tokens, clipped


def test_policy_loss_matches_direct_computation_with_asymmetric_clip():
    # ratios chosen on both sides of both (asymmetric) bounds: 0.7 < 0.8, 0.85, 1.25 < 1.28, 1.3 > 1.28
    ratios = torch.tensor([[0.7, 0.85, 1.25, 1.3], [0.7, 0.85, 1.25, 1.3], [1.0, 1.3, 0.7, 0.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.5, -0.1, -2.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
    logp = old + torch.log(ratios.clamp(min=1e-12))
    adv = torch.tensor([1.5, -0.7, 0.4])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.float32)
    n_tokens = int(mask.sum())
    logp.requires_grad_(True)
    loss, st = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, n_tokens=n_tokens)
    ref, n_clipped = _direct_loss(logp.detach().tolist(), old.tolist(), adv.tolist(), mask.tolist(),
                                  0.2, 0.28, n_tokens)
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    assert float(st["clipped"]) == n_clipped
    # A > 0: clipped above 1.28 only (1.3); A < 0: clipped below 0.8 only (0.7); row 3: 1.3 -> clipped
    assert n_clipped == 3
    assert float(st["tokens"]) == n_tokens
    loss.backward()
    g = logp.grad
    # gradient is -A * r / n_tokens on unclipped tokens, 0 on clipped and masked ones
    expected = torch.zeros_like(g)
    for i in range(3):
        for t in range(4):
            r = ratios[i, t].item()
            a = adv[i].item()
            active = mask[i, t] and not ((a > 0 and r > 1.28) or (a < 0 and r < 0.8))
            expected[i, t] = -a * r / n_tokens if active else 0.0
    torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-7)


def test_token_mean_is_over_the_whole_batch_and_additive_over_micro_batches():
    torch.manual_seed(0)
    logp = -torch.rand(4, 6)
    old = logp.clone()
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0])
    mask = torch.zeros(4, 6)
    for i, n in enumerate([6, 1, 3, 2]):  # different lengths: token-mean != sequence-mean
        mask[i, :n] = 1
    n_tokens = int(mask.sum())
    full, _ = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, n_tokens=n_tokens)
    # ratio = 1 everywhere: loss = -sum_i A_i len_i / total tokens
    assert full.item() == pytest.approx(-(1.0 * 6 - 1.0 * 1 + 0.5 * 3 + 2.0 * 2) / 12)
    seq_mean = -(1.0 - 1.0 + 0.5 + 2.0) / 4
    assert full.item() != pytest.approx(seq_mean)
    a, _ = policy_loss(logp[:2], old[:2], adv[:2], mask[:2], clip_low=0.2, clip_high=0.28, n_tokens=n_tokens)
    b, _ = policy_loss(logp[2:], old[2:], adv[2:], mask[2:], clip_low=0.2, clip_high=0.28, n_tokens=n_tokens)
    assert (a + b).item() == pytest.approx(full.item(), rel=1e-6)


def test_k3_kl_term():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -2.0]])
    mask = torch.ones(1, 2)
    loss, st = policy_loss(logp, logp.clone(), torch.tensor([0.0]), mask, clip_low=0.2, clip_high=0.28,
                           n_tokens=2, ref_logp=ref, kl_coef=0.5)
    d = -0.5
    k3 = math.exp(d) - d - 1
    assert float(st["kl"]) == pytest.approx(k3)
    assert loss.item() == pytest.approx(0.5 * k3 / 2)


# ------------------------------------------------------------------------------------------------
# beta schedules, lr, config validation
# ------------------------------------------------------------------------------------------------
def test_beta_schedules():
    const = from_dict({"steps": 5})
    assert [beta_at(const, s) for s in range(5)] == [2.0] * 5
    lin = from_dict({"steps": 5, "beta_schedule": "linear", "beta_start": 0, "beta_end": 8})
    assert [beta_at(lin, s) for s in range(6)] == [0.0, 2.0, 4.0, 6.0, 8.0, 8.0]
    cos = from_dict({"steps": 5, "beta_schedule": "cosine", "beta_start": 8, "beta_end": 0,
                     "beta_ramp_steps": 3})
    assert [beta_at(cos, s) for s in range(5)] == pytest.approx([8.0, 4.0, 0.0, 0.0, 0.0])
    cos5 = from_dict({"steps": 5, "beta_schedule": "cosine", "beta_start": 0, "beta_end": 4})
    assert beta_at(cos5, 1) == pytest.approx(2 * (1 - math.cos(math.pi / 4)))
    assert beta_at(from_dict({"estimator": "grpo"}), 0) is None
    warm = from_dict({"lr": 1e-3, "warmup_steps": 4})
    assert [lr_at(warm, s) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_defaults_follow_the_paper_and_yaml_file_lists_every_key():
    import dataclasses

    import yaml

    c = from_dict({})
    assert (c.lr, c.weight_decay, c.grad_clip, c.samples_per_prompt, c.temperature) == (1e-6, 0.1, 1.0, 16, 1.0)
    assert (c.clip_low, c.clip_high, c.kl_coef, c.dynamic_sampling) == (0.2, 0.28, 0.0, True)
    assert c.estimator == "rs_grpo" and c.estimator_params == {"beta": 2.0}
    from rsgrpo.train.config import defaults_yaml

    text = (ROOT / "config" / "train_defaults.yaml").read_text()
    assert text == defaults_yaml(), "stale: python -m rsgrpo.train.config > config/train_defaults.yaml"
    data = yaml.safe_load(text)
    assert list(data) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert from_dict(data).__dict__ == c.__dict__


BAD_CONFIGS = [
    ({"estimator": "w_reinforce"}, "'dynamic_sampling'", "has no group baseline"),
    ({"learning_rate": 1e-6}, "learning_rate", "unknown key"),
    ({"lr": -1e-6}, "'lr'", "must be > 0"),
    ({"rollout_correction": "is"}, "'rollout_correction'", "must be one of ['none', 'tis', 'mis']"),
    ({"rollout_correction_cap": 1.0}, "'rollout_correction_cap'", "must be > 1"),
    ({"checkpoint_every_minutes": -5}, "'checkpoint_every_minutes'", "must be >= 0"),
    ({"collective_timeout_minutes": 0}, "'collective_timeout_minutes'", "must be > 0"),
    ({"mismatch_check_every": 0}, "'mismatch_check_every'", "must be >= 1"),
    ({"lr": "fast"}, "'lr'", "fast"),
    ({"steps": 2.5}, "'steps'", "2.5"),
    ({"dynamic_sampling": "yes"}, "'dynamic_sampling'", "yes"),
    ({"estimator": "ppo"}, "'estimator'", "ppo"),
    ({"method": "grpo"}, "'method'", "renamed 'estimator'"),
    ({"method_params": {"k": 4}}, "'method_params'", "renamed 'estimator_params'"),
    ({"estimator": "grpo", "estimator_params": {"beta": 2}}, "estimator_params.beta", "not a parameter"),
    ({"estimator": "passk_chen"}, "estimator_params", "missing required"),
    ({"estimator": "passk_chen", "estimator_params": {"k": 99}}, "estimator_params", "k=99"),
    ({"estimator_params": {"beta": -1.0}}, "estimator_params", "beta"),
    ({"beta_schedule": "linear", "beta_start": 0}, "'beta_end'", "None"),
    ({"estimator": "rloo", "beta_schedule": "cosine", "beta_start": 0, "beta_end": 4}, "'beta_schedule'", "cosine"),
    ({"beta_start": 1.0}, "'beta_start'", "1.0"),
    ({"clip_low": 1.5}, "'clip_low'", "1.5"),
    ({"clip_high": -0.1}, "'clip_high'", "must be >= 0"),
    ({"policy_loss": "ppo"}, "'policy_loss'", "must be one of ['ppo_clip', 'gspo', 'cispo']"),
    ({"loss_agg": "seq-mean"}, "'loss_agg'",
     "must be one of ['token-mean', 'seq-mean-token-mean', 'seq-mean-token-sum-norm']"),
    ({"policy_loss": "gspo"}, "'loss_agg'", "policy_loss gspo is defined with loss_agg seq-mean-token-mean"),
    ({"policy_loss": "gspo", "loss_agg": "seq-mean-token-sum-norm"}, "'loss_agg'", "weighs a completion by its length"),
    ({"policy_loss": "gspo", "loss_agg": "seq-mean-token-mean", "rollout_correction": "tis"}, "'rollout_correction'",
     "policy_loss gspo gives every token of a completion one sequence-level ratio"),
    ({"policy_loss": "gspo", "loss_agg": "seq-mean-token-mean", "clip_low": 1.0}, "'clip_low'", "must be in [0, 1)"),
    ({"policy_loss": "cispo", "clip_low": -0.5}, "'clip_low'", "must be >= 0 for policy_loss cispo"),
    ({"policy_loss": "cispo", "clip_ratio_c": 3.0}, "'clip_ratio_c'", "the dual clip is a ppo_clip setting"),
    ({"clip_ratio_c": 1.0}, "'clip_ratio_c'", "must be > 1 or null"),
    ({"zero_stage": 4}, "'zero_stage'", "4"),
    ({"offload_optimizer": True}, "'offload_optimizer'", "True"),
    ({"temperature": 0}, "'temperature'", "0"),
    ({"prompt_template": "fancy"}, "'prompt_template'", "fancy"),
    ({"reward_kind": "dense"}, "'reward_kind'", "registered: ['binary'"),
    ({"precision": "bf16"}, "'precision'", "pure bf16 training cannot learn"),
    ({"precision": "fp16"}, "'precision'", "must be one of ['fp32', 'bf16-mixed']"),
    ({"precision": "bf16-mixed"}, "'zero_stage'", "bf16-mixed needs zero_stage 1, 2 or 3"),
    ({"dtype": "bfloat16"}, "'dtype'", "replaced by 'precision'"),
    ({"engine_batch_size": 8}, "'engine_batch_size'", "replaced by 'hf_batch_size'"),
    ({"logprob_chunk_tokens": 0}, "'logprob_chunk_tokens'", "must be >= 1"),
    ({"micro_batch_tokens": 0}, "'micro_batch_tokens'", "must be >= 1 or null"),
    ({"micro_batch_tokens": 512.5}, "'micro_batch_tokens'", "must be of type int or null"),
    ({"keep_last": -1}, "'keep_last'", "-1"),
    ({"max_gen_rounds": 0}, "'max_gen_rounds'", "must be >= 1"),
    ({"overlong": "clip"}, "'overlong'", "must be one of ['none', 'mask', 'penalty']"),
    ({"overlong": "penalty"}, "'overlong_buffer'", "needs 1 <= overlong_buffer <= max_new_tokens (2048)"),
    ({"overlong": "penalty", "overlong_buffer": 4096}, "'overlong_buffer'", "4096"),
    ({"overlong_buffer": 16}, "'overlong_buffer'", "only used by overlong: penalty"),
    ({"overlong": "penalty", "overlong_buffer": 16, "estimator": "passk_chen", "estimator_params": {"k": 4}},
     "'overlong'", "non-binary, which estimator 'passk_chen' refuses"),
    ({"logging": ["tensorbord"]}, "'logging'", "unknown sink(s) ['tensorbord']; allowed: ['mlflow', 'tensorboard'"),
    ({"logging": "tensorboard"}, "'logging'", "must be of type list"),
    ({"logging": ["wandb", "wandb"]}, "'logging'", "names a sink twice"),
    ({"tensorboard": True}, "'tensorboard'", "replaced by 'logging'"),
    ({"rollout_log_every": -1}, "'rollout_log_every'", "must be >= 0"),
    ({"top_p": 0.9}, "'top_p'", "must be 1.0 in training: the trainer's log-probs"),
    ({"engine_options": {"tensor_parallel_size": 2}}, "'engine_options.tensor_parallel_size'",
     "tensor parallelism is not supported in training"),
]


@pytest.mark.parametrize("data,key,fragment", BAD_CONFIGS, ids=[str(i) for i in range(len(BAD_CONFIGS))])
def test_config_errors_name_file_key_and_value(tmp_path, data, key, fragment):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and key in msg and fragment in msg, msg


def test_config_hash_covers_what_trains_differently_and_nothing_else():
    """Resume compares config hashes. Settings that do not change the trajectory may change between a
    run and its resume; every other key changes the hash. The pinned value changes only with a version
    whose CHANGELOG.md entry says that earlier checkpoints no longer resume."""
    from rsgrpo.train.config import config_hash

    default = config_hash(from_dict({}))
    assert default == "1b9006984bc09d5ff520d59acb92a56e64ffffb0601f4209db90c9aaa49d3379"
    assert config_hash(from_dict({"logging": [], "rollout_log_every": 3, "micro_batch_size": 16, "hf_batch_size": 8,
                                  "gradient_checkpointing": True, "logprob_chunk_tokens": 7, "steps": 3,
                                  "checkpoint_every_minutes": 30, "collective_timeout_minutes": 60,
                                  "mismatch_max_k3": 0.1, "mismatch_check_every": 5,
                                  "micro_batch_tokens": 4096})) == default
    for changed in ({"precision": "bf16-mixed", "zero_stage": 1}, {"max_gen_rounds": 3}, {"dynamic_sampling": False},
                    {"overlong": "mask"}, {"estimator": "grpo"}, {"estimator_params": {"beta": 4.0}}, {"lr": 2e-6},
                    {"rollout_correction": "tis"}, {"rollout_correction": "mis"}, {"policy_loss": "cispo"},
                    {"loss_agg": "seq-mean-token-mean"}, {"loss_agg": "seq-mean-token-sum-norm"},
                    {"policy_loss": "gspo", "loss_agg": "seq-mean-token-mean"}, {"clip_ratio_c": 3.0},
                    {"clip_high": 0.3}):
        assert config_hash(from_dict(changed)) != default, changed
    # clip null is the loss's default: spelled out, the same run
    assert config_hash(from_dict({"clip_low": 0.2, "clip_high": 0.28})) == default
    gspo = {"policy_loss": "gspo", "loss_agg": "seq-mean-token-mean"}
    assert config_hash(from_dict({**gspo, "clip_low": 3e-4})) == config_hash(from_dict(gspo))
    assert config_hash(from_dict({**gspo, "clip_low": 1e-3})) != config_hash(from_dict(gspo))
    assert config_hash(from_dict({"rollout_correction_cap": 3.0})) == default  # no correction: the cap is unused
    assert config_hash(from_dict({"rollout_correction": "tis", "rollout_correction_cap": 3.0})) != \
        config_hash(from_dict({"rollout_correction": "tis"}))
    assert config_hash(from_dict({"overlong": "penalty", "overlong_buffer": 4})) != \
        config_hash(from_dict({"overlong": "penalty", "overlong_buffer": 5}))
    ramp = {"beta_schedule": "linear", "beta_start": 0, "beta_end": 4}  # a ramp over the whole run: steps matter
    assert config_hash(from_dict({**ramp, "steps": 3})) != config_hash(from_dict({**ramp, "steps": 4}))


def test_config_overrides_and_yaml_spellings(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("lr: 1e-5\nestimator: passk_chen\nestimator_params: {k: 4}\n")
    cfg = load_config(path, ["steps=7", "dynamic_sampling=false"])
    assert cfg.lr == 1e-5 and cfg.steps == 7 and cfg.dynamic_sampling is False
    with pytest.raises(ValueError, match="expected key=value"):
        load_config(path, ["steps"])


# ------------------------------------------------------------------------------------------------
# one full step of a tiny model for every estimator: gradient direction follows the advantages
# ------------------------------------------------------------------------------------------------
# prompt -> its 4 completions; reward 1 for "42", else 0. Within a group every correct completion is
# the same text and every wrong one too, so the sign of each completion's log-prob change is fixed.
RECORDS = [{"id": "a", "problem": "6*7", "answer": "42"}, {"id": "b", "problem": "40+2", "answer": "42"},
           {"id": "c", "problem": "1+1", "answer": "2"}]
TABLE = {"Q: 6*7\nA:": ["42", "17", "17", "17"], "Q: 40+2\nA:": ["42", "42", "9x", "9x"],
         "Q: 1+1\nA:": ["xy", "xy", "xy", "xy"]}


def _reward_fn(golds, texts):
    return [1.0 if t == "42" else 0.0 for t in texts]


def _digits_answer(completion: str) -> str | None:
    """The answer the test reward extracts: a completion made only of digits, else none."""
    return completion.strip() if completion.strip().isdigit() else None


@register("test_train_exact_42")
def exact_42(*, completions, answers, problems, records):
    # returns the answers it extracted, as the math rewards do: rollout logs and no_answer_frac show them
    return RewardOutput(_reward_fn(answers, completions), [_digits_answer(c) for c in completions])


@register("test_train_all_wrong")
def all_wrong(*, completions, answers, problems, records):
    return [0.0] * len(completions)


def _tiny_trainer(model_dir, run_dir, **overrides):
    cfg = dict(model_dir=str(model_dir), steps=1, prompts_per_step=3, samples_per_prompt=4,
               max_new_tokens=4, lr=1e-4, micro_batch_size=5, engine="hf", progress=False, seed=0,
               reward_kind="test_train_exact_42", max_gen_rounds=1)
    cfg.update(overrides)
    trainer = Trainer(from_dict(cfg), run_dir, records=RECORDS,
                      prompt_fn=lambda p: f"Q: {p}\nA:",
                      engine_factory=lambda model, tok, src: FixedEngine(tok, TABLE))
    trainer.setup()
    return trainer


@pytest.mark.parametrize("method", list(estimators.ESTIMATORS))
def test_one_step_moves_logprobs_along_the_advantages(tiny_model_dir, tmp_path, method):
    params = estimators.EXAMPLE_PARAMS[method]
    # an estimator without a group baseline (w_reinforce) trains with dynamic sampling off (the config requires it)
    trainer = _tiny_trainer(tiny_model_dir, tmp_path / "run", estimator=method, estimator_params=params,
                            dynamic_sampling=not estimators.equal_rewards_carry_signal(method))
    _check_one_step(trainer, by_sign=False)  # some estimators give no negative (or positive) advantage


# the policy losses and aggregations besides the default (ppo_clip, token-mean) that a config accepts
LOSS_PAIRS = [("ppo_clip", "seq-mean-token-mean"), ("ppo_clip", "seq-mean-token-sum-norm"),
              ("gspo", "seq-mean-token-mean"), ("cispo", "token-mean"), ("cispo", "seq-mean-token-mean"),
              ("cispo", "seq-mean-token-sum-norm")]


@pytest.mark.parametrize("kind,agg", LOSS_PAIRS, ids=[f"{k}-{a}" for k, a in LOSS_PAIRS])
def test_one_step_of_every_policy_loss_moves_logprobs_along_the_advantages(tiny_model_dir, tmp_path, kind, agg):
    trainer = _tiny_trainer(tiny_model_dir, tmp_path / "run", estimator="grpo", estimator_params={},
                            policy_loss=kind, loss_agg=agg)
    _check_one_step(trainer, by_sign=True)


def _check_one_step(trainer, *, by_sign: bool):
    """On-policy (ratio 1) every policy loss's gradient is -sum_j A_j c_j grad log pi(y_j), c_j the
    completion's weight under the aggregation (1 / tokens, 1 / (completions x its tokens) or
    1 / (completions x max_new_tokens)); each completion's log-prob moves with the sign of its advantage
    along it, and the real step (DeepSpeed AdamW) raises the advantage-weighted log-likelihood (with
    ``by_sign``: the completions of positive advantage gain log-probability on average, the negative
    ones lose)."""
    cfg, model = trainer.cfg, trainer.actor.model
    prompts = [f"Q: {r['problem']}\nA:" for r in RECORDS]
    comps = trainer.engine.generate(prompts, type("P", (), {"n": 4})())
    flat = [c for g in comps for c in g]
    rewards = torch.tensor(_reward_fn(None, [c.text for c in flat])).view(3, 4)
    adv = estimators.compute(cfg.estimator, rewards, **cfg.estimator_params).reshape(-1)
    pairs = [(c.prompt_token_ids, c.token_ids) for c in flat]
    batch = build_batch(pairs, trainer.actor.pad_id)
    mask = batch.completion_mask[:, 1:]
    n_tokens, lengths = int(mask.sum()), mask.sum(1)
    params = [p for p in model.parameters() if p.requires_grad]

    def seq_logp_grads():
        grads = []
        for i in range(len(pairs)):
            b = build_batch([pairs[i]], trainer.actor.pad_id)
            lp, _ = token_logprobs(model, b)
            total = (lp * b.completion_mask[:, 1:]).sum()
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(total, params)]))
        return torch.stack(grads)

    per_seq = seq_logp_grads()  # [12, P]: gradient of sum log pi of each completion
    with torch.no_grad():
        old, _ = token_logprobs(model, batch)
    lp, _ = token_logprobs(model, batch)
    loss, _ = policy_loss(lp, old, adv, mask, kind=cfg.policy_loss, loss_agg=cfg.loss_agg, clip_low=cfg.clip_low,
                          clip_high=cfg.clip_high, n_tokens=n_tokens, n_sequences=len(pairs),
                          horizon=cfg.max_new_tokens)
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params)])
    weight = {"token-mean": torch.full_like(lengths, 1 / n_tokens), "seq-mean-token-mean": 1 / (len(pairs) * lengths),
              "seq-mean-token-sum-norm": torch.full_like(lengths, 1 / (len(pairs) * cfg.max_new_tokens))}[cfg.loss_agg]
    expected = -((adv * weight)[:, None] * per_seq).sum(0)
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-7)
    # directional derivative of log pi(y_j) along -grad has the sign of A_j
    deriv = per_seq @ (-g)
    nonzero = adv.abs() > 1e-9
    assert nonzero.sum() >= (1 if cfg.estimator == "grpo_passk" else 3)  # grpo_passk: a group's unique best only
    if not estimators.equal_rewards_carry_signal(cfg.estimator):
        # Without a group baseline (w_reinforce: 9 of 12 advantages -1 here) the step can lower every sampled
        # completion, mass moving to unsampled ones; the weighted log-likelihood below rises all the same.
        assert torch.equal(torch.sign(deriv[nonzero]), torch.sign(adv[nonzero])), (cfg.estimator, adv, deriv)

    # the full training step (DeepSpeed AdamW): the advantage-weighted log-likelihood rises
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        lp0, _ = token_logprobs(model, batch)
    row = trainer.train_step(0)
    with torch.no_grad():
        lp1, _ = token_logprobs(model, batch)
    delta = ((lp1 - lp0) * mask).sum(1)
    assert float((adv * delta).sum()) > 0
    if by_sign:
        assert float(delta[adv > 1e-9].mean()) > 0 > float(delta[adv < -1e-9].mean()), (adv, delta)
    assert row.groups_kept == (2 if cfg.dynamic_sampling else 3)  # dynamic sampling drops the all-wrong group
    assert row.solved_frac == pytest.approx(2 / 3) and row.cumulative_solve_rate == pytest.approx(2 / 3)
    assert row.reward_mean == pytest.approx(3 / 12)
    assert math.isfinite(row.loss) and row.grad_norm > 0 and row.clip_frac == 0.0
    assert row.entropy > 0 and row.response_len_mean == pytest.approx(
        sum(len(c.token_ids) for c in flat) / 12)
    assert trainer.engine.loads == 1
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_step_with_every_group_dropped_makes_no_update(tiny_model_dir, tmp_path):
    trainer = _tiny_trainer(tiny_model_dir, tmp_path / "run", reward_kind="test_train_all_wrong")
    before = {k: v.detach().clone() for k, v in trainer.actor.model.state_dict().items()}
    row = trainer.train_step(0)
    assert row.groups_kept == 0 and row.step == 1
    assert math.isnan(row.loss) and math.isnan(row.grad_norm)
    assert all(torch.equal(before[k], v) for k, v in trainer.actor.model.state_dict().items())
    assert trainer.engine.loads == 1  # pushed all the same: a sleeping vLLM engine discarded its weights


def test_a_registered_estimator_trains_with_no_other_change(tiny_model_dir, tmp_path):
    """A new advantage estimator is one registered function: the config check, the trainer and the
    metrics take it by name, nothing else needs to know it."""
    def sign(rewards):
        return torch.sign(rewards - rewards.mean(dim=1, keepdim=True))

    estimators.register("test_train_sign", source="this test")(sign)
    try:
        trainer = _tiny_trainer(tiny_model_dir, tmp_path / "run", estimator="test_train_sign", estimator_params=None)
        before = {k: v.detach().clone() for k, v in trainer.actor.model.state_dict().items()}
        row = trainer.train_step(0)
        assert trainer.cfg.estimator_params == {} and math.isnan(row.beta)
        assert row.groups_kept == 2 and row.grad_norm > 0
        assert any(not torch.equal(before[k], v) for k, v in trainer.actor.model.state_dict().items())
        with pytest.raises(ValueError, match="'beta_schedule'"):  # it has no beta to schedule
            from_dict({"estimator": "test_train_sign", "beta_schedule": "linear", "beta_start": 0, "beta_end": 1})
    finally:
        for registry in (estimators.ESTIMATORS, estimators.EXAMPLE_PARAMS, estimators.SOURCES,
                         estimators.EQUAL_REWARDS_SIGNAL):
            registry.pop("test_train_sign")


@register("test_train_record_target")
def record_target(*, completions, answers, problems, records):
    # a reward that reads a dataset column of its own (not the gold answer)
    return [1.0 if text == record["target"] else 0.0 for text, record in zip(completions, records)]


def test_rewards_see_the_records_extra_fields(tiny_model_dir, tmp_path):
    from rsgrpo.train.training_set import records_hash

    records = [dict(r, target=t) for r, t in zip(RECORDS, ["17", "9x", "xy"])]
    cfg = from_dict(dict(model_dir=str(tiny_model_dir), steps=1, prompts_per_step=3, samples_per_prompt=4,
                         max_new_tokens=4, engine="hf", progress=False, reward_kind="test_train_record_target",
                         max_gen_rounds=1))
    trainer = Trainer(cfg, tmp_path / "run", records=records, prompt_fn=lambda p: f"Q: {p}\nA:",
                      engine_factory=lambda model, tok, src: FixedEngine(tok, TABLE))
    trainer.setup()
    row = trainer.train_step(0)
    # "17" x3 in group a, "9x" x2 in group b, "xy" x4 in group c (all equal: dropped)
    assert row.reward_mean == pytest.approx(9 / 12) and row.groups_kept == 2
    # the extra fields are part of the data fingerprint that guards resume; plain records hash as before
    assert records_hash(records) != records_hash([dict(r, target="0") for r in records])
    import hashlib

    before = hashlib.sha256()  # the fingerprint checkpoints were written with before extra fields existed
    for r in RECORDS:
        before.update(json.dumps([r["id"], r["problem"], r["answer"]]).encode())
    assert records_hash(RECORDS) == before.hexdigest()


def test_generation_beyond_the_model_context_fails_before_the_model_loads(tiny_model_dir, tmp_path):
    """Prompt + max_new_tokens must fit the model's context (512 for the tiny model); prompts that do
    not are dropped when the data loads, and with none left the run stops, from the tokenizer and
    config.json only (this copy has no weights)."""
    import shutil

    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    cfg = from_dict(dict(model_dir=str(no_weights), max_new_tokens=505, engine="hf", progress=False))
    trainer = Trainer(cfg, tmp_path / "run", records=RECORDS, prompt_fn=lambda p: f"Q: {p}\nA:")
    with pytest.raises(ValueError, match=r"key 'max_new_tokens': all 3 training prompts are too long for the model: "
                                         r"even the shortest prompt \(record '\w+', \d+ tokens\) \+ 505 new tokens = "
                                         r"\d+ exceeds the model's context of 512 tokens"):
        trainer.setup()


def test_auto_engine_on_a_gpu_machine_without_vllm_fails_before_the_model_loads(tiny_model_dir, tmp_path,
                                                                                  monkeypatch):
    import rsgrpo.train.trainer as train_mod
    from rsgrpo.train.distributed import collectives

    dist = collectives.init_distributed()  # the CPU process group, set up before the GPU is faked
    monkeypatch.setattr(collectives, "init_distributed", lambda **_: dist)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    monkeypatch.setattr(train_mod, "Actor", lambda *a, **k: pytest.fail("the model was loaded"))
    cfg = from_dict(dict(model_dir=str(tiny_model_dir), engine="auto", progress=False))
    trainer = Trainer(cfg, tmp_path / "run", records=RECORDS, prompt_fn=lambda p: f"Q: {p}\nA:")
    with pytest.raises(RuntimeError, match=r"^engine: auto found a GPU but the package vllm does not import"):
        trainer.setup()


class SleepyEngine(FixedEngine):
    """Records the order of the calls the trainer makes (vLLM sleep mode's contract)."""

    def __init__(self, tokenizer, table):
        super().__init__(tokenizer, table)
        self.calls = []

    def generate(self, prompts, params, *, seeds=None, should_stop=None):
        self.calls.append("generate")
        return super().generate(prompts, params, seeds=seeds)

    def load_weights(self, model):
        self.calls.append("load_weights")
        super().load_weights(model)

    def sleep(self):
        self.calls.append("sleep")

    def wake_up(self, tags=None):
        self.calls.append(f"wake_up {'+'.join(tags) if tags else 'all'}")


def test_engine_sleeps_during_the_update_and_wakes_weights_then_kv_cache(tiny_model_dir, tmp_path, monkeypatch):
    """The peers' order (verl, OpenRLHF): the update's cached blocks are returned before the engine
    maps its weights, the weights are pushed, the cache is emptied again, and only then the KV cache
    is mapped. The push happens every step, also when no group was kept: sleep level 2 discards the
    engine's weights."""
    from rsgrpo.train import trainer as trainer_mod

    trainer = _tiny_trainer(tiny_model_dir, tmp_path / "run")
    engine = trainer.engine = SleepyEngine(trainer.actor.tokenizer, TABLE)
    monkeypatch.setattr(trainer_mod, "free_cached_memory", lambda: engine.calls.append("empty_cache"))
    trainer.train_step(0)
    trainer.train_step(1)
    step = ["generate", "sleep", "empty_cache", "wake_up weights", "load_weights", "empty_cache", "wake_up kv_cache"]
    assert engine.calls == step + step
    # a step whose groups all carry no signal makes no update, and still pushes the weights
    engine.calls.clear()
    engine.table = {prompt: ["no"] * len(texts) for prompt, texts in TABLE.items()}
    row = trainer.train_step(2)
    assert row.groups_kept == 0 and engine.calls[-len(step) + 1:] == step[1:]


def test_ppo_epochs_clip_and_kl(tiny_model_dir, tmp_path):
    """Second PPO epoch is off-policy: with a large lr some ratios leave the clip range; the KL to
    the reference model is 0 before the first update and positive afterwards."""
    trainer = _tiny_trainer(tiny_model_dir, tmp_path / "run", ppo_epochs=3, lr=3e-2, kl_coef=0.1,
                            estimator="grpo", estimator_params={})
    assert trainer.actor.ref_model is not None
    row = trainer.train_step(0)
    assert row.clip_frac > 0
    assert row.kl > 0


# ------------------------------------------------------------------------------------------------
# the real command
# ------------------------------------------------------------------------------------------------
def test_train_cli_with_real_modules(tiny_model_dir, tmp_path):
    """``python -m rsgrpo train`` with the real data, rollout and grading modules: writes metrics.csv
    (one row per step), a manifest listing the checkpoints, and the declared output copies."""
    pytest.importorskip("rsgrpo.prepare.data_sources")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)})
                            + "\n" for i in range(5)))
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text(f"model_dir: {tiny_model_dir}\ntrain_data: {data}\nsteps: 2\nprompts_per_step: 2\n"
                       "samples_per_prompt: 3\nmax_new_tokens: 6\nengine: hf\ngrading_workers: 0\n"
                       "checkpoint_every: 1\nkeep_last: 1\nprogress: false\n")
    out = tmp_path / "results"
    proc = subprocess.run([PY, "-m", "rsgrpo", "train", "--config", str(cfgfile), "--run-dir",
                           str(tmp_path / "run"), "--set", "seed=3", "--out-manifest", str(out / "manifest.json"),
                           "--out-metrics", str(out / "metrics.csv")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["final_step"] == 2 and manifest["config"]["seed"] == 3
    assert [c["step"] for c in manifest["checkpoints"]] == [2]  # keep_last 1
    final = Path(manifest["final_checkpoint"])
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2] and list(rows[0]) == METRIC_COLUMNS
    assert re.search(r"rsgrpo\.train\.trainer INFO rollout engine: hf \(transformers [0-9.]+\), device cpu, "
                     r"dtype float32",
                     proc.stderr)


def test_train_cli_reports_config_errors(tmp_path):
    cfgfile = tmp_path / "cfg.yaml"
    cfgfile.write_text("lr: 1.0e-6\nclip_hi: 0.3\n")
    proc = subprocess.run([PY, "-m", "rsgrpo", "train", "--config", str(cfgfile), "--run-dir", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert str(cfgfile) in proc.stderr and "'clip_hi'" in proc.stderr and "unknown key" in proc.stderr
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------
# dynamic sampling with refill, overlong handling
# ------------------------------------------------------------------------------------------------
# prompts a, b have a learning signal (one "42" among wrong answers); c, d never do (all wrong)
REFILL_RECORDS = [{"id": i, "problem": p, "answer": "42"} for i, p in
                  [("a", "6*7"), ("b", "40+2"), ("c", "1+1"), ("d", "2+2")]]
REFILL_TABLE = {"Q: 6*7\nA:": ["42", "17", "17", "17"], "Q: 40+2\nA:": ["42", "42", "9x", "9x"],
                "Q: 1+1\nA:": ["xy", "xy", "xy", "xy"], "Q: 2+2\nA:": ["zz", "zz", "zz", "zz"]}


def _refill_trainer(model_dir, run_dir, table=REFILL_TABLE, cut=(), **overrides):
    cfg = dict(model_dir=str(model_dir), steps=3, prompts_per_step=2, samples_per_prompt=4, max_new_tokens=4,
               lr=1e-4, micro_batch_size=8, engine="hf", progress=False, reward_kind="test_train_exact_42",
               logging=[])
    cfg.update(overrides)
    trainer = Trainer(from_dict(cfg), run_dir, records=REFILL_RECORDS, prompt_fn=lambda p: f"Q: {p}\nA:",
                      engine_factory=lambda model, tok, src: FixedEngine(tok, table, cut))
    trainer.setup()
    return trainer


def _spy_update(trainer):
    """Record the (prompt, completion) pairs and advantages each actor update receives."""
    seen = []
    real = trainer.actor.update

    def update(pairs, adv, lr, **kwargs):
        seen.append((list(pairs), adv.clone()))
        return real(pairs, adv, lr, **kwargs)

    trainer.actor.update = update
    return seen


def _expected_refill(seed, steps, per_step, max_rounds, signal_ids=("a", "b")):
    """Brute force: walk the data stream round by round, as the recipe says."""
    from rsgrpo.train.data_order import stream_indices

    position, out = 0, []
    for _ in range(steps):
        chosen, rounds = [], 0
        while len(chosen) < per_step and rounds < max_rounds:
            drawn = stream_indices(len(REFILL_RECORDS), seed, position, per_step)
            position += per_step
            rounds += 1
            chosen += [REFILL_RECORDS[i]["id"] for i in drawn if REFILL_RECORDS[i]["id"] in signal_ids]
        out.append((chosen[:per_step], rounds, position))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refill_trains_on_prompts_per_step_groups_when_half_carry_no_signal(tiny_model_dir, tmp_path, seed):
    from rsgrpo.train.data_order import stream_indices

    trainer = _refill_trainer(tiny_model_dir, tmp_path / "run", seed=seed)
    seen = _spy_update(trainer)
    expected = _expected_refill(seed, 3, 2, 8)
    assert any(rounds > 1 for _, rounds, _ in expected)  # the seeds exercise the refill
    start = 0
    for step, (ids, rounds, position) in enumerate(expected):
        row = trainer.train_step(step)
        assert (row.groups_kept, row.gen_rounds, row.prompts_drawn) == (2, rounds, position)
        assert trainer.data_position == position
        pairs, adv = seen[-1]
        assert len(pairs) == 2 * 4  # prompts_per_step groups x samples_per_prompt, nothing else
        prompts = [trainer.actor.tokenizer.decode(p) for p, _ in pairs[::4]]
        assert prompts == [f"Q: {next(r['problem'] for r in REFILL_RECORDS if r['id'] == i)}\nA:" for i in ids]
        rewards = torch.tensor([[1.0 if t == "42" else 0.0 for t in REFILL_TABLE[p]] for p in prompts])
        torch.testing.assert_close(adv, estimators.compute("rs_grpo", rewards, beta=2.0).reshape(-1).float())
        drawn = [REFILL_RECORDS[i]["id"] for i in stream_indices(4, seed, start, position - start)]
        assert row.solved_frac == pytest.approx(sum(i in ("a", "b") for i in drawn) / len(drawn))
        start = position
    # the engine generated for the data stream in order, every drawn prompt once
    drawn = stream_indices(4, seed, 0, expected[-1][2])
    assert trainer.engine.prompts == [f"Q: {REFILL_RECORDS[i]['problem']}\nA:" for i in drawn]


def test_refill_stops_after_max_gen_rounds_and_trains_on_what_it_has(tiny_model_dir, tmp_path):
    table = dict(REFILL_TABLE, **{"Q: 40+2\nA:": ["9x"] * 4})  # only a carries a signal now
    trainer = _refill_trainer(tiny_model_dir, tmp_path / "run", table=table, max_gen_rounds=3, seed=0)
    seen = _spy_update(trainer)
    expected = _expected_refill(0, 3, 2, 3, signal_ids=("a",))
    for step, (ids, rounds, position) in enumerate(expected):
        row = trainer.train_step(step)
        assert (row.groups_kept, row.gen_rounds, row.prompts_drawn) == (len(ids), rounds, position)
    assert expected == [(["a"], 3, 6), (["a", "a"], 2, 10), (["a"], 3, 16)]  # seed 0 exhausts the rounds twice
    assert [len(pairs) for pairs, _ in seen] == [4, 8, 4]


def test_without_dynamic_sampling_one_round_trains_every_group(tiny_model_dir, tmp_path):
    trainer = _refill_trainer(tiny_model_dir, tmp_path / "run", dynamic_sampling=False)
    seen = _spy_update(trainer)
    row = trainer.train_step(0)
    assert (row.groups_kept, row.gen_rounds, row.prompts_drawn) == (2, 1, 2)
    assert len(seen[0][0]) == 8


CUT_TABLE = {"Q: 6*7\nA:": ["42", "17", "one two three four five six", "42"],
             "Q: 40+2\nA:": ["42", "9x", "9x", "seven eight nine ten eleven twelve"],
             "Q: 1+1\nA:": ["xy"] * 4, "Q: 2+2\nA:": ["zz"] * 4}
CUT = {"one two three four five six", "seven eight nine ten eleven twelve"}


@pytest.mark.parametrize("overlong", ["none", "mask", "penalty"])
def test_overlong_none_mask_and_penalty_on_hand_made_completions(tiny_model_dir, tmp_path, overlong):
    from rsgrpo.train.rewards import overlong_penalty

    extra = {"overlong_buffer": 2} if overlong == "penalty" else {}
    trainer = _refill_trainer(tiny_model_dir, tmp_path / "run", table=CUT_TABLE, cut=CUT, overlong=overlong,
                              dynamic_sampling=False, seed=0, **extra)
    seen = _spy_update(trainer)
    rollout = trainer.collect(0)
    trainer.compute_advantages(rollout)
    row = trainer.metrics_row(rollout, trainer.update(rollout))
    flat = rollout.flat
    cut = [not c.finished for c in flat]
    assert sum(cut) >= 1 and all(len(c.token_ids) == 4 for c, is_cut in zip(flat, cut) if is_cut)
    assert row.truncated_frac == pytest.approx(sum(cut) / len(flat))
    scores = rollout.scores.reshape(-1)
    if overlong == "penalty":  # cut: -1; a finished completion of 3 or 4 tokens: -1/2 or -1
        lengths = [len(c.token_ids) for c in flat]
        assert overlong_penalty([2, 3, 4], max_tokens=4, buffer=2) == [0.0, -0.5, -1.0]
        torch.testing.assert_close(rollout.rewards.reshape(-1) - scores,
                                   torch.tensor(overlong_penalty(lengths, max_tokens=4, buffer=2), dtype=torch.float64))
        assert all(float(r - s) == -1.0 for r, s, is_cut in zip(rollout.rewards.reshape(-1), scores, cut) if is_cut)
    else:
        assert torch.equal(rollout.rewards, rollout.scores)
    pairs, adv = seen[0]
    trained_texts = [trainer.actor.tokenizer.decode(c) for _, c in pairs]
    if overlong == "mask":  # the cut completions are left out of the loss, the others all trained
        assert len(pairs) == len(flat) - sum(cut)
        assert not any(text.startswith(("one", "seven")) for text in trained_texts)
    else:
        assert len(pairs) == len(flat)
    # advantages come from the (shaped) rewards of the whole group, cut completions included
    expected = estimators.compute("rs_grpo", rollout.rewards, beta=2.0).float()
    keep = [i for i, is_cut in enumerate(cut) if not (overlong == "mask" and is_cut)]
    torch.testing.assert_close(adv, expected.reshape(-1)[keep])


def test_metric_columns_of_a_step_match_the_completions(tiny_model_dir, tmp_path):
    trainer = _refill_trainer(tiny_model_dir, tmp_path / "run", table=CUT_TABLE, cut=CUT, seed=1)
    rollout = trainer.collect(0)
    trainer.compute_advantages(rollout)
    row = trainer.metrics_row(rollout, trainer.update(rollout))
    flat = rollout.flat
    lengths = sorted(len(c.token_ids) for c in flat)
    assert row.response_len_p50 == pytest.approx(float(torch.tensor(lengths, dtype=torch.float64).quantile(0.5)))
    assert row.response_len_p95 == pytest.approx(float(torch.tensor(lengths, dtype=torch.float64).quantile(0.95)))
    # the reward's answers: "42" and "17" are answers, "9x" and "xy" none
    answers = [_digits_answer(c.text) for c in flat]
    assert 0 < answers.count(None) < len(answers)
    assert row.no_answer_frac == pytest.approx(answers.count(None) / len(answers))
    assert [a for group in rollout.answers for a in group] == answers
    adv, scores = rollout.advantages.reshape(-1), rollout.scores.reshape(-1)
    rows = rollout.kept_rows()
    correct = [abs(float(adv[i])) for i in rows if scores[i] >= 1]
    wrong = [abs(float(adv[i])) for i in rows if scores[i] < 1]
    assert correct and wrong
    assert row.adv_abs_correct == pytest.approx(sum(correct) / len(correct))
    assert row.adv_abs_wrong == pytest.approx(sum(wrong) / len(wrong))
    assert row.adv_abs_correct > row.adv_abs_wrong  # rare successes carry the large advantages


# ------------------------------------------------------------------------------------------------
# live metrics and rollouts: sinks, TensorBoard, rollout logs
# ------------------------------------------------------------------------------------------------
def _finite_columns(path):
    rows = list(csv.DictReader(open(path)))
    return rows, {c for r in rows for c, v in r.items() if c != "step" and v and math.isfinite(float(v))}


def test_tensorboard_holds_every_metric_and_the_rollouts_and_the_jsonl_holds_what_it_says(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    trainer = _refill_trainer(tiny_model_dir, run, table=CUT_TABLE, cut=CUT, logging=["tensorboard"],
                              rollout_log_every=2, rollout_log_groups=3, steps=4, seed=1)
    rollouts = {}
    real_log = trainer.log_rollouts

    def log_rollouts(rollout, step):  # keep each logged step's rollout to check the file against
        rollouts[step] = rollout
        real_log(rollout, step)

    trainer.log_rollouts = log_rollouts
    trainer.run()
    rows, finite = _finite_columns(run / "metrics.csv")
    assert {"reward_mean", "gen_rounds", "prompts_drawn", "truncated_frac", "adv_abs_correct", "response_len_p95",
            "entropy", "loss"} <= finite
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    for column in finite:
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{column}")]
        assert logged == [(int(r["step"]), pytest.approx(float(r[column]), rel=1e-6)) for r in rows], column
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("rollouts/text_summary")}
    assert sorted(texts) == [2, 4]
    assert sorted(p.name for p in (run / "rollouts").iterdir()) == ["step-000002.jsonl", "step-000004.jsonl"]
    for step, rollout in rollouts.items():
        groups = [json.loads(line) for line in (run / "rollouts" / f"step-{step:06d}.jsonl").open()]
        assert [g["position"] for g in groups] == [rollout.start + i for i in range(3)]  # the first 3 drawn
        for g in groups:
            assert f"Q: {g['problem']}\nA:" == g["prompt"] and g["problem"] in texts[step]
            group = rollout.offsets.index(g["position"] - rollout.start)
            assert g["kept"] == bool(rollout.kept[group])
            assert [c["text"] for c in g["completions"]] == [c.text for c in rollout.completions[group]]
            assert [c["extracted"] for c in g["completions"]] == [_digits_answer(c.text)
                                                                   for c in rollout.completions[group]]
            assert [c["reward"] for c in g["completions"]] == rollout.rewards[group].tolist()
            assert [c["advantage"] for c in g["completions"]] == (
                rollout.advantages[group].tolist() if g["kept"] else [None] * 4)
            assert [c["finished"] for c in g["completions"]] == [c.finished for c in rollout.completions[group]]
        assert any(g["kept"] for g in groups) and any(not g["kept"] for g in groups)


class _FakeTracker:
    """Stands in for the wandb and mlflow modules: records what the sinks send."""

    def __init__(self):
        self.calls = []
        tracker = self

        class Run:
            info = type("Info", (), {"run_id": "fake-run"})()

            def log(self, values, step):
                tracker.calls.append(("log", step, values))

            def finish(self):
                tracker.calls.append(("finish",))

        self.Run = Run

    # wandb
    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return self.Run()

    def Html(self, text):  # noqa: N802 (wandb's spelling)
        return ("html", text)

    # mlflow
    def set_experiment(self, name):
        self.calls.append(("set_experiment", name))

    def start_run(self, run_id=None, run_name=None):
        self.calls.append(("start_run", run_id, run_name))
        return self.Run()

    def log_params(self, params):
        self.calls.append(("log_params", params))

    def log_metrics(self, values, step):
        self.calls.append(("log", step, values))

    def log_text(self, text, path):
        self.calls.append(("log_text", path, text))

    def end_run(self):
        self.calls.append(("finish",))


@pytest.mark.parametrize("sink", ["wandb", "mlflow"])
def test_wandb_and_mlflow_sinks_get_every_metric_and_the_rollouts(tiny_model_dir, tmp_path, monkeypatch, sink):
    fake = _FakeTracker()
    monkeypatch.setitem(sys.modules, sink, fake)
    run = tmp_path / "run"
    trainer = _refill_trainer(tiny_model_dir, run, logging=[sink], rollout_log_every=1, steps=2)
    trainer.run()
    rows, finite = _finite_columns(run / "metrics.csv")
    logged = {}
    for call in fake.calls:
        if call[0] == "log":
            logged.setdefault(call[1], {}).update(call[2])
    for r in rows:
        step = int(r["step"])
        metrics = {k[len("train/"):]: v for k, v in logged[step].items() if k.startswith("train/")}
        assert metrics == {c: pytest.approx(float(r[c])) for c in finite if math.isfinite(float(r[c]))}
    assert fake.calls[-1] == ("finish",)
    if sink == "wandb":
        init = fake.calls[0][1]
        assert init["resume"] == "allow" and init["dir"] == str(run) and init["config"]["steps"] == 2
        for step in (1, 2):
            kind, text = logged[step]["rollouts"]
            assert kind == "html" and text.startswith("<pre>### ") and "reward 1 advantage" in text
    else:
        assert (run / "mlflow_run_id").read_text() == "fake-run\n"
        assert [c[1] for c in fake.calls if c[0] == "log_text"] == [f"rollouts/step-00000{s}.md" for s in (1, 2)]


def test_a_sink_whose_package_is_missing_fails_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    import rsgrpo.train.trainer as train_mod

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    monkeypatch.setattr(train_mod, "Actor", lambda *a, **k: pytest.fail("the model was loaded"))
    cfg = from_dict(dict(model_dir=str(tiny_model_dir), engine="hf", progress=False, logging=["tensorboard", "wandb"]))
    trainer = Trainer(cfg, tmp_path / "run", records=RECORDS, prompt_fn=lambda p: f"Q: {p}\nA:")
    with pytest.raises(ValueError, match=r"config key 'logging' asks for the 'wandb' sink, but its package 'wandb' "
                                         r"does not import .*install it with pip install 'rsgrpo\[wandb\]'"):
        trainer.setup()


def test_a_vllm_engine_on_a_gpu_gets_the_plans_share_and_its_own_seed(tiny_model_dir, tmp_path, monkeypatch):
    """The trainer gives its colocated vLLM engine the share rsgrpo.capacity computes for the plan (same
    function, this GPU's size), unless the config sets one, and a sampler seed of the rank and the start
    step; a GPU too small for any share is refused before vLLM starts."""
    from types import SimpleNamespace

    import rsgrpo.train.trainer as trainer_mod
    from rsgrpo import capacity
    from rsgrpo.train.engines.base import row_seed

    trainer = _tiny_trainer(tiny_model_dir, tmp_path / "run")
    trainer._engine_factory = None
    built = {}
    gpu = SimpleNamespace(total_memory=80e9)
    monkeypatch.setattr(trainer_mod.engines, "resolve_engine_kind", lambda kind, **_: "vllm")
    monkeypatch.setattr(trainer_mod.engines, "make_engine", lambda kind, **options: built.update(options))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: gpu)
    trainer._make_engine(str(tiny_model_dir), max_model_len=100)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    job = capacity.train_job(trainer.cfg, ranks=1, prompt_tokens=100 - trainer.cfg.max_new_tokens)
    planned = capacity.colocated_engine_share(capacity.model_shape(config), job, 80e9, kl_reference=False)
    assert built["gpu_memory_utilization"] == planned["share"] and planned["fits"]
    assert built["seed"] == row_seed(0, 0, 0) % 2 ** 31 != row_seed(0, 1, 0) % 2 ** 31
    trainer.start_step = 5  # a resumed run's engine draws another stream than the fresh run's
    trainer._make_engine(str(tiny_model_dir), max_model_len=100)
    assert built["seed"] == row_seed(0, 0, 5) % 2 ** 31 != row_seed(0, 0, 0) % 2 ** 31
    trainer.cfg.engine_options = {"gpu_memory_utilization": 0.5}
    trainer._make_engine(str(tiny_model_dir), max_model_len=100)
    assert built["gpu_memory_utilization"] == 0.5
    trainer.cfg.engine_options = {}
    gpu.total_memory = 4e9  # less than the margin alone
    with pytest.raises(ValueError, match=r"no room for a colocated vLLM engine on this GPU \(4\.0 GB\)"):
        trainer._make_engine(str(tiny_model_dir), max_model_len=100)
