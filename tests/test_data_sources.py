"""Data sources: dataset specs -> canonical records (hf / local / generator), the writer, the prepare-data
verb, answer formats, and the source registry (hub layouts: tests/test_data_sources_hub.py)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rsgrpo.cli import main as cli_main
from rsgrpo.prepare import data_sources
from rsgrpo.prepare.data_sources import DATA_SOURCES, SourceRows, load_records, register, write_records

REPO = Path(__file__).resolve().parents[1]


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

    monkeypatch.setattr(data_sources, "_load_hf_rows", fake_loader)
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
# writer, CLI
# ---------------------------------------------------------------------------------------------


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
    assert data_sources.ANSWER_FORMAT_KEY == ANSWER_FORMAT_FIELD == "answer_format"
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
# the source registry
# ---------------------------------------------------------------------------------------------


def test_a_new_data_source_is_one_decorated_function(tmp_path):
    """Register a source, prepare a dataset from it through the verb's functions, remove it again:
    the source only reads rows, mapping them to records is shared (fields, ids, dedup, limit)."""

    @register("inline_rows")
    def inline_rows(spec):
        return SourceRows(spec["rows"], "inline rows", {"name": "inline", **spec})

    rows = [{"q": "1+1?", "a": 2}, {"q": "2+2?", "a": 4}, {"q": "1+1?", "a": 2}]
    spec = {"source": "inline_rows", "rows": rows, "fields": {"problem": "q", "answer": "a"}, "dedup": True}
    try:
        records = load_records(spec)
        assert records == [{"id": "inline-0", "problem": "1+1?", "answer": "2"},
                           {"id": "inline-1", "problem": "2+2?", "answer": "4"}]
        assert load_records({**spec, "limit": 1}) == records[:1]
        with pytest.raises(ValueError, match="dataset 'inline rows', row 0: field 'question'"):
            load_records({**spec, "fields": {"problem": "question"}})
        out = write_records(records, tmp_path / "inline.jsonl")
        assert load_records({"source": "local", "path": str(out)}) == records
    finally:
        DATA_SOURCES.pop("inline_rows", None)
    with pytest.raises(ValueError, match="unknown dataset source 'inline_rows'"):
        load_records(spec)


def test_a_duplicate_data_source_is_refused_and_unknown_ones_list_the_registered():
    before = dict(DATA_SOURCES)
    with pytest.raises(ValueError, match="data source 'local' is already registered "
                                         "\\(by rsgrpo.prepare.data_sources._local_source\\)"):
        register("local")(lambda spec: None)
    assert DATA_SOURCES == before
    with pytest.raises(ValueError, match="unknown dataset source 'ftp'; allowed sources: hf, local, generator$"):
        load_records({"source": "ftp"})

