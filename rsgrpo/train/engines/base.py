"""The contract every rollout engine keeps, and the rules the engines share.

Why a module of its own: the trainer and the ``sample`` verb must not care which engine produced
the completions, and tests compare the engines token for token. All engines

* tokenize prompts themselves with the same rule (:func:`encode_prompts`), so ``prompt_token_ids``
  are exactly the ids the engine conditioned on;
* decode completions with the same tokenizer call (special tokens skipped);
* cut each completion after its first EOS (``finished=True``) or at ``max_tokens`` (``False``);
* seed every completion separately: completion ``j`` of prompt ``i`` uses the seed
  ``row_seed(params.seed, i, j)`` (or ``row_seed(seeds[i], j)`` when per-prompt seeds are given).
  A completion therefore depends on (weights, its prompt, params, its seed) but not on which other
  prompts share its batch or on ``batch_size`` -- up to floating-point effects of padding, which
  can flip a sampled token only at a near-tie of two probabilities. (A vLLM engine built for
  training may leave requests unseeded, see :class:`~rsgrpo.train.engines.vllm.VLLMEngine`);
* with ``params.logprobs`` return each sampled token's log-prob under the distribution it was
  sampled from (after temperature), which the trainer compares with its own
  (:mod:`rsgrpo.train.mismatch`).

Prompt tokenization rule (``add_special_tokens`` option, default ``None`` = automatic): a prompt
that already starts with the tokenizer's BOS text came from a chat template (templates that need
BOS write it themselves), so it is encoded with ``add_special_tokens=False``; any other prompt is
encoded with the tokenizer's default special tokens (a plain prompt gets BOS where the model expects
one). ``True``/``False`` force either behaviour. Pre-tokenized prompts (lists of ids) are used as is.
"""

from __future__ import annotations

import abc
import hashlib
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
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
    logprobs: bool = False     # return each sampled token's log-prob (Completion.logprobs)

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
    # log-prob of each token of token_ids under the sampling distribution (after temperature);
    # None unless SamplingParams.logprobs
    logprobs: list[float] | None = None


class GenerationAbandoned(Exception):
    """``generate`` stopped early because its ``should_stop`` said so; no completion is returned."""


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


def cut_at_eos(ids: Sequence[int], eos: set[int], max_tokens: int) -> tuple[list[int], bool]:
    """``(ids up to and including the first EOS, True)``, or the first ``max_tokens`` ids and False:
    the one rule every engine applies to its raw output, so ``finished`` means the same for all."""
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
                 seeds: Sequence[int] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list[list[Completion]]:
        """``[len(prompts)][params.n]`` completions.

        ``seeds`` (optional, one per prompt) replaces ``params.seed`` for that prompt's samples;
        the ``sample`` verb uses it so a problem's samples do not depend on how problems are batched.
        ``should_stop`` (optional, cheap, no collectives): asked as generation goes (between decode
        steps or batches); once it says True the engine drops the rest and raises
        :class:`GenerationAbandoned` -- a cluster's time-limit warning then costs no more than a
        checkpoint, not the rest of a generation round.
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

    def sleep(self) -> None:  # noqa: B027 - optional hook: an engine without memory to free keeps this no-op
        """Free what the engine holds on the GPU while the trainer updates the weights.

        Part of every engine's interface, so the trainer calls it plainly instead of asking which
        engine it has; a no-op here (the transformers engine shares the trainer's model or runs on
        CPU) and in a vLLM engine without sleep mode. :meth:`wake_up` undoes it.
        """

    def wake_up(self, tags: Sequence[str] | None = None) -> None:  # noqa: B027 - optional hook: see sleep
        """Take back what :meth:`sleep` freed: ``("weights",)`` the weights' memory only (to load new
        weights into it before the KV cache is mapped), ``("kv_cache",)`` the KV cache, None both.

        Safe to call on an engine that is awake. After :meth:`sleep` the weights' contents are gone
        (vLLM's sleep level 2): the trainer always loads weights before it wakes the KV cache.
        """

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


def device_name(device: torch.device | str) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` for a GPU, ``cpu`` otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
