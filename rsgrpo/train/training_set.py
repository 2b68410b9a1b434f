"""The training records of a run, their prompts, and the fingerprint that guards resume.

Prompts too long for the model are dropped here, when the run prepares its data: before any weights
load and before step 0, never mid-run. A prompt fits when its token count (after the prompt
template, tokenized as the engines tokenize it: :func:`rsgrpo.train.engines.base.encode_prompts`)
plus ``max_new_tokens`` is at most the model's context (``max_position_embeddings``). The filter
depends on the model's tokenizer and template, which the prepared data (one file per train set,
shared by every model) cannot know; the run knows both. What was dropped is logged in one line and
kept in :attr:`TrainingSet.length_filter`; the fingerprint covers the records actually trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsgrpo.train.config import TrainConfig

__all__ = ["TrainingSet", "records_hash", "fit_to_context", "load_training_set", "build_prompts"]

log = logging.getLogger(__name__)

DROPPED_IDS_KEPT = 100  # ids of dropped records kept in the metadata (the count is always exact)
DROPPED_IDS_LOGGED = 10


def records_hash(records: list[dict]) -> str:
    """Fingerprint of the training records (ids, problems, answers, extra fields, order) guarding
    resume: a checkpoint resumes only on the records it was trained on."""
    digest = hashlib.sha256()
    for record in records:
        item = [str(record["id"]), str(record["problem"]), str(record["answer"])]
        extras = sorted((key, value) for key, value in record.items() if key not in ("id", "problem", "answer"))
        digest.update(json.dumps(item + [extras] if extras else item, default=str).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class TrainingSet:
    records: list[dict]  # the records trained on: those whose prompt fits the model's context, in data order
    hash: str            # records_hash(records): the kept records, so it is stable for unchanged data + model
    n_unique: int        # distinct problem ids: the denominator of the cumulative solve rate
    # the context filter (fit_to_context): prompts, kept, dropped, dropped_ids, max_prompt_tokens,
    # context, max_new_tokens, longest_kept_prompt_tokens; None when the records were not fitted
    length_filter: dict | None = None

    def metadata(self) -> dict:
        """What a run records about its data (JSON-ready): the fingerprint, the counts, the filter."""
        return {"hash": self.hash, "records": len(self.records), "unique_ids": self.n_unique,
                "length_filter": self.length_filter}


def fit_to_context(records: Sequence[dict], prompt_tokens: Sequence[int], *, max_new_tokens: int,
                   context: int | None, model_dir: str | Path = "the model") -> tuple[list[dict], dict]:
    """``(kept records, filter metadata)``: the records whose prompt (``prompt_tokens[i]`` tokens)
    plus ``max_new_tokens`` fits ``context``, in their order. ``context`` None (unknown) keeps all.
    ValueError naming the config key ``max_new_tokens``, the context and the shortest prompt when
    no prompt fits."""
    if len(records) != len(prompt_tokens):
        raise ValueError(f"{len(records)} records but {len(prompt_tokens)} prompt lengths")
    limit = None if context is None else int(context) - int(max_new_tokens)
    keep = [limit is None or n <= limit for n in prompt_tokens]
    kept = [record for record, ok in zip(records, keep) if ok]
    dropped = [str(record["id"]) for record, ok in zip(records, keep) if not ok]
    if records and not kept:
        shortest = min(range(len(records)), key=lambda i: prompt_tokens[i])
        n = int(prompt_tokens[shortest])
        fix = (f"lower max_new_tokens to at most {context - n}" if n < context
               else "use a model with a longer context")
        raise ValueError(
            f"key 'max_new_tokens': all {len(records)} training prompts are too long for the model: even the "
            f"shortest prompt (record {records[shortest]['id']!r}, {n} tokens) + {max_new_tokens} new tokens = "
            f"{n + max_new_tokens} exceeds the model's context of {context} tokens (max_position_embeddings in "
            f"{str(Path(model_dir) / 'config.json')!r}); {fix} or shorten the prompts")
    meta = {"prompts": len(records), "kept": len(kept), "dropped": len(dropped),
            "dropped_ids": dropped[:DROPPED_IDS_KEPT], "max_prompt_tokens": limit,
            "context": None if context is None else int(context), "max_new_tokens": int(max_new_tokens),
            "longest_kept_prompt_tokens": max((int(n) for n, ok in zip(prompt_tokens, keep) if ok), default=0)}
    return kept, meta


def _is_main_process() -> bool:
    """Rank 0, or no process group: every rank fits the same records, one of them says so."""
    try:
        import torch.distributed as torch_dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return True
    return not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_rank() == 0


def _log_filter(meta: dict) -> None:
    if not _is_main_process():
        return
    limit = (f"{meta['max_prompt_tokens']} tokens (context {meta['context']} - max_new_tokens "
             f"{meta['max_new_tokens']})" if meta["context"] is not None else
             "no limit (the model's config.json has no max_position_embeddings)")
    ids = meta["dropped_ids"][:DROPPED_IDS_LOGGED]
    shown = f"; dropped ids: {', '.join(ids)}{', ...' if meta['dropped'] > len(ids) else ''}" if ids else ""
    log.log(logging.WARNING if meta["dropped"] else logging.INFO,
            "training prompts: dropped %d of %d longer than %s; longest kept prompt %d tokens%s",
            meta["dropped"], meta["prompts"], limit, meta["longest_kept_prompt_tokens"], shown)


def _prompts(cfg: TrainConfig, records: list[dict], tokenizer, prompt_fn: Callable[[str], Any] | None) -> list:
    from rsgrpo.prepare.prompts import build_prompt

    return [prompt_fn(record["problem"]) if prompt_fn is not None
            else build_prompt(record["problem"], template=cfg.prompt_template, tokenizer=tokenizer)
            for record in records]


def load_training_set(cfg: TrainConfig, records: list[dict] | None = None, *,
                      prompt_fn: Callable[[str], Any] | None = None) -> TrainingSet:
    """The records of ``cfg.train_data`` (or the injected ``records``), checked non-empty, less those
    whose prompt (``prompt_fn`` or ``cfg.prompt_template``, with the tokenizer of ``cfg.model_dir``)
    does not fit the model's context with ``cfg.max_new_tokens`` new tokens (:func:`fit_to_context`).
    Reads the model's tokenizer and config.json only, no weights."""
    from rsgrpo.prepare.loading import load_tokenizer
    from rsgrpo.train.engines.base import context_length, encode_prompts

    if records is None:
        from rsgrpo.prepare.data_sources import load_records

        spec = cfg.train_data
        if spec is None:
            raise ValueError("train_data is required (config key train_data)")
        records = load_records({"source": "local", "path": spec} if isinstance(spec, str) else spec)
    if not records:
        raise ValueError("train_data holds no records")
    if not cfg.model_dir:
        raise ValueError("model_dir is required (config key model_dir)")
    tokenizer = load_tokenizer(cfg.model_dir)
    lengths = [len(ids) for ids in encode_prompts(tokenizer, _prompts(cfg, records, tokenizer, prompt_fn))]
    kept, meta = fit_to_context(records, lengths, max_new_tokens=cfg.max_new_tokens,
                                context=context_length(cfg.model_dir), model_dir=cfg.model_dir)
    _log_filter(meta)
    return TrainingSet(kept, records_hash(kept), len({str(record["id"]) for record in kept}), meta)


def build_prompts(cfg: TrainConfig, records: list[dict], source: str,
                  prompt_fn: Callable[[str], Any] | None = None) -> tuple[list, int]:
    """Every record's prompt and the sequence length generation needs (the longest prompt plus
    ``max_new_tokens``), checked against the model's context from its tokenizer and config only.
    The records of :func:`load_training_set` always fit; the check stays as a safety net."""
    from rsgrpo.prepare.loading import load_tokenizer
    from rsgrpo.train.engines.base import encode_prompts, generation_length

    tokenizer = load_tokenizer(source)
    prompts = _prompts(cfg, records, tokenizer, prompt_fn)
    needed = generation_length(encode_prompts(tokenizer, prompts), cfg.max_new_tokens, source, key="max_new_tokens")
    return prompts, needed
