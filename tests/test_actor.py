"""The trainable policy: bf16-mixed precision (fp32 masters that learn at RL learning rates, exact
resume), gradient checkpointing (same gradients, less memory), and their config errors."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from peak_memory import peak_mb
from safetensors.torch import load_file
from train_helpers import FixedEngine, kill_after_first_checkpoint, metrics, run_env, train_cmd, write_run_inputs

from rsgrpo.train import checkpoint as ckpt
from rsgrpo.train.config import from_dict
from rsgrpo.train.rewards import register
from rsgrpo.train.trainer import Trainer

RECORDS = [{"id": "a", "problem": "6*7", "answer": "42"}, {"id": "b", "problem": "40+2", "answer": "42"}]
# completions of different lengths, so the token-mean loss is far from 0 (GRPO advantages sum to 0)
TABLE = {"Q: 6*7\nA:": ["42", "1717", "17", "seventeen"], "Q: 40+2\nA:": ["42", "42", "9x", "ninety-nine x"]}


@register("test_actor_exact_42")
def exact_42(*, completions, answers, problems, records):
    return [1.0 if text == "42" else 0.0 for text in completions]


def fixed_rollout_run(model_dir, run_dir, *, precision, zero_stage, steps=5, lr=1e-6):
    """A run whose rollouts do not depend on the weights (a fixed engine): the weights' trajectory
    is the optimizer's alone, so two precisions can be compared step by step."""
    cfg = from_dict(dict(model_dir=str(model_dir), steps=steps, prompts_per_step=2, samples_per_prompt=4,
                         max_new_tokens=4, lr=lr, weight_decay=0.0, engine="hf", progress=False, seed=0,
                         estimator="grpo", estimator_params={}, ppo_epochs=2, checkpoint_every=0,
                         reward_kind="test_actor_exact_42", precision=precision, zero_stage=zero_stage))
    trainer = Trainer(cfg, run_dir, records=RECORDS, prompt_fn=lambda p: f"Q: {p}\nA:",
                      engine_factory=lambda model, tok, src: FixedEngine(tok, TABLE))
    manifest = trainer.run()
    final = manifest["final_checkpoint"]
    if precision == "bf16-mixed":  # the fp32 masters from the checkpoint's resume state
        masters = ckpt.load_state(final)["masters"]
        return trainer.metrics, {name: masters[name] for name in masters}
    return trainer.metrics, load_file(f"{final}/model.safetensors")


def test_bf16_mixed_moves_its_fp32_masters_and_follows_the_fp32_run(tiny_model_dir, tmp_path):
    start = load_file(f"{tiny_model_dir}/model.safetensors")
    rows32, fp32 = fixed_rollout_run(tiny_model_dir, tmp_path / "fp32", precision="fp32", zero_stage=0)
    rows16, mixed = fixed_rollout_run(tiny_model_dir, tmp_path / "mixed", precision="bf16-mixed", zero_stage=1)
    moved = {name: float((mixed[name] != start[name]).float().mean()) for name in start}
    assert min(moved.values()) > 0.9  # at lr 1e-6 the fp32 masters move (nearly) everywhere
    # what pure bf16 would have kept: the same updates rounded to bf16 leave most weights unchanged
    rounded = [(fp32[n].bfloat16() != start[n].bfloat16()).float().mean() for n in start]
    assert float(torch.stack(rounded).mean()) < 0.2
    # the same learning: per-step loss and gradient norm within 2%, the update direction aligned
    for a, b in zip(rows32, rows16):
        assert abs(a["loss"]) > 0.05
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-2), (a["step"], a["loss"], b["loss"])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=2e-2), (a["step"], a["grad_norm"], b["grad_norm"])
    delta32 = torch.cat([(fp32[n] - start[n]).flatten() for n in start])
    delta16 = torch.cat([(mixed[n] - start[n]).flatten() for n in start])
    cosine = float(delta32 @ delta16 / (delta32.norm() * delta16.norm()))
    assert cosine > 0.99, cosine
    assert math.isclose(float(delta16.norm()), float(delta32.norm()), rel_tol=0.05)


def test_bf16_mixed_checkpoint_holds_bf16_weights_and_fp32_masters(tiny_model_dir, tmp_path):
    fixed_rollout_run(tiny_model_dir, tmp_path / "run", precision="bf16-mixed", zero_stage=2, steps=1)
    final = ckpt.latest_checkpoint(tmp_path / "run")[1]
    weights, masters = load_file(final / "model.safetensors"), ckpt.load_state(final)["masters"]
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}  # what sampling and vLLM load
    assert {t.dtype for t in masters.values()} == {torch.float32}  # what resume needs
    for name, tensor in weights.items():  # the HF weights are the masters rounded to bf16
        assert torch.equal(tensor, masters[name].bfloat16()), name
    assert json.loads((final / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("stage", [1, 3])
def test_bf16_mixed_killed_and_resumed_equals_the_uninterrupted_run(tiny_model_dir, tmp_path, stage):
    cfg, runner = write_run_inputs(tmp_path, tiny_model_dir, precision="bf16-mixed", zero_stage=stage, lr=1e-5)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    import subprocess

    subprocess.run(train_cmd(runner, cfg, ref), env=run_env(), check=True, capture_output=True, timeout=600)
    step = kill_after_first_checkpoint(train_cmd(runner, cfg, killed), killed, run_env(RSGRPO_TEST_STEP_SLEEP="0.5"))
    assert step < 6
    subprocess.run(train_cmd(runner, cfg, killed), env=run_env(), check=True, capture_output=True, timeout=600)
    assert metrics(ref) == metrics(killed)
    a, b = load_file(ref / "checkpoints/step-000006/model.safetensors"), \
        load_file(killed / "checkpoints/step-000006/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    state_a, state_b = (ckpt.load_state(d / "checkpoints/step-000006") for d in (ref, killed))
    assert all(torch.equal(state_a["masters"][k], state_b["masters"][k]) for k in state_a["masters"])
    for moment in ("exp_avg", "exp_avg_sq"):
        assert all(torch.equal(state_a["optimizer"][moment][k], state_b["optimizer"][moment][k])
                   for k in state_a["optimizer"][moment])


def test_gradient_checkpointing_gives_the_same_gradients():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rsgrpo.train.loss import build_batch, token_logprobs

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    model = Qwen2ForCausalLM(config).train()
    gen = torch.Generator().manual_seed(1)
    batch = build_batch([(torch.randint(1, 101, (6,), generator=gen).tolist(),
                          torch.randint(1, 101, (n,), generator=gen).tolist()) for n in (9, 4, 12)], pad_id=0)

    def grads():
        model.zero_grad()
        logp, _ = token_logprobs(model, batch, chunk_tokens=5)
        (logp * batch.completion_mask[:, 1:]).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpointed = grads()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_gradient_checkpointing_lowers_peak_memory():
    setup = """
from transformers import Qwen2Config, Qwen2ForCausalLM
from rsgrpo.train.loss import build_batch, token_logprobs
torch.manual_seed(0)
config = Qwen2Config(vocab_size=1000, hidden_size=256, intermediate_size=1024, num_hidden_layers=12,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096)
model = Qwen2ForCausalLM(config).train()
gen = torch.Generator().manual_seed(0)
batch = build_batch([(torch.randint(1, 1000, (48,), generator=gen).tolist(),
                      torch.randint(1, 1000, (1000,), generator=gen).tolist()) for _ in range(2)], pad_id=0)
"""
    work = """
logp, _ = token_logprobs(model, batch, chunk_tokens=1024)
(logp * batch.completion_mask[:, 1:]).sum().backward()
"""
    plain = peak_mb(setup, work)
    checkpointed = peak_mb(setup + """
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
""", work)
    print(f"peak MB: no checkpointing {plain:.0f}, checkpointing {checkpointed:.0f}")
    assert checkpointed < 0.4 * plain


def test_gradient_checkpointing_on_a_model_class_without_it_fails_before_loading(tmp_path):
    """The check reads config.json only: this directory holds no weights at all."""
    model_dir = tmp_path / "ctrl"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"architectures": ["CTRLLMHeadModel"], "model_type": "ctrl"}))
    cfg = from_dict(dict(model_dir=str(model_dir), gradient_checkpointing=True, engine="hf", progress=False,
                         reward_kind="test_actor_exact_42"))
    trainer = Trainer(cfg, tmp_path / "run", records=RECORDS, prompt_fn=lambda p: p)
    with pytest.raises(ValueError, match="key 'gradient_checkpointing': the model class 'CTRLLMHeadModel'"):
        trainer.setup()


def test_deepspeed_config_reduces_in_fp32_and_keeps_torch_linear_for_zero3():
    from rsgrpo.train.actor import deepspeed_config

    mixed3 = deepspeed_config(from_dict(dict(precision="bf16-mixed", zero_stage=3)))
    assert mixed3["communication_data_type"] == "fp32" and mixed3["data_types"] == {"grad_accum_dtype": "fp32"}
    assert mixed3["zero_optimization"] == {"stage": 3, "memory_efficient_linear": False}
    fp32 = deepspeed_config(from_dict(dict(precision="fp32", zero_stage=1)))
    assert "communication_data_type" not in fp32 and fp32["zero_optimization"] == {"stage": 1}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_offloaded_optimizer_state_lives_in_pinned_host_memory(stage):
    """Pageable host buffers would halve the GPU<->host bandwidth of every step's gradient and weight
    copies and serialise them; DeepSpeed reads the key as it is written here, and accepts it."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from rsgrpo.train.actor import deepspeed_config

    zero = deepspeed_config(from_dict(dict(zero_stage=stage, offload_optimizer=True)))["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    parsed = DeepSpeedZeroConfig(**zero).offload_optimizer
    assert parsed.device == "cpu" and parsed.pin_memory is True
    assert "offload_optimizer" not in deepspeed_config(from_dict(dict(zero_stage=stage)))["zero_optimization"]


ZERO3_LINEAR = """
import sys
import torch
from rsgrpo.train import actor as A
from rsgrpo.train.config import from_dict
from rsgrpo.train.distributed import collectives

original = torch.nn.functional.linear
if sys.argv[2] == "patching":  # the control: DeepSpeed's default
    ours = A.deepspeed_config
    A.deepspeed_config = lambda cfg: {**ours(cfg), "zero_optimization": {"stage": 3}}
collectives.init_distributed()
actor = A.Actor(from_dict(dict(model_dir=sys.argv[1], zero_stage=3, engine="hf")), sys.argv[1])
assert actor.engine.zero_optimization_stage() == 3
print("original" if torch.nn.functional.linear is original else "patched")
"""


def test_a_zero3_actor_leaves_torch_linear_to_the_rest_of_the_process(tiny_model_dir, tmp_path):
    """The vLLM engine shares the process: after a ZeRO-3 actor is built, F.linear is torch's own.
    The control run with DeepSpeed's default (memory_efficient_linear on) shows the patch is real."""
    import subprocess
    import sys

    script = tmp_path / "zero3_linear.py"
    script.write_text(ZERO3_LINEAR)
    seen = {}
    for mode in ("ours", "patching"):
        out = subprocess.run([sys.executable, str(script), str(tiny_model_dir), mode], capture_output=True,
                             text=True, timeout=300, env=run_env())
        assert out.returncode == 0, out.stderr[-3000:]
        seen[mode] = out.stdout.strip().splitlines()[-1]
    assert seen == {"ours": "original", "patching": "patched"}


# ------------------------------------------------------------------------------------------------
# token-budget micro-batches (micro_batch_tokens)
# ------------------------------------------------------------------------------------------------
def _gradients_of_updates(actor, pairs, advantages, *, budget, ppo_epochs, old_logp=None):
    """Loss, grad norm and the gradients of each optimizer step of one update at ``budget``; lr 0, so
    the weights (and the next update's gradients) stay those of the model as loaded. ``old_logp``:
    the old log-probs the update is given (None: its own, ratio 1)."""
    actor.cfg.micro_batch_tokens, actor.cfg.ppo_epochs = budget, ppo_epochs
    grads, step = [], actor.engine.step

    def spy():  # the step's gradients, complete once every micro-batch's backward has run
        grads.append([p.grad.detach().clone() for p in actor.model.parameters()])
        step()

    actor.engine.step = spy
    try:
        stats = actor.update(pairs, advantages, lr=0.0, old_logp=old_logp)
    finally:
        actor.engine.step = step
    return stats, grads


def _actor_and_pairs(model_dir):
    """A ZeRO-0 actor of the tiny model and 10 random pairs of completions of 1..37 tokens with random
    advantages (and the generator that made them, for more)."""
    from rsgrpo.train.actor import Actor
    from rsgrpo.train.distributed import collectives

    collectives.init_distributed()
    cfg = from_dict(dict(model_dir=str(model_dir), engine="hf", lr=1e-3, weight_decay=0.0, grad_clip=0.0,
                         micro_batch_size=4, seed=0))
    actor = Actor(cfg, str(model_dir))
    vocab = actor.model.config.vocab_size
    gen = torch.Generator().manual_seed(3)
    lengths = [(int(torch.randint(3, 9, (), generator=gen)), n) for n in (1, 37, 5, 12, 2, 30, 8, 21, 3, 16)]
    pairs = [(torch.randint(3, vocab, (p,), generator=gen).tolist(), torch.randint(3, vocab, (c,), generator=gen)
              .tolist()) for p, c in lengths]
    return actor, pairs, torch.randn(len(pairs), generator=gen), gen


def _assert_same_update(got, want, label):
    (stats, grads), (ref_stats, ref_grads) = got, want
    assert stats.loss == pytest.approx(ref_stats.loss, rel=1e-5), label
    assert stats.grad_norm == pytest.approx(ref_stats.grad_norm, rel=1e-5), label
    assert stats.clip_frac == pytest.approx(ref_stats.clip_frac, rel=1e-9), label
    assert len(grads) == len(ref_grads)
    for step_grads, ref_step_grads in zip(grads, ref_grads):
        for g, g_ref in zip(step_grads, ref_step_grads):
            torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)


def test_token_budget_micro_batches_give_the_update_of_contiguous_micro_batches(tiny_model_dir):
    """Sorting and packing the pairs by a token budget changes only how the same token sum is split:
    log-probs, loss and gradients equal those of contiguous micro-batches for a budget of one row per
    micro-batch, a middling one and one holding every row, also with the pairs shuffled, and with
    ppo_epochs 2 (the old log-probs of a no-grad pass, mapped back to their rows)."""
    from rsgrpo.train import micro_batches

    actor, pairs, advantages, gen = _actor_and_pairs(tiny_model_dir)
    longest = max(len(p) + len(c) for p, c in pairs)
    contiguous = micro_batches.plan([len(p) + len(c) for p, c in pairs], max_rows=4)
    budgets = {"one row each": 1, "middling": 2 * longest, "one batch": len(pairs) * longest}
    assert [len(micro_batches.plan([len(p) + len(c) for p, c in pairs], max_rows=len(pairs), max_tokens=b))
            for b in budgets.values()] == [len(pairs), 4, 1]  # the budgets do split differently

    actor.cfg.micro_batch_size = 4
    actor.cfg.micro_batch_tokens = None
    ref_logp, ref_entropy = actor.logprobs(pairs, with_entropy=True)
    ref = {epochs: _gradients_of_updates(actor, pairs, advantages, budget=None, ppo_epochs=epochs) for epochs in (1, 2)}
    assert len(contiguous) == 3 and abs(ref[1][0].loss) > 1e-3 and ref[1][0].grad_norm > 1e-3  # a real update
    order = torch.randperm(len(pairs), generator=gen).tolist()
    for shuffled in (False, True):
        rows = order if shuffled else list(range(len(pairs)))
        these, adv = [pairs[r] for r in rows], advantages[rows]
        for name, budget in budgets.items():
            # the row cap off (all rows), so the budget alone splits
            actor.cfg.micro_batch_size, actor.cfg.micro_batch_tokens = len(pairs), budget
            logp, entropy = actor.logprobs(these, with_entropy=True)
            for i, r in enumerate(rows):
                torch.testing.assert_close(logp[i], ref_logp[r], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(entropy[i], ref_entropy[r], rtol=1e-5, atol=1e-6)
            for epochs in (1, 2):
                got = _gradients_of_updates(actor, these, adv, budget=budget, ppo_epochs=epochs)
                _assert_same_update(got, ref[epochs], (name, shuffled, epochs))
                assert got[0].entropy_sum == pytest.approx(ref[epochs][0].entropy_sum, rel=1e-5)
                assert len(got[1]) == epochs


def test_every_policy_loss_and_aggregation_is_independent_of_the_micro_batches(tiny_model_dir):
    """For every policy loss with every aggregation it accepts (gspo: seq-mean-token-mean; the math of
    the others is checked in tests/test_loss.py), off-policy (old log-probs given, so the clips act):
    loss, clip fraction and gradients of contiguous micro-batches of 4 equal those of contiguous
    micro-batches of 3 of the shuffled pairs, and of token-budget micro-batches (one row each, a
    middling budget, one holding every row), shuffled or not: the denominators are the whole step's."""
    from rsgrpo.train.policy_losses import LOSS_AGGS, POLICY_LOSSES

    actor, pairs, advantages, gen = _actor_and_pairs(tiny_model_dir)
    longest = max(len(p) + len(c) for p, c in pairs)
    actor.cfg.micro_batch_size, actor.cfg.micro_batch_tokens = 4, None
    own, _ = actor.logprobs(pairs)
    noise = {"ppo_clip": 0.5, "gspo": 3e-3, "cispo": 0.3}  # gspo's clip range is 3e-4 / 4e-4
    order = torch.randperm(len(pairs), generator=gen).tolist()
    variants = [("contiguous 3, shuffled", 3, None, order), ("one row each, shuffled", len(pairs), 1, order),
                ("middling", len(pairs), 2 * longest, list(range(len(pairs)))),
                ("one batch, shuffled", len(pairs), len(pairs) * longest, order)]
    for kind, spec in POLICY_LOSSES.items():
        old = [logp + noise[kind] * torch.randn(logp.shape, generator=gen) for logp in own]
        for agg in spec.loss_aggs or LOSS_AGGS:
            actor.cfg.policy_loss, actor.cfg.loss_agg = kind, agg
            actor.cfg.clip_low, actor.cfg.clip_high = spec.clip_low, spec.clip_high
            actor.cfg.clip_ratio_c = 3.0 if spec.dual_clip else None
            actor.cfg.micro_batch_size = 4
            ref = _gradients_of_updates(actor, pairs, advantages, budget=None, ppo_epochs=1, old_logp=old)
            assert abs(ref[0].loss) > 1e-3 and ref[0].grad_norm > 1e-3, (kind, agg)
            assert 0 < ref[0].clip_frac < 1, (kind, agg, ref[0].clip_frac)
            for name, rows_cap, budget, rows in variants:
                actor.cfg.micro_batch_size = rows_cap
                got = _gradients_of_updates(actor, [pairs[r] for r in rows], advantages[rows], budget=budget,
                                            ppo_epochs=1, old_logp=[old[r] for r in rows])
                _assert_same_update(got, ref, (kind, agg, name))


# ------------------------------------------------------------------------------------------------
# a non-default policy loss resumes exactly
# ------------------------------------------------------------------------------------------------
def _gspo_trainer(model_dir, run_dir, **over):
    """test_checkpoint's resumable tiny trainer with gspo, seq-mean-token-mean and 2 PPO epochs."""
    from test_checkpoint import _trainer

    return _trainer(model_dir, run_dir, **{"steps": 3, "checkpoint_every": 1, "keep_resumable": 0, "seed": 1,
                                           "ppo_epochs": 2, "policy_loss": "gspo", "loss_agg": "seq-mean-token-mean",
                                           **over})


def test_a_gspo_run_resumes_bit_exactly_and_its_hash_names_the_loss(tiny_model_dir, tmp_path):
    """gspo + seq-mean-token-mean (and 2 PPO epochs, so the sequence ratio is clipped): a run resumed
    from its step-1 checkpoint ends with the uninterrupted run's weights, AdamW moments and metrics
    bit for bit; the config hash of the checkpoint is not the one of ppo_clip, so neither resumes
    the other."""
    from rsgrpo.train.config import config_hash

    a = _gspo_trainer(tiny_model_dir, tmp_path / "a").run()
    _gspo_trainer(tiny_model_dir, tmp_path / "b").run()
    for step in (3, 2):
        shutil.rmtree(tmp_path / "b" / "checkpoints" / ckpt.checkpoint_name(step))
    resumed = _gspo_trainer(tiny_model_dir, tmp_path / "b")
    resumed.run()
    assert resumed.start_step == 1
    final_a, final_b = (tmp_path / run / "checkpoints" / ckpt.checkpoint_name(3) for run in ("a", "b"))
    wa, wb = load_file(final_a / "model.safetensors"), load_file(final_b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], v) for k, v in load_file(f"{tiny_model_dir}/model.safetensors").items())
    state_a, state_b = ckpt.load_state(final_a), ckpt.load_state(final_b)
    for moment in ("exp_avg", "exp_avg_sq"):
        assert all(torch.equal(state_a["optimizer"][moment][k], state_b["optimizer"][moment][k])
                   for k in state_a["optimizer"][moment])
    rows_a, rows_b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert rows_a == rows_b and len(rows_a) == 3
    assert any(float(r["clip_frac"]) > 0 for r in rows_a)  # the second epoch's sequence ratios were clipped
    gspo = a["config_hash"]
    assert gspo == config_hash(_gspo_trainer(tiny_model_dir, tmp_path / "c").cfg)
    assert gspo != config_hash(_gspo_trainer(tiny_model_dir, tmp_path / "c", policy_loss="ppo_clip").cfg)
    with pytest.raises(ValueError, match="different config"):
        _gspo_trainer(tiny_model_dir, tmp_path / "a", steps=4, policy_loss="ppo_clip", loss_agg="token-mean").setup()
