"""Running the real ``train`` verb in a subprocess, for the resume and multi-rank tests.

The entry point is a wrapper of ``rsgrpo.cli.main`` that registers deterministic rewards a random
tiny model actually earns (``has_digit``: a digit in the completion; ``has_digit_even_ids``: the same
for even record ids only, so half the prompts carry no signal and dynamic sampling refills steps),
so updates are non-trivial (the real math grader would give a random model reward 0 everywhere).
Two test hooks, read from the environment by every rank: ``RSGRPO_TEST_STEP_SLEEP`` (seconds added
to each step, to give a kill a wide window) and ``RSGRPO_TEST_FAIL`` (``rank:step``: that rank
raises at that 0-based step).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUNNER = """
import os
import sys
import time

import rsgrpo.train.trainer as train
from rsgrpo.train.rewards import register

@register("has_digit")
def has_digit(*, completions, answers, problems, records):
    return [1.0 if any(ch.isdigit() for ch in c) else 0.0 for c in completions]

@register("has_digit_even_ids")
def has_digit_even_ids(*, completions, answers, problems, records):
    # prompts with an odd id never earn a reward: their groups carry no signal, so dynamic sampling
    # drops them and refills the step
    return [0.0 if int(r["id"][1:]) % 2 else float(any(ch.isdigit() for ch in c))
            for c, r in zip(completions, records)]

_step = train.Trainer.train_step
_sleep = float(os.environ.get("RSGRPO_TEST_STEP_SLEEP", "0"))
_fail = os.environ.get("RSGRPO_TEST_FAIL")

def train_step(self, step):
    if _fail and tuple(map(int, _fail.split(":"))) == (self.dist.rank, step):
        raise RuntimeError(f"injected failure of rank {self.dist.rank} at step {step}")
    time.sleep(_sleep)
    return _step(self, step)

train.Trainer.train_step = train_step
from rsgrpo.cli import main
sys.exit(main(sys.argv[1:]))
"""

TIMING_COLUMNS = ["time_generate", "time_grade", "time_update", "tokens_per_s"]


def write_run_inputs(tmp_path: Path, model_dir: Path, **overrides) -> tuple[Path, Path]:
    """(config, runner) of a 6-step tiny-model run: 2 prompts x 4 samples, checkpoints every 2 steps."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"Compute {i} * 3.", "answer": str(3 * i)})
                            + "\n" for i in range(6)))
    settings = dict(model_dir=str(model_dir), train_data=str(data), steps=6, prompts_per_step=2,
                    samples_per_prompt=4, max_new_tokens=8, lr=1.0e-3, engine="hf", micro_batch_size=3,
                    checkpoint_every=2, keep_last=2, progress=False, ppo_epochs=2, seed=5,
                    reward_kind="has_digit_even_ids", logging=[])
    settings.update(overrides)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    return cfg, runner


def train_cmd(runner: Path, cfg: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(runner), "train", "--config", str(cfg), "--run-dir", str(run_dir), *extra]


def run_env(**extra: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", **extra}


def metrics(run_dir: Path) -> list[dict]:
    """metrics.csv rows without the wall-clock columns."""
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def weights(run_dir: Path, step: int) -> dict:
    """The model weights of a run's checkpoint at ``step``."""
    from safetensors.torch import load_file

    from rsgrpo.train import checkpoint as ckpt

    return load_file(run_dir / "checkpoints" / ckpt.checkpoint_name(step) / "model.safetensors")


def assert_rows_close(rows_a: list[dict], rows_b: list[dict], rel: float) -> None:
    """Two runs' metrics rows agree step by step to ``rel`` (a nan only where the other has one)."""
    import pytest

    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        for key in a:
            x, y = float(a[key]), float(b[key])
            if x != x:  # nan (no update this step) must be nan on both sides
                assert y != y, (a["step"], key)
            else:
                assert y == pytest.approx(x, rel=rel, abs=1e-7), (a["step"], key, x, y)


def run_checked(cmd: list[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` in the repository; AssertionError with the telling part of stderr unless it succeeds."""
    out = subprocess.run(cmd, cwd=ROOT, env=env or run_env(), capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:  # keep what explains the failure: tracebacks and torchrun's summary, not warnings
        lines = [line for line in out.stderr.splitlines()
                 if "Warning" not in line and "return func(" not in line and "it/s]" not in line]
        raise AssertionError(f"exit {out.returncode}:\n" + "\n".join(lines)[-8000:])
    return out


def kill_after_first_checkpoint(cmd: list[str], run_dir: Path, env: dict) -> int:
    """Start ``cmd``, SIGKILL its whole process group (launcher and ranks) as soon as ``run_dir``
    holds a complete checkpoint; return the step of that checkpoint."""
    from rsgrpo.train import checkpoint as ckpt

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while ckpt.latest_checkpoint(run_dir) is None:
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return ckpt.latest_checkpoint(run_dir)[0]


class FixedEngine:
    """Rollout engine returning hand-made completions per prompt (for gradient tests). A text in
    ``cut`` is cut off at ``params.max_tokens`` tokens without EOS (``finished=False``), as an
    engine cuts a completion that reaches the length limit; every other text ends with EOS."""

    def __init__(self, tokenizer, table, cut=()):
        from rsgrpo.train.engines.base import encode_prompts

        self.tok, self.table, self.encode, self.cut = tokenizer, table, encode_prompts, set(cut)
        self.loads = 0
        self.prompts = []  # every prompt generated for, in order

    def generate(self, prompts, params, *, seeds=None, should_stop=None):
        from rsgrpo.train.engines.base import Completion

        out = []
        self.prompts += list(prompts)
        for prompt, ids in zip(prompts, self.encode(self.tok, prompts)):
            texts = self.table[prompt]
            assert len(texts) == params.n
            group = []
            for t in texts:
                tokens = self.tok(t, add_special_tokens=False)["input_ids"]
                if t in self.cut:
                    tokens = tokens[:params.max_tokens]
                    group.append(Completion(list(ids), tokens, self.tok.decode(tokens), False))
                else:
                    group.append(Completion(list(ids), tokens + [self.tok.eos_token_id], t, True))
            out.append(group)
        return out

    def load_weights(self, model):
        self.loads += 1

    def describe(self):
        return "fixed (hand-made completions)"

    def sleep(self):  # the engine contract (rsgrpo.train.engines.base.RolloutEngine): nothing to free
        pass

    def wake_up(self, tags=None):
        pass

    def close(self):
        pass
