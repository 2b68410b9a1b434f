"""A run's training set: prompts too long for the model's context are dropped before training starts
(counted in the log and in TrainingSet.length_filter), never a failure mid-run."""

from __future__ import annotations

import logging

import pytest

from rsgrpo.train.config import from_dict
from rsgrpo.train.rewards import register
from rsgrpo.train.training_set import fit_to_context, load_training_set, records_hash

LONG = "9" * 600  # the tiny model's context is 512 tokens (one token per character)
RECORDS = [{"id": "a", "problem": "6*70", "answer": "420"},
           {"id": "b", "problem": f"{LONG}+1", "answer": "0"},
           {"id": "c", "problem": "40+2", "answer": "42"},
           {"id": "d", "problem": f"1+{LONG}", "answer": "0"},
           {"id": "e", "problem": "1+1", "answer": "2"}]


def _cfg(model_dir, **over):
    return from_dict(dict(dict(model_dir=str(model_dir), max_new_tokens=16, engine="hf", progress=False), **over))


def _prompt_tokens(model_dir, records, template="chat"):
    from rsgrpo.prepare.loading import load_tokenizer
    from rsgrpo.prepare.prompts import build_prompt
    from rsgrpo.train.engines.base import encode_prompts

    tok = load_tokenizer(model_dir)
    return [len(ids) for ids in encode_prompts(tok, [build_prompt(r["problem"], template=template, tokenizer=tok)
                                                     for r in records])]


def test_fit_to_context_keeps_the_prompts_that_fit_in_order():
    records = [{"id": str(i), "problem": "p", "answer": "1"} for i in range(6)]
    kept, meta = fit_to_context(records, [10, 497, 496, 700, 5, 498], max_new_tokens=16, context=512)
    assert [r["id"] for r in kept] == ["0", "2", "4"]  # 496 + 16 = 512 fits exactly
    assert meta == {"prompts": 6, "kept": 3, "dropped": 3, "dropped_ids": ["1", "3", "5"], "max_prompt_tokens": 496,
                    "context": 512, "max_new_tokens": 16, "longest_kept_prompt_tokens": 496}
    kept, meta = fit_to_context(records, [10] * 6, max_new_tokens=16, context=None)  # unknown context: keep all
    assert kept == records and meta["dropped"] == 0 and meta["max_prompt_tokens"] is None


def test_long_prompts_are_dropped_counted_and_logged_before_training(tiny_model_dir, caplog):
    lengths = _prompt_tokens(tiny_model_dir, RECORDS)
    assert [n + 16 > 512 for n in lengths] == [False, True, False, True, False]
    with caplog.at_level(logging.INFO, logger="rsgrpo.train.training_set"):
        data = load_training_set(_cfg(tiny_model_dir), [dict(r) for r in RECORDS])
    assert [r["id"] for r in data.records] == ["a", "c", "e"]  # the rest, in their order
    assert data.records == [RECORDS[0], RECORDS[2], RECORDS[4]] and data.n_unique == 3
    assert data.length_filter == {"prompts": 5, "kept": 3, "dropped": 2, "dropped_ids": ["b", "d"],
                                  "max_prompt_tokens": 496, "context": 512, "max_new_tokens": 16,
                                  "longest_kept_prompt_tokens": max(lengths[0], lengths[2], lengths[4])}
    assert data.metadata() == {"hash": data.hash, "records": 3, "unique_ids": 3, "length_filter": data.length_filter}
    lines = [r.getMessage() for r in caplog.records if r.name == "rsgrpo.train.training_set"]
    assert lines == [f"training prompts: dropped 2 of 5 longer than 496 tokens (context 512 - max_new_tokens 16); "
                     f"longest kept prompt {data.length_filter['longest_kept_prompt_tokens']} tokens; "
                     f"dropped ids: b, d"]
    assert caplog.records[-1].levelno == logging.WARNING


def test_the_fingerprint_covers_the_records_trained_on_and_is_stable(tiny_model_dir):
    cfg = _cfg(tiny_model_dir)
    data = load_training_set(cfg, [dict(r) for r in RECORDS])
    assert data.hash == load_training_set(cfg, [dict(r) for r in RECORDS]).hash  # resume finds the same data
    assert data.hash == records_hash([RECORDS[0], RECORDS[2], RECORDS[4]]) != records_hash(RECORDS)
    short = [RECORDS[0], RECORDS[2], RECORDS[4]]  # nothing dropped: the fingerprint checkpoints already hold
    fitted = load_training_set(cfg, [dict(r) for r in short])
    assert fitted.hash == records_hash(short) and fitted.length_filter["dropped"] == 0


def test_the_prompt_fn_is_what_is_measured(tiny_model_dir):
    from rsgrpo.prepare.loading import load_tokenizer
    from rsgrpo.train.engines.base import encode_prompts

    tok = load_tokenizer(tiny_model_dir)
    extra = len(encode_prompts(tok, ["x"])[0]) - 1  # special tokens a plain prompt gets
    fits, over = "7" * (496 - extra), "7" * (497 - extra)
    records = [{"id": "fits", "problem": fits, "answer": "1"}, {"id": "over", "problem": over, "answer": "1"}]
    data = load_training_set(_cfg(tiny_model_dir), records, prompt_fn=lambda p: p)
    assert [r["id"] for r in data.records] == ["fits"] and data.length_filter["longest_kept_prompt_tokens"] == 496


def test_every_prompt_too_long_is_a_clear_error(tiny_model_dir):
    shortest = min(_prompt_tokens(tiny_model_dir, RECORDS))
    with pytest.raises(ValueError, match=rf"^key 'max_new_tokens': all 5 training prompts are too long for the model: "
                                         rf"even the shortest prompt \(record 'e', {shortest} tokens\) \+ 505 new "
                                         rf"tokens = {shortest + 505} exceeds the model's context of 512 tokens .*"
                                         rf"lower max_new_tokens to at most {512 - shortest}"):
        load_training_set(_cfg(tiny_model_dir, max_new_tokens=505), [dict(r) for r in RECORDS])


@register("test_training_set_has_digit")
def has_digit(*, completions, answers, problems, records):
    return [1.0 if any(ch.isdigit() for ch in c) else 0.0 for c in completions]


def test_a_run_with_a_too_long_prompt_trains_on_the_others(tiny_model_dir, tmp_path):
    from rsgrpo.train import checkpoint as ckpt
    from rsgrpo.train.trainer import Trainer

    cfg = _cfg(tiny_model_dir, steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=8, lr=1e-3,
               micro_batch_size=4, seed=0, reward_kind="test_training_set_has_digit", max_gen_rounds=1, logging=[])
    trainer = Trainer(cfg, tmp_path / "run", records=[dict(r) for r in RECORDS])
    manifest = trainer.run()
    assert manifest["final_step"] == 1
    assert [r["id"] for r in trainer.data.records] == ["a", "c", "e"]
    assert trainer.data.length_filter["dropped"] == 2
    assert all(LONG not in prompt for prompt in trainer.prompts)
    # recorded with the run: in the manifest and in every checkpoint's trainer state
    assert manifest["training_set"]["length_filter"]["dropped_ids"] == ["b", "d"]
    _, state = ckpt.resume_state(tmp_path / "run", config_hash=trainer.hash, data_hash=trainer.data.hash,
                                 prompts_per_step=2)
    assert state["training_set"] == manifest["training_set"]
