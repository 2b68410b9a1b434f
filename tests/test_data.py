"""Tests of rsgrpo.data: specs -> canonical records, the arithmetic generator, prompts, prepare-data."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import re
from fractions import Fraction

import pandas as pd
import pytest

from rsgrpo import data
from rsgrpo.cli import main as cli_main
from rsgrpo.data import build_prompt, generate_arithmetic, load_records, write_records

# ---------------------------------------------------------------------------------------------
# generator
# ---------------------------------------------------------------------------------------------


def expected_value(problem: str) -> Fraction:
    """Recompute a generated problem's answer from its text, independently of the generator."""
    m = re.fullmatch(r"What is (\d+) \+ (\d+)\?", problem)
    if m:
        return Fraction(int(m[1]) + int(m[2]))
    m = re.fullmatch(r"What is (\d+) - (\d+)\?", problem)
    if m:
        return Fraction(int(m[1]) - int(m[2]))
    m = re.fullmatch(r"What is (\d+) times (\d+)\?", problem)
    if m:
        return Fraction(int(m[1]) * int(m[2]))
    m = re.fullmatch(r"What is (\d+) \+ (\d+) times (\d+)\?", problem)
    if m:
        return Fraction(int(m[1]) + int(m[2]) * int(m[3]))
    m = re.fullmatch(r"(\w+) has (\d+) (\w+)\. \1 gets (\d+) more \3 and then gives away (\d+)\. "
                     r"How many \3 does \1 have now\?", problem)
    if m:
        return Fraction(int(m[2]) + int(m[4]) - int(m[5]))
    m = re.fullmatch(r"What is (\d+)/(\d+) \+ (\d+)/(\d+)\? Give the answer as a fraction in lowest terms\.",
                     problem)
    if m:
        return Fraction(int(m[1]), int(m[2])) + Fraction(int(m[3]), int(m[4]))
    raise AssertionError(f"unrecognised generated problem: {problem!r}")


def answer_value(answer: str) -> Fraction:
    m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", answer)
    if m:
        value = Fraction(int(m[2]), int(m[3]))
        assert value.denominator == int(m[3]), f"{answer} is not in lowest terms"
        return -value if m[1] else value
    assert re.fullmatch(r"-?\d+", answer), answer
    return Fraction(int(answer))


def test_generator_answers_are_exact_at_every_level():
    records = load_records({"source": "generator", "name": "arithmetic", "n": 250, "seed": 3})
    assert len(records) == 250
    assert {tuple(sorted(r)) for r in records} == {("answer", "id", "problem")}
    for record in records:
        assert answer_value(record["answer"]) == expected_value(record["problem"]), record
        assert answer_value(record["answer"]) >= 0
    # level 1 is the easy single-digit addition the 135M demo model needs
    assert re.fullmatch(r"What is \d \+ \d\?", records[0]["problem"])
    assert any("/" in r["problem"] for r in records) and any("has" in r["problem"] for r in records)


def test_generator_is_deterministic_and_seeded():
    spec = {"source": "generator", "name": "arithmetic", "n": 60, "seed": 7, "difficulty": [1, 2, 3]}
    assert load_records(spec) == load_records(dict(spec))
    other = load_records({**spec, "seed": 8})
    assert [r["problem"] for r in other] != [r["problem"] for r in load_records(spec)]
    # prefix-stable: the first problems do not depend on n
    assert load_records({**spec, "n": 10}) == load_records(spec)[:10]
    assert len({r["id"] for r in load_records(spec)}) == 60


def test_generator_single_level_and_errors():
    records = generate_arithmetic(n=20, seed=0, difficulty=1)
    assert all(re.fullmatch(r"What is \d \+ \d\?", r["problem"]) for r in records)
    with pytest.raises(ValueError, match="difficulty 9"):
        generate_arithmetic(n=5, difficulty=9)
    with pytest.raises(ValueError, match="unknown generator 'geometry'"):
        load_records({"source": "generator", "name": "geometry", "n": 3})
    with pytest.raises(ValueError, match="'n' must be a positive integer"):
        load_records({"source": "generator", "name": "arithmetic", "n": 0})


# ---------------------------------------------------------------------------------------------
# local files
# ---------------------------------------------------------------------------------------------


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_jsonl_and_parquet_give_the_same_records(tmp_path):
    rows = [{"id": "a", "problem": "1+1?", "answer": "2"}, {"id": "b", "problem": "2+2?", "answer": 4}]
    jsonl = _write_jsonl(tmp_path / "set.jsonl", rows)
    parquet = tmp_path / "set.parquet"
    pd.DataFrame([{**r, "answer": str(r["answer"])} for r in rows]).to_parquet(parquet)
    expected = [{"id": "a", "problem": "1+1?", "answer": "2"}, {"id": "b", "problem": "2+2?", "answer": "4"}]
    assert load_records({"source": "local", "path": str(jsonl)}) == expected
    assert load_records({"source": "local", "path": str(parquet)}) == expected


def test_local_custom_and_nested_fields_with_default_ids(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "Q1"}], "reward_model": {"ground_truth": "7"}},
        {"prompt": [{"role": "user", "content": "Q2"}], "reward_model": {"ground_truth": "8"}},
    ]
    path = _write_jsonl(tmp_path / "dapo.jsonl", rows)
    spec = {"source": "local", "path": str(path), "name": "dapo17k",
            "fields": {"problem": "prompt.0.content", "answer": "reward_model.ground_truth"}}
    assert load_records(spec) == [
        {"id": "dapo17k-0", "problem": "Q1", "answer": "7"},
        {"id": "dapo17k-1", "problem": "Q2", "answer": "8"},
    ]


def test_dedup_keeps_first_occurrence(tmp_path):
    rows = [{"q": f"Q{i % 3}", "a": str(i % 3)} for i in range(12)]
    path = _write_jsonl(tmp_path / "rep.jsonl", rows)
    spec = {"source": "local", "path": str(path), "fields": {"problem": "q", "answer": "a"}}
    assert len(load_records(spec)) == 12
    deduped = load_records({**spec, "dedup": True})
    assert deduped == [{"id": f"rep-{i}", "problem": f"Q{i}", "answer": str(i)} for i in range(3)]
    assert load_records({**spec, "dedup": True, "limit": 2}) == deduped[:2]


@pytest.mark.parametrize(
    "rows, spec_extra, message",
    [
        ([{"problem": "Q"}], {}, r"row 0: field 'answer' \(for 'answer'\) is missing"),
        ([{"problem": "Q", "answer": "  "}], {}, r"answer field 'answer' is empty \(value '  '\)"),
        ([{"problem": "Q", "answer": None}], {}, r"answer field 'answer' is empty \(value None\)"),
        ([{"id": 1, "problem": "Q", "answer": "1"}, {"id": 1, "problem": "R", "answer": "2"}], {},
         r"duplicate id '1'"),
        ([{"problem": "Q", "answer": "1"}], {"fields": {"problem": "question"}},
         r"field 'question' \(for 'problem'\) is missing"),
        ([{"problem": "Q", "answer": "1"}], {"id_field": "uid"}, r"id field 'uid' is missing"),
        ([{"problem": "Q", "answer": "1"}], {"fields": {"solution": "x"}}, r"unknown keys in 'fields'"),
    ],
)
def test_local_errors_name_file_field_and_value(tmp_path, rows, spec_extra, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=message) as info:
        load_records({"source": "local", "path": str(path), **spec_extra})
    assert "bad.jsonl" in str(info.value)


def test_local_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_records({"source": "local", "path": str(tmp_path / "missing.jsonl")})
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"problem": "Q", "answer": "1"}\n{not json\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        load_records({"source": "local", "path": str(broken)})
    with pytest.raises(ValueError, match="unknown dataset source 'ftp'"):
        load_records({"source": "ftp", "path": "x"})


# ---------------------------------------------------------------------------------------------
# hugging face (datasets is optional: the loader is monkeypatched)
# ---------------------------------------------------------------------------------------------


def test_hf_source_through_patched_loader(monkeypatch):
    calls = []

    def fake_loader(path, split, subset):
        calls.append((path, split, subset))
        return [{"prompt": [{"content": "P"}], "reward_model": {"ground_truth": "3"}}] * 100 + [
            {"prompt": [{"content": "R"}], "reward_model": {"ground_truth": "4"}}
        ]

    monkeypatch.setattr(data, "_load_hf_rows", fake_loader)
    records = load_records({
        "source": "hf", "path": "BytedTsinghua-SIA/DAPO-Math-17k", "split": "train", "dedup": True,
        "fields": {"problem": "prompt.0.content", "answer": "reward_model.ground_truth"},
    })
    assert calls == [("BytedTsinghua-SIA/DAPO-Math-17k", "train", None)]
    assert records == [
        {"id": "DAPO-Math-17k-0", "problem": "P", "answer": "3"},
        {"id": "DAPO-Math-17k-100", "problem": "R", "answer": "4"},
    ]


def test_hf_without_datasets_library_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ValueError, match="needs the 'datasets' library"):
        load_records({"source": "hf", "path": "hiyouga/math12k", "split": "train"})


# ---------------------------------------------------------------------------------------------
# prompts, writer, CLI
# ---------------------------------------------------------------------------------------------


class FakeChatTokenizer:
    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt is True and tokenize is False
        body = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        return body + "<|assistant|>"


def test_build_prompt_templates():
    plain = build_prompt("What is 3 + 4?", template="plain")
    assert plain.startswith("What is 3 + 4?") and plain.endswith("\\boxed{}.")
    assert build_prompt("Q", template="plain", system="Be brief.").startswith("Be brief.\n\nQ")
    chat = build_prompt("What is 3 + 4?", tokenizer=FakeChatTokenizer(), system="S")
    assert chat == ("<|system|>S<|end|><|user|>What is 3 + 4?\n\n" + data.BOXED_INSTRUCTION
                    + "<|end|><|assistant|>")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        build_prompt("Q", template="chat")
    with pytest.raises(ValueError, match="unknown prompt template 'fancy'"):
        build_prompt("Q", template="fancy")


def test_write_records_is_validated_and_round_trips(tmp_path):
    records = [{"id": "x", "problem": "Q", "answer": "1"}]
    out = write_records(records, tmp_path / "sub" / "out.jsonl")
    assert load_records({"source": "local", "path": str(out)}) == records
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]  # no temp file left behind
    with pytest.raises(ValueError, match="record 1 has no non-empty string 'answer'"):
        write_records(records + [{"id": "y", "problem": "Q", "answer": ""}], tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists()


def test_prepare_data_cli_inline_and_file_spec(tmp_path):
    out = tmp_path / "arith.jsonl"
    rc = cli_main(["prepare-data", "--spec", "{source: generator, name: arithmetic, n: 12, seed: 1}",
                   "--out", str(out)])
    assert rc == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == load_records({"source": "generator", "name": "arithmetic", "n": 12, "seed": 1})
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"source: local\npath: {out}\nlimit: 5\n")
    out2 = tmp_path / "five.jsonl"
    assert cli_main(["prepare-data", "--spec", str(spec_file), "--out", str(out2)]) == 0
    assert len(out2.read_text().splitlines()) == 5
    with pytest.raises(ValueError, match="spec file .*nope.yaml.* does not exist"):
        cli_main(["prepare-data", "--spec", str(tmp_path / "nope.yaml"), "--out", str(out2)])


def test_extra_fields_reach_the_records_and_survive_prepare(tmp_path):
    """Extra dataset columns (for rewards) are copied into the records, written by prepare-data and
    read back by the trainer's spec for the prepared file."""
    import numpy as np
    import pandas as pd

    path = tmp_path / "raw.parquet"
    pd.DataFrame({"q": ["A?", "B?"], "a": ["1", "2"], "meta": [{"level": 3}, {"level": 5}],
                  "tags": [np.array([1, 2]), np.array([3])]}).to_parquet(path)
    spec = {"source": "local", "path": str(path), "fields": {"problem": "q", "answer": "a"},
            "extra_fields": {"level": "meta.level", "tags": "tags"}}
    records = load_records(spec)
    assert records[1] == {"id": "raw-1", "problem": "B?", "answer": "2", "level": 5, "tags": [3]}
    prepared = write_records(records, tmp_path / "train.jsonl")
    again = load_records({"source": "local", "path": str(prepared), "extra_fields": {"level": "level", "tags": "tags"}})
    assert again == records
    # without extra_fields the record shape is the old one
    assert load_records({"source": "local", "path": str(prepared)})[0] == {
        "id": "raw-0", "problem": "A?", "answer": "1"}
    with pytest.raises(ValueError, match="extra field 'meta.size' \\(for 'size'\\) is missing"):
        load_records({**spec, "extra_fields": {"size": "meta.size"}})
    with pytest.raises(ValueError, match="cannot name \\['answer'\\]"):
        load_records({**spec, "extra_fields": {"answer": "a"}})
