"""LoRA training on the policy (PEFT): the adapters, and the merged weights the rollout engine and the
evaluation checkpoints get.

The base weights are frozen and never written to: a merged weight is computed out of place,
``W + (alpha / rank) * B @ A`` in float32 and rounded once to the model's dtype, each time the
engine is refreshed or a checkpoint written. Merging into the module in place and unmerging again
(PEFT's ``merge``/``unmerge``) would round the base at every refresh and let it drift.

The adapters are the trainable parameters: they alone are in the optimizer and in a checkpoint's
resume state (``master/<name>``: their float32 values), next to the merged Hugging Face weights
that ``sample`` loads like any other checkpoint. A run resumes by loading the base from
``model_dir`` and the adapters from that state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch

from rsgrpo import capacity_lora
from rsgrpo.train.config_lora import ALL_LINEAR
from rsgrpo.train.config_values import config_error
from rsgrpo.train.distributed.zero_state import trainable_parameters

__all__ = ["adapter_values", "attach", "check_targets", "linear_module_names", "merged_weights"]

PEFT_PREFIX = "base_model.model."


def linear_module_names(model_dir: str) -> list[str]:
    """The names of the linear layers of the model in ``model_dir``, read from its ``config.json``
    alone (the model is built on the meta device: no weights load)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def check_targets(lora: Mapping, model_dir: str, source: str = "<config>") -> None:
    """ValueError naming ``lora.target_modules`` when one of its names matches no linear layer of the
    model (PEFT's rule: :func:`rsgrpo.capacity_lora.matches`)."""
    names = [n for n in linear_module_names(model_dir) if n.split(".")[-1] != "lm_head"]
    targets = lora["target_modules"]
    if targets == ALL_LINEAR:
        if not names:
            raise config_error(source, "lora.target_modules", targets, f"the model in {model_dir} has no linear layer")
        return
    for target in targets:
        if not any(capacity_lora.matches(n, target) for n in names):
            kinds = sorted({n.split(".")[-1] for n in names})
            raise config_error(source, "lora.target_modules", target,
                               f"matches no linear layer of the model in {model_dir} (its layers end in {kinds})")


def attach(model: torch.nn.Module, lora: Mapping, adapters: Mapping[str, torch.Tensor] | None = None):
    """``model`` wrapped by PEFT with LoRA adapters (its own parameters frozen), the adapters set to
    ``adapters`` by name when given (a resumed run), else PEFT's initialisation (A random from
    torch's generator, B zero: the merged model starts equal to the base)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=int(lora["rank"]), lora_alpha=float(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                        target_modules=lora["target_modules"], bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    if adapters is not None:
        own = dict(trainable_parameters(peft_model))
        if set(own) != set(adapters):
            missing, extra = sorted(set(own) - set(adapters))[:3], sorted(set(adapters) - set(own))[:3]
            raise ValueError(f"the checkpoint's adapters do not match the LoRA settings: missing {missing}, "
                             f"unexpected {extra}")
        with torch.no_grad():
            for name, param in own.items():
                value = adapters[name]
                if tuple(value.shape) != tuple(param.shape):
                    raise ValueError(f"adapter {name}: shape {tuple(value.shape)} != {tuple(param.shape)}")
                param.copy_(value.to(param.dtype))
    return peft_model


def adapter_values(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Float32 copies of the adapters (before DeepSpeed partitions them or rounds them to bf16)."""
    return {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in trainable_parameters(model)}


def merged_weights(named: Iterable[tuple[str, torch.Tensor]], lora: Mapping) -> Iterator[tuple[str, torch.Tensor]]:
    """The Hugging Face model's ``(name, tensor)`` from the PEFT model's (``named``, e.g. the gathered
    parameters and buffers of :func:`rsgrpo.train.distributed.zero_state.gathered_parameters`): each
    adapted layer's weight merged out of place, every other tensor as it comes, under its name in
    the base model. A layer's weight is held until both of its adapters have come by."""
    scaling = float(lora["alpha"]) / int(lora["rank"])
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in named:
        name = name.removeprefix(PEFT_PREFIX)
        if ".lora_A." in name or ".lora_B." in name:
            layer, rest = name.split(".lora_", 1)
            parts.setdefault(layer, {})[rest[0]] = tensor
        elif ".base_layer." in name:
            layer, leaf = name.split(".base_layer.", 1)
            if leaf != "weight":
                yield f"{layer}.{leaf}", tensor
                continue
            parts.setdefault(layer, {})["W"] = tensor
        else:
            yield name, tensor
            continue
        held = parts[layer]
        if len(held) == 3:
            del parts[layer]
            weight = held["W"]
            delta = (held["B"].to(torch.float32) @ held["A"].to(torch.float32)) * scaling
            yield f"{layer}.weight", (weight.to(torch.float32) + delta).to(weight.dtype)
    if parts:
        raise RuntimeError(f"LoRA layers without a weight or an adapter: {sorted(parts)[:3]}")
