"""Shared pytest fixtures.

HF_HUB_OFFLINE is set before anything imports transformers / huggingface_hub: without it a failed
hub lookup costs ~50 s per call on this offline machine.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread: the test models are tiny, and on this 2-core machine shared with other jobs
# two OpenMP threads make a tiny forward pass 10-100x slower (spin-waiting on a busy core).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# The longest test files, which `make test` starts first (pytest-xdist: --dist loadfile sends a whole file
# to one worker, --no-loadscope-reorder keeps this order): the SLURM tier needs its cluster on one worker,
# and started last it would leave the other worker idle at the end.
LONGEST_FILES = ("test_slurm.py", "test_workflow.py")


def pytest_collection_modifyitems(config, items):
    """In a pytest-xdist worker (which collects what the controller schedules), the tests of
    :data:`LONGEST_FILES` come first, in that order."""
    if hasattr(config, "workerinput"):
        first = {name: rank for rank, name in enumerate(LONGEST_FILES)}
        items.sort(key=lambda item: first.get(item.path.name, len(first)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a tiny random Qwen2 checkpoint (char vocabulary, seed 0), built once per session.

    Treat it as read-only: it is shared by every test of the session. Tests that need to change
    weights must copy the model (or load it and modify the in-memory module).
    """
    from rsgrpo.prepare.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny", seed=0)



def built_once(tmp_path_factory, name: str, build):
    """``build(folder)``'s JSON result, computed once per test session even under pytest-xdist: the
    first worker to get here builds it in the session's shared temporary folder while holding a lock,
    the others wait and reuse it (pytest-xdist's documented pattern for session fixtures)."""
    import fcntl
    import json

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # <session>/popen-gwN -> <session>, shared by the workers of this run only
    folder, done = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            folder.mkdir()
            done.write_text(json.dumps(build(folder)))
        return json.loads(done.read_text())


@pytest.fixture(scope="session")
def one_rank_reference(tiny_model_dir, tmp_path_factory):
    """A 1-process run (ZeRO 0) of the shared 6-step config of ``train_helpers.write_run_inputs``: the
    trajectory every N-rank, resumed or preempted run must follow."""
    from train_helpers import run_checked, train_cmd, write_run_inputs

    def build(tmp):
        cfg, runner = write_run_inputs(tmp, tiny_model_dir)
        run_checked(train_cmd(runner, cfg, tmp / "run"))
        return str(tmp / "run")

    return Path(built_once(tmp_path_factory, "one-rank", build))


@pytest.fixture(scope="session")
def test_rewards(tmp_path_factory):
    """A folder for PYTHONPATH whose sitecustomize registers ``has_digit`` (1 for a completion with a
    digit) in every Python process of a workflow run: Snakemake checks `reward_kind` when it plans,
    the ranks score with it. A random tiny model earns it, so training moves the weights; with the
    real grader it earns nothing, no update happens, and equal weights would prove nothing."""
    folder = tmp_path_factory.mktemp("rewards")
    (folder / "sitecustomize.py").write_text(
        "from rsgrpo.train.rewards import register\n\n\n"
        "@register('has_digit')\n"
        "def has_digit(*, completions, answers, problems, records):\n"
        "    return [1.0 if any(ch.isdigit() for ch in c) else 0.0 for c in completions]\n")
    return folder


@pytest.fixture(scope="session")
def tiny_local_run(tmp_path_factory, test_rewards):
    """The tiny config's whole DAG on this machine (`--profile profiles/local`, two ranks on one node),
    trained on ``has_digit``: ``(workflow dir, config path, env)``. Shared by the local workflow test
    and, as the one-node reference, by the two-node SLURM test. It runs under ``rsgrpo.preload``, as
    ``make demo`` does: its jobs are forked from a server that imported their libraries once (the
    SLURM run, whose jobs start fresh, must still give the same weights)."""
    from snakemake_helpers import PRELOADED, copy_workflow, snakemake, write_config
    from test_workflow import TINY

    def build(folder):
        wf = copy_workflow(folder / "wf")
        config = write_config(wf / "tiny.yaml", dict(TINY, training=dict(TINY["training"], reward_kind="has_digit")))
        env = {"PYTHONPATH": str(test_rewards)}
        out = snakemake(wf, "--profile", "profiles/local", "--cores", "2", "--configfile", str(config), env=env,
                        program=PRELOADED)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return [str(wf), str(config), env]

    wf, config, env = built_once(tmp_path_factory, "tiny-local", build)
    return Path(wf), Path(config), env
