"""Stop requests: SIGTERM / SIGUSR1 mid-run finish the step, checkpoint it and exit with EXIT_PREEMPTED;
the same command resumes from there and ends on the uninterrupted run's weights (no step lost), on
1 rank and through the 2-rank launcher (signal sent to the launcher only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from train_helpers import (  # noqa: E402
    ROOT,
    assert_rows_close,
    metrics,
    run_checked,
    run_env,
    train_cmd,
    weights,
    write_run_inputs,  # noqa: E402
)

from rsgrpo.train import checkpoint as ckpt  # noqa: E402
from rsgrpo.train.preemption import EXIT_PREEMPTED, StopRequest  # noqa: E402


def test_a_stop_request_records_the_first_signal_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopRequest().install()
    try:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing
        assert stop.requested and stop.signal_name == "SIGUSR1"
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGUSR1) is before
    assert StopRequest().signal_name == "a stop request on another rank"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGURG], ids=lambda s: s.name)
def test_each_stop_signal_is_a_stop_request(sig):
    """SIGURG is the SLURM profile's warning (every other process of a job ignores it by default)."""
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signal_name == sig.name
    finally:
        stop.restore()


def _stop_mid_run(cmd: list[str], run_dir: Path, sig: int, env: dict) -> tuple[int, int, float, str]:
    """Start ``cmd``, send ``sig`` to its first process once a step is done; return (exit status,
    steps in metrics.csv at exit, seconds from the signal to the exit, stderr)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "metrics.csv").is_file() or len(metrics(run_dir)) < 1:
            assert proc.poll() is None, "the run ended before its first step"
            assert time.monotonic() < deadline, "no step finished"
            time.sleep(0.05)
        proc.send_signal(sig)
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, len(metrics(run_dir)), took, stderr


@pytest.mark.parametrize("nproc, sig", [(1, signal.SIGTERM), (2, signal.SIGUSR1)], ids=["1rank-TERM", "2ranks-USR1"])
def test_a_signal_mid_run_checkpoints_the_step_and_the_retry_loses_nothing(tiny_model_dir, tmp_path,
                                                                          one_rank_reference, nproc, sig):
    """No periodic checkpoint before the end (checkpoint_every 0), so the run can only resume from the
    checkpoint the stop request wrote; it holds every finished step. With 2 ranks the signal reaches
    the launcher only, which passes it on (SIGUSR1 would otherwise kill torch.distributed.run)."""
    cfg, runner = write_run_inputs(tmp_path, tiny_model_dir, checkpoint_every=0)
    run = tmp_path / "run"
    cmd = train_cmd(runner, cfg, run, "--nproc", str(nproc))
    status, done, took, stderr = _stop_mid_run(cmd, run, sig, run_env(RSGRPO_TEST_STEP_SLEEP="0.4"))
    assert status == EXIT_PREEMPTED, stderr[-3000:]
    assert 1 <= done < 6, done
    assert took < 60  # the step in progress plus a checkpoint, no hang
    assert [step for step, _ in ckpt.complete_checkpoints(run)] == [done]  # every finished step is in it
    assert not (run / "manifest.json").exists()  # not finished: Snakemake retries the job
    assert f"stopped by {signal.Signals(sig).name} after step {done}: checkpoint written" in stderr
    out = run_checked(cmd)
    assert f"(step {done})" in out.stderr  # resumed from the stop checkpoint
    assert json.loads((run / "manifest.json").read_text())["final_step"] == 6
    rows, ref_rows = metrics(run), metrics(one_rank_reference)
    w, w_ref = weights(run, 6), weights(one_rank_reference, 6)
    if nproc == 1:  # the same computation as the reference: bit for bit
        assert rows == ref_rows
        assert all(torch.equal(w[k], w_ref[k]) for k in w_ref)
    else:  # 2 ranks follow the 1-rank trajectory to float tolerance (summation order)
        assert_rows_close(ref_rows, rows, rel=1e-4)
        for k in w_ref:
            torch.testing.assert_close(w[k], w_ref[k], rtol=0, atol=2e-5)
