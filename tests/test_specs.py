"""One spec reader for every verb: a dict, an inline YAML/JSON mapping or a .yaml/.yml/.json file, with
errors that name where the spec came from."""

from __future__ import annotations

import json
import re

import pytest

from rsgrpo import cli
from rsgrpo.specs import INLINE, load_spec


def test_the_forms_of_a_spec(tmp_path):
    given = {"source": "tiny", "seed": 3}
    copy = load_spec(given)
    assert copy == given and copy is not given
    assert load_spec("{source: tiny, seed: 3}") == given
    assert load_spec(json.dumps(given)) == given  # what the workflow passes
    assert load_spec("source: tiny\nseed: 3\n") == given  # multi-line YAML is inline too
    for suffix in (".yaml", ".yml", ".json"):
        path = tmp_path / f"spec{suffix}"
        path.write_text(json.dumps(given) if suffix == ".json" else "source: tiny\nseed: 3\n")
        assert load_spec(str(path)) == given and load_spec(path) == given


def test_errors_name_the_file_or_the_inline_spec(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ValueError, match=re.escape(f"spec file {str(missing)!r} does not exist")):
        load_spec(str(missing))
    broken = tmp_path / "broken.yml"
    broken.write_text("source: [tiny\n")
    with pytest.raises(ValueError, match=re.escape(f"spec file {str(broken)!r}: not valid YAML/JSON")):
        load_spec(str(broken))
    with pytest.raises(ValueError, match=f"{INLINE}: not valid YAML/JSON"):
        load_spec("{source: tiny")
    with pytest.raises(ValueError, match=f"{INLINE}: the spec must be a mapping, got list"):
        load_spec("[1, 2]")
    listed = tmp_path / "list.json"
    listed.write_text("[1]")
    with pytest.raises(ValueError, match="list.json'.*the spec must be a mapping, got list"):
        load_spec(listed)
    other = tmp_path / "spec.txt"
    other.write_text("source: tiny\n")
    with pytest.raises(ValueError, match="must be a mapping, got str .*a spec file must end in .yaml, .yml, .json"):
        load_spec(str(other))
    with pytest.raises(ValueError, match="a spec must be a mapping, a YAML/JSON string or a file path, got int"):
        load_spec(3)


def test_every_verb_reads_specs_the_same_way(tmp_path, capsys):
    missing = str(tmp_path / "missing.yaml")
    for verb in ("prepare-model", "pretrain"):
        assert cli.main([verb, "--spec", missing, "--out", str(tmp_path / verb)]) == 1
        assert f"spec file {missing!r} does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match=re.escape(f"spec file {missing!r} does not exist")):
        cli.main(["prepare-data", "--spec", missing, "--out", str(tmp_path / "data.jsonl")])
    assert not list(tmp_path.iterdir())
