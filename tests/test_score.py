"""End-to-end test of ``python -m rsgrpo score`` against an independent pass@k computation."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
from math import comb

import pandas as pd
import pytest

from rsgrpo.cli import main as cli_main

BENCHMARK = [
    {"id": "p-half", "problem": "Half of one?", "answer": "\\frac{1}{2}"},
    {"id": "p-interval", "problem": "Solve.", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)"},
    {"id": "p-angle", "problem": "Angle?", "answer": "106^\\circ"},
    {"id": "p-unsampled", "problem": "Never sampled.", "answer": "1"},
]
# six completions per problem; the comment gives the number that are correct
COMPLETIONS = {
    "p-half": ["\\boxed{0.5}", "\\boxed{1/2}", "\\boxed{\\dfrac{1}{2}}", "\\boxed{2}", "no idea",
               "The answer is $\\frac{1}{2}$."],  # 4 correct
    "p-interval": ["\\boxed{(3, \\pi/2)}", "\\boxed{(\\pi/2, 3)}", "\\boxed{3}", "\\boxed{(3,\\pi)}",
                   "\\boxed{(2, \\pi/2)}", "\\boxed{"],  # 1 correct
    "p-angle": ["\\boxed{105}", "\\boxed{107^\\circ}", "nothing", "\\boxed{-106}", "\\boxed{16}",
                "\\boxed{1060}"],  # 0 correct
}
CORRECT = {"p-half": [True, True, True, False, False, True], "p-interval": [True] + [False] * 5,
           "p-angle": [False] * 6}


def _write_inputs(tmp_path, completions=COMPLETIONS):
    bench = tmp_path / "tiny.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in BENCHMARK))
    rows = [
        {"problem_id": pid, "sample_idx": j, "text": text, "num_tokens": 10 + j}
        for pid, texts in completions.items() for j, text in enumerate(texts)
    ]
    samples = tmp_path / "samples.parquet"
    pd.DataFrame(rows).sample(frac=1.0, random_state=0).to_parquet(samples, index=False)  # shuffled
    return bench, samples


def test_score_end_to_end_matches_independent_pass_at_k(tmp_path):
    bench, samples = _write_inputs(tmp_path)
    graded_path, passk_path = tmp_path / "out" / "graded.parquet", tmp_path / "out" / "passk.csv"
    rc = cli_main([
        "score", "--samples", str(samples), "--benchmark", str(bench), "--benchmark-name", "tiny",
        "--out-graded", str(graded_path), "--out-passk", str(passk_path), "--workers", "2",
        "--timeout", "10", "--bootstrap", "500", "--seed", "1",
    ])
    assert rc == 0
    graded = pd.read_parquet(graded_path)
    original = pd.read_parquet(samples)
    # same rows in the same order, extra columns kept, grading columns added
    assert list(graded["problem_id"]) == list(original["problem_id"])
    assert list(graded["num_tokens"]) == list(original["num_tokens"])
    for _, row in graded.iterrows():
        assert row["correct"] == CORRECT[row["problem_id"]][row["sample_idx"]], row.to_dict()
    assert graded.loc[graded["text"] == "no idea", "extracted"].isna().all()
    assert set(graded["grade_status"]) <= {"ok", "no_answer"}

    passk = pd.read_csv(passk_path)
    assert list(passk.columns)[:7] == ["benchmark", "k", "pass_at_k", "ci_low", "ci_high",
                                       "n_problems", "n_samples"]
    assert list(passk["k"]) == [1, 2, 4, 6]  # powers of two, plus n itself
    assert set(passk["benchmark"]) == {"tiny"}
    assert set(passk["n_problems"]) == {3} and set(passk["n_samples"]) == {6}
    n = 6
    counts = [sum(CORRECT[pid]) for pid in COMPLETIONS]
    assert counts == [4, 1, 0]
    for _, row in passk.iterrows():
        k = int(row["k"])
        expected = sum(1 - comb(n - c, k) / comb(n, k) for c in counts) / len(counts)
        assert row["pass_at_k"] == pytest.approx(expected, abs=1e-12)
        assert row["ci_low"] <= row["pass_at_k"] <= row["ci_high"]
    assert sorted(p.name for p in graded_path.parent.iterdir()) == ["graded.parquet", "passk.csv"]


def _score(tmp_path, bench, samples):
    return cli_main(["score", "--samples", str(samples), "--benchmark", str(bench), "--out-graded",
                     str(tmp_path / "g.parquet"), "--out-passk", str(tmp_path / "p.csv"), "--workers", "0"])


def test_score_rejects_missing_columns(tmp_path):
    bench, _ = _write_inputs(tmp_path)
    samples = tmp_path / "nocol.parquet"
    pd.DataFrame({"problem_id": ["p-half"], "text": ["\\boxed{1}"]}).to_parquet(samples)
    with pytest.raises(ValueError, match=r"nocol.parquet.*lacks column\(s\) \['sample_idx'\]"):
        _score(tmp_path, bench, samples)
    assert not (tmp_path / "p.csv").exists()


def test_score_rejects_unknown_problem_ids(tmp_path):
    bench, _ = _write_inputs(tmp_path)
    _, samples = _write_inputs(tmp_path, {**COMPLETIONS, "p-ghost": ["\\boxed{1}"] * 6})
    with pytest.raises(ValueError, match=r"samples.parquet.*not in benchmark .*tiny.jsonl.*p-ghost"):
        _score(tmp_path, bench, samples)


def test_score_rejects_unequal_sample_counts(tmp_path):
    bench, samples = _write_inputs(tmp_path, {**COMPLETIONS, "p-angle": COMPLETIONS["p-angle"][:4]})
    with pytest.raises(ValueError, match=r"unequal sample counts.*most have 6 but problem 'p-angle' has 4"):
        _score(tmp_path, bench, samples)


def test_score_several_benchmarks_in_one_call(tmp_path):
    (tmp_path / "a").mkdir()
    first_bench, first_samples = _write_inputs(tmp_path / "a")
    second_dir = tmp_path / "b"
    second_dir.mkdir()
    second_bench = second_dir / "other.jsonl"
    second_bench.write_text(json.dumps({"id": "p-half", "problem": "Same id, other set.", "answer": "2"})
                            + "\n")
    second_samples = second_dir / "samples.parquet"
    texts = ["\\boxed{2}", "\\boxed{2.0}", "\\boxed{3}", "\\boxed{0.5}"]  # 2 correct of 4
    pd.DataFrame({"problem_id": ["p-half"] * 4, "sample_idx": range(4), "text": texts}).to_parquet(
        second_samples)
    graded_path, passk_path = tmp_path / "graded.parquet", tmp_path / "passk.csv"
    rc = cli_main([
        "score", "--samples", str(first_samples), str(second_samples),
        "--benchmark", str(first_bench), str(second_bench), "--benchmark-name", "tiny", "other",
        "--out-graded", str(graded_path), "--out-passk", str(passk_path), "--workers", "0",
        "--bootstrap", "100",
    ])
    assert rc == 0
    passk = pd.read_csv(passk_path)
    assert list(zip(passk["benchmark"], passk["k"])) == [
        ("tiny", 1), ("tiny", 2), ("tiny", 4), ("tiny", 6), ("other", 1), ("other", 2), ("other", 4)]
    other = passk[passk["benchmark"] == "other"].set_index("k")["pass_at_k"]
    for k in (1, 2, 4):
        assert other[k] == pytest.approx(1 - comb(2, k) / comb(4, k))
    graded = pd.read_parquet(graded_path)
    # the same problem id in two benchmarks is graded against each benchmark's own gold
    assert list(graded.loc[graded["benchmark"] == "other", "correct"]) == [True, True, False, False]
    half = graded[(graded["benchmark"] == "tiny") & (graded["problem_id"] == "p-half")]
    assert half.sort_values("sample_idx")["correct"].tolist() == CORRECT["p-half"]


def test_score_rejects_mismatched_argument_counts(tmp_path):
    bench, samples = _write_inputs(tmp_path)
    with pytest.raises(ValueError, match=r"got 2 samples file\(s\), 1 benchmark file\(s\), 1 name\(s\)"):
        cli_main(["score", "--samples", str(samples), str(samples), "--benchmark", str(bench),
                  "--out-graded", str(tmp_path / "g.parquet"), "--out-passk", str(tmp_path / "p.csv")])


def test_score_grades_an_integer_format_benchmark_by_its_records(tmp_path):
    """A benchmark prepared with answer_format integer: a restated expression is wrong there
    (grade_status not_integer) and right in the same benchmark without the format."""
    texts = ["The answer is 5 + 8.", "\\boxed{13}", "\\boxed{013}", "\\boxed{12}"]
    samples = tmp_path / "samples.parquet"
    pd.DataFrame({"problem_id": ["sum"] * 4, "sample_idx": range(4), "text": texts}).to_parquet(samples)
    record = {"id": "sum", "problem": "What is 5 + 8?", "answer": "13"}
    graded = {}
    for name, extra in (("integer", {"answer_format": "integer"}), ("any", {})):
        bench = tmp_path / f"{name}.jsonl"
        bench.write_text(json.dumps({**record, **extra}) + "\n")
        rc = cli_main(["score", "--samples", str(samples), "--benchmark", str(bench), "--out-graded",
                       str(tmp_path / f"{name}.parquet"), "--out-passk", str(tmp_path / f"{name}.csv"),
                       "--workers", "0", "--bootstrap", "10"])
        assert rc == 0
        graded[name] = pd.read_parquet(tmp_path / f"{name}.parquet")
    assert graded["integer"]["correct"].tolist() == [False, True, True, False]
    assert graded["integer"]["grade_status"].tolist() == ["not_integer", "ok", "ok", "ok"]
    assert graded["integer"]["extracted"].tolist() == ["5 + 8", "13", "013", "12"]
    assert graded["any"]["correct"].tolist() == [True, True, True, False]
    assert pd.read_csv(tmp_path / "integer.csv").set_index("k")["pass_at_k"][1] == pytest.approx(0.5)
