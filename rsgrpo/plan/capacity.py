"""Memory and compute of one training or sampling job, from the model's shape and the job's settings.

Pure arithmetic (no I/O, no torch): ``rsgrpo.plan`` feeds it the shapes (built from a model's
config.json on the meta device) and the workflow's settings, and prints the plan.

Model states follow DeepSpeed's own accounting (``estimate_zero2_model_states_mem_needs`` and
``estimate_zero3_model_states_mem_needs``, no CPU offload unless ``offload_optimizer``): in bf16-mixed
every rank holds the bf16 weights (ZeRO 1-2) or its partition plus the largest layer gathered
(ZeRO-3), and 18 bytes per parameter / ranks of bf16 and fp32 gradients, fp32 master weights and the
two AdamW moments. fp32 training has no master copy: 4 bytes of weights, 4 of gradients, 8 of AdamW
state per parameter, partitioned as the stage says.

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

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Shape:
    """What the plan needs of a causal LM (``rsgrpo.plan.model_shape`` reads it from config.json)."""

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


def model_states(shape: Shape, job: TrainJob) -> dict[str, float]:
    """Bytes per GPU of weights, gradients, fp32 master weights and optimizer state (see module doc)."""
    p, n, stage = shape.params, job.ranks, job.zero_stage
    if job.precision not in BYTES:
        raise ValueError(f"precision must be one of {sorted(BYTES)}, got {job.precision!r}")
    if job.precision == "bf16-mixed":
        if stage == 0:
            raise ValueError("precision bf16-mixed needs zero_stage 1, 2 or 3")
        if stage == 3:  # a partition of the bf16 weights, and the largest layer's weights and gradients gathered
            weights, gradients = 2 * shape.largest_layer + 2 * p / n, 2 * shape.largest_layer + 4 * p / n
        else:  # the whole bf16 weights; bf16 and fp32 gradient partitions
            weights, gradients = 2 * p, (2 + 4) * p / n
        if job.offload_optimizer:  # DeepSpeed's cpu_offload: gradient partitions, masters and moments in host memory
            gathered = 2 * shape.largest_layer if stage == 3 else 0.0
            return {"weights": weights, "gradients": gathered, "master_weights": 0.0, "optimizer": 0.0}
        return {"weights": weights, "gradients": gradients, "master_weights": 4 * p / n, "optimizer": 8 * p / n}
    # fp32: no master copy; stage 1 partitions the optimizer, 2 also the gradients, 3 also the weights
    weights = 4 * shape.largest_layer + 4 * p / n if stage == 3 else 4 * p
    gradients = 4 * shape.largest_layer * (stage == 3) + 4 * p / n if stage >= 2 else 4 * p
    optimizer = 8 * p / n if stage >= 1 else 8 * p
    if job.offload_optimizer:
        optimizer = 0.0
    return {"weights": weights, "gradients": gradients, "master_weights": 0.0, "optimizer": optimizer}


def layer_activation_elements(shape: Shape) -> int:
    """Elements one decoder layer keeps per token for its backward pass (see module doc)."""
    return ACT_PER_HIDDEN * shape.hidden + ACT_PER_KV * shape.kv_width + ACT_PER_INTERMEDIATE * shape.intermediate


def kept_activations(shape: Shape, job: TrainJob) -> float:
    """Bytes one micro-batch keeps from its forward for the backward pass (longest sequence)."""
    tokens = job.micro_batch * job.sequence
    per_token = (shape.layers * (shape.hidden if job.gradient_checkpointing else layer_activation_elements(shape))
                 + ACT_OUTSIDE_LAYERS * shape.hidden)
    return tokens * per_token * BYTES[job.precision]


def recompute(shape: Shape, job: TrainJob) -> float:
    """Bytes of the layer the backward pass rebuilds at a time (0 without checkpointing)."""
    if not job.gradient_checkpointing:
        return 0.0
    tokens = job.micro_batch * job.sequence
    return RECOMPUTE_FACTOR * tokens * layer_activation_elements(shape) * BYTES[job.precision]


def logprob_chunk(shape: Shape, job: TrainJob) -> float:
    """Bytes of the output layer's float32 working set: one chunk of completion tokens x the vocabulary."""
    chunk = min(job.logprob_chunk, job.micro_batch * job.completion)
    return LOGPROB_COPIES * 4 * chunk * shape.vocab


def update_memory(shape: Shape, job: TrainJob) -> dict[str, float]:
    """The update's bytes above the model states at its peak phase: ``activations`` (kept, plus a
    rebuilt layer when that phase is the larger) and ``logprob_chunk`` (0 when it is not)."""
    kept, head, layer = kept_activations(shape, job), logprob_chunk(shape, job), recompute(shape, job)
    if layer > head:
        return {"activations": kept + layer, "logprob_chunk": 0.0}
    return {"activations": kept, "logprob_chunk": head}


def train_memory(shape: Shape, job: TrainJob, *, engine_bytes: float = 0.0) -> dict[str, float]:
    """Bytes per GPU by component; ``engine_bytes``: a colocated rollout engine's reservation.

    The engine (vLLM with sleep mode) and the update's activations are never resident at once: the
    peak is the model states plus the larger of the two phases, and the returned dict holds the
    components of that peak (the other phase's components are 0) plus ``total``.
    """
    states = model_states(shape, job)
    update = update_memory(shape, job)
    if engine_bytes > sum(update.values()):
        phases = {"activations": 0.0, "logprob_chunk": 0.0, "rollout_engine": float(engine_bytes)}
    else:
        phases = {**update, "rollout_engine": 0.0}
    out = {**states, **phases}
    out["total"] = sum(out.values())
    return out


def host_memory(shape: Shape, job: TrainJob, *, ranks_per_node: int, sleeping_engine: bool) -> float:
    """Host bytes of one node of a training job: each rank loads the checkpoint in its compute dtype,
    keeps a sleeping vLLM engine's weights in pinned memory (sleep mode level 1), and with
    ``offload_optimizer`` its partition of the fp32 gradients, master weights and AdamW state."""
    per_rank = BYTES[job.precision] * shape.params
    if sleeping_engine:
        per_rank += 2 * shape.params
    if job.offload_optimizer:
        per_rank += (4 + 4 + 8) * shape.params / job.ranks
    return ranks_per_node * per_rank


def engine_memory(shape: Shape, *, sequences: int, sequence: int, gpu_bytes: float,
                  utilization: float | None, dtype_bytes: int = 2) -> dict[str, float]:
    """A vLLM engine on one GPU: its weights, and the KV cache the work needs (all sequences at full
    length) or, with ``utilization`` set, the share it reserves; ``reserved`` is what it takes of the
    GPU, ``kv_fits`` whether one full-length sequence fits in what the reservation leaves for KV, and
    ``concurrent`` how many of the ``sequences`` it decodes at once (as many full-length ones as that
    KV room holds, at least one)."""
    weights = dtype_bytes * shape.params
    per_sequence = sequence * shape.kv_bytes_per_token(dtype_bytes)
    kv_needed = sequences * per_sequence
    reserved = utilization * gpu_bytes if utilization is not None else weights + kv_needed
    room = reserved - weights
    return {"weights": weights, "kv_cache_needed": kv_needed, "reserved": reserved, "kv_fits": room >= per_sequence,
            "concurrent": max(1, min(sequences, int(room // per_sequence)))}


# ------------------------------------------------------------------------------------------------
# compute
# ------------------------------------------------------------------------------------------------
def forward_flops_per_token(shape: Shape, context: float) -> float:
    """Forward FLOPs of one token at ``context`` tokens of attention: 2 per parameter (matmuls; the
    embedding lookup is free but the tied or untied output layer is a matmul) plus attention's
    QK^T and AV, 2 x 2 x context x (heads x head_dim) per layer."""
    return 2 * shape.params + 4 * shape.layers * context * shape.heads * shape.head_dim


def train_step_flops(shape: Shape, *, sequences: int, prompt: int, completion: int,
                     gradient_checkpointing: bool, ppo_epochs: int = 1) -> dict[str, float]:
    """FLOPs of one RL step: generation (forward of each new token at its context) and the update
    (forward + backward = 3x forward over prompt + completion, one more forward with checkpointing,
    one no-grad forward more when ``ppo_epochs`` > 1, times the epochs)."""
    gen = sequences * completion * forward_flops_per_token(shape, prompt + completion / 2)
    tokens = sequences * (prompt + completion)
    fwd = tokens * forward_flops_per_token(shape, (prompt + completion) / 2)
    per_epoch = fwd * (4 if gradient_checkpointing else 3)
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
