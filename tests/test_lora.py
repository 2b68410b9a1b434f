"""LoRA training (rsgrpo/train/lora.py, the train config's ``lora`` block): only the adapters train and
the base never moves, the engine and the checkpoints get the merged weights (PEFT's own merge), a
run resumes bit-exactly, two ranks with ZeRO-3 follow one rank, bf16-mixed keeps fp32 adapters, and
bad settings are refused naming the key before any weights load."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from train_helpers import (  # noqa: E402
    TIMING_COLUMNS,
    assert_rows_close,
    kill_after_first_checkpoint,
    metrics,
    run_checked,
    run_env,
    train_cmd,
    weights,
    write_run_inputs,
)

from rsgrpo.prepare.loading import load_policy  # noqa: E402
from rsgrpo.train import checkpoint as ckpt  # noqa: E402
from rsgrpo.train import lora  # noqa: E402
from rsgrpo.train.config import config_hash, from_dict  # noqa: E402
from rsgrpo.train.distributed import zero_state  # noqa: E402
from rsgrpo.train.rewards import register  # noqa: E402
from rsgrpo.train.trainer import Trainer  # noqa: E402

RECORDS = [{"id": f"r{i}", "problem": f"{i}", "answer": "1"} for i in range(4)]
LORA = {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}


@register("test_lora_odd_length")
def odd_length(*, completions, answers, problems, records):
    return [float(len(t) % 2) for t in completions]


def _trainer(model_dir, run_dir, **over):
    cfg = dict(model_dir=str(model_dir), steps=4, prompts_per_step=2, samples_per_prompt=3, max_new_tokens=5,
               lr=1e-2, engine="hf", progress=False, checkpoint_every=2, keep_last=0, logging=[],
               reward_kind="test_lora_odd_length", lora=LORA)
    cfg.update(over)
    return Trainer(from_dict(cfg), run_dir, records=RECORDS, prompt_fn=lambda p: f"Q{p}:")


def _checkpoint(run, step):
    return run / "checkpoints" / ckpt.checkpoint_name(step)


# ------------------------------------------------------------------------------------------------
# the config
# ------------------------------------------------------------------------------------------------
BASE = {"model_dir": "m", "train_data": "d.jsonl"}


@pytest.mark.parametrize("block,key,fragment", [
    ({"rank": 0}, "lora.rank", "integer >= 1"),
    ({"rank": 2.5}, "lora.rank", "integer >= 1"),
    ({"alpha": 0}, "lora.alpha", "> 0"),
    ({"dropout": 1.0}, "lora.dropout", "[0, 1)"),
    ({"target_modules": "all"}, "lora.target_modules", "'all-linear' or a list"),
    ({"target_modules": []}, "lora.target_modules", "non-empty list"),
    ({"target_modules": ["q_proj", "lm_head"]}, "lora.target_modules", "output head cannot be merged"),
    ({"rnak": 4}, "lora.rnak", "unknown key"),
    (["q_proj"], "lora", "must be of type dict or null"),
])
def test_bad_lora_settings_are_refused_naming_the_key(block, key, fragment):
    with pytest.raises(ValueError, match=rf"key '{key}'") as err:
        from_dict({**BASE, "lora": block}, "grid.yaml")
    assert fragment in str(err.value) and str(err.value).startswith("grid.yaml:")


def test_the_lora_block_gets_its_defaults_and_enters_the_hash_only_when_set():
    cfg = from_dict({**BASE, "lora": {"rank": 8}})
    assert cfg.lora == {"rank": 8, "alpha": 32.0, "dropout": 0.0, "target_modules": "all-linear"}
    full = from_dict(dict(BASE))
    assert full.lora is None
    # full fine-tuning keeps the hash it had before the key existed: its runs still resume
    assert config_hash(full) == config_hash(from_dict({**BASE, "lora": None}))
    hashes = {config_hash(from_dict({**BASE, "lora": b})) for b in ({"rank": 8}, {"rank": 4}, {"rank": 8, "alpha": 8})}
    assert len(hashes) == 3 and config_hash(full) not in hashes


def test_targets_that_match_no_layer_are_refused_before_any_weights_load(tiny_model_dir, tmp_path, monkeypatch):
    lora.check_targets({"target_modules": "all-linear"}, str(tiny_model_dir))
    lora.check_targets({"target_modules": ["q_proj", "mlp.down_proj"]}, str(tiny_model_dir))
    with pytest.raises(ValueError, match=r"key 'lora.target_modules': matches no linear layer .* \(got 'qkv_proj'\)"):
        lora.check_targets({"target_modules": ["q_proj", "qkv_proj"]}, str(tiny_model_dir), "grid.yaml")

    def no_loading(*args, **kwargs):
        raise AssertionError("weights loaded before the targets were checked")

    monkeypatch.setattr("rsgrpo.train.actor.Actor.__init__", no_loading)
    with pytest.raises(ValueError, match="matches no linear layer"):
        _trainer(tiny_model_dir, tmp_path / "run", lora={"target_modules": ["c_attn"]}).setup()


# ------------------------------------------------------------------------------------------------
# merged weights
# ------------------------------------------------------------------------------------------------
def _peft_model(model_dir, dtype="float32"):
    model, _ = load_policy(model_dir, dtype=dtype)
    torch.manual_seed(0)
    peft_model = lora.attach(model, {**LORA, "dropout": 0.0})
    with torch.no_grad():  # B starts at zero: give the adapters a value whose merge shows
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return peft_model


def test_merged_weights_equal_peft_merge_and_the_base_never_moves(tiny_model_dir):
    peft_model = _peft_model(tiny_model_dir)
    base_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
    reference = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    for _ in range(20):  # many refreshes
        merged = dict(lora.merged_weights(peft_model.named_parameters(), {**LORA}))
    base = load_file(tiny_model_dir / "model.safetensors")
    assert merged.keys() == base.keys()  # the base model's names
    for name, tensor in merged.items():
        assert torch.equal(tensor, reference[name]), name
    changed = [n for n in merged if not torch.equal(merged[n], base[n])]
    assert sorted({n.split(".")[-2] for n in changed}) == ["down_proj", "q_proj", "v_proj"]
    for name, tensor in peft_model.named_parameters():
        if not tensor.requires_grad:
            assert torch.equal(tensor, base_before[name]), name  # bit-identical after the refreshes


def test_merged_weights_in_bf16_round_once(tiny_model_dir):
    """bf16 base: the merge is computed in fp32 and rounded once; PEFT's in-place merge rounds the
    delta to bf16 first, so it may differ by one bf16 step, never more."""
    peft_model = _peft_model(tiny_model_dir, dtype="bfloat16")
    merged = dict(lora.merged_weights(peft_model.named_parameters(), LORA))
    reference = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    for name, tensor in merged.items():
        assert tensor.dtype == torch.bfloat16
        step = reference[name].abs().to(torch.float32) * 2 ** -7 + 1e-30
        assert bool(((tensor.float() - reference[name].float()).abs() <= step).all()), name


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
def test_only_adapters_train_and_checkpoints_hold_merged_weights_and_small_resume_state(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    trainer = _trainer(tiny_model_dir, run)
    manifest = trainer.run()
    assert manifest["config"]["lora"] == {**LORA, "alpha": 8.0, "dropout": 0.0}  # the manifest records the settings
    base = load_file(tiny_model_dir / "model.safetensors")
    model = trainer.actor.model
    for name, param in model.named_parameters():
        if not param.requires_grad:  # the frozen base: bit-identical to the initial model
            hf_name = name.removeprefix(lora.PEFT_PREFIX).replace(".base_layer.", ".")
            assert torch.equal(param.detach(), base[hf_name]), name
    trained = dict(lora.adapter_values(model))
    optimized = {id(p) for group in trainer.actor.inner_optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for _, p in zero_state.trainable_parameters(model)}  # the adapters, nothing else
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert any(float(t.abs().max()) > 0 for n, t in trained.items() if ".lora_B." in n)  # B left zero: it trained
    # the evaluation checkpoint: merged weights that load like any model, different from the base only
    # in the adapted layers
    saved = load_file(_checkpoint(run, 4) / "model.safetensors")
    assert saved.keys() == base.keys()
    moved = {n.split(".")[-2] for n in saved if not torch.equal(saved[n], base[n])}
    assert moved == {"q_proj", "v_proj", "down_proj"}
    merged = dict(lora.merged_weights(model.named_parameters(), trainer.cfg.lora))
    for name in saved:
        assert torch.equal(saved[name], merged[name]), name
    loaded, _ = load_policy(_checkpoint(run, 4), dtype="float32")
    assert torch.equal(loaded.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                       merged["model.layers.0.self_attn.q_proj.weight"])
    # the resume state: the adapters (masters) and their moments only
    state = ckpt.load_state(_checkpoint(run, 4))
    assert set(state["masters"]) == set(trained) == set(state["optimizer"]["exp_avg"])
    for name, value in trained.items():
        assert torch.equal(state["masters"][name], value), name
    assert state["config_hash"] == config_hash(trainer.cfg)


@pytest.mark.parametrize("precision,stage,checkpointing", [("fp32", 0, False), ("bf16-mixed", 1, False),
                                                          ("fp32", 2, True)])
def test_a_resumed_lora_run_is_bit_exact(tiny_model_dir, tmp_path, precision, stage, checkpointing):
    """Stop after 2 steps, resume to 4: weights (merged), adapters, moments and metrics equal the run that
    went through. bf16-mixed: the base stays in bf16 untouched, the adapters' fp32 masters are resumed.
    Also with ZeRO-2 and gradient checkpointing."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    over = dict(precision=precision, zero_stage=stage, gradient_checkpointing=checkpointing)
    _trainer(tiny_model_dir, straight, **over).run()
    _trainer(tiny_model_dir, resumed, steps=2, **over).run()
    again = _trainer(tiny_model_dir, resumed, **over)
    again.run()
    assert again.start_step == 2
    a, b = ckpt.load_state(_checkpoint(straight, 4)), ckpt.load_state(_checkpoint(resumed, 4))

    def rows(state):  # without the wall-clock columns; nan compares as text
        return [{k: str(v) for k, v in row.items() if k not in TIMING_COLUMNS} for row in state["metrics"]]

    assert rows(a) == rows(b) and len(rows(a)) == 4
    for name in a["masters"]:
        assert torch.equal(a["masters"][name], b["masters"][name]), name
    for moment in ("exp_avg", "exp_avg_sq"):
        for name in a["optimizer"][moment]:
            assert torch.equal(a["optimizer"][moment][name], b["optimizer"][moment][name]), (moment, name)
    wa, wb = (load_file(_checkpoint(run, 4) / "model.safetensors") for run in (straight, resumed))
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    if precision == "bf16-mixed":
        base, _ = load_policy(tiny_model_dir, dtype="bfloat16")
        frozen = {n.removeprefix(lora.PEFT_PREFIX).replace(".base_layer.", "."): p
                  for n, p in again.actor.model.named_parameters() if not p.requires_grad}
        for name, tensor in base.state_dict().items():
            if name in frozen:
                assert frozen[name].dtype == torch.bfloat16 and torch.equal(frozen[name].detach(), tensor), name
        assert all(t.dtype == torch.float32 for t in a["masters"].values())


def test_the_engine_gets_the_merged_weights_under_zero3(tiny_model_dir, tmp_path):
    """ZeRO-3: the module holds a partition, so the engine keeps a full model of its own; after each
    update it holds what PEFT's own merge makes of the gathered base and adapters."""
    trainer = _trainer(tiny_model_dir, tmp_path / "run", zero_stage=3, steps=2)
    trainer.setup()
    try:
        for step in range(2):
            trainer.train_step(step)
        engine_weights = {k: v.clone() for k, v in trainer.engine.model.state_dict().items()}
        gathered = dict(zero_state.gathered_parameters(trainer.actor.model, to_host=True))
    finally:
        trainer.engine.close()
    reference, _ = load_policy(tiny_model_dir, dtype="float32")
    reference = lora.attach(reference, trainer.cfg.lora)
    missing, _ = reference.load_state_dict(gathered, strict=False)
    assert not [m for m in missing if m in dict(reference.named_parameters())]
    merged = reference.merge_and_unload().state_dict()
    base = load_file(tiny_model_dir / "model.safetensors")
    assert base.keys() <= engine_weights.keys()
    for name in base:
        assert torch.equal(engine_weights[name], merged[name]), name
    q, k = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    assert not torch.equal(engine_weights[q], base[q]) and torch.equal(engine_weights[k], base[k])


def test_two_ranks_with_zero3_follow_one_rank_and_resume_bit_exactly_after_a_kill(tiny_model_dir, tmp_path):
    """The LoRA run of 2 ranks under ZeRO-3 follows the 1-rank ZeRO-0 run to float tolerance; killed
    after its first checkpoint and started again, it ends bit-identical to the run that went through."""
    settings = dict(lora=LORA, lr=1e-2)
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
    cfg1, runner = write_run_inputs(tmp_path / "one", tiny_model_dir, **settings)
    cfg2, _ = write_run_inputs(tmp_path / "two", tiny_model_dir, zero_stage=3, **settings)
    one, two, killed = tmp_path / "run1", tmp_path / "run2", tmp_path / "killed"
    run_checked(train_cmd(runner, cfg1, one))
    run_checked(train_cmd(runner, cfg2, two, "--nproc", "2"))
    assert_rows_close(metrics(one), metrics(two), rel=1e-4)
    w1, w2 = weights(one, 6), weights(two, 6)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=2e-5)
    base = load_file(tiny_model_dir / "model.safetensors")
    assert max(float((w1[n] - base[n]).abs().max()) for n in w1) > 1e-3  # it trained
    killed_at = kill_after_first_checkpoint(train_cmd(runner, cfg2, killed, "--nproc", "2"), killed, run_env())
    assert killed_at < 6
    out = run_checked(train_cmd(runner, cfg2, killed, "--nproc", "2"))
    assert "resuming from" in out.stderr
    assert metrics(killed) == metrics(two)
    wk = weights(killed, 6)
    for name in w2:
        assert torch.equal(wk[name], w2[name]), name
    a, b = ckpt.load_state(_checkpoint(two, 6)), ckpt.load_state(_checkpoint(killed, 6))
    for name in a["masters"]:
        assert torch.equal(a["masters"][name], b["masters"][name]), name
