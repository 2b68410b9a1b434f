"""The training records of a run, their prompts, and the fingerprint that guards resume."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rsgrpo.train.config import TrainConfig

__all__ = ["TrainingSet", "records_hash", "load_training_set", "build_prompts"]


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
    records: list[dict]
    hash: str
    n_unique: int  # distinct problem ids: the denominator of the cumulative solve rate


def load_training_set(cfg: TrainConfig, records: list[dict] | None = None) -> TrainingSet:
    """The records of ``cfg.train_data`` (or the injected ``records``), checked non-empty."""
    if records is None:
        from rsgrpo.prepare.data_sources import load_records

        spec = cfg.train_data
        if spec is None:
            raise ValueError("train_data is required (config key train_data)")
        records = load_records({"source": "local", "path": spec} if isinstance(spec, str) else spec)
    if not records:
        raise ValueError("train_data holds no records")
    return TrainingSet(records, records_hash(records), len({str(record["id"]) for record in records}))


def build_prompts(cfg: TrainConfig, records: list[dict], source: str,
                  prompt_fn: Callable[[str], Any] | None = None) -> tuple[list, int]:
    """Every record's prompt and the sequence length generation needs (the longest prompt plus
    ``max_new_tokens``), checked against the model's context from its tokenizer and config only."""
    from rsgrpo.prepare.loading import load_tokenizer
    from rsgrpo.prepare.prompts import build_prompt
    from rsgrpo.train.engines.base import encode_prompts, generation_length

    tokenizer = load_tokenizer(source)
    prompts = [prompt_fn(record["problem"]) if prompt_fn is not None
               else build_prompt(record["problem"], template=cfg.prompt_template, tokenizer=tokenizer)
               for record in records]
    needed = generation_length(encode_prompts(tokenizer, prompts), cfg.max_new_tokens, source, key="max_new_tokens")
    return prompts, needed
