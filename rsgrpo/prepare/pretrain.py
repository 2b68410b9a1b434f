"""``python -m rsgrpo pretrain``: a tiny transformer pretrained on a synthetic task's demonstrations.

The base policy of the miniature experiment (:mod:`rsgrpo.prepare.synthetic`): a character-level Qwen2 model
(:func:`rsgrpo.prepare.tiny.build_tiny_model`) trained by next-token cross-entropy on the completions of
seeded demonstrations, a ``rare_frac`` share of them by the rare strategy. Offline, seeded, CPU-sized
(the default spec trains in a minute or two on two cores). The spec, a model spec with ``source:
pretrain`` (see :data:`DEFAULTS` for the keys, all optional)::

    {source: pretrain, task: carry_addition, digits: 2, rare_frac: 0.1, rare_slip: 0.5, steps: 1000,
     batch_size: 128, lr: 2.0e-3, warmup_steps: 100, hidden_size: 128, num_layers: 2, num_heads: 4, seed: 0}

``rare_slip`` is the share of rare demonstrations that slip in one column
(:func:`rsgrpo.prepare.synthetic.demonstration`): the pretrained model executes the rare strategy about as
unreliably, which gives the base policy the paper's premise -- high pass@1 on problems without a
carry, low pass@1 but real pass@k on the others. The demonstrations are drawn from the task's
``train`` split only, so a benchmark on the ``test`` split is held out from pretraining too.

The output is a prepared model directory like ``prepare-model``'s (written atomically, skipped when
it already holds the same spec), with ``pretrain.json``: the spec and the loss every
``LOG_EVERY`` steps. Same spec, same machine and thread count: the same weights. This module
registers model source ``pretrain`` (:func:`rsgrpo.prepare.model_sources.register`), so
``prepare_model`` builds such a spec like any other; the verbs keep each to its own sources.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
from pathlib import Path

from rsgrpo.prepare.loading import load_policy
from rsgrpo.prepare.model_sources import parse_model_spec, prepare_model, register
from rsgrpo.prepare.synthetic import demonstration
from rsgrpo.prepare.tiny import build_tiny_model, tiny_config

__all__ = ["DEFAULTS", "TASKS", "check_spec", "model_options", "pretrain_into", "add_arguments", "main"]

log = logging.getLogger(__name__)

DEFAULTS = {"task": "carry_addition", "digits": 2, "rare_frac": 0.1, "rare_slip": 0.5, "steps": 1000,
            "batch_size": 128, "lr": 2.0e-3, "warmup_steps": 100, "hidden_size": 128, "num_layers": 2,
            "num_heads": 4, "seed": 0}
TASKS = ("carry_addition",)
LOG_EVERY = 100
_KINDS = {"task": str, "digits": int, "rare_frac": float, "rare_slip": float,
          "steps": int, "batch_size": int, "lr": float,
          "warmup_steps": int, "hidden_size": int, "num_layers": int, "num_heads": int, "seed": int}


def check_spec(spec: dict) -> dict:
    """The spec with its defaults filled in; ValueError naming the key and value of a bad entry."""
    unknown = sorted(set(spec) - set(DEFAULTS) - {"source", "name"})
    if unknown:
        raise ValueError(f"pretrain spec: unknown key(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    full = {**DEFAULTS, **{k: v for k, v in spec.items() if k not in ("source", "name")}}
    for key, kind in _KINDS.items():
        value = full[key]
        accepted = (int, float) if kind is float else kind  # a float key also takes an integer
        if not isinstance(value, accepted) or isinstance(value, bool):
            raise ValueError(f"pretrain spec: key {key!r} must be a {kind.__name__}, got {value!r}")
        full[key] = kind(value)
    checks = [("task", full["task"] in TASKS, f"must be one of {list(TASKS)}"),
              ("rare_frac", 0 <= full["rare_frac"] <= 1, "must be in [0, 1]"),
              ("rare_slip", 0 <= full["rare_slip"] < 1, "must be in [0, 1)"),
              ("lr", full["lr"] > 0, "must be > 0")]
    checks += [(key, full[key] >= 1, "must be >= 1") for key in ("steps", "batch_size", "hidden_size",
                                                                  "num_layers", "num_heads")]
    checks += [("warmup_steps", full["warmup_steps"] >= 0, "must be >= 0"),
               ("hidden_size", full["hidden_size"] % full["num_heads"] == 0, "must be a multiple of num_heads")]
    for key, ok, problem in checks:
        if not ok:
            raise ValueError(f"pretrain spec: key {key!r} {problem}, got {full[key]!r}")
    return full


def model_options(spec: dict) -> dict:
    """Keyword options of :func:`rsgrpo.prepare.tiny.tiny_config` / ``build_tiny_model`` for a spec."""
    full = check_spec(spec)
    return {"hidden_size": full["hidden_size"], "num_layers": full["num_layers"], "num_heads": full["num_heads"],
            "head_dim": full["hidden_size"] // full["num_heads"]}


def _lr_at(full: dict, step: int) -> float:
    """Linear warm-up, then cosine decay to 0."""
    if step < full["warmup_steps"]:
        return full["lr"] * (step + 1) / full["warmup_steps"]
    progress = (step - full["warmup_steps"]) / max(1, full["steps"] - full["warmup_steps"])
    return full["lr"] * 0.5 * (1.0 + math.cos(math.pi * progress))


def _batch(tokenizer, rng: random.Random, full: dict):
    """Token ids, attention mask and loss mask (completion tokens and EOS) of one batch."""
    import torch

    eos = tokenizer.eos_token_id
    pairs = [demonstration(rng, full["rare_frac"], full["digits"], full["rare_slip"], split="train")
             for _ in range(full["batch_size"])]
    # one tokenizer call for the whole batch: the same ids as one call per text, without the per-call overhead
    encoded = tokenizer([text for pair in pairs for text in pair], add_special_tokens=False)["input_ids"]
    rows, losses = [], []
    for prompt_ids, completion_ids in zip(encoded[0::2], encoded[1::2]):
        completion_ids = completion_ids + [eos]
        rows.append(prompt_ids + completion_ids)
        losses.append([0] * len(prompt_ids) + [1] * len(completion_ids))
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    loss_mask = torch.tensor([m + [0] * (width - len(m)) for m in losses], dtype=torch.float32)
    return ids, attention, loss_mask


@register("pretrain", keys=tuple(DEFAULTS),
          planned_config=lambda spec: tiny_config(**model_options(spec)).to_dict())
def pretrain_into(spec: dict, out: Path) -> None:
    """Build the tiny model in ``out`` and pretrain it there (model source ``pretrain`` of
    :func:`rsgrpo.prepare.model_sources.prepare_model`, which makes the write atomic)."""
    import torch
    from tqdm import tqdm

    full = check_spec(spec)
    build_tiny_model(out, seed=full["seed"], **model_options(spec))
    model, tokenizer = load_policy(out, dtype="float32")  # safetensors only
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=full["lr"], weight_decay=0.0)
    rng = random.Random(f"pretrain/{full['task']}/{full['seed']}")
    torch.manual_seed(full["seed"])
    history = []
    for step in tqdm(range(full["steps"]), desc="pretrain", unit="step", file=sys.stderr, dynamic_ncols=True):
        ids, attention, loss_mask = _batch(tokenizer, rng, full)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        token_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                       reduction="none")
        mask = loss_mask[:, 1:].reshape(-1)
        loss = (token_loss * mask).sum() / mask.sum()
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(full, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % LOG_EVERY == 0 or step + 1 == full["steps"]:
            history.append({"step": step + 1, "loss": loss.item()})
            log.info("step %d loss %.4f", step + 1, loss.item())
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    (out / "pretrain.json").write_text(json.dumps({"spec": full, "loss": history}, indent=2) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True,
                        help="model spec with source: pretrain (a .yaml/.yml/.json file or an inline YAML/JSON "
                             "mapping), e.g. "
                             "'{source: pretrain, task: carry_addition, rare_frac: 0.1, seed: 0}'")
    parser.add_argument("--out", required=True, help="output checkpoint directory")


def main(args: argparse.Namespace) -> int:
    try:
        spec = parse_model_spec(args.spec)
        if spec["source"] != "pretrain":
            raise ValueError(f"spec.source must be 'pretrain' (other sources: python -m rsgrpo prepare-model), "
                             f"got {spec['source']!r}")
        out = prepare_model(spec, args.out)
    except ValueError as exc:
        print(f"pretrain: error: {exc}", file=sys.stderr)
        return 1
    print(f"pretrain: {out}")
    return 0
