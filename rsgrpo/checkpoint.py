"""Atomic training checkpoints and exact resume.

Layout: ``<run_dir>/checkpoints/step-XXXXXX/`` holds

* an HF checkpoint (``save_pretrained`` safetensors + config + tokenizer files): directly usable by
  ``sample`` / ``load_policy`` and the source of the weights on resume;
* ``master.safetensors`` (bf16-mixed runs only): the fp32 master weights, by parameter name;
* ``trainer_state.pt``: everything else resume needs -- the inner torch optimizer state (AdamW
  moments and step counts), RNG states (python, numpy, torch) as tensors/plain types, the data
  position, the step, the cumulative-solve set, the metric rows so far and the config hash;
* ``COMPLETE``: a marker (JSON) written last.

Why atomic: a run may be SIGKILLed at any instant (preemption, OOM killer). Everything is written
into ``.tmp-step-XXXXXX-<pid>``, fsynced, the marker written, and only then the directory renamed to
its final name (``rename`` is atomic on POSIX). A directory counts as a checkpoint only if its name
matches ``step-\\d{6}`` AND it holds the marker, so temp dirs and any marker-less leftovers are
ignored (and cleaned up) on resume.

Why not ``DeepSpeedEngine.save_checkpoint``: its loader unpickles arbitrary objects (its optimizer
state contains a ``LossScaler`` instance), while this project loads only with safetensors or
``torch.load(weights_only=True)``, and its files are partitioned per rank, so a run could not move
to another number of ranks. Here the optimizer state is stored unpartitioned, per parameter name
(:func:`rsgrpo.distributed.full_optimizer_state`), next to the full weights (from which DeepSpeed
rebuilds its fp32 partitions at ``deepspeed.initialize``): a checkpoint written by N ranks at any
ZeRO stage resumes on M ranks. Only rank 0 writes; the other ranks take part in the gathers.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import atomic_path
from .layout import CHECKPOINTS, MANIFEST, checkpoint_name, checkpoint_step  # the workflow layout's names

__all__ = ["MARKER", "STATE_FILE", "checkpoint_name", "complete_checkpoints", "latest_checkpoint",
           "save_checkpoint", "load_state", "lock_run_dir", "prune", "capture_rng", "restore_rng", "clean_incomplete",
           "write_manifest", "resume_state"]

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.pt"


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def complete_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint, ascending by step."""
    root = checkpoints_dir(run_dir)
    out = []
    if root.is_dir():
        for p in root.iterdir():
            step = checkpoint_step(p.name)
            if step is not None and p.is_dir() and (p / MARKER).is_file() and (p / STATE_FILE).is_file():
                out.append((step, p))
    return sorted(out)


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[int, Path] | None:
    ckpts = complete_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def clean_incomplete(run_dir: str | os.PathLike) -> list[Path]:
    """Remove temp dirs and marker-less step dirs (leftovers of a killed writer); return them."""
    root = checkpoints_dir(run_dir)
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-") or (checkpoint_step(p.name) is not None and not (p / MARKER).is_file()):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | os.PathLike, step: int, *, model, tokenizer, state: dict[str, Any],
                    state_dict: dict[str, Any] | None = None,
                    tensor_files: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write checkpoint ``step`` atomically and return its final path.

    ``state`` must hold only tensors and plain Python types (it is reloaded with weights_only=True).
    ``state_dict``: the full weights to write instead of the module's own (ZeRO-3, whose module holds
    only a partition). ``tensor_files``: more tensors to store, ``{file name: {name: tensor}}``, each
    file a safetensors file (bf16-mixed runs keep their fp32 master weights this way).
    """
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    for file_name, tensors in (tensor_files or {}).items():
        from safetensors.torch import save_file

        save_file({name: t.contiguous() for name, t in tensors.items()}, str(tmp / file_name))
    torch.save(state, tmp / STATE_FILE)
    (tmp / MARKER).write_text(json.dumps({"step": step}) + "\n")
    _fsync_tree(tmp)
    if final.exists():  # a leftover of an earlier attempt at the same step: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


LOCK_FILE = ".lock"


def lock_run_dir(run_dir: str | os.PathLike, wait_s: float = 10.0):
    """Hold an exclusive lock on ``run_dir`` for this process's lifetime; return the open lock file.

    Two trainers in one run directory would overwrite each other's checkpoints. The lock is a POSIX
    record lock (``lockf``, honoured by NFS and Lustre clients), which the kernel releases when the
    holder dies, SIGKILL included; a restarted job waits up to ``wait_s`` for a just-killed holder to
    go away. Raises ``ValueError`` naming the holder's pid when the directory stays locked.
    """
    import fcntl
    import time

    path = Path(run_dir) / LOCK_FILE
    fh = open(path, "a+")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):  # no lock support on this file system
                return fh
            if time.monotonic() >= deadline:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                fh.close()
                raise ValueError(f"run_dir {str(run_dir)!r} is in use by another trainer (pid {holder}); "
                                 "two runs in one directory would overwrite each other's checkpoints") from None
            time.sleep(0.2)
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """The trainer state of a complete checkpoint (``torch.load(weights_only=True)`` only)."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)


def resume_state(run_dir: str | os.PathLike, *, config_hash: str,
                 data_hash: str) -> tuple[Path | None, dict | None]:
    """``(path, state)`` of the newest complete checkpoint to resume from, ``(None, None)`` for a fresh
    run; ValueError when it was written with another config or other training records."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return None, None
    state = load_state(latest[1])
    if state["config_hash"] != config_hash:
        raise ValueError(f"run_dir {str(run_dir)!r} holds checkpoints of a different config (hash "
                         f"{state['config_hash'][:12]} vs {config_hash[:12]}); use a new run_dir or the "
                         "original config")
    if state.get("data_hash") != data_hash:
        raise ValueError(f"train_data changed since the checkpoint in {str(run_dir)!r} was written "
                         "(different records); resume needs the same data -- use a new run_dir")
    return latest[1], state


def prune(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (0 = keep all)."""
    if keep_last <= 0:
        return []
    ckpts = complete_checkpoints(run_dir)
    removed = []
    for _, p in ckpts[:-keep_last]:
        # Remove the marker first: a crash mid-delete then leaves an ignorable, incomplete dir.
        (p / MARKER).unlink(missing_ok=True)
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors / plain types (weights_only-loadable)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state().clone(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"],
                         nps["has_gauss"], nps["gauss"]))
    torch.set_rng_state(state["torch"])


def write_manifest(run_dir: str | os.PathLike, *, final_step: int, steps: int, config_hash: str,
                   config: dict) -> dict:
    """Write ``<run_dir>/manifest.json`` (atomically): the run's complete checkpoints, its final one
    and its config -- the train verb's declared output, what the evaluation rules read."""
    checkpoints = complete_checkpoints(run_dir)
    manifest = {
        "final_step": final_step,
        "steps": steps,
        "run_dir": str(run_dir),
        "checkpoints": [{"step": step, "path": str(path)} for step, path in checkpoints],
        "final_checkpoint": str(checkpoints[-1][1]) if checkpoints else None,
        "config_hash": config_hash,
        "config": config,
    }
    with atomic_path(Path(run_dir) / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return manifest
