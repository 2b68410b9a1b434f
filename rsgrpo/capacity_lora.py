"""LoRA adapters of a decoder, by arithmetic: which linear layers they adapt, their parameter count and
the activations they add. :mod:`rsgrpo.capacity` prices a LoRA training job with them.

A LoRA job (``lora`` of the train config, :mod:`rsgrpo.train.config_lora`) trains, for each adapted
``nn.Linear`` of ``in`` x ``out`` features, ``lora_A`` [rank, in] and ``lora_B`` [out, rank]: rank x
(in + out) parameters, no bias (PEFT's ``bias="none"``). The layers are those of the Llama/Qwen
decoder layer every model of :data:`rsgrpo.capacity.DECODERS` has: ``self_attn.{q,k,v,o}_proj`` and
``mlp.{gate,up,down}_proj`` of ``model.layers.<i>``. ``all-linear`` adapts all of them (PEFT's
definition: every linear layer but the output head); a list adapts the layers named so or whose
name ends with ``.`` + the entry, as PEFT matches them. Another architecture is counted as if it had
that layer layout. tests/test_capacity.py compares the count with PEFT's on the meta device.

Pure: no imports of torch or of the package's stages (the core imports no stage).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

ALL_LINEAR = "all-linear"  # rsgrpo.train.config_lora.ALL_LINEAR (a test keeps the two equal)
LAYER_PREFIX = "model.layers"  # where the decoder layers live in a Llama/Qwen causal LM
MASK_BYTES = 1  # dropout keeps its mask as torch.bool


class DecoderShape(Protocol):
    """What of :class:`rsgrpo.capacity.Shape` the adapters depend on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    head_dim: int
    kv_heads: int


@dataclass(frozen=True)
class Lora:
    """The settings of a ``lora`` block that decide memory and compute (alpha does not)."""

    rank: int
    targets: str | tuple[str, ...] = ALL_LINEAR
    dropout: float = 0.0


def lora_of(block: Mapping | None) -> Lora | None:
    """The :class:`Lora` of a train config's ``lora`` block (defaults filled in); None for ``lora: null``."""
    if block is None:
        return None
    targets = block["target_modules"]
    return Lora(rank=int(block["rank"]), targets=targets if isinstance(targets, str) else tuple(targets),
                dropout=float(block.get("dropout", 0.0)))


def layer_linears(shape: DecoderShape) -> dict[str, tuple[int, int]]:
    """The linear layers of one decoder layer, by name within the layer: (in_features, out_features)."""
    h, inter = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    return {"self_attn.q_proj": (h, q), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv),
            "self_attn.o_proj": (q, h), "mlp.gate_proj": (h, inter), "mlp.up_proj": (h, inter),
            "mlp.down_proj": (inter, h)}


def matches(name: str, target: str) -> bool:
    """PEFT's rule for a ``target_modules`` entry: the module is named so or its name ends in ``.<target>``."""
    return name == target or name.endswith("." + target)


@functools.lru_cache(maxsize=256)
def adapted_linears(shape: DecoderShape, lora: Lora) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Per decoder layer, the (in_features, out_features) of each linear layer ``lora`` adapts.
    ValueError naming ``lora.target_modules`` when an entry matches no linear layer."""
    linears = layer_linears(shape)
    names = [[f"{LAYER_PREFIX}.{i}.{name}" for name in linears] for i in range(shape.layers)]
    if lora.targets == ALL_LINEAR:
        return tuple(tuple(linears.values()) for _ in range(shape.layers))
    if isinstance(lora.targets, str):
        raise ValueError(f"lora.target_modules: {lora.targets!r} must be {ALL_LINEAR!r} or a list of module names")

    for target in lora.targets:
        if not any(matches(n, target) for layer in names for n in layer):
            raise ValueError(f"lora.target_modules: {target!r} matches no linear layer of the decoder (its layers: "
                             f"{LAYER_PREFIX}.<i>.{{{', '.join(linears)}}})")
    return tuple(tuple(linears[n.split(".", 3)[3]] for n in layer if any(matches(n, t) for t in lora.targets))
                 for layer in names)


def adapter_params(shape: DecoderShape, lora: Lora) -> int:
    """Trainable parameters: rank x (in + out) per adapted linear layer."""
    return sum(lora.rank * (fan_in + fan_out) for layer in adapted_linears(shape, lora) for fan_in, fan_out in layer)


def largest_adapter(shape: DecoderShape, lora: Lora) -> int:
    """Parameters of the largest adapter module (``lora_A`` or ``lora_B``, each a module of its own):
    DeepSpeed's largest_layer_params among the trainable ones."""
    return max((lora.rank * max(fan_in, fan_out) for layer in adapted_linears(shape, lora)
                for fan_in, fan_out in layer), default=0)


def layer_activation_bytes(shape: DecoderShape, lora: Lora, dtype_bytes: int) -> list[float]:
    """Bytes per token each decoder layer's adapters keep for the backward pass, on top of the full
    fine-tuning's: ``lora_B`` keeps its input, ``lora_A``'s rank-wide output; ``lora_A`` keeps its
    input, which without dropout is the base layer's input, already counted (full fine-tuning keeps
    it for the weight's gradient). With dropout each adapter keeps its own dropped-out copy of the
    input and the mask. Counted as kept, too: the inputs of frozen linear layers without an adapter,
    which no longer need them (an upper bound for a target list; all-linear adapts every one)."""
    per_layer = []
    for layer in adapted_linears(shape, lora):
        kept = sum(lora.rank * dtype_bytes + (fan_in * (dtype_bytes + MASK_BYTES) if lora.dropout > 0 else 0)
                   for fan_in, _ in layer)
        per_layer.append(float(kept))
    return per_layer
