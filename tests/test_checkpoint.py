"""Checkpoints: atomicity, pruning, RNG round trip, exact resume after SIGKILL, failed writes and damaged
checkpoints."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import rsgrpo  # noqa: E402
from rsgrpo.train import checkpoint as ckpt  # noqa: E402
from rsgrpo.train.config import from_dict  # noqa: E402
from rsgrpo.train.rewards import register  # noqa: E402
from rsgrpo.train.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

from train_helpers import kill_after_first_checkpoint  # noqa: E402
from train_helpers import metrics as _metrics  # noqa: E402
from train_helpers import run_env as _env  # noqa: E402
from train_helpers import train_cmd as _cmd  # noqa: E402
from train_helpers import write_run_inputs as _write_run_inputs  # noqa: E402


def test_resume_after_sigkill_is_bit_exact(tiny_model_dir, tmp_path):
    pytest.importorskip("rsgrpo.prepare.data_sources")
    cfg, runner = _write_run_inputs(tmp_path, tiny_model_dir, logging=["tensorboard"])
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"

    ref = subprocess.run(_cmd(runner, cfg, ref_dir), cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=400)
    assert ref.returncode == 0, ref.stderr[-3000:]

    killed_at = kill_after_first_checkpoint(_cmd(runner, cfg, kill_dir), kill_dir, _env())
    assert killed_at < 6, "the run finished before it could be killed"

    again = subprocess.run(_cmd(runner, cfg, kill_dir), cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr

    for run in (ref_dir, kill_dir):
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["final_step"] == 6
        assert [c["step"] for c in manifest["checkpoints"]] == [4, 6]
    w_ref = load_file(ref_dir / "checkpoints" / "step-000006" / "model.safetensors")
    w_res = load_file(kill_dir / "checkpoints" / "step-000006" / "model.safetensors")
    assert w_ref.keys() == w_res.keys()
    for k in w_ref:
        assert torch.equal(w_ref[k], w_res[k]), k
    # the run really trained (weights moved away from the initial model)
    w0 = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(w0[k], w_ref[k]) for k in w_ref)
    m_ref, m_res = _metrics(ref_dir), _metrics(kill_dir)
    assert [int(r["step"]) for r in m_ref] == list(range(1, 7))
    assert m_ref == m_res
    assert any(int(r["gen_rounds"]) > 1 for r in m_ref)  # dynamic sampling refilled some step
    # TensorBoard of the resumed run: every step once, the values of metrics.csv
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(kill_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/reward_mean")] == \
        [(int(r["step"]), pytest.approx(float(r["reward_mean"]))) for r in m_res]
    assert any(float(r["grad_norm"]) > 0 for r in m_ref if r["grad_norm"] != "nan")
    # optimizer state equal too
    s_ref = ckpt.load_state(ref_dir / "checkpoints" / "step-000006")
    s_res = ckpt.load_state(kill_dir / "checkpoints" / "step-000006")
    assert s_ref["optimizer"]["step"] == s_res["optimizer"]["step"] == 12  # 6 steps x 2 PPO epochs
    for moment in ("exp_avg", "exp_avg_sq"):
        assert s_ref["optimizer"][moment].keys() == s_res["optimizer"][moment].keys()
        for name, t in s_ref["optimizer"][moment].items():
            assert torch.equal(t, s_res["optimizer"][moment][name]), (moment, name)


# ------------------------------------------------------------------------------------------------
# atomicity / in-process resume
# ------------------------------------------------------------------------------------------------
RECORDS = [{"id": f"r{i}", "problem": f"{i}", "answer": "1"} for i in range(4)]


@register("test_checkpoint_odd_length")
def odd_length(*, completions, answers, problems, records):
    return [float(len(t) % 2) for t in completions]


def _trainer(model_dir, run_dir, **over):
    cfg = dict(model_dir=str(model_dir), steps=4, prompts_per_step=2, samples_per_prompt=3, max_new_tokens=5,
               lr=1e-3, engine="hf", progress=False, checkpoint_every=2, keep_last=0,
               reward_kind="test_checkpoint_odd_length")
    cfg.update(over)
    return Trainer(from_dict(cfg), run_dir, records=RECORDS, prompt_fn=lambda p: f"Q{p}:")


def test_incomplete_checkpoints_are_ignored_and_cleaned(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    _trainer(tiny_model_dir, run, steps=2).run()
    root = run / "checkpoints"
    assert [s for s, _ in ckpt.complete_checkpoints(run)] == [2]
    # a killed writer leaves a temp dir; a marker-less step dir (e.g. killed during pruning/copy)
    shutil.copytree(root / "step-000002", root / ".tmp-step-000004-999")
    shutil.copytree(root / "step-000002", root / "step-000004")
    (root / "step-000004" / ckpt.MARKER).unlink()
    shutil.copytree(root / "step-000002", root / "step-000006")
    (root / "step-000006" / ckpt.STATE_FILE).unlink()
    (root / "step-000006" / ckpt.MARKER).unlink()
    assert ckpt.latest_checkpoint(run)[0] == 2
    t = _trainer(tiny_model_dir, run, steps=4)
    t.setup()
    assert t.start_step == 2 and len(t.metrics) == 2
    assert not (root / ".tmp-step-000004-999").exists() and not (root / "step-000004").exists()
    assert not (root / "step-000006").exists()
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        ckpt.load_state(tmp_path)


def test_resume_refuses_another_config(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    _trainer(tiny_model_dir, run, steps=2).run()
    with pytest.raises(ValueError, match="different config"):
        _trainer(tiny_model_dir, run, steps=2, lr=5e-4).setup()
    # fields that do not change the trajectory may differ
    t = _trainer(tiny_model_dir, run, steps=2, keep_last=1, checkpoint_every=1)
    manifest = t.run()
    assert manifest["final_step"] == 2


def test_checkpoints_of_versions_before_the_format_boundary_are_refused(tiny_model_dir, tmp_path):
    """The state names its writer's version; a state without one (rsgrpo < 0.2.0, whose config hash and
    state layout differ) is refused with the reason and the way out, before any hash comparison."""
    run = tmp_path / "run"
    _trainer(tiny_model_dir, run, steps=1, checkpoint_every=1).run()
    (_, path), = ckpt.complete_checkpoints(run)
    state = torch.load(path / ckpt.STATE_FILE, weights_only=True)
    assert state[ckpt.FORMAT_KEY] == rsgrpo.__version__
    del state[ckpt.FORMAT_KEY]
    torch.save(state, path / ckpt.STATE_FILE)
    (path / ckpt.MARKER).write_text(json.dumps({"step": 1}) + "\n")  # the marker of those versions
    with pytest.raises(ValueError, match=r"before 0\.2\.0.*CHANGELOG\.md.*new run_dir"):
        _trainer(tiny_model_dir, run, steps=2).setup()


def test_in_process_resume_matches_and_keep_last(tiny_model_dir, tmp_path):
    a = _trainer(tiny_model_dir, tmp_path / "a", checkpoint_every=1, keep_last=2).run()
    assert [c["step"] for c in a["checkpoints"]] == [3, 4]
    _trainer(tiny_model_dir, tmp_path / "b", steps=4, checkpoint_every=1).run()
    # drop the last checkpoint and the metrics row of step 4: the rerun recomputes them identically
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-000004")
    with open(tmp_path / "b" / "metrics.csv", "a") as fh:
        fh.write("999,garbage\n")
    _trainer(tiny_model_dir, tmp_path / "b", steps=4, checkpoint_every=1).run()
    wa = load_file(tmp_path / "a" / "checkpoints" / "step-000004" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "checkpoints" / "step-000004" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = ckpt.capture_rng()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    torch.save({"rng": state}, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)["rng"]
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    ckpt.restore_rng(loaded)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_save_is_atomic_under_a_failing_writer(tiny_model_dir, tmp_path):
    """A writer that dies mid-save leaves only a temp dir, never a step dir."""
    from rsgrpo.prepare.loading import load_policy

    model, tok = load_policy(tiny_model_dir)

    class Unpicklable:
        pass

    def save_checkpoint(step, state):  # the CheckpointWriter protocol with a single rank
        writer = ckpt.CheckpointWriter(tmp_path, step, rank=0)
        writer.write_resume(iter(()))
        writer.write_model(model, tok)
        return writer.commit(state)

    # pickling a local class: AttributeError up to Python 3.13, PicklingError from 3.14
    with pytest.raises((AttributeError, pickle.PicklingError), match="pickle"):
        save_checkpoint(2, {"obj": Unpicklable()})
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert not (tmp_path / "checkpoints" / "step-000002").exists()
    assert ckpt.clean_incomplete(tmp_path)  # the temp dir of checkpoint 2 is found and removed
    path = save_checkpoint(3, {"step": 3})
    assert ckpt.latest_checkpoint(tmp_path) == (3, path)
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_stages_train_like_stage0_and_resume_exactly(tiny_model_dir, tmp_path, stage):
    """ZeRO 1/2 (single process) follow the same trajectory as stage 0, and resume bit-exactly
    (the inner optimizer over the flat fp32 partition is what the checkpoint stores)."""
    _trainer(tiny_model_dir, tmp_path / "s0", steps=3, checkpoint_every=1).run()
    _trainer(tiny_model_dir, tmp_path / "a", steps=3, checkpoint_every=1, zero_stage=stage).run()
    _trainer(tiny_model_dir, tmp_path / "b", steps=3, checkpoint_every=1, zero_stage=stage).run()
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-000003")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-000002")
    _trainer(tiny_model_dir, tmp_path / "b", steps=3, checkpoint_every=1, zero_stage=stage).run()
    w0 = load_file(tmp_path / "s0" / "checkpoints" / "step-000003" / "model.safetensors")
    wa = load_file(tmp_path / "a" / "checkpoints" / "step-000003" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "checkpoints" / "step-000003" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    for k in wa:
        torch.testing.assert_close(wa[k], w0[k], rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(wa[k], load_file(Path(tiny_model_dir) / "model.safetensors")[k]) for k in wa)
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    assert all(float(r["grad_norm"]) > 0 for r in _metrics(tmp_path / "a") if r["grad_norm"] != "nan")


def test_resume_refuses_changed_data(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    _trainer(tiny_model_dir, run, steps=2).run()
    t = _trainer(tiny_model_dir, run, steps=3)
    t._records = RECORDS[:3]
    with pytest.raises(ValueError, match="train_data changed"):
        t.setup()


def test_run_dir_lock_refuses_a_second_trainer_and_dies_with_its_holder(tmp_path):
    """Another process holding the run-dir lock makes setup fail fast, naming its pid; once that
    process is SIGKILLed the kernel releases the lock and the next trainer gets it."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from rsgrpo.train import checkpoint as c; "
        "fh = c.lock_run_dir(sys.argv[2]); print('locked', flush=True); time.sleep(60)"),
        str(ROOT), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"in use by another trainer \(pid {holder.pid}\)"):
            ckpt.lock_run_dir(tmp_path, wait_s=0.5)
    finally:
        holder.kill()
        holder.wait()
    fh = ckpt.lock_run_dir(tmp_path, wait_s=5)
    assert (tmp_path / ckpt.LOCK_FILE).read_text().strip() == str(os.getpid())
    fh.close()


def test_only_the_newest_checkpoints_keep_the_optimizer_state(tiny_model_dir, tmp_path):
    """keep_resumable 2 of 4 kept checkpoints: the older two become evaluation-only (HF weights, no
    resume state), still listed in the manifest; resume starts from the newest."""
    run = tmp_path / "run"
    manifest = _trainer(tiny_model_dir, run, steps=4, checkpoint_every=1, keep_last=0, keep_resumable=2).run()
    assert [c["step"] for c in manifest["checkpoints"]] == [1, 2, 3, 4]  # every one evaluable
    assert [s for s, _ in ckpt.resumable_checkpoints(run)] == [3, 4]
    assert ckpt.latest_checkpoint(run)[0] == 4
    root = run / "checkpoints"
    for step in (1, 2):
        folder = root / ckpt.checkpoint_name(step)
        assert (folder / "model.safetensors").is_file() and not (folder / ckpt.RESUME_DIR).exists()
        with pytest.raises(ValueError, match="evaluation-only checkpoint"):
            ckpt.load_state(folder)

    def size(folder):
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())

    # fp32 AdamW keeps two moments per weight: the resume state is about twice the weights
    assert size(root / "step-000004") > 2.5 * size(root / "step-000002")
    state = ckpt.load_state(root / "step-000004")
    assert set(state["optimizer"]["exp_avg"]) == set(load_file(root / "step-000004" / "model.safetensors"))


def test_weights_written_in_shards_load_as_one_checkpoint(tiny_model_dir, tmp_path):
    """The ZeRO-3 path: (name, tensor) pairs written in several safetensors shards plus their index
    (here 64 KiB shards) load back as the same model, in transformers as in the resume reader."""
    from rsgrpo.prepare.loading import load_policy

    model, tok = load_policy(tiny_model_dir)
    writer = ckpt.CheckpointWriter(tmp_path, 5, rank=0, shard_bytes=64 << 10)
    summary = writer.write_resume(iter([(f"exp_avg/{n}", p.detach()) for n, p in model.named_parameters()]))
    writer.write_weights(model, tok, ((n, p.detach()) for n, p in model.named_parameters()))
    path = writer.commit({"step": 5, "optimizer_step": 0})
    shards = sorted(p.name for p in path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (path / "model.safetensors.index.json").is_file()
    assert len(list((path / ckpt.RESUME_DIR).glob("rank-00000-*.safetensors"))) > 1
    assert summary["max_held_bytes"] < summary["bytes"]  # never the whole set at once
    again, _ = load_policy(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    moments = ckpt.load_state(path)["optimizer"]["exp_avg"]
    assert all(torch.equal(moments[n], p.detach()) for n, p in model.named_parameters())


# ------------------------------------------------------------------------------------------------
# failed writes and damaged checkpoints
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_checkpoints(tiny_model_dir, tmp_path_factory):
    """A run dir with resumable checkpoints 1, 2 and 3 (copy it before changing it)."""
    run = tmp_path_factory.mktemp("three") / "run"
    _trainer(tiny_model_dir, run, steps=3, checkpoint_every=1, keep_resumable=0).run()
    return run


def _copy_run(source: Path, tmp_path: Path) -> Path:
    shutil.copytree(source, tmp_path / "run")
    return tmp_path / "run"


def _step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / ckpt.checkpoint_name(step)


def _truncate(path: Path) -> None:
    """Cut ``path`` to half its length: what a node crash on a network file system can leave."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("raised", ["OSError", "SafetensorError"])
def test_a_full_disk_stops_the_write_with_one_line_and_the_earlier_checkpoint_resumes(
        tiny_model_dir, three_checkpoints, tmp_path, monkeypatch, raised):
    """The resume shard of checkpoint 4 meets a full disk (as ``open`` reports it, and as safetensors
    does): one line naming the file, the free space, the bytes needed and the last complete checkpoint;
    the partial checkpoint is gone, and the run resumes from checkpoint 3."""
    import safetensors.torch
    from safetensors import SafetensorError

    run = _copy_run(three_checkpoints, tmp_path)
    real_save = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        if ".tmp-step-000004" not in filename:
            return real_save(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(bytes(1000))  # the part that fitted
        if raised == "OSError":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(ckpt.CheckpointWriteError) as failed:
        _trainer(tiny_model_dir, run, steps=4, checkpoint_every=1, keep_resumable=0).run()
    message = str(failed.value)
    shard = run / "checkpoints" / ".tmp-step-000004" / ckpt.RESUME_DIR / "rank-00000-000.safetensors"
    assert "\n" not in message and failed.value.errno == errno.ENOSPC
    assert message.startswith(f"cannot write checkpoint step 4: {shard}: No space left on device (errno 28); ")
    assert re.search(r"; [\d.]+ (B|KiB|MiB|GiB|TiB) free on its file system, about [\d.]+ KiB needed for this "
                     r"write, [\d.]+ (KiB|MiB) for a whole checkpoint", message), message
    assert f"; last complete checkpoint: {_step_dir(run, 3)} (a restart resumes from it); " \
           "the partial checkpoint was removed" in message
    assert not (run / "checkpoints" / ".tmp-step-000004").exists()
    assert [s for s, _ in ckpt.complete_checkpoints(run)] == [1, 2, 3]
    monkeypatch.undo()
    again = _trainer(tiny_model_dir, run, steps=4, checkpoint_every=1, keep_resumable=0)
    assert again.run()["final_step"] == 4 and again.start_step == 3


def test_a_write_the_kernel_refuses_gives_the_same_line(tmp_path):
    """A real failed write, no stand-in: the process's file-size limit makes the kernel refuse the
    safetensors shard (EFBIG instead of ENOSPC; SIGXFSZ ignored so the write fails instead of the
    process); with no checkpoint yet, the line says so."""
    resource = pytest.importorskip("resource")
    writer = ckpt.CheckpointWriter(tmp_path, 1, rank=0)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if hard != resource.RLIM_INFINITY and hard < 1 << 20:
        pytest.skip(f"the hard file-size limit ({hard} bytes) is below the test's")
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(ckpt.CheckpointWriteError) as failed:
            writer.write_resume(iter([("exp_avg/w", torch.zeros(1 << 20))]))  # 4 MiB
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    shard = writer.tmp / ckpt.RESUME_DIR / "rank-00000-000.safetensors"
    assert str(failed.value).startswith(f"cannot write checkpoint step 1: {shard}: {os.strerror(errno.EFBIG)} "
                                        f"(errno {errno.EFBIG}); ")
    assert "about 4.0 MiB needed for this write; last complete checkpoint: none yet" in str(failed.value)
    assert not writer.tmp.exists()


def test_the_marker_records_sizes_and_checksums_of_the_small_files(three_checkpoints):
    """Every file but the marker, with its size; a checksum for all but the safetensors files."""
    path = _step_dir(three_checkpoints, 3)
    files = json.loads((path / ckpt.MARKER).read_text())["files"]
    on_disk = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file() and p.name != ckpt.MARKER}
    assert set(files) == set(on_disk) and {ckpt.STATE_FILE, "model.safetensors", "config.json"} <= set(files)
    for rel, recorded in files.items():
        assert recorded["bytes"] == on_disk[rel].stat().st_size
        assert ("blake2b" in recorded) == (not rel.endswith(".safetensors")), rel
    assert ckpt.verify_checkpoint(path) == []


def test_a_truncated_resume_shard_falls_back_to_the_checkpoint_before(tiny_model_dir, three_checkpoints, tmp_path,
                                                                      caplog):
    """A marker behind a short optimizer shard (node crash): resume names the damaged checkpoint and
    the file in a warning, resumes from checkpoint 2, and writing step 3 again replaces the damaged one."""
    run = _copy_run(three_checkpoints, tmp_path)
    shard = _step_dir(run, 3) / ckpt.RESUME_DIR / "rank-00000-000.safetensors"
    size = shard.stat().st_size
    _truncate(shard)
    caplog.set_level("WARNING", logger="rsgrpo.train.checkpoint")
    t = _trainer(tiny_model_dir, run, steps=3, checkpoint_every=1, keep_resumable=0)
    assert t.run()["final_step"] == 3 and t.start_step == 2
    assert f"checkpoint {_step_dir(run, 3)} is damaged: resume/rank-00000-000.safetensors has {size // 2} bytes, " \
           f"its marker records {size}" in caplog.text
    assert ckpt.verify_checkpoint(_step_dir(run, 3)) == []


def test_one_changed_byte_of_a_small_file_is_detected(tiny_model_dir, three_checkpoints, tmp_path, caplog):
    """The same size, one byte different (the trainer state): its checksum catches it, resume falls back."""
    run = _copy_run(three_checkpoints, tmp_path)
    state = _step_dir(run, 3) / ckpt.STATE_FILE
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
    assert ckpt.verify_checkpoint(_step_dir(run, 3)) == \
        [f"{ckpt.STATE_FILE} does not match the blake2b checksum its marker records"]
    caplog.set_level("WARNING", logger="rsgrpo.train.checkpoint")
    t = _trainer(tiny_model_dir, run, steps=3, checkpoint_every=1, keep_resumable=0)
    t.setup()
    assert t.start_step == 2 and f"checkpoint {_step_dir(run, 3)} is damaged" in caplog.text


def test_with_every_checkpoint_damaged_resume_names_each(tiny_model_dir, three_checkpoints, tmp_path):
    run = _copy_run(three_checkpoints, tmp_path)
    _truncate(_step_dir(run, 1) / "model.safetensors")
    _truncate(_step_dir(run, 2) / ckpt.STATE_FILE)
    (_step_dir(run, 3) / ckpt.RESUME_DIR / "rank-00000.json").unlink()
    with pytest.raises(ckpt.CheckpointDamagedError, match="no intact checkpoint to resume from") as failed:
        _trainer(tiny_model_dir, run, steps=3, checkpoint_every=1, keep_resumable=0).setup()
    message = str(failed.value)
    assert "\n" not in message and isinstance(failed.value, ValueError)
    assert f"{_step_dir(run, 1)} (model.safetensors has " in message
    assert f"{_step_dir(run, 2)} ({ckpt.STATE_FILE} has " in message
    assert f"{_step_dir(run, 3)} (resume/rank-00000.json is missing)" in message


def test_markers_without_sizes_still_resume_and_are_checked_by_loading(tiny_model_dir, three_checkpoints, tmp_path,
                                                                       caplog):
    """Markers written before the file records hold only the step: such checkpoints resume, and a
    damaged one is found by its files not loading."""
    run = _copy_run(three_checkpoints, tmp_path)
    for step in (1, 2, 3):
        (_step_dir(run, step) / ckpt.MARKER).write_text(json.dumps({"step": step}) + "\n")
    assert all(ckpt.verify_checkpoint(_step_dir(run, step)) == [] for step in (1, 2, 3))
    t = _trainer(tiny_model_dir, run, steps=3, checkpoint_every=1, keep_resumable=0)
    t.setup()
    assert t.start_step == 3
    _truncate(_step_dir(run, 3) / ckpt.RESUME_DIR / "rank-00000-000.safetensors")
    _truncate(_step_dir(run, 2) / ckpt.STATE_FILE)
    caplog.set_level("WARNING", logger="rsgrpo.train.checkpoint")
    t = _trainer(tiny_model_dir, run, steps=3, checkpoint_every=1, keep_resumable=0)
    t.setup()
    assert t.start_step == 1
    assert f"checkpoint {_step_dir(run, 3)} is damaged: resume/rank-00000-000.safetensors does not load" in caplog.text
    assert f"checkpoint {_step_dir(run, 2)} is damaged: its resume state does not load" in caplog.text


def test_pruning_keeps_the_newest_intact_checkpoint_behind_a_damaged_newer_one(three_checkpoints, tmp_path):
    """keep_last 1 and keep_resumable 1 with checkpoint 3 damaged: checkpoint 2, what a resume starts
    from, is neither deleted nor stripped; checkpoint 1 goes."""
    run = _copy_run(three_checkpoints, tmp_path)
    _truncate(_step_dir(run, 3) / ckpt.RESUME_DIR / "rank-00000-000.safetensors")
    assert ckpt.prune(run, keep_last=1, keep_resumable=1) == [_step_dir(run, 1)]
    assert [s for s, _ in ckpt.resumable_checkpoints(run)] == [2, 3]
    assert ckpt.verify_checkpoint(_step_dir(run, 2)) == []
