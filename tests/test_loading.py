"""Loading prepared checkpoints: dtypes, the shipped paper-model configs, weights one tensor at a time,
and the errors that come before any weights load."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from rsgrpo.prepare.loading import (
    MODEL_CONFIGS,
    SafetensorsWeights,
    as_torch_dtype,
    check_gradient_checkpointing,
    checkpoint_dtype,
    load_policy,
    shipped_config,
    shipped_config_path,
)


def test_dtype_names_and_the_checkpoints_own_dtype(tmp_path, tiny_model_dir):
    assert as_torch_dtype("bf16") is torch.bfloat16 and as_torch_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="dtype must be one of .* got 'int8'"):
        as_torch_dtype("int8")
    assert checkpoint_dtype(tiny_model_dir) == "float32"
    for written, read in (({"dtype": "bfloat16"}, "bfloat16"), ({"torch_dtype": "float16"}, "float16"),
                          ({"dtype": "float64"}, "float32"), ({}, "float32")):
        (tmp_path / "config.json").write_text(json.dumps(written))
        assert checkpoint_dtype(tmp_path) == read, written


def test_shipped_configs_are_found_by_hub_id():
    path = shipped_config_path("Qwen/Qwen2.5-Math-7B")
    assert path.parent == MODEL_CONFIGS and path.is_file()
    assert shipped_config("Qwen/Qwen2.5-Math-7B", {"num_hidden_layers": 1})["num_hidden_layers"] == 1
    with pytest.raises(ValueError, match="no config.json of 'Qwen/Qwen9' ships in .*known: .*Qwen/Qwen2.5-Math-7B"):
        shipped_config("Qwen/Qwen9")


def test_safetensors_weights_read_one_tensor_by_name(tiny_model_dir):
    weights = SafetensorsWeights(tiny_model_dir)
    reference = load_file(str(tiny_model_dir / "model.safetensors"))
    name = "model.embed_tokens.weight"
    assert torch.equal(weights[name], reference[name])
    assert torch.equal(SafetensorsWeights(tiny_model_dir / "model.safetensors")[name], reference[name])
    with pytest.raises(KeyError, match="holds no tensor 'nope'"):
        weights["nope"]


def test_loading_refuses_a_directory_without_a_checkpoint(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="is not a checkpoint directory \\(no config.json\\)"):
        load_policy(tmp_path)
    check_gradient_checkpointing(tiny_model_dir)  # Qwen2 supports it
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchModel"]}))
    with pytest.raises(ValueError, match="'NoSuchModel' .* does not support gradient checkpointing"):
        check_gradient_checkpointing(tmp_path)


ZERO3_LOAD = """
import json, sys
import deepspeed, torch
from safetensors.torch import load_file
from transformers.integrations import is_deepspeed_zero3_enabled
from rsgrpo.prepare.loading import load_policy
from rsgrpo.train.actor import deepspeed_config
from rsgrpo.train.config import from_dict
from rsgrpo.train.distributed import collectives

model_dir = sys.argv[1]
collectives.init_distributed()
source = load_file(model_dir + "/model.safetensors")
report = {}
for precision, dtype in (("fp32", "float32"), ("bf16-mixed", "bfloat16")):
    cfg = from_dict(dict(model_dir=model_dir, zero_stage=3, precision=precision))
    model, _ = load_policy(model_dir, dtype=dtype, zero3_config=deepspeed_config(cfg))
    plain, _ = load_policy(model_dir, dtype=dtype)  # after it: the ZeRO-3 switch is off again
    params = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        exact = all(torch.equal(p, source[n].to(p.dtype)) for n, p in params.items())
    report[precision] = {
        "partitioned": all(p.ds_status.name == "NOT_AVAILABLE" and p.numel() == 0 for p in params.values()),
        "elements": sum(p.ds_numel for p in params.values()), "exact": exact,
        "tied": model.lm_head.weight is model.model.embed_tokens.weight,
        "buffers_as_plain": [(n, str(a.dtype), torch.equal(a, b))
                             for (n, a), (_, b) in zip(model.named_buffers(), plain.named_buffers())],
        "plain_is_plain": not any(hasattr(p, "ds_id") for p in plain.parameters()),
        "switch_left_on": is_deepspeed_zero3_enabled()}
print(json.dumps(report))
"""


def test_a_zero3_load_is_partitioned_at_construction_and_exact(tiny_model_dir, tmp_path):
    """load_policy(zero3_config=...) hands over a model whose parameters were partitioned as they were
    built (no local data, the whole shape in ds_numel), holding exactly the checkpoint's weights (its
    bf16 rounding under bf16), the embeddings still tied, and RoPE's computed buffers in fp32 with the
    plain load's values (zero.Init alone would have made them bf16). transformers' ZeRO-3 switch is
    off afterwards: the next plain load is a plain model."""
    import subprocess
    import sys

    from train_helpers import run_env

    script = tmp_path / "zero3_load.py"
    script.write_text(ZERO3_LOAD)
    out = subprocess.run([sys.executable, str(script), str(tiny_model_dir)], capture_output=True, text=True,
                         timeout=300, env=run_env())
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    elements = sum(t.numel() for t in load_file(str(tiny_model_dir / "model.safetensors")).values())
    for precision, r in report.items():
        assert r["partitioned"] and r["elements"] == elements and r["exact"] and r["tied"], precision
        assert r["buffers_as_plain"] == [["model.rotary_emb.inv_freq", "torch.float32", True],
                                         ["model.rotary_emb.original_inv_freq", "torch.float32", True]], precision
        assert r["plain_is_plain"] and not r["switch_left_on"], precision


def test_a_zero3_load_needs_a_stage_3_config(tiny_model_dir):
    with pytest.raises(ValueError, match="zero3_config: a DeepSpeed config of ZeRO stage 3 is needed, got stage 2"):
        load_policy(tiny_model_dir, zero3_config={"zero_optimization": {"stage": 2}})
