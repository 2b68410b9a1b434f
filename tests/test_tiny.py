"""The tiny model: seeded weights, a character-level tokenizer that transformers loads offline, and
the settings it refuses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rsgrpo.prepare.loading import load_policy
from rsgrpo.prepare.tiny import TINY_CHARS, build_tiny_model, tiny_config


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "model.safetensors"))


def test_tiny_model_is_deterministic_per_seed(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path / "a", seed=0)
    other = build_tiny_model(tmp_path / "b", seed=1)
    w0, w_again, w1 = _weights(tiny_model_dir), _weights(again), _weights(other)
    assert w0.keys() == w_again.keys()
    assert all(torch.equal(w0[k], w_again[k]) for k in w0)
    # A different seed changes every randomly initialised tensor (norm gains are all ones).
    random_keys = [k for k in w0 if not k.endswith("norm.weight")]
    assert random_keys and all(not torch.equal(w0[k], w1[k]) for k in random_keys)


def test_tiny_model_loads_offline_with_char_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    model, tok = load_policy(tiny_model_dir)
    assert 100 <= len(tok) <= 200
    assert model.config.vocab_size == len(tok)
    assert model.config.head_dim == 32 and model.config.hidden_size == 64
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id} == {1, 2, 0}
    # Every character of the vocabulary is exactly one token and round-trips.
    plain = AutoTokenizer.from_pretrained(tiny_model_dir)
    for ch in TINY_CHARS:
        ids = plain(ch, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, ch
    text = "Solve x^2 = 4.\n\\boxed{2}  {a}_b $c$"
    ids = plain(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert plain.decode(ids) == text
    # The chat template writes BOS itself and opens an assistant turn.
    chat = plain.apply_chat_template([{"role": "user", "content": "1+1?"}], tokenize=False,
                                     add_generation_prompt=True)
    assert chat == "<s><|user|>\n1+1?</s>\n<|assistant|>\n"
    chat_ids = plain(chat, add_special_tokens=False)["input_ids"]
    assert chat_ids[0] == tok.bos_token_id and chat_ids.count(tok.eos_token_id) == 1
    assert plain.decode(chat_ids, skip_special_tokens=True) == "\n1+1?\n\n"
    # The model runs and its tied head gives logits over the whole vocabulary.
    with torch.no_grad():
        logits = model(torch.tensor([chat_ids])).logits
    assert logits.shape == (1, len(chat_ids), len(tok)) and torch.isfinite(logits).all()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("kwargs, field", [
    ({"head_dim": 16, "hidden_size": 32}, "head_dim"),
    ({"hidden_size": 96}, "hidden_size"),
    ({"vocab": "bpe"}, "vocab"),
    ({"num_layers": 0}, "num_layers"),
])
def test_tiny_model_rejects_bad_settings(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=field):
        build_tiny_model(tmp_path / "m", **kwargs)


def test_tiny_config_is_the_built_models_config(tiny_model_dir):
    """The plan reads a tiny model's shape from tiny_config without building it: the same numbers."""
    import json

    saved = json.loads((tiny_model_dir / "config.json").read_text())
    expected = tiny_config().to_dict()
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings"):
        assert saved[key] == expected[key], key
