"""``sample`` verb: parquet layout, seeding independent of chunking, resumable parts."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rsgrpo import cli
from rsgrpo.evaluate import sample as sample_mod
from rsgrpo.train.engines.base import SamplingParams, row_seed
from rsgrpo.train.engines.hf import HFEngine

PROBLEMS = [
    {"id": "p1", "problem": "What is 1+1?", "answer": "2"},
    {"id": "p2", "problem": "Compute 3*4.", "answer": "12"},
    {"id": "p3", "problem": "Solve x^2 = 9 for x > 0.", "answer": "3"},
]


@pytest.fixture()
def bench(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PROBLEMS))
    return path


def _run(model, bench, out, **kw):
    args = dict(n=5, max_tokens=12, seed=3, engine="hf", chunk_size=2, sample_chunk_size=3,
                batch_size=8, progress=False)
    args.update(kw)
    return sample_mod.sample(model, bench, out, **args)


def test_sample_cli_end_to_end(tiny_model_dir, bench, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="rsgrpo.evaluate.sample")
    out = tmp_path / "res" / "samples.parquet"
    rc = cli.main(["sample", "--model", str(tiny_model_dir), "--benchmark", str(bench), "--out", str(out),
                   "--n", "5", "--max-tokens", "12", "--seed", "3", "--engine", "hf", "--template", "chat",
                   "--chunk-size", "2", "--sample-chunk-size", "3", "--temperature", "1.0", "--top-p", "0.95"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "sample" in err  # tqdm progress bar on stderr
    import transformers

    # the job's log names the engine, its version, device and dtype
    assert f"rollout engine: hf (transformers {transformers.__version__}), device cpu, dtype float32" in caplog.text
    df = pd.read_parquet(out)
    assert list(df.columns) == sample_mod.COLUMNS
    assert len(df) == 15
    assert df["problem_id"].tolist() == [p for p in ("p1", "p2", "p3") for _ in range(5)]
    assert df["sample_idx"].tolist() == list(range(5)) * 3
    assert ((df["num_tokens"] >= 1) & (df["num_tokens"] <= 12)).all()
    assert (df.loc[~df["finished"], "num_tokens"] == 12).all()
    assert not out.with_name(out.name + ".parts").exists()
    # Sample j of a problem is exactly the engine's completion under that (problem, j) seed.
    from rsgrpo.prepare.prompts import build_prompt

    eng = HFEngine(tiny_model_dir)
    prompt = build_prompt(PROBLEMS[1]["problem"], template="chat", tokenizer=eng.tokenizer)
    pseed = sample_mod.problem_seed(3, "p2")
    direct = eng.generate([prompt] * 5, SamplingParams(n=1, max_tokens=12, top_p=0.95, seed=3),
                          seeds=[row_seed(pseed, j) for j in range(5)])
    assert df.loc[df["problem_id"] == "p2", "text"].tolist() == [row[0].text for row in direct]
    assert len(set(df["text"])) > 10  # samples differ across problems and indices


def test_chunking_and_batching_do_not_change_samples(tiny_model_dir, bench, tmp_path):
    a = pd.read_parquet(_run(tiny_model_dir, bench, tmp_path / "a.parquet", chunk_size=1, sample_chunk_size=2))
    b = pd.read_parquet(_run(tiny_model_dir, bench, tmp_path / "b.parquet", chunk_size=3, sample_chunk_size=5,
                             batch_size=3))
    pd.testing.assert_frame_equal(a, b)
    c = pd.read_parquet(_run(tiny_model_dir, bench, tmp_path / "c.parquet", seed=4))
    assert not a["text"].equals(c["text"])


def test_resume_uses_completed_parts(tiny_model_dir, bench, tmp_path, monkeypatch):
    out = tmp_path / "r.parquet"
    parts = tmp_path / "r.parquet.parts"
    reference = pd.read_parquet(_run(tiny_model_dir, bench, tmp_path / "ref.parquet"))

    calls = []
    real_generate = HFEngine.generate

    def crash_after_first(self, prompts, params, **kw):
        if calls:
            raise KeyboardInterrupt("simulated preemption")
        calls.append(len(prompts))
        return real_generate(self, prompts, params, **kw)

    monkeypatch.setattr(HFEngine, "generate", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_model_dir, bench, out)
    assert not out.exists()
    kept = sorted(parts.glob("part-*.parquet"))
    assert len(kept) == 1 and calls == [6]  # problems p1-p2 x samples 0-2
    assert not list(parts.glob(".*.tmp"))
    # Mark the surviving part: if the rerun regenerated it, the mark would vanish.
    part = pd.read_parquet(kept[0])
    part["text"] = "RESUMED"
    part.to_parquet(kept[0], index=False)

    monkeypatch.setattr(HFEngine, "generate", real_generate)
    generated = []

    def counting(self, prompts, params, **kw):
        generated.append(len(prompts))
        return real_generate(self, prompts, params, **kw)

    monkeypatch.setattr(HFEngine, "generate", counting)
    df = pd.read_parquet(_run(tiny_model_dir, bench, out))
    assert sum(generated) == 15 - 6
    assert not parts.exists()
    marked = (df["problem_id"].isin(["p1", "p2"])) & (df["sample_idx"] < 3)
    assert (df.loc[marked, "text"] == "RESUMED").all()
    pd.testing.assert_frame_equal(df.loc[~marked], reference.loc[~marked])


def test_parts_from_other_settings_are_discarded(tiny_model_dir, bench, tmp_path):
    out = tmp_path / "d.parquet"
    parts = tmp_path / "d.parquet.parts"
    parts.mkdir()
    (parts / sample_mod.PARTS_CONFIG).write_text(json.dumps({"seed": 999}))
    stale = parts / sample_mod._part_name(0, 2, 0, 3)
    pd.DataFrame({"problem_id": ["p1"], "sample_idx": [0], "text": ["STALE"], "num_tokens": [1],
                  "finished": [True]}).to_parquet(stale)
    df = pd.read_parquet(_run(tiny_model_dir, bench, out))
    assert "STALE" not in set(df["text"]) and len(df) == 15


def test_large_n_is_chunked(tiny_model_dir, tmp_path):
    bench = tmp_path / "one.jsonl"
    bench.write_text(json.dumps(PROBLEMS[0]) + "\n")
    df = pd.read_parquet(_run(tiny_model_dir, bench, tmp_path / "big.parquet", n=1024, max_tokens=2,
                              sample_chunk_size=256, batch_size=256))
    assert len(df) == 1024 and df["sample_idx"].tolist() == list(range(1024))
    assert df["text"].nunique() > 500


def test_several_benchmarks_share_one_engine_and_keep_their_own_samples(tiny_model_dir, bench, tmp_path,
                                                                        monkeypatch, capsys):
    """One call samples every benchmark of a checkpoint with one engine (one model load); each
    benchmark's parquet equals that of a call for it alone, with its own n."""
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**r, "id": f"o{i}"}) + "\n" for i, r in enumerate(reversed(PROBLEMS))))
    alone = [pd.read_parquet(_run(tiny_model_dir, bench, tmp_path / "alone-a.parquet", n=5)),
             pd.read_parquet(_run(tiny_model_dir, other, tmp_path / "alone-b.parquet", n=2))]
    built = []
    real_init = HFEngine.__init__

    def counting_init(self, *args, **kw):
        built.append(1)
        real_init(self, *args, **kw)

    monkeypatch.setattr(HFEngine, "__init__", counting_init)
    outs = [tmp_path / "both" / "a.parquet", tmp_path / "both" / "b.parquet"]
    rc = cli.main(["sample", "--model", str(tiny_model_dir), "--benchmark", str(bench), str(other),
                   "--out", *map(str, outs), "--n", "5", "2", "--max-tokens", "12", "--seed", "3", "--engine", "hf",
                   "--chunk-size", "2", "--sample-chunk-size", "3", "--no-progress"])
    assert rc == 0 and len(built) == 1
    for out, expected in zip(outs, alone):
        pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    assert len(alone[1]) == 3 * 2
    capsys.readouterr()
    rc = cli.main(["sample", "--model", str(tiny_model_dir), "--benchmark", str(bench), str(other),
                   "--out", str(outs[0]), "--n", "5"])
    assert rc == 2 and "2 --benchmark file(s) need as many --out files (got 1)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="two benchmarks would write the same file"):
        sample_mod.sample_benchmarks(tiny_model_dir, [sample_mod.BenchmarkJob(bench, outs[0], 1),
                                                      sample_mod.BenchmarkJob(other, outs[0], 1)], engine="hf")


def test_bad_inputs_are_reported(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "problem": "x", "answer": "1"}\n{"id": "a", "problem": "y", "answer": "2"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl.*duplicate id 'a'"):
        sample_mod.read_benchmark(bad)
    bad.write_text('{"id": "a", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl.*row 0: field 'problem'.*is missing"):
        sample_mod.read_benchmark(bad)
    rc = cli.main(["sample", "--model", str(tmp_path), "--benchmark", str(bad), "--out",
                   str(tmp_path / "o.parquet")])
    assert rc == 1 and "not a checkpoint directory" in capsys.readouterr().err
    with pytest.raises(ValueError, match="top_p"):
        _run(tiny_model_dir, bad, tmp_path / "o.parquet", top_p=0)


def test_samples_beyond_the_model_context_fail_before_the_model_loads(tiny_model_dir, bench, tmp_path):
    """The tiny model's context is 512 tokens: a prompt plus 600 new tokens cannot fit. The check
    needs only the tokenizer and config.json (this copy has no weights)."""
    import shutil

    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"key 'evaluation.max_tokens \(--max-tokens\)': the longest prompt \(\d+ "
                                         r"tokens\) \+ 600 new tokens = \d+ exceeds the model's context of 512"):
        sample_mod.sample(no_weights, bench, tmp_path / "out.parquet", n=1, max_tokens=600, engine="hf")


def test_auto_engine_on_a_gpu_machine_without_vllm_fails_before_the_model_loads(tiny_model_dir, bench, tmp_path,
                                                                                  monkeypatch):
    import sys

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    monkeypatch.setattr(HFEngine, "__init__", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(RuntimeError, match=r"evaluation\.engine \(--engine\): auto found a GPU but the package "
                                           r"vllm does not import"):
        sample_mod.sample(tiny_model_dir, bench, tmp_path / "out.parquet", n=1, max_tokens=4, engine="auto")


def test_sampling_dtype_defaults_to_the_checkpoints_own(tiny_model_dir, bench, tmp_path, monkeypatch):
    from rsgrpo.prepare.loading import checkpoint_dtype, load_policy

    bf16 = tmp_path / "bf16"
    model, tok = load_policy(tiny_model_dir, dtype="bfloat16")
    model.save_pretrained(bf16)
    tok.save_pretrained(bf16)
    assert checkpoint_dtype(tiny_model_dir) == "float32" and checkpoint_dtype(bf16) == "bfloat16"
    seen = []
    real_init = HFEngine.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs["dtype"])
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(HFEngine, "__init__", spy)
    for model_dir in (tiny_model_dir, bf16):
        sample_mod.sample(model_dir, bench, tmp_path / f"{model_dir.name}.parquet", n=1, max_tokens=4, engine="hf")
    assert seen == ["float32", "bfloat16"]


def test_max_tokens_max_fills_the_context_after_each_benchmarks_longest_prompt(tiny_model_dir, bench, tmp_path,
                                                                                capsys):
    """--max-tokens max (an evaluation regime's max_tokens: max): context - the benchmark's longest prompt,
    the context being the smaller of --context-length and the model's; the samples are those of that
    number given explicitly."""
    from rsgrpo.prepare.loading import load_tokenizer
    from rsgrpo.prepare.prompts import build_prompt
    from rsgrpo.train.engines.base import encode_prompts

    tokenizer = load_tokenizer(tiny_model_dir)
    longest = max(len(ids) for ids in encode_prompts(
        tokenizer, [build_prompt(r["problem"], template="plain") for r in PROBLEMS]))
    filled = pd.read_parquet(_run(tiny_model_dir, bench, tmp_path / "max.parquet", n=2, max_tokens="max",
                                  context_length=longest + 6, template="plain"))
    explicit = pd.read_parquet(_run(tiny_model_dir, bench, tmp_path / "six.parquet", n=2, max_tokens=6,
                                    template="plain"))
    pd.testing.assert_frame_equal(filled, explicit)
    assert filled["num_tokens"].max() <= 6 and (filled.loc[~filled["finished"], "num_tokens"] == 6).all()
    with pytest.raises(ValueError, match=r"--max-tokens max: the longest prompt of .*bench.jsonl' \(\d+ tokens\) "
                                         r"leaves no room in the context of 10 tokens"):
        _run(tiny_model_dir, bench, tmp_path / "none.parquet", max_tokens="max", context_length=10, template="plain")
    out = tmp_path / "cli.parquet"
    assert cli.main(["sample", "--model", str(tiny_model_dir), "--benchmark", str(bench), "--out", str(out),
                     "--n", "2", "--max-tokens", "max", "--context-length", str(longest + 6), "--seed", "3",
                     "--engine", "hf", "--template", "plain", "--chunk-size", "2", "--sample-chunk-size", "3",
                     "--no-progress"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), filled)
    with pytest.raises(SystemExit):
        cli.main(["sample", "--model", str(tiny_model_dir), "--benchmark", str(bench), "--out", str(out),
                  "--max-tokens", "lots"])
    assert "an integer or 'max', got 'lots'" in capsys.readouterr().err
