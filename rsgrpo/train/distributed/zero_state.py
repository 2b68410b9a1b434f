"""Full weights and optimizer state of a DeepSpeed engine, whatever the ZeRO stage and rank count.

Why a module of its own: checkpoints, weight sync to the rollout engine and resume must not depend
on how DeepSpeed partitions the model. Everything that reaches into DeepSpeed's optimizer lives here
(:func:`inner_optimizer`, :func:`zero_stage`, :func:`adam_step`), so other modules use these public
handles rather than DeepSpeed's attributes, whose layout differs by ZeRO stage.

* :func:`gathered_parameters` -- the full weights of every parameter, gathered in buckets under
  ZeRO-3 and handed out as they are (the gathered device tensors; host copies only for the rank
  that writes a checkpoint), each bucket released before the next one is gathered, so the peak
  extra memory is one bucket, not the model.
* :func:`owned_state_tensors` / :func:`load_full_optimizer_state` -- AdamW moments (and fp32
  masters) per parameter name in full shape, each rank yielding the parameters it owns: a
  checkpoint written by N ranks at any ZeRO stage resumes on M ranks at any stage (DeepSpeed's own
  checkpoints are partitioned per rank and unpickle arbitrary objects); :func:`full_optimizer_state`
  is the whole state in one dict (every rank gets it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["gathered_parameters", "load_master_weights", "zero_stage", "inner_optimizer", "adam_step",
           "optimizer_step_count", "owned_state_tensors", "full_optimizer_state", "load_full_optimizer_state"]


def _is_zero3(param: torch.nn.Parameter) -> bool:
    return hasattr(param, "ds_id")


def _numel(param: torch.nn.Parameter) -> int:
    return int(param.ds_numel) if _is_zero3(param) else param.numel()


def gathered_parameters(model: torch.nn.Module, *, bucket_numel: int = 50_000_000, include_aliases: bool = True,
                        to_host: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, full tensor)`` for every parameter and persistent buffer of ``model``.

    Collective under ZeRO-3: every rank must consume the whole iterator. Parameters are gathered
    ``bucket_numel`` elements at a time with ``deepspeed.zero.GatheredParameters``, and each bucket's
    tensors are yielded while it is gathered: they are the gathered parameters themselves, on the
    device, not copies. The bucket is released (re-partitioned) when the consumer asks for the tensor
    after its last one, so the extra device memory is one bucket plus what the consumer still holds
    (a released tensor stays valid for as long as the consumer keeps it; like the module's own
    tensors without ZeRO-3, it may change with the next optimizer step, so a consumer that keeps one
    copies it). The rollout engine copies each tensor into its own weights as it goes (GPU to GPU);
    a rank that only takes part in the gather copies nothing. ``to_host``: yield host copies
    instead, each made while its bucket is gathered (what writing a checkpoint needs, on the one
    rank that writes). Without ZeRO-3 the tensors are the module's own (detached; copied to the host
    only with ``to_host``).

    ``include_aliases``: also yield state-dict names that alias another parameter (a tied
    ``lm_head.weight``) -- an engine that loads weights by name needs them (vLLM keeps the old
    output head otherwise).
    """
    named = list(model.named_parameters())
    by_id = {id(p): n for n, p in named}
    state = model.state_dict(keep_vars=True)
    alias_of: dict[str, list[str]] = {}
    if include_aliases:
        for key, t in state.items():
            owner = by_id.get(id(t))
            if owner is not None and owner != key:
                alias_of.setdefault(owner, []).append(key)
    buffers = [(k, b) for k, b in state.items() if id(b) not in by_id and not isinstance(b, torch.nn.Parameter)]

    def out(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to("cpu", copy=True) if to_host else tensor.detach()

    def with_aliases(name, tensor):
        yield name, tensor
        for key in alias_of.get(name, ()):
            yield key, tensor

    if not any(_is_zero3(p) for _, p in named):
        for n, p in named:
            yield from with_aliases(n, out(p))
    else:
        import deepspeed

        buckets: list[list[tuple[str, torch.nn.Parameter]]] = [[]]
        size = 0
        for n, p in named:
            if size >= bucket_numel:
                buckets.append([])
                size = 0
            buckets[-1].append((n, p))
            size += _numel(p)
        for bucket in buckets:
            with deepspeed.zero.GatheredParameters([p for _, p in bucket], modifier_rank=None):
                for n, p in bucket:
                    yield from with_aliases(n, out(p))
    for k, b in buffers:
        yield k, out(b)


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name, parameter)`` of what the optimizer trains, in ``named_parameters()`` order: every
    parameter in full fine-tuning, the adapters with LoRA (the base frozen)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def load_master_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Set every trained parameter's fp32 master copy from ``weights[name]`` (any float dtype, full
    shape; read lazily, one tensor at a time). Collective under ZeRO-3."""
    from deepspeed.utils import safe_set_full_fp32_param

    for name, param in trainable_parameters(model):
        value = weights[name]
        shape = tuple(param.ds_shape) if _is_zero3(param) else tuple(param.shape)
        if tuple(value.shape) != shape:
            raise ValueError(f"master weight {name}: shape {tuple(value.shape)} != {shape}")
        safe_set_full_fp32_param(param, value.to(torch.float32))


_MOMENTS = ("exp_avg", "exp_avg_sq")


def zero_stage(ds_engine) -> int:
    """The ZeRO stage of a DeepSpeed engine (0 for an engine without ZeRO).

    Where the moments live depends on it (the torch optimizer's own state at stage 0, DeepSpeed's
    flat fp32 partitions at 1-3), so every state access here branches on it."""
    return int(ds_engine.zero_optimization_stage()) if hasattr(ds_engine, "zero_optimization_stage") else 0


def inner_optimizer(ds_engine):
    """The torch optimizer that owns the moments: AdamW itself (stage 0) or the AdamW over the
    flat fp32 partitions inside DeepSpeed's ZeRO optimizer (stages 1-3).

    Public because the actor keeps it (the learning rate is set on its param groups), and DeepSpeed's
    attribute path to it differs by stage."""
    return ds_engine.optimizer if zero_stage(ds_engine) == 0 else ds_engine.optimizer.optimizer


def adam_step(inner_opt) -> int:
    """AdamW's step count as recorded in ``inner_opt``'s per-parameter state (0 before the first step).

    Read from the state rather than counted by the caller, so a resumed optimizer reports the step
    it was restored at; a mismatch between parameters is a corrupt state and raises."""
    steps = {int(float(s["step"])) for s in inner_opt.state.values() if "step" in s}
    if len(steps) > 1:
        raise RuntimeError(f"optimizer parameters disagree on the step count: {sorted(steps)}")
    return steps.pop() if steps else 0


def optimizer_step_count(ds_engine) -> int:
    """AdamW's step count (0 before the first step)."""
    return adam_step(inner_optimizer(ds_engine))


def owned_state_tensors(ds_engine, model: torch.nn.Module, *, rank: int, world_size: int,
                        masters: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """This rank's share of the state resume needs, as ``("exp_avg/<name>", full tensor)``,
    ``("exp_avg_sq/<name>", ...)`` and with ``masters`` ``("master/<name>", fp32 master)`` (without
    ZeRO, where an fp32 model is its own master, the parameter): trained parameter ``i``
    (:func:`trainable_parameters` order) belongs to rank ``i % world_size``.

    Collective for ZeRO 1-3 and for masters (each tensor is assembled from all ranks' fragments):
    every rank walks every parameter, keeps the tensors it owns and drops the others, so no rank
    ever holds more than its share plus the one tensor being assembled.
    """
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    stage = zero_stage(ds_engine)
    inner = inner_optimizer(ds_engine)
    step = adam_step(inner)
    for index, (name, param) in enumerate(trainable_parameters(model)):
        mine = index % world_size == rank
        for moment in _MOMENTS:
            if stage == 0:
                tensor = inner.state.get(param, {}).get(moment) if mine else None
            else:  # a collective whether or not this rank keeps it
                tensor = safe_get_full_optimizer_state(param, moment) if step > 0 else None
            if mine:
                if tensor is None:  # no step taken yet: the moments are still zero
                    shape = tuple(param.ds_shape) if _is_zero3(param) else tuple(param.shape)
                    tensor = torch.zeros(shape, dtype=torch.float32)
                yield f"{moment}/{name}", tensor.detach().to("cpu", torch.float32, copy=True)
        if masters:
            master = safe_get_full_fp32_param(param)
            if master is None and stage == 0 and param.dtype == torch.float32:
                master = param
            if master is None:
                raise RuntimeError(f"parameter {name} has no fp32 master copy (not a bf16-mixed DeepSpeed model)")
            if mine:
                yield f"master/{name}", master.detach().to("cpu", torch.float32, copy=True)


def full_optimizer_state(ds_engine, model: torch.nn.Module) -> dict[str, Any]:
    """AdamW state as ``{"step": int, "exp_avg": {name: full tensor}, "exp_avg_sq": {...}}``.

    Collective for ZeRO stages 1-3 (DeepSpeed assembles each tensor from the partitions of all
    ranks); every rank gets the full state. Names are those of :func:`trainable_parameters`.
    """
    out: dict[str, Any] = {"step": optimizer_step_count(ds_engine), **{m: {} for m in _MOMENTS}}
    for key, tensor in owned_state_tensors(ds_engine, model, rank=0, world_size=1):
        moment, name = key.split("/", 1)
        out[moment][name] = tensor
    return out


def load_full_optimizer_state(ds_engine, model: torch.nn.Module, state: Mapping[str, Any]) -> None:
    """Inverse of :func:`full_optimizer_state` for any ZeRO stage and world size (collective for 1-3).

    Raises ``ValueError`` when the parameter names or shapes do not match the model.
    """
    from deepspeed.utils import safe_set_full_optimizer_state

    stage = zero_stage(ds_engine)
    inner = inner_optimizer(ds_engine)
    step = int(state["step"])
    named = trainable_parameters(model)
    names = {n for n, _ in named}
    saved = set(state["exp_avg"])
    if names != saved:
        missing, extra = sorted(names - saved)[:5], sorted(saved - names)[:5]
        raise ValueError(f"optimizer state does not match the model: missing {missing}, unexpected {extra}")
    if step == 0:
        return
    if stage == 0:
        for name, p in named:
            st = inner.state[p]
            st["step"] = torch.tensor(float(step))
            for m in _MOMENTS:
                src = state[m][name]
                if tuple(src.shape) != tuple(p.shape):
                    raise ValueError(f"optimizer state of {name}: shape {tuple(src.shape)} != {tuple(p.shape)}")
                st[m] = src.to(p.device, p.dtype if p.is_floating_point() else torch.float32, copy=True)
        return
    # ZeRO 1-3: create the (lazily initialised) moments of the flat partitions, then fill them
    # parameter by parameter through DeepSpeed's fragment mapping.
    if stage == 3:  # ZeRO-3 swaps its sub-groups in and out of param_groups around each step
        flats = list(ds_engine.optimizer.fp32_partitioned_groups_flat)
    else:
        flats = [flat for group in inner.param_groups for flat in group["params"]]
    for flat in flats:
        st = inner.state[flat]
        st["step"] = torch.tensor(float(step))
        for m in _MOMENTS:
            st[m] = torch.zeros_like(flat, memory_format=torch.preserve_format)
    if stage in (1, 2):
        # point each parameter's fragment mapping at the state tensors just created (DeepSpeed does
        # this lazily at the first step otherwise)
        ds_engine.optimizer._lazy_init_hp_params_optimizer_state()
    for name, p in named:
        shape = tuple(p.ds_shape) if _is_zero3(p) else tuple(p.shape)
        for m in _MOMENTS:
            src = state[m][name]
            if tuple(src.shape) != shape:
                raise ValueError(f"optimizer state of {name}: shape {tuple(src.shape)} != {shape}")
            safe_set_full_optimizer_state(p, src.to(torch.float32), m)

