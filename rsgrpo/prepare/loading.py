"""Loading what ``prepare-model`` wrote: tokenizer, policy, dtype, weights one tensor at a time, and
the config.json files of the paper's models that ship with the package.

Why one module: training, rollouts, sampling and the plan all read prepared checkpoints, and they
must read them the same way (safetensors only, left padding, the checkpoint's own dtype), whatever
source (:mod:`rsgrpo.prepare.model_sources`) built them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# config.json of the paper's models (architecture numbers only, no weights): the plan and `random` specs
MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"


def shipped_config_path(hub_id: str) -> Path:
    """Where the config.json of hub model ``hub_id`` ships in the package (it may not exist)."""
    return MODEL_CONFIGS / (hub_id.replace("/", "--") + ".json")


def shipped_config(hub_id: str, overrides: dict | None = None) -> dict:
    """The shipped config.json of ``hub_id`` with ``overrides`` applied: a paper model's shape without
    hub access (ValueError listing the shipped ones when it is not shipped)."""
    path = shipped_config_path(hub_id)
    if not path.is_file():
        known = sorted(p.stem.replace("--", "/") for p in MODEL_CONFIGS.glob("*.json"))
        raise ValueError(f"no config.json of {hub_id!r} ships in rsgrpo/prepare/model_configs "
                         f"(known: {', '.join(known)})")
    return {**json.loads(path.read_text()), **(overrides or {})}


def as_torch_dtype(dtype):
    """``dtype`` (a torch dtype or its name, e.g. ``"bf16"``) as a torch dtype: specs and configs name
    dtypes as strings, transformers wants the object."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def load_tokenizer(model_dir: str | os.PathLike):
    """Tokenizer of a checkpoint, ready for batched generation: left padding, a pad token.

    Left padding keeps every prompt's last token adjacent to the first generated one; models without
    a pad token (many base LLMs) reuse EOS for padding, which is safe because padded positions are
    masked by the attention mask.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def checkpoint_dtype(model_dir: str | os.PathLike) -> str:
    """The dtype a checkpoint's weights are stored in (config.json ``dtype``/``torch_dtype``; float32
    when it says nothing): the model's compute dtype for sampling."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def load_policy(model_dir: str | os.PathLike, *, dtype="float32", device="cpu", zero3_config: dict | None = None):
    """Load ``(model, tokenizer)`` from a prepared checkpoint directory.

    Weights come from safetensors only (``use_safetensors=True``): a pickle file is never unpickled.
    The tokenizer is left-padded with a pad token (see :func:`load_tokenizer`). ``dtype="auto"``: the
    checkpoint's own dtype (:func:`checkpoint_dtype`).

    ``zero3_config``: the DeepSpeed config (ZeRO stage 3) of the engine the model is for. The model
    is then built under ``deepspeed.zero.Init`` with it: every parameter is partitioned over the
    ranks as soon as its module is constructed, and the checkpoint is copied into the partitions
    (gathered one module at a time, written by rank 0, scattered again), so no rank ever holds the
    whole model on its device. This is transformers' own ZeRO-3 loading, switched on for this call
    only (its ``HfDeepSpeedConfig`` is a process-wide switch: left on, every later
    ``from_pretrained`` -- a reference model, an engine's copy -- would be partitioned too). Every
    rank must call it (a collective); ``device`` does not apply (partitions live on the rank's own
    accelerator). The config's ``zero_optimization.memory_efficient_linear`` decides whether
    ``zero.Init`` replaces ``torch.nn.functional.linear``.
    """
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"model_dir {str(model_dir)!r} is not a checkpoint directory (no config.json)")
    if dtype == "auto":
        dtype = checkpoint_dtype(model_dir)
    tok = load_tokenizer(model_dir)
    if zero3_config is not None:
        model = _load_partitioned(model_dir, as_torch_dtype(dtype), zero3_config)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=as_torch_dtype(dtype), use_safetensors=True)
        model.to(device)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def _load_partitioned(model_dir: Path, dtype, ds_config: dict):
    """``from_pretrained`` under ZeRO-3 (see :func:`load_policy`'s ``zero3_config``)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    if stage != 3:
        raise ValueError(f"zero3_config: a DeepSpeed config of ZeRO stage 3 is needed, got stage {stage}")
    switch = HfDeepSpeedConfig(ds_config)  # transformers holds it by weak reference only
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, use_safetensors=True)
    finally:
        unset_hf_deepspeed_config()
        del switch
    _restore_computed_buffers(model)
    return model


def _restore_computed_buffers(model) -> None:
    """Give the buffers a model computes in its constructor (not in the checkpoint: RoPE's
    ``inv_freq``) the dtype and values a plain ``from_pretrained`` gives them.

    ``zero.Init`` casts every floating tensor created during construction to the training dtype, so
    under bf16 RoPE's ``inv_freq`` (fp32 in a plain load, and in vLLM) came out in bf16, and every
    position's rotation with it. The plain dtypes come from the same model built on the meta device
    (no memory); each such buffer is re-created in its plain dtype and its values recomputed by the
    model's own ``_init_weights`` -- which is where a plain load takes them from -- for modules
    without parameters of their own (rotary embeddings), so no weight is touched.
    """
    import torch
    from transformers import AutoModelForCausalLM

    non_persistent = {f"{prefix}.{name}" if prefix else name
                      for prefix, module in model.named_modules() for name in module._non_persistent_buffers_set}
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.config, dtype=model.dtype)
    plain_dtypes = {name: buf.dtype for name, buf in plain.named_buffers()}
    owners = {}
    for name, buf in list(model.named_buffers()):
        want = plain_dtypes.get(name)
        if name not in non_persistent or want is None or buf.dtype == want or not buf.is_floating_point():
            continue
        prefix, _, leaf = name.rpartition(".")
        owner = model.get_submodule(prefix)
        owner._buffers[leaf] = torch.empty_like(buf, dtype=want)
        owners[prefix] = owner
    with torch.no_grad():
        for owner in owners.values():
            if not list(owner.parameters(recurse=False)):
                model._init_weights(owner)


def check_gradient_checkpointing(model_dir: str | os.PathLike) -> None:
    """Refuse ``gradient_checkpointing`` for a model class that lacks it, reading only config.json
    (so the error comes before any weights load)."""
    import transformers

    config = json.loads((Path(model_dir) / "config.json").read_text())
    architecture = (config.get("architectures") or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is None or not getattr(model_class, "supports_gradient_checkpointing", False):
        raise ValueError(f"key 'gradient_checkpointing': the model class {architecture!r} of "
                         f"{str(model_dir)!r} does not support gradient checkpointing; set "
                         "gradient_checkpointing: false")


class SafetensorsWeights:
    """The tensors of a checkpoint directory's safetensors file(s) (or of one file), read one at a
    time by name, so a caller never holds a second full copy of the model."""

    def __init__(self, source: str | os.PathLike):
        source = Path(source)
        index = source / "model.safetensors.index.json"
        if source.is_file():
            files = {None: source}
        elif index.is_file():
            files = {name: source / file for name, file in json.loads(index.read_text())["weight_map"].items()}
        else:
            files = {None: source / "model.safetensors"}
        self.source, self.files = source, files

    def __getitem__(self, name: str):
        from safetensors import safe_open

        path = self.files.get(name, self.files.get(None))
        if path is None or not path.is_file():
            raise KeyError(f"{str(self.source)!r} holds no tensor {name!r}")
        with safe_open(str(path), framework="pt") as handle:
            if name not in handle.keys():
                raise KeyError(f"{str(path)!r} holds no tensor {name!r}")
            return handle.get_tensor(name)
