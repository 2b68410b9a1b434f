"""When checkpoints are written: every ``checkpoint_every`` steps and after ``checkpoint_every_minutes``,
and at once, for the last completed step, when a stop request arrives while a step generates (its
rollouts are dropped, and the resumed run ends where an uninterrupted one does)."""

from __future__ import annotations

import json
import os
import signal

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from train_helpers import FixedEngine  # noqa: E402

from rsgrpo.train import checkpoint as ckpt  # noqa: E402
from rsgrpo.train import run_dir  # noqa: E402
from rsgrpo.train.config import from_dict  # noqa: E402
from rsgrpo.train.engines.base import GenerationAbandoned  # noqa: E402
from rsgrpo.train.metrics import TIMING_COLUMNS  # noqa: E402
from rsgrpo.train.preemption import Preempted  # noqa: E402
from rsgrpo.train.rewards import RewardOutput, register  # noqa: E402
from rsgrpo.train.trainer import Trainer  # noqa: E402

RECORDS = [{"id": f"r{i}", "problem": str(i), "answer": "42"} for i in range(6)]
TABLE = {f"Q: {i}\nA:": ["42", "7", "42" if i % 2 else "8", "9"] for i in range(6)}


@register("test_run_dir_42")
def exact_42(*, completions, answers, problems, records):
    return RewardOutput([float(c == "42") for c in completions], None)


def _trainer(model_dir, path, engine=FixedEngine, **overrides):
    cfg = dict(model_dir=str(model_dir), steps=4, prompts_per_step=2, samples_per_prompt=4, max_new_tokens=4,
               lr=1e-3, micro_batch_size=8, engine="hf", progress=False, seed=0, reward_kind="test_run_dir_42",
               max_gen_rounds=1, logging=[], rollout_log_every=0, checkpoint_every=0, keep_last=0,
               estimator="grpo", estimator_params={})
    cfg.update(overrides)
    return Trainer(from_dict(cfg), path, records=RECORDS, prompt_fn=lambda p: f"Q: {p}\nA:",
                   engine_factory=lambda model, tok, src: engine(tok, TABLE))


def _steps(path) -> list[int]:
    return [step for step, _ in ckpt.complete_checkpoints(path)]


def test_checkpoints_follow_the_clock(tiny_model_dir, tmp_path, monkeypatch):
    """A clock that advances 10 minutes per step: with checkpoint_every_minutes 25 a checkpoint is due
    after the third step since the last one; the final step is always saved."""
    now = [0.0]
    monkeypatch.setattr(run_dir.time, "monotonic", lambda: now[0])
    trainer = _trainer(tiny_model_dir, tmp_path / "run", steps=7, checkpoint_every_minutes=25)
    real_step = trainer.train_step

    def step_of_ten_minutes(step):
        now[0] += 600
        return real_step(step)

    trainer.train_step = step_of_ten_minutes
    trainer.run()
    assert _steps(tmp_path / "run") == [3, 6, 7]
    # checkpoint_every and the clock together: whichever comes first
    now[0] = 0.0
    both = _trainer(tiny_model_dir, tmp_path / "both", steps=8, checkpoint_every_minutes=25, checkpoint_every=4)
    real_both = both.train_step
    both.train_step = lambda step: (now.__setitem__(0, now[0] + 600), real_both(step))[1]
    both.run()
    assert _steps(tmp_path / "both") == [3, 4, 7, 8]


class StopDuringGeneration(FixedEngine):
    """Sends this process SIGUSR1 (a cluster's time-limit warning) while it generates its ``stop_at``-th
    batch of completions (counted from 1), and then, as the real engines do, asks ``should_stop`` and
    drops the rest of the batch."""

    calls = 0
    stop_at = 3
    finished = 0

    def generate(self, prompts, params, *, seeds=None, should_stop=None):
        type(self).calls += 1
        if type(self).calls == self.stop_at:
            os.kill(os.getpid(), signal.SIGUSR1)
        if should_stop is not None and should_stop():
            raise GenerationAbandoned("stopped")
        type(self).finished += 1
        return super().generate(prompts, params, seeds=seeds)


def test_a_stop_request_during_generation_checkpoints_the_last_completed_step(tiny_model_dir, tmp_path):
    reference = _trainer(tiny_model_dir, tmp_path / "reference")
    reference.run()
    StopDuringGeneration.calls = StopDuringGeneration.finished = 0
    stopped = _trainer(tiny_model_dir, tmp_path / "run", engine=StopDuringGeneration)
    with pytest.raises(Preempted) as err:
        stopped.run()
    # the third step's generation was cut short and its rollouts dropped: steps 1 and 2 are done, and
    # checkpointed at once
    assert StopDuringGeneration.finished == 2
    assert err.value.step == 2 and _steps(tmp_path / "run") == [2]
    assert [row["step"] for row in stopped.metrics] == [1, 2]
    resumed = _trainer(tiny_model_dir, tmp_path / "run")
    assert resumed.run()["final_step"] == 4
    # what the dropped step had changed (the solved set, the RNG) went back: the run ends as the uninterrupted one
    def comparable(rows):  # NaN columns (no answers extracted, no engine log-probs) compare equal as text
        return json.dumps([{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows])

    assert comparable(resumed.metrics) == comparable(reference.metrics)
