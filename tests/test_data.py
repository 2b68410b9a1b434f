"""Tests of rsgrpo.data: specs -> canonical records, the arithmetic generator, prompts, prepare-data."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rsgrpo.cli import main as cli_main
from rsgrpo.prepare import data
from rsgrpo.prepare.data import build_prompt, generate_arithmetic, load_records, write_records

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


# ---------------------------------------------------------------------------------------------
# answer formats
# ---------------------------------------------------------------------------------------------

ARITHMETIC = {"source": "generator", "name": "arithmetic", "n": 40, "seed": 3}


def test_any_format_records_are_unchanged(tmp_path):
    """The default format adds nothing to the records, so a prepared file (and the trainer's
    records hash, which covers every record field) is the same as before formats existed."""
    import hashlib

    default = load_records(ARITHMETIC)
    assert load_records({**ARITHMETIC, "answer_format": "any"}) == default
    assert {tuple(sorted(r)) for r in default} == {("answer", "id", "problem")}
    prepared = write_records(default, tmp_path / "any.jsonl").read_bytes()
    # sha256 of this file as written before answer formats existed
    assert hashlib.sha256(prepared).hexdigest() == "d423df699f6fd0fa59a449efe54da6dbd85e46d8c45a44522a5fff13964c2feb"


def test_integer_format_travels_with_the_prepared_records(tmp_path):
    from rsgrpo.grading import ANSWER_FORMAT_FIELD

    spec = {**ARITHMETIC, "difficulty": [1, 2, 3, 4], "answer_format": "integer"}
    records = load_records(spec)
    assert data.ANSWER_FORMAT_KEY == ANSWER_FORMAT_FIELD == "answer_format"
    assert {r["answer_format"] for r in records} == {"integer"}
    assert [{k: v for k, v in r.items() if k != "answer_format"} for r in records] == load_records(
        {k: v for k, v in spec.items() if k != "answer_format"})
    # the trainer and the scorer read the prepared file with a bare local spec: the field is kept
    prepared = tmp_path / "train.jsonl"
    assert cli_main(["prepare-data", "--spec", json.dumps(spec), "--out", str(prepared)]) == 0
    assert load_records({"source": "local", "path": str(prepared)}) == records
    # a spec's own key wins over the rows' field
    assert "answer_format" not in load_records({"source": "local", "path": str(prepared), "answer_format": "any"})[0]


def test_integer_format_with_fraction_answers_fails_at_load_time():
    # level 5 of the generator answers with fractions
    with pytest.raises(ValueError, match=r"dataset 'generator:arithmetic': answer_format is 'integer' but record "
                                         r"'arithmetic-0000' has the answer '\\\\frac\{16\}\{15\}', which is not a "
                                         r"literal integer"):
        load_records({**ARITHMETIC, "difficulty": [5], "answer_format": "integer"})


def test_answer_format_errors_name_dataset_and_value(tmp_path):
    with pytest.raises(ValueError, match="dataset 'generator:arithmetic': answer_format must be one of 'any', "
                                         "'integer', got 'int'"):
        load_records({**ARITHMETIC, "answer_format": "int"})
    path = _write_jsonl(tmp_path / "set.jsonl", [{"id": "a", "problem": "Q", "answer": "3"},
                                                 {"id": "b", "problem": "Q2", "answer": "x+1"}])
    with pytest.raises(ValueError, match=r"set.jsonl': answer_format is 'integer' but record 'b' has the answer "
                                         r"'x\+1'"):
        load_records({"source": "local", "path": str(path), "answer_format": "integer"})
    edited = _write_jsonl(tmp_path / "edited.jsonl", [{"id": "a", "problem": "Q", "answer": "3",
                                                       "answer_format": "integers"}])
    with pytest.raises(ValueError, match=r"edited.jsonl', row 0 \(id 'a'\) field 'answer_format': answer_format "
                                         r"must be one of 'any', 'integer', got 'integers'"):
        load_records({"source": "local", "path": str(edited)})
    with pytest.raises(ValueError, match=r"'extra_fields' cannot name \['answer_format'\]"):
        load_records({"source": "local", "path": str(path), "extra_fields": {"answer_format": "answer"}})


def test_shipped_configs_set_integer_formats_where_answers_are_integers():
    from rsgrpo.plan.plan import load_workflow_config

    grid = load_workflow_config([str(REPO / "config" / "grid.yaml")])
    formats = {key: bench["spec"].get("answer_format", "any") for key, bench in grid["benchmarks"].items()}
    assert formats == {"math500": "any", "aime24": "integer", "aime25": "integer", "hmmt24": "any",
                       "hmmt25": "any", "cmimc25": "any"}
    assert all("answer_format" not in spec for spec in grid["train_sets"].values())
    demo = load_workflow_config([str(REPO / "config" / "demo-llm.yaml")])
    for spec in (demo["train_sets"]["arithmetic"], demo["benchmarks"]["arithmetic_test"]["spec"]):
        assert spec["answer_format"] == "integer"
        assert {r["answer_format"] for r in load_records(spec)} == {"integer"}


def test_schema_refuses_an_unknown_answer_format(tmp_path):
    from rsgrpo.plan.plan import load_workflow_config

    config = yaml.safe_load((REPO / "config" / "demo-llm.yaml").read_text(encoding="utf-8"))
    config["benchmarks"]["arithmetic_test"]["spec"]["answer_format"] = "number"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(Exception, match="'number' is not one of \\['any', 'integer'\\]"):
        load_workflow_config([str(path)])


# ---------------------------------------------------------------------------------------------
# hugging face through the real `datasets` library: local copies laid out like the hub repos of
# config/grid.yaml, run through `python -m rsgrpo prepare-data` with the grid's exact specs (only
# `path` replaced), offline. A cluster user with a pre-downloaded copy runs exactly this.
# ---------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]

# the hub's usual shapes: a chat prompt (verl format) and MathArena's problem_type
_MESSAGES = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
_STRINGS = pa.list_(pa.string())


def _grid_spec(section: str, key: str, hub_id: str, local_dir: Path) -> dict:
    """The spec of config/grid.yaml for a train set / benchmark, pointing at a local copy."""
    grid = yaml.safe_load((REPO / "config" / "grid.yaml").read_text(encoding="utf-8"))
    spec = grid["train_sets"][key] if section == "train_sets" else grid["benchmarks"][key]["spec"]
    assert spec["source"] == "hf" and spec["path"] == hub_id, spec  # the layout below mimics hub_id
    return {**spec, "path": str(local_dir)}


def _hub_copy(root: Path, hub_id: str) -> Path:
    """Directory for a local copy of a hub dataset, named like the repo (so default ids match)."""
    path = root / "hub" / hub_id
    (path / "data").mkdir(parents=True)
    return path


def _card(path: Path, splits: dict[str, str], features: str = "") -> None:
    """A dataset card like the hub's (YAML header with configs and optionally dataset_info)."""
    files = "".join(f"  - split: {split}\n    path: {glob}\n" for split, glob in splits.items())
    info = f"dataset_info:\n  features:\n{features}" if features else ""
    (path / "README.md").write_text(f"---\nlicense: mit\nconfigs:\n- config_name: default\n  data_files:\n"
                                    f"{files}{info}---\n\n# {path.name}\n", encoding="utf-8")


def _prepare_data(tmp_path: Path, spec: dict, *, ok: bool = True) -> list[dict] | str:
    """Run the prepare-data verb in a subprocess; the written records, or stderr when it fails."""
    out = tmp_path / f"prepared-{len(list(tmp_path.glob('prepared-*')))}.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets-cache")}
    proc = subprocess.run([sys.executable, "-m", "rsgrpo", "prepare-data", "--spec", json.dumps(spec),
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if not ok:
        assert proc.returncode != 0 and not out.exists(), proc.stderr
        return proc.stderr
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_hf_deepmath_layout_through_prepare_data(tmp_path):
    """zwhe99/DeepMath-103K: question/final_answer plus difficulty, topic and three R1 solutions,
    sharded parquet under data/; ids are positions across the shards in order."""
    local = _hub_copy(tmp_path, "zwhe99/DeepMath-103K")
    _card(local, {"train": "data/train-*"}, "".join(
        f"  - name: {name}\n    dtype: {dtype}\n" for name, dtype in [
            ("question", "string"), ("final_answer", "string"), ("difficulty", "float64"), ("topic", "string"),
            ("r1_solution_1", "string"), ("r1_solution_2", "string"), ("r1_solution_3", "string")]))
    shards = [
        [("Evaluate $\\lim_{x\\to 0} \\frac{\\sin x}{x}$.", "1", 3.0, "Calculus -> Limits"),
         ("Find the number of subgroups of $\\mathbb{Z}_{12}$.", "6", 5.5, "Algebra -> Group Theory"),
         ("Compute $\\int_0^1 x e^{-x}\\,dx$.", "1 - \\dfrac{2}{e}", 4.0, "Calculus -> Integrals")],
        [("Is every compact metric space separable? Answer yes or no.", "Yes", 6.0, "Topology"),
         ("Find the radius of convergence of $\\sum n! x^n$.", "0", 5.0, "Calculus -> Series")],
    ]
    for i, rows in enumerate(shards):
        question, final_answer, difficulty, topic = (list(c) for c in zip(*rows))
        pq.write_table(pa.table({
            "question": question, "final_answer": final_answer, "difficulty": pa.array(difficulty, pa.float64()),
            "topic": topic, **{f"r1_solution_{k}": [f"<think>...</think> \\boxed{{{a}}}" for a in final_answer]
                               for k in (1, 2, 3)},
        }), local / "data" / f"train-{i:05d}-of-00002.parquet")
    spec = _grid_spec("train_sets", "deepmath103k", "zwhe99/DeepMath-103K", local)
    rows = [row for shard in shards for row in shard]
    assert _prepare_data(tmp_path, spec) == [
        {"id": f"DeepMath-103K-{i}", "problem": q, "answer": a} for i, (q, a, _, _) in enumerate(rows)]


_DAPO_PREFIX = ("Solve the following math problem step by step. The last line of your response should be of the "
                "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n")
_DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


def _write_dapo(local: Path, rows: list[tuple[str, str]]) -> None:
    """BytedTsinghua-SIA/DAPO-Math-17k: one verl-format parquet, data/dapo-math-17k.parquet (no split
    in the file name: `datasets` calls it train)."""
    n = len(rows)
    pq.write_table(pa.table({
        "data_source": ["math_dapo"] * n,
        "prompt": pa.array([[{"content": _DAPO_PREFIX + problem + _DAPO_SUFFIX, "role": "user"}]
                            for problem, _ in rows], _MESSAGES),
        "ability": ["MATH"] * n,
        "reward_model": pa.array([{"ground_truth": answer, "style": "rule-lighteval/MATH_v2"} for _, answer in rows],
                                 pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        "extra_info": pa.array([{"index": f"00000000-0000-4000-8000-{i:012d}"} for i in range(n)],
                               pa.struct([("index", pa.string())])),
    }), local / "data" / "dapo-math-17k.parquet")


def test_hf_dapo_layout_dedups_keeping_the_first_occurrence(tmp_path):
    local = _hub_copy(tmp_path, "BytedTsinghua-SIA/DAPO-Math-17k")
    (local / "README.md").write_text("---\nlicense: apache-2.0\n---\n# DAPO-Math-17k\n", encoding="utf-8")
    unique = [("What is $1+1$?", "2"), ("Find $x$ if $2x = 34$.", "17"), ("How many primes are below 10?", "4")]
    rows = unique * 3 + [("What is $1+1$?", "3")]  # the prompts repeat; a later copy with another answer
    _write_dapo(local, rows)
    spec = _grid_spec("train_sets", "dapo17k", "BytedTsinghua-SIA/DAPO-Math-17k", local)
    assert spec["dedup"] is True and "id_field" not in spec
    expected = [{"id": f"DAPO-Math-17k-{i}", "problem": _DAPO_PREFIX + p + _DAPO_SUFFIX, "answer": a}
                for i, (p, a) in enumerate(unique)]
    assert _prepare_data(tmp_path, spec) == expected  # 10 rows -> 3 records, first ids and answers
    # extra_info.index as the id also keeps the first occurrence's (dedup runs before the id check)
    by_index = _prepare_data(tmp_path, {**spec, "id_field": "extra_info.index"})
    assert by_index == [{**r, "id": f"00000000-0000-4000-8000-{i:012d}"} for i, r in enumerate(expected)]


def test_hf_math12k_layout_reads_only_the_requested_split(tmp_path):
    local = _hub_copy(tmp_path, "hiyouga/math12k")
    _card(local, {"train": "data/train-*", "test": "data/test-*"})
    train = [("What is $\\frac{1}{2} + \\frac{1}{3}$?", "\\frac{5}{6}", "Add: $\\boxed{\\frac{5}{6}}$."),
             ("Solve $x^2 = 9$ for $x > 0$.", "3", "$x = \\boxed{3}$."),
             ("Simplify $\\sqrt{50}$.", "5\\sqrt{2}", "$\\boxed{5\\sqrt{2}}$")]
    for split, rows in (("train", train), ("test", [("Held-out problem?", "7", "$\\boxed{7}$")])):
        problem, answer, solution = (list(c) for c in zip(*rows))
        pq.write_table(pa.table({"problem": problem, "answer": answer, "solution": solution}),
                       local / "data" / f"{split}-00000-of-00001.parquet")
    spec = _grid_spec("train_sets", "math12k", "hiyouga/math12k", local)
    assert _prepare_data(tmp_path, spec) == [
        {"id": f"math12k-{i}", "problem": p, "answer": a} for i, (p, a, _) in enumerate(train)]


# MathArena: problem_idx (int64), problem, answer (int64 for AIME, LaTeX strings elsewhere), split train
_MATHARENA = {
    "aime25": ("MathArena/aime_2025", pa.int64(), [(1, "Find the sum of all integer bases $b>9$ ...", 70),
                                                   (2, "On $\\triangle ABC$ points ...", 588),
                                                   (3, "The 9 members of a baseball team ...", 16)]),
    "hmmt24": ("MathArena/hmmt_feb_2024", pa.string(), [(1, "Compute the number of ways ...", "2"),
                                                        (2, "Let $a, b$ be ...", "\\frac{9\\sqrt{23}}{23}")]),
    "hmmt25": ("MathArena/hmmt_feb_2025", pa.string(), [(1, "Compute the sum of the positive divisors ...", "103"),
                                                        (2, "Mark writes the expression ...", "3375")]),
    "cmimc25": ("MathArena/cmimc_2025", pa.string(), [(1, "A regular hexagon ...", "\\sqrt{3}"),
                                                      (2, "Find the remainder ...", "-1"),
                                                      (3, "Compute ...", "\\binom{10}{5}")]),
}


@pytest.mark.parametrize("key", sorted(_MATHARENA))
def test_hf_matharena_layouts_give_text_answers(tmp_path, key):
    hub_id, answer_type, rows = _MATHARENA[key]
    local = _hub_copy(tmp_path, hub_id)
    _card(local, {"train": "data/train-*"})
    idx, problem, answer = (list(c) for c in zip(*rows))
    pq.write_table(pa.table({"problem_idx": pa.array(idx, pa.int64()), "problem": problem,
                             "answer": pa.array(answer, answer_type),
                             "problem_type": pa.array([["Algebra"]] * len(rows), _STRINGS)}),
                   local / "data" / "train-00000-of-00001.parquet")
    spec = _grid_spec("benchmarks", key, hub_id, local)
    records = _prepare_data(tmp_path, spec)
    # no id column: ids are the row positions (0-based) under the repo's name, not problem_idx,
    # unless the grid names id_field: problem_idx
    name = hub_id.split("/")[-1]
    ids = [str(i) for i in idx] if spec.get("id_field") == "problem_idx" else [f"{name}-{i}" for i in range(len(rows))]
    # AIME's answers are integers (answer_format integer in the grid); HMMT's and CMIMC's are not
    answer_format = {"answer_format": "integer"} if key == "aime25" else {}
    assert records == [{"id": i, "problem": p, "answer": str(a), **answer_format}
                       for i, p, a in zip(ids, problem, answer)]
    if key == "aime25":  # int64 answers come out as "70", not "70.0"; problem_idx works as id field
        assert [r["answer"] for r in records] == ["70", "588", "16"]
        by_idx = _prepare_data(tmp_path, {**spec, "id_field": "problem_idx"})
        assert [r["id"] for r in by_idx] == ["1", "2", "3"]


def test_hf_math500_jsonl_layout(tmp_path):
    """HuggingFaceH4/MATH-500: a single test.jsonl at the repo root (no configs in its card)."""
    local = tmp_path / "hub" / "HuggingFaceH4" / "MATH-500"
    local.mkdir(parents=True)
    (local / "README.md").write_text("---\nlicense: mit\n---\n# MATH-500\n", encoding="utf-8")
    rows = [{"problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.",
             "solution": "... $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$",
             "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
             "subject": "Precalculus", "level": 2, "unique_id": "test/precalculus/807.json"},
            {"problem": "If $f(x) = \\frac{3x-2}{x-2}$, what is $f(-2) +f(-1)+f(0)$?", "solution": "...",
             "answer": "\\frac{14}{3}", "subject": "Algebra", "level": 3, "unique_id": "test/algebra/2584.json"},
            {"problem": "How many positive whole-number divisors does 196 have?", "solution": "...",
             "answer": "9", "subject": "Number Theory", "level": 3, "unique_id": "test/number_theory/572.json"}]
    _write_jsonl(local / "test.jsonl", rows)
    spec = _grid_spec("benchmarks", "math500", "HuggingFaceH4/MATH-500", local)
    assert spec["split"] == "test" and spec["id_field"] == "unique_id"
    assert _prepare_data(tmp_path, spec) == [
        {"id": r["unique_id"], "problem": r["problem"], "answer": r["answer"]} for r in rows]


def test_grid_ids_do_not_depend_on_the_local_folder_name(tmp_path):
    """A local copy in any folder (a hub-cache snapshot is named by a commit hash) gets the ids the
    grid's spec names, so a problem's sampling seed is the same wherever the data lives."""
    local = tmp_path / "snapshots" / "3f2a9c1"
    (local / "data").mkdir(parents=True)
    _card(local, {"train": "data/train-*"})
    pq.write_table(pa.table({"problem": ["P1", "P2"], "answer": ["1", "2"], "solution": ["s", "s"]}),
                   local / "data" / "train-00000-of-00001.parquet")
    spec = _grid_spec("train_sets", "math12k", "hiyouga/math12k", local)
    assert [r["id"] for r in _prepare_data(tmp_path, spec)] == ["math12k-0", "math12k-1"]


def test_hf_aime24_layout_uses_its_id_column(tmp_path):
    """HuggingFaceH4/aime_2024: id (int64), problem, solution, answer (string), url, year."""
    local = _hub_copy(tmp_path, "HuggingFaceH4/aime_2024")
    _card(local, {"train": "data/train-*"})
    pq.write_table(pa.table({
        "id": pa.array([60, 61, 62], pa.int64()),
        "problem": ["Every morning Aya goes for a $9$-kilometer-long walk ...", "Let $ABC$ be a triangle ...",
                    "Let $x$ and $y$ be real numbers ..."],
        "solution": ["...", "...", "..."], "answer": ["204", "113", "025"],
        "url": [f"https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_{i}" for i in (1, 2, 3)],
        "year": ["2024", "2024", "2024"],
    }), local / "data" / "train-00000-of-00001.parquet")
    spec = _grid_spec("benchmarks", "aime24", "HuggingFaceH4/aime_2024", local)
    records = _prepare_data(tmp_path, spec)
    assert [r["id"] for r in records] == ["60", "61", "62"]
    assert [r["answer"] for r in records] == ["204", "113", "025"]  # string answers kept as written
    assert {r["answer_format"] for r in records} == {"integer"}  # leading zeros are integers


def test_hf_wrong_split_or_unreachable_dataset_is_a_clear_error(tmp_path):
    local = _hub_copy(tmp_path, "MathArena/aime_2025")
    _card(local, {"train": "data/train-*"})
    pq.write_table(pa.table({"problem_idx": [1], "problem": ["P"], "answer": [5]}),
                   local / "data" / "train-00000-of-00001.parquet")
    spec = _grid_spec("benchmarks", "aime25", "MathArena/aime_2025", local)
    stderr = _prepare_data(tmp_path, {**spec, "split": "test"}, ok=False)
    assert f"ValueError: dataset {str(local)!r}, split 'test': cannot load it" in stderr
    assert "Unknown split" in stderr and "'train'" in stderr  # datasets' own words: the splits there are
    stderr = _prepare_data(tmp_path, {**spec, "path": "nobody/not-a-dataset"}, ok=False)
    assert "dataset 'nobody/not-a-dataset', split 'train': cannot load it" in stderr
    assert "'path' must be a local directory" in stderr  # offline: no hub


def test_datasets_is_imported_only_for_hf_specs(tmp_path):
    """The CLI (and prepare-data on other sources) never pays for importing `datasets`."""
    code = ("import sys\nfrom rsgrpo.cli import main\n"
            f"main(['prepare-data', '--spec', '{{source: generator, name: arithmetic, n: 3}}', '--out', "
            f"{str(tmp_path / 'a.jsonl')!r}])\nassert 'datasets' not in sys.modules, 'datasets imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr


def test_raw_template_is_the_problem_text_itself():
    from rsgrpo.prepare.data import PROMPT_TEMPLATES
    from rsgrpo.train.config import from_dict

    assert build_prompt("37+45=", template="raw") == "37+45="
    with pytest.raises(ValueError, match="takes no system prompt"):
        build_prompt("37+45=", template="raw", system="be brief")
    assert from_dict({"prompt_template": "raw"}).prompt_template == "raw"
    # the workflow schema offers exactly the templates build_prompt knows
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    template = schema["properties"]["models"]["additionalProperties"]["properties"]["template"]
    assert tuple(template["enum"]) == PROMPT_TEMPLATES
