"""``python -m rsgrpo pretrain``: a seeded tiny transformer learns the synthetic task's
demonstrations; the spec is checked; the verb and prepare-model keep to their own sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rsgrpo.prepare.model_sources import prepare_model
from rsgrpo.prepare.pretrain import check_spec

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"source": "pretrain", "steps": 120, "batch_size": 32, "hidden_size": 64, "num_heads": 2,
         "warmup_steps": 10, "lr": 3.0e-3, "seed": 1}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return prepare_model(SMALL, tmp_path_factory.mktemp("pretrain") / "model")


def test_pretraining_learns_the_demonstrations_and_is_seeded(pretrained, tmp_path):
    record = json.loads((pretrained / "pretrain.json").read_text())
    losses = [entry["loss"] for entry in record["loss"]]
    assert record["spec"]["steps"] == 120 and len(losses) == 2
    assert losses[-1] < 0.8  # the untrained model starts near ln(vocab) ~ 4.7 nats per token
    again = prepare_model(SMALL, tmp_path / "again")
    first, second = load_file(pretrained / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)  # same spec, same weights
    assert prepare_model(SMALL, pretrained) == pretrained  # prepared with this spec: kept


def test_the_pretrained_model_answers_in_the_tasks_format(pretrained):
    from rsgrpo.prepare.loading import load_policy

    model, tokenizer = load_policy(pretrained)
    ids = tokenizer("21+22=", add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).startswith("\\boxed{")


@pytest.mark.parametrize("spec, message", [
    ({"rare_frac": 1.5}, "key 'rare_frac' must be in \\[0, 1\\], got 1.5"),
    ({"rare_slip": 1}, "key 'rare_slip' must be in \\[0, 1\\), got 1.0"),
    ({"task": "sorting"}, "key 'task' must be one of \\['carry_addition'\\]"),
    ({"steps": "many"}, "key 'steps' must be a int, got 'many'"),
    ({"hidden_size": 100, "num_heads": 3}, "key 'hidden_size' must be a multiple of num_heads"),
    ({"layers": 2}, "unknown key\\(s\\) \\['layers'\\]"),
])
def test_bad_specs_name_the_key_and_value(spec, message):
    with pytest.raises(ValueError, match=message):
        check_spec({"source": "pretrain", **spec})


def test_each_verb_builds_only_its_own_sources(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = [sys.executable, "-m", "rsgrpo"]
    out = subprocess.run(run + ["pretrain", "--spec", "{source: tiny}", "--out", str(tmp_path / "a")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "spec.source must be 'pretrain'" in out.stderr
    out = subprocess.run(run + ["prepare-model", "--spec", "{source: pretrain}", "--out", str(tmp_path / "b")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "built by python -m rsgrpo pretrain" in out.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
