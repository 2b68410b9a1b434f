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
