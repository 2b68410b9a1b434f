"""Memory and compute of one training or sampling job, from the model's shape and the job's settings.

Pure arithmetic (no I/O; torch and transformers only inside :func:`meta_shape`): ``rsgrpo.plan`` feeds
it the shapes (from a model's config.json) and the workflow's settings and prints the plan, and the
trainer calls :func:`colocated_engine_share` so that its vLLM engine takes the GPU share the plan priced.

Model states follow DeepSpeed's own accounting (``estimate_zero2_model_states_mem_needs`` and
``estimate_zero3_model_states_mem_needs``, no CPU offload unless ``offload_optimizer``): in bf16-mixed
every rank holds the bf16 weights (ZeRO 1-2) or its partition plus the largest layer gathered
(ZeRO-3), and 18 bytes per parameter / ranks of bf16 and fp32 gradients, fp32 master weights and the
two AdamW moments. fp32 training has no master copy: 4 bytes of weights, 4 of gradients, 8 of AdamW
state per parameter, partitioned as the stage says. With ``kl_coef`` > 0 every rank also holds the
frozen reference model, a full replica in the compute dtype (``rsgrpo.train.actor``).

A LoRA job (``TrainJob.lora``) freezes the base: it stays in the compute dtype (partitioned under
ZeRO-3 like any weight) with no gradients, fp32 masters or AdamW state; the adapters
(:mod:`rsgrpo.capacity_lora`) are the trainable parameters and get all of those, partitioned as the
stage says, in the formulas above with the adapters' count in place of the model's. Its activations
are full fine-tuning's plus the adapters' (:func:`rsgrpo.capacity_lora.layer_activation_bytes`); its
update computes no weight gradients of the base.

Activations of one micro-batch at the longest sequence, per token and layer, are the tensors the
backward pass of a Llama/Qwen decoder layer keeps: the two RMSNorm inputs and outputs, q/k/v (grouped
keys and values), the attention output, the MLP input, gate, up, SiLU and product (the attention
itself is SDPA's memory-efficient kernel: no [L, L] scores are kept), plus a few hidden-size tensors
per token outside the layers (final norm, the head's input). With gradient checkpointing a layer keeps
only its input, and the backward pass rebuilds one layer at a time. The output layer runs over
``logprob_chunk_tokens`` completion tokens at a time (``rsgrpo.train.loss``): float32 logits and their
gradient, [chunk, vocabulary] each. The
update's peak is the larger of its two phases: the output layer over a chunk (everything kept, plus
the chunk) or, with checkpointing, a layer rebuilt in the backward pass. The element counts were
checked against measured CPU peaks (tests/test_capacity.py).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

from rsgrpo import capacity_lora
from rsgrpo.capacity_lora import Lora

GB = 1e9

BYTES = {"fp32": 4, "bf16-mixed": 2}  # compute dtype bytes per element, by precision
# Elements a decoder layer keeps for its backward pass, per token, as multiples of the hidden size
# (RMSNorm inputs/outputs x2, q, attention output, o_proj and MLP inputs), of the key/value width
# (k, v) and of the MLP width (gate, up, SiLU(gate), product).
ACT_PER_HIDDEN = 8
ACT_PER_KV = 2
ACT_PER_INTERMEDIATE = 4
ACT_OUTSIDE_LAYERS = 4   # per token, x hidden size: final norm input and output, the head's gathered input
RECOMPUTE_FACTOR = 1.0   # checkpointing: the rebuilt layer's activations (its gradients replace them as it goes)
LOGPROB_COPIES = 2       # float32 [chunk, vocab] tensors alive at once: the logits and their gradient

# --- a colocated vLLM engine (colocated_engine_share, engine_memory) ---------------------------------
# vLLM sizes its KV cache as gpu_memory_utilization x the GPU's memory minus what it measures before:
# its weights, the activation peak of a profile run over max_num_batched_tokens tokens, and (depending
# on the version) the CUDA graphs it captures. Its default for the LLM class on GPUs of >= 70 GiB that
# are not A100s is max_num_batched_tokens 16384 and max_num_seqs 1024 (vllm/engine/arg_utils.py,
# EngineArgs.get_batch_defaults; 8192 and 256 elsewhere); the trainer sets neither.
VLLM_PROFILE_TOKENS = 16384
VLLM_MAX_SEQS = 1024
# Live elements per token of a no-grad layer forward at its widest point: the MLP's fused gate/up
# output (2 x intermediate) and SiLU x up (1 x intermediate), the residual stream, the norm output,
# the attention output and q (4 x hidden).
VLLM_ACT_PER_INTERMEDIATE = 3
VLLM_ACT_PER_HIDDEN = 4
# The sampler's float32 [max_num_seqs, vocab] tensors alive at once in the profile run: logits,
# probabilities and the processed log-probs the trainer asks for (logprobs_mode processed_logprobs).
VLLM_SAMPLER_COPIES = 3
# CUDA graphs of the decode batch sizes: vLLM logs "Graph capturing finished ..., took 0.13-0.21 GiB"
# for 1B models (vllm-project/vllm PR 11349) and up to about 1 GiB for 7-8B models; 1.5 GB covers them.
VLLM_CUDA_GRAPH_BYTES = 1.5e9
# What else a training rank keeps on its GPU besides the priced tensors, while its engine generates:
# the CUDA context with cuBLAS workspaces (about 0.5-1 GB per process on H100 with CUDA 12 lazy module
# loading; vLLM's own log adds "non_torch_memory takes 0.16GiB"), NCCL communicators' buffers (the
# trainer's group and vLLM's external-launcher group, about 0.5 GB), DeepSpeed's gradient reduce bucket
# (reduce_bucket_size default 5e8 elements; 2 GB at the fp32 communication_data_type of bf16-mixed) and
# the caching allocator's fragmentation (about 3% of an 80 GB GPU). A sum of estimates, not a
# measurement: scripts/gpu_check.py prints a rank's measured peak next to the plan's.
MARGIN_BYTES = 1.0e9 + 0.5e9 + 2.0e9 + 2.5e9
MIN_ENGINE_SHARE = 0.05  # below it the engine holds its weights and hardly any KV cache
MAX_ENGINE_SHARE = 0.95  # vLLM's own checks expect some memory left to the process

# --- checkpoints -----------------------------------------------------------------------------------
# Bytes per parameter of a resumable checkpoint (rsgrpo.train.checkpoint): the HF weights in the
# compute dtype plus the resume state, fp32 master weights (bf16-mixed only) and the two AdamW moments.
CHECKPOINT_BYTES = {"bf16-mixed": 2 + 4 + 8, "fp32": 4 + 8}
# A LoRA run's resume state per adapter parameter: fp32 values (in either precision: the adapters are
# not in the merged HF weights) and the two AdamW moments (rsgrpo.train.actor.resume_tensors).
LORA_RESUME_BYTES = 4 + 8

# --- host memory -----------------------------------------------------------------------------------
# One math-verify grading worker (rsgrpo.grading, a forkserver child with math-verify and sympy
# imported). Measured here: grade_report() with workers=1 over 12,000 distinct answers of five LaTeX
# shapes (fractions with radicals, polynomials, tuples, multiples of pi, integers) in 3,000-token
# completions, so that its parse cache (4,096 entries) is full; /proc/<pid>/status of the worker then
# read VmHWM 84.0 MB (VmRSS 84.0 MB, Pss 68.5 MB); 1,000 answers gave 64-67 MB. Rounded up to 100 MB.
GRADING_WORKER_BYTES = 100e6


@dataclass(frozen=True)
class Shape:
    """What the plan needs of a causal LM (:func:`model_shape` reads it from config.json)."""

    params: int          # distinct parameters (tied embeddings counted once)
    largest_layer: int   # parameters of the largest single module (DeepSpeed's largest_layer_params)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV cache of one token over all layers (keys and values)."""
        return 2 * self.layers * self.kv_width * dtype_bytes


@dataclass(frozen=True)
class TrainJob:
    """One rank of a training job: the settings of the trainer that decide memory and compute."""

    precision: str               # fp32 | bf16-mixed
    zero_stage: int
    ranks: int                   # data-parallel ranks (GPUs of the job)
    offload_optimizer: bool
    micro_batch: int             # sequences per forward/backward
    sequence: int                # longest sequence: prompt + max_new_tokens
    completion: int              # max_new_tokens
    gradient_checkpointing: bool
    logprob_chunk: int
    micro_batch_tokens: int | None = None  # token budget of a micro-batch (rows x longest row); None: none
    lora: Lora | None = None     # LoRA adapters on a frozen base; None: full fine-tuning

    @property
    def batch_tokens(self) -> int:
        """Padded token slots of the largest micro-batch: ``micro_batch`` sequences at the longest, or
        the token budget where it is smaller, but at least one sequence (a longer one runs alone)."""
        return self._within_budget(self.sequence)

    @property
    def batch_completion_tokens(self) -> int:
        """Completion tokens of the largest micro-batch, bounded the same way."""
        return self._within_budget(self.completion)

    def _within_budget(self, per_row: int) -> int:
        tokens = self.micro_batch * per_row
        return tokens if self.micro_batch_tokens is None else max(per_row, min(tokens, self.micro_batch_tokens))


def train_job(cfg, *, ranks: int, prompt_tokens: int) -> TrainJob:
    """The :class:`TrainJob` of a training config (a ``rsgrpo.train.config.TrainConfig`` or anything
    with its fields) on ``ranks`` data-parallel ranks, ``prompt_tokens`` the longest prompt."""
    return TrainJob(precision=cfg.precision, zero_stage=int(cfg.zero_stage), ranks=int(ranks),
                    offload_optimizer=bool(cfg.offload_optimizer), micro_batch=int(cfg.micro_batch_size),
                    sequence=int(prompt_tokens) + int(cfg.max_new_tokens), completion=int(cfg.max_new_tokens),
                    gradient_checkpointing=bool(cfg.gradient_checkpointing),
                    logprob_chunk=int(cfg.logprob_chunk_tokens),
                    micro_batch_tokens=None if cfg.micro_batch_tokens is None else int(cfg.micro_batch_tokens),
                    lora=capacity_lora.lora_of(getattr(cfg, "lora", None)))


# ------------------------------------------------------------------------------------------------
# shapes from config.json
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _shape_of(config_json: str) -> Shape:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    data = json.loads(config_json)
    config = AutoConfig.for_model(**data)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    text = config.get_text_config(decoder=True)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return Shape(params=params, largest_layer=largest, layers=text.num_hidden_layers, hidden=text.hidden_size,
                 intermediate=text.intermediate_size, heads=heads,
                 kv_heads=getattr(text, "num_key_value_heads", None) or heads, head_dim=head_dim,
                 vocab=text.vocab_size)


DECODERS = ("llama", "qwen2", "qwen3", "mistral")  # closed form of their parameters: see _decoder_shape


def _decoder_shape(c: dict) -> Shape:
    """The shape of a standard decoder (Llama, Qwen2, Qwen3, Mistral) from config.json by arithmetic:
    what the meta-device build gives (tests compare the two), without importing torch, so that the
    workflow's config check stays fast."""
    h, inter, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads") or heads
    d = c.get("head_dim") or h // heads
    kind = c["model_type"]
    qkv_bias = kind == "qwen2" or (kind in ("llama", "mistral") and c.get("attention_bias", False)) or (
        kind == "qwen3" and c.get("attention_bias", False))
    o_bias = kind in ("llama", "qwen3") and c.get("attention_bias", False)
    mlp_bias = kind == "llama" and c.get("mlp_bias", False)
    q, kv = heads * d, kv_heads * d
    attention = h * q + 2 * h * kv + q * h + qkv_bias * (q + 2 * kv) + o_bias * h
    mlp = 3 * h * inter + mlp_bias * (2 * inter + h)
    per_layer = attention + mlp + 2 * h + (2 * d if kind == "qwen3" else 0)  # norms (+ Qwen3's q/k norms)
    embedding = vocab * h
    tied = c.get("tie_word_embeddings", kind != "llama" and kind != "mistral")
    params = embedding + layers * per_layer + h + (0 if tied else embedding)
    return Shape(params=params, largest_layer=max(embedding, h * inter + mlp_bias * inter), layers=layers,
                 hidden=h, intermediate=inter, heads=heads, kv_heads=kv_heads, head_dim=d, vocab=vocab)


def model_shape(config: dict) -> Shape:
    """Parameter count and shapes of a causal LM from its config.json: by arithmetic for the standard
    decoders (:data:`DECODERS`), built on the meta device for any other architecture."""
    if config.get("model_type") in DECODERS:
        return _decoder_shape(config)
    return meta_shape(config)


def meta_shape(config: dict) -> Shape:
    """The shape of the model transformers builds from ``config`` on the meta device (no weights)."""
    return _shape_of(json.dumps(config, sort_keys=True))


# ------------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------------
def trainable(shape: Shape, job: TrainJob) -> tuple[int, int, int]:
    """(all parameters, trainable parameters, parameters of the largest trainable module): the model's
    three times for full fine-tuning; with LoRA the base plus the adapters, the adapters, the largest
    adapter module."""
    if job.lora is None:
        return shape.params, shape.params, shape.largest_layer
    adapters = capacity_lora.adapter_params(shape, job.lora)
    return shape.params + adapters, adapters, capacity_lora.largest_adapter(shape, job.lora)


def model_states(shape: Shape, job: TrainJob) -> dict[str, float]:
    """Bytes per GPU of weights, gradients, fp32 master weights and optimizer state (see module doc);
    with LoRA ``weights`` holds the frozen base and the adapters, the rest the adapters' states."""
    p, t, big_t = trainable(shape, job)  # weights are all p; gradients and optimizer the t trainable ones
    n, stage = job.ranks, job.zero_stage
    if job.precision not in BYTES:
        raise ValueError(f"precision must be one of {sorted(BYTES)}, got {job.precision!r}")
    if job.precision == "bf16-mixed":
        if stage == 0:
            raise ValueError("precision bf16-mixed needs zero_stage 1, 2 or 3")
        if stage == 3:  # a partition of the bf16 weights, and the largest layer's weights and gradients gathered
            weights, gradients = 2 * shape.largest_layer + 2 * p / n, 2 * big_t + 4 * t / n
        else:  # the whole bf16 weights; bf16 and fp32 gradient partitions
            weights, gradients = 2 * p, (2 + 4) * t / n
        if job.offload_optimizer:  # DeepSpeed's cpu_offload: gradient partitions, masters and moments in host memory
            gathered = 2 * big_t if stage == 3 else 0.0
            return {"weights": weights, "gradients": gathered, "master_weights": 0.0, "optimizer": 0.0}
        return {"weights": weights, "gradients": gradients, "master_weights": 4 * t / n, "optimizer": 8 * t / n}
    # fp32: no master copy; stage 1 partitions the optimizer, 2 also the gradients, 3 also the weights
    weights = 4 * shape.largest_layer + 4 * p / n if stage == 3 else 4 * p
    gradients = 4 * big_t * (stage == 3) + 4 * t / n if stage >= 2 else 4 * t
    optimizer = 8 * t / n if stage >= 1 else 8 * t
    if job.offload_optimizer:
        optimizer = 0.0
    return {"weights": weights, "gradients": gradients, "master_weights": 0.0, "optimizer": optimizer}


def reference_model(shape: Shape, job: TrainJob) -> float:
    """Bytes of the frozen reference model of ``kl_coef`` > 0: a full replica in the compute dtype."""
    return float(BYTES[job.precision] * shape.params)


def layer_activation_elements(shape: Shape) -> int:
    """Elements one decoder layer keeps per token for its backward pass (see module doc)."""
    return ACT_PER_HIDDEN * shape.hidden + ACT_PER_KV * shape.kv_width + ACT_PER_INTERMEDIATE * shape.intermediate


def _adapter_activations(shape: Shape, job: TrainJob) -> list[float]:
    """Bytes per token each layer's LoRA adapters add to its kept activations (none without LoRA)."""
    return [] if job.lora is None else capacity_lora.layer_activation_bytes(shape, job.lora, BYTES[job.precision])


def kept_activations(shape: Shape, job: TrainJob) -> float:
    """Bytes one micro-batch keeps from its forward for the backward pass (longest sequence)."""
    tokens = job.batch_tokens
    per_token = (shape.layers * (shape.hidden if job.gradient_checkpointing else layer_activation_elements(shape))
                 + ACT_OUTSIDE_LAYERS * shape.hidden)
    adapters = 0.0 if job.gradient_checkpointing else sum(_adapter_activations(shape, job))  # checkpointing: inputs
    return tokens * per_token * BYTES[job.precision] + tokens * adapters


def recompute(shape: Shape, job: TrainJob) -> float:
    """Bytes of the layer the backward pass rebuilds at a time (0 without checkpointing)."""
    if not job.gradient_checkpointing:
        return 0.0
    tokens = job.batch_tokens
    adapters = max(_adapter_activations(shape, job), default=0.0)
    return RECOMPUTE_FACTOR * tokens * (layer_activation_elements(shape) * BYTES[job.precision] + adapters)


def logprob_chunk(shape: Shape, job: TrainJob) -> float:
    """Bytes of the output layer's float32 working set: one chunk of completion tokens x the vocabulary."""
    chunk = min(job.logprob_chunk, job.batch_completion_tokens)
    return LOGPROB_COPIES * 4 * chunk * shape.vocab


def update_memory(shape: Shape, job: TrainJob) -> dict[str, float]:
    """The update's bytes above the model states at its peak phase: ``activations`` (kept, plus a
    rebuilt layer when that phase is the larger) and ``logprob_chunk`` (0 when it is not)."""
    kept, head, layer = kept_activations(shape, job), logprob_chunk(shape, job), recompute(shape, job)
    if layer > head:
        return {"activations": kept + layer, "logprob_chunk": 0.0}
    return {"activations": kept, "logprob_chunk": head}


def train_memory(shape: Shape, job: TrainJob, *, engine_bytes: float = 0.0,
                 kl_reference: bool = False) -> dict[str, float]:
    """Bytes per GPU by component; ``engine_bytes``: a colocated rollout engine's reservation;
    ``kl_reference``: the reference model of ``kl_coef`` > 0 is resident too (``reference_model``).

    The engine (vLLM with sleep mode) and the update's activations are never resident at once: the
    peak is the model states (and the reference model) plus the larger of the two phases, and the
    returned dict holds the components of that peak (the other phase's components are 0) plus ``total``.
    """
    states = model_states(shape, job)
    states["reference_model"] = reference_model(shape, job) if kl_reference else 0.0
    update = update_memory(shape, job)
    if engine_bytes > sum(update.values()):
        phases = {"activations": 0.0, "logprob_chunk": 0.0, "rollout_engine": float(engine_bytes)}
    else:
        phases = {**update, "rollout_engine": 0.0}
    out = {**states, **phases}
    out["total"] = sum(out.values())
    return out


def vllm_overhead(shape: Shape, dtype_bytes: int = 2) -> dict[str, float]:
    """A vLLM engine's GPU bytes besides its weights and KV cache (see the VLLM_* constants): the
    activation peak of its profile run, the sampler's float32 rows and its CUDA graphs."""
    per_token = VLLM_ACT_PER_INTERMEDIATE * shape.intermediate + VLLM_ACT_PER_HIDDEN * shape.hidden
    return {"activations": float(VLLM_PROFILE_TOKENS * per_token * dtype_bytes),
            "sampler": float(VLLM_SAMPLER_COPIES * 4 * VLLM_MAX_SEQS * shape.vocab),
            "cuda_graphs": VLLM_CUDA_GRAPH_BYTES}


def colocated_engine_share(shape: Shape, job: TrainJob, gpu_bytes: float, *, kl_reference: bool) -> dict:
    """The GPU share (vLLM's ``gpu_memory_utilization``) of a rank's colocated rollout engine: the
    largest share, in steps of 0.001, that fits beside what stays resident while it generates (the
    model states as :func:`model_states` counts them, the reference model with ``kl_reference``) and
    :data:`MARGIN_BYTES`, within [:data:`MIN_ENGINE_SHARE`, :data:`MAX_ENGINE_SHARE`].

    Returns ``share``, ``engine_bytes`` (share x ``gpu_bytes``), ``kv_room_bytes`` (what vLLM leaves to
    its KV cache: the engine's bytes less its weights in the compute dtype and :func:`vllm_overhead`),
    ``margin_bytes``, ``resident_bytes``, ``weights_bytes``, ``overhead_bytes`` and ``fits``: False when
    even the smallest share does not fit (``share`` is then that smallest share).
    """
    dtype_bytes = BYTES[job.precision]
    resident = sum(model_states(shape, job).values()) + (reference_model(shape, job) if kl_reference else 0.0)
    largest = (gpu_bytes - resident - MARGIN_BYTES) / gpu_bytes
    share = min(MAX_ENGINE_SHARE, max(MIN_ENGINE_SHARE, math.floor(largest * 1000) / 1000))
    weights = float(dtype_bytes * shape.params)
    overhead = sum(vllm_overhead(shape, dtype_bytes).values())
    engine = share * gpu_bytes
    return {"share": share, "engine_bytes": engine, "kv_room_bytes": engine - weights - overhead,
            "margin_bytes": MARGIN_BYTES, "resident_bytes": resident, "weights_bytes": weights,
            "overhead_bytes": overhead, "fits": largest >= MIN_ENGINE_SHARE}


def host_memory(shape: Shape, job: TrainJob, *, ranks_per_node: int, kl_reference: bool = False,
                grading_workers: int = 0) -> float:
    """Host bytes of one node of a training job: each rank loads the checkpoint in its compute dtype
    (and, with ``kl_reference``, the reference model, which is also built on the host before it moves
    to the GPU), with ``offload_optimizer`` its partition of the fp32 gradients, master weights and
    AdamW state, and ``grading_workers`` grading processes of :data:`GRADING_WORKER_BYTES` each. A
    sleeping vLLM engine keeps nothing on the host (sleep level 2 discards its weights,
    ``rsgrpo.train.engines.vllm``)."""
    per_rank = BYTES[job.precision] * shape.params * (2 if kl_reference else 1)
    if job.offload_optimizer:  # the trainable parameters' states: all of them, or LoRA's adapters
        per_rank += (4 + 4 + 8) * trainable(shape, job)[1] / job.ranks
    per_rank += grading_workers * GRADING_WORKER_BYTES
    return ranks_per_node * per_rank


def engine_memory(shape: Shape, *, sequences: int, sequence: int, gpu_bytes: float,
                  utilization: float | None, dtype_bytes: int = 2) -> dict[str, float]:
    """A vLLM engine on one GPU: its weights, and the KV cache the work needs (all sequences at full
    length) or, with ``utilization`` set, the share it reserves; ``reserved`` is what it takes of the
    GPU, ``kv_room`` what that leaves for the KV cache after its weights and (with ``utilization``)
    :func:`vllm_overhead`, ``kv_fits`` whether one ``sequence``-token sequence fits in that room, and
    ``concurrent`` how many of the ``sequences`` it decodes at once (as many as the room holds, at
    least one)."""
    weights = dtype_bytes * shape.params
    per_sequence = sequence * shape.kv_bytes_per_token(dtype_bytes)
    kv_needed = sequences * per_sequence
    if utilization is not None:
        reserved = utilization * gpu_bytes
        room = reserved - weights - sum(vllm_overhead(shape, dtype_bytes).values())
    else:
        reserved, room = weights + kv_needed, kv_needed
    return {"weights": weights, "kv_cache_needed": kv_needed, "reserved": reserved, "kv_room": room,
            "kv_fits": room >= per_sequence, "concurrent": max(1, min(sequences, int(room // per_sequence)))}


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def checkpoint_bytes(shape: Shape, precision: str, lora: Lora | None = None) -> float:
    """Bytes of one resumable checkpoint (:data:`CHECKPOINT_BYTES` per parameter); with ``lora`` the
    merged HF weights in the compute dtype (what ``sample`` loads, as large as full fine-tuning's) and
    the adapters' resume state (:data:`LORA_RESUME_BYTES` per adapter parameter)."""
    if lora is None:
        return float(CHECKPOINT_BYTES[precision] * shape.params)
    return float(BYTES[precision] * shape.params + LORA_RESUME_BYTES * capacity_lora.adapter_params(shape, lora))


def checkpoints_per_job(*, job_minutes: float, minutes_per_step: float, write_minutes: float,
                        every_steps: int, every_minutes: float) -> int:
    """Checkpoints a job of ``job_minutes`` writes before the run's final one, when the trainer writes
    one every ``every_steps`` steps and after the first step that ends ``every_minutes`` after the last
    (0 = off, each). Counted at an interval of min(every_steps, ceil(every_minutes / minutes_per_step))
    steps plus the write: the interval after a time-based checkpoint to the next multiple of
    ``every_steps`` is no longer than that, so the count is a lower bound."""
    intervals = [every_steps] if every_steps > 0 else []
    if every_minutes > 0:
        intervals.append(max(1, math.ceil(round(every_minutes / minutes_per_step, 9))) if minutes_per_step > 0 else 1)
    if not intervals:
        return 0
    period = min(intervals) * minutes_per_step + write_minutes
    return int(job_minutes // period) if period > 0 else 0


# ------------------------------------------------------------------------------------------------
# compute
# ------------------------------------------------------------------------------------------------
def forward_flops_per_token(shape: Shape, context: float) -> float:
    """Forward FLOPs of one token at ``context`` tokens of attention: 2 per parameter (matmuls; the
    embedding lookup is free but the tied or untied output layer is a matmul) plus attention's
    QK^T and AV, 2 x 2 x context x (heads x head_dim) per layer."""
    return 2 * shape.params + 4 * shape.layers * context * shape.heads * shape.head_dim


def train_step_flops(shape: Shape, *, sequences: int, prompt: int, completion: int,
                     gradient_checkpointing: bool, ppo_epochs: int = 1,
                     adapter_params: int | None = None) -> dict[str, float]:
    """FLOPs of one RL step: generation (forward of each new token at its context) and the update
    (forward + backward = 3x forward over prompt + completion, one more forward with checkpointing,
    one no-grad forward more when ``ppo_epochs`` > 1, times the epochs). With LoRA's
    ``adapter_params`` the update's forward adds 2 FLOPs per adapter parameter and token, and its
    backward computes only the input gradients through the frozen base (2 per parameter, attention's
    2x its forward) plus the adapters' input and weight gradients (4 per adapter parameter); the
    rollout engine generates with merged weights."""
    gen = sequences * completion * forward_flops_per_token(shape, prompt + completion / 2)
    tokens = sequences * (prompt + completion)
    fwd = tokens * forward_flops_per_token(shape, (prompt + completion) / 2)
    if adapter_params is None:
        per_epoch = fwd * (4 if gradient_checkpointing else 3)
    else:
        attention = fwd - tokens * 2 * shape.params
        fwd += tokens * 2 * adapter_params
        backward = tokens * (2 * shape.params + 4 * adapter_params) + 2 * attention
        per_epoch = fwd * (2 if gradient_checkpointing else 1) + backward
    update = per_epoch * ppo_epochs + (fwd if ppo_epochs > 1 else 0.0)
    return {"generate": gen, "update": update, "generated_tokens": float(sequences * completion),
            "trained_tokens": float(tokens * ppo_epochs)}


def decode_seconds(shape: Shape, *, sequences: int, prompt: int, completion: int, concurrent: int,
                   peak_flops: float, bandwidth: float, efficiency: float, dtype_bytes: int = 2) -> float:
    """Roofline time of generating ``completion`` tokens for ``sequences`` sequences, ``concurrent``
    at a time: each decode step reads the weights and the running KV cache once and does 2 FLOPs per
    parameter per sequence; it takes the longer of the two at ``efficiency`` x the GPU's peak."""
    if sequences <= 0 or completion <= 0:
        return 0.0
    concurrent = max(1, min(concurrent, sequences))
    waves = math.ceil(sequences / concurrent)
    context = prompt + completion / 2
    bytes_step = dtype_bytes * shape.params + concurrent * context * shape.kv_bytes_per_token(dtype_bytes)
    flops_step = concurrent * forward_flops_per_token(shape, context)
    step = max(bytes_step / bandwidth, flops_step / peak_flops) / efficiency
    return waves * completion * step
