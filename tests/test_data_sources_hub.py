"""Data source ``hf`` through the real ``datasets`` library: local copies laid out like the hub repos
of config/grid.yaml, run through ``python -m rsgrpo prepare-data`` with the grid's exact specs (only
``path`` replaced), offline. A cluster user with a pre-downloaded copy runs exactly this."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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
