"""Atomic training checkpoints and exact resume.

Layout: ``<run_dir>/checkpoints/step-XXXXXX/`` holds

* an HF checkpoint in the compute dtype (safetensors weights, config, tokenizer files): what
  ``sample``, ``load_policy`` and vLLM load, and the source of the module's weights on resume;
* ``resume/`` -- what exact resume needs beyond it, only in the newest ``keep_resumable``
  checkpoints (older ones are stripped to evaluation-only checkpoints):

  - ``rank-RRRRR-PPP.safetensors``: every rank's share of the AdamW moments (``exp_avg/<param>``,
    ``exp_avg_sq/<param>``) and, for bf16-mixed runs, of the fp32 master weights (``master/<param>``),
    full tensors by parameter name, written by the rank that owns them (parameter ``i`` belongs to
    rank ``i % world_size``) in files of at most ``SHARD_BYTES``: no process ever holds the whole
    optimizer state, and any number of ranks reads them back (each takes the fragments it needs);
  - ``rank-RRRRR.json``: what each rank wrote (tensors, bytes, the most it held at once);
  - ``trainer_state.pt``: the rest -- AdamW's step count, RNG states (python, numpy, torch) as
    tensors/plain types, the data position, the step, the cumulative-solve set, the metric rows so
    far, the config and data fingerprints;
* ``COMPLETE``: a marker (JSON) written last: the step and every other file's size in bytes, with
  a checksum of the small ones (:mod:`rsgrpo.train.checkpoint_integrity`).

Why atomic: a run may be SIGKILLed at any instant (preemption, OOM killer). Every rank writes into
``.tmp-step-XXXXXX``; after all are done rank 0 writes the state, fsyncs, writes the marker and only
then renames the directory to its final name (``rename`` is atomic on POSIX). A directory counts as
a checkpoint only if its name matches ``step-\\d{6}`` AND it holds the marker, so temp dirs and any
marker-less leftovers are ignored (and cleaned up) on resume; it is resumable only with its
``resume/trainer_state.pt``. The trainer state records the rsgrpo version that wrote it
(``FORMAT_KEY``): checkpoints of versions before 0.2.0 have none and do not resume (CHANGELOG.md).

Why not ``DeepSpeedEngine.save_checkpoint``: its loader unpickles arbitrary objects (its optimizer
state contains a ``LossScaler`` instance), while this project loads only with safetensors or
``torch.load(weights_only=True)``, and its files are partitioned per rank and ZeRO stage. Here the
state is stored per parameter name in full shape: a checkpoint written by N ranks at any ZeRO stage
resumes on M ranks.

Why verified on resume: the marker vouches only for what the writer saw, and a node crash on a
network file system can leave a short or wrong file behind it. Resume checks the newest checkpoint
against its marker, names a damaged one in a warning and falls back to the newest intact one
(keep ``keep_resumable`` at 2 or more to have one); pruning never removes that one. A failed write (a
full disk, a quota) stops the run with one line (:class:`CheckpointWriteError`) and leaves the earlier
checkpoints as they were.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import pickle
import random
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsgrpo.io import atomic_path
from rsgrpo.layout import CHECKPOINTS, MANIFEST, checkpoint_name, checkpoint_step  # the workflow layout's names
from rsgrpo.train import checkpoint_integrity as integrity
from rsgrpo.train.checkpoint_integrity import CheckpointDamagedError, CheckpointWriteError, fsync_path

__all__ = ["MARKER", "STATE_FILE", "RESUME_DIR", "checkpoint_name", "complete_checkpoints", "resumable_checkpoints",
           "latest_checkpoint", "CheckpointWriter", "load_state", "lock_run_dir", "prune",
           "capture_rng", "restore_rng", "clean_incomplete", "write_manifest", "resume_state", "ShardedTensors",
           "verify_checkpoint", "CheckpointWriteError", "CheckpointDamagedError"]

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
RESUME_DIR = "resume"
STATE_FILE = f"{RESUME_DIR}/trainer_state.pt"
# Key of the trainer state naming the rsgrpo version that wrote it; resume needs FIRST_RESUMABLE or later.
FORMAT_KEY = "rsgrpo_version"
FIRST_RESUMABLE = "0.2.0"
SHARD_BYTES = 1 << 30  # the most a rank buffers before it writes a file


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def complete_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint (evaluation-only ones included), ascending."""
    root = checkpoints_dir(run_dir)
    out = []
    if root.is_dir():
        for p in root.iterdir():
            step = checkpoint_step(p.name)
            if step is not None and p.is_dir() and (p / MARKER).is_file():
                out.append((step, p))
    return sorted(out)


def _resumable(path: Path) -> bool:
    return (path / STATE_FILE).is_file()


def resumable_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The complete checkpoints that still hold what resume needs, ascending by step."""
    return [(step, path) for step, path in complete_checkpoints(run_dir) if _resumable(path)]


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[int, Path] | None:
    """The newest checkpoint a run can resume from."""
    ckpts = resumable_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def verify_checkpoint(path: str | os.PathLike, *, resume: bool = True) -> list[str]:
    """What is wrong with complete checkpoint ``path`` ([] when nothing is), measured against its
    marker: every file it lists present with its recorded size, the small files' checksums, every
    safetensors header readable. A marker written before these records existed (``{"step"}`` only)
    has no sizes: then only that the safetensors files open. ``resume=False`` leaves ``resume/`` out (an
    evaluation-only checkpoint's marker still lists what pruning stripped)."""
    path = Path(path)
    try:
        marker = json.loads((path / MARKER).read_text())
        files = marker.get("files")
        if not isinstance(files, (dict, type(None))):
            raise ValueError(f"its files are a {type(files).__name__}, not a mapping")
    except (OSError, ValueError, AttributeError) as exc:  # unreadable, not JSON, not an object
        return [f"its {MARKER} marker does not read ({' '.join(str(exc).split())})"]
    return integrity.verify_files(path, files, skip=None if resume else f"{RESUME_DIR}/")


def _newest_intact(run_dir: str | os.PathLike) -> Path | None:
    for _, path in reversed(resumable_checkpoints(run_dir)):
        if not verify_checkpoint(path):
            return path
    return None


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


class CheckpointWriter:
    """Checkpoint ``step`` of a run, written by every rank into one temporary directory that rank 0
    renames when all are done. The order (the trainer's ``save``): construct on every rank (rank 0
    creates the directory), barrier, :meth:`write_resume` on every rank with its share, rank 0
    :meth:`write_model` or :meth:`write_weights`, barrier, rank 0 :meth:`commit`.

    Every file write goes through :meth:`_writing`, so a write that fails (a full disk, a quota, an
    I/O error) raises one :class:`CheckpointWriteError` whichever library wrote the file. Only the
    writes themselves are wrapped, not the tensors' production (a ZeRO-3 gather is a collective whose
    errors are not the file system's)."""

    def __init__(self, run_dir: str | os.PathLike, step: int, *, rank: int, shard_bytes: int = SHARD_BYTES):
        self.run_dir = Path(run_dir)
        self.root = checkpoints_dir(run_dir)
        self.final = self.root / checkpoint_name(step)
        self.tmp = self.root / f".tmp-{checkpoint_name(step)}"
        self.step, self.rank, self.shard_bytes = step, rank, shard_bytes
        if rank == 0:
            with self._writing(self.tmp):
                self.root.mkdir(parents=True, exist_ok=True)
                if self.tmp.exists():  # a leftover of an attempt killed at this step
                    shutil.rmtree(self.tmp)
                (self.tmp / RESUME_DIR).mkdir(parents=True)

    @contextlib.contextmanager
    def _writing(self, target: Path, needed: int | Callable[[], int] | None = None) -> Iterator[None]:
        """Turn a failed write of ``target`` (``needed``: its bytes, or how to count them, where known)
        into a one-line :class:`CheckpointWriteError`. Rank 0 removes the temporary directory, freeing
        the space and keeping the earlier checkpoints as they were; another rank leaves it (rank 0 may
        still be writing into it) to :func:`clean_incomplete` at the next start. OSError is what
        ``open`` and transformers' JSON writes raise, SafetensorError what a safetensors file's does."""
        from safetensors import SafetensorError

        try:
            yield
        except (OSError, SafetensorError) as exc:
            error = integrity.write_error(self.step, target, exc, needed=needed() if callable(needed) else needed,
                                          last_complete=(latest_checkpoint(self.run_dir) or (None, None))[1],
                                          removed=self.rank == 0)
            if self.rank == 0:
                shutil.rmtree(self.tmp, ignore_errors=True)
            raise error from None

    def _save_tensors(self, tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
        from safetensors.torch import save_file

        with self._writing(path, lambda: integrity.tensor_bytes(tensors)):
            save_file(tensors, str(path), metadata=metadata)

    def _write_text(self, path: Path, text: str) -> None:
        with self._writing(path, len(text.encode())):
            path.write_text(text)

    def _shards(self, named_tensors: Iterator[tuple[str, torch.Tensor]], stats: dict) -> Iterator[dict]:
        """``named_tensors`` in dicts of at most ``shard_bytes`` (one tensor more where it overflows),
        each handed on as soon as it is full; ``stats`` counts tensors, bytes and the most held."""
        shard: dict[str, torch.Tensor] = {}
        held = 0
        for name, tensor in named_tensors:
            size = tensor.numel() * tensor.element_size()
            shard[name] = tensor.contiguous()
            held += size
            stats["tensors"] += 1
            stats["bytes"] += size
            stats["max_held_bytes"] = max(stats["max_held_bytes"], held)
            if held >= self.shard_bytes:
                yield shard
                shard, held = {}, 0
        if shard:
            yield shard

    def write_resume(self, named_tensors: Iterator[tuple[str, torch.Tensor]]) -> dict:
        """Write this rank's share of the resume state in files of at most ``shard_bytes``; return
        (and write to ``rank-RRRRR.json``) what it wrote and the most it held at once."""
        summary = {"rank": self.rank, "tensors": 0, "bytes": 0, "max_held_bytes": 0}
        for part, shard in enumerate(self._shards(named_tensors, summary)):
            self._save_tensors(shard, self.tmp / RESUME_DIR / f"rank-{self.rank:05d}-{part:03d}.safetensors")
        self._write_text(self.tmp / RESUME_DIR / f"rank-{self.rank:05d}.json", json.dumps(summary) + "\n")
        return summary

    def write_model(self, model, tokenizer) -> None:
        """Rank 0: the HF checkpoint of a module that holds full weights (ZeRO 0-2)."""
        with self._writing(self.tmp, lambda: integrity.tensor_bytes(model.state_dict())):
            model.save_pretrained(self.tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(self.tmp)

    def write_weights(self, model, tokenizer, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        """Rank 0: the HF checkpoint from ``(name, full tensor)`` pairs (a ZeRO-3 gather, consumed
        lazily), written as safetensors shards of at most ``shard_bytes`` plus their index, so the
        weights are never held whole either."""
        stats = {"tensors": 0, "bytes": 0, "max_held_bytes": 0}
        files, weight_map = [], {}
        for shard in self._shards(weights, stats):
            files.append(self._weight_shard(shard, len(files), weight_map))
        if not files:
            files.append(self._weight_shard({}, 0, weight_map))
        if len(files) == 1:
            with self._writing(self.tmp / "model.safetensors"):
                (self.tmp / files[0]).rename(self.tmp / "model.safetensors")
        else:
            index = {"metadata": {"total_size": stats["bytes"]}, "weight_map": weight_map}
            self._write_text(self.tmp / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
        with self._writing(self.tmp):
            model.config.save_pretrained(self.tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(self.tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(self.tmp)

    def _weight_shard(self, tensors: dict, index: int, weight_map: dict) -> str:
        name = f"model-{index + 1:05d}.safetensors"
        self._save_tensors(tensors, self.tmp / name, metadata={"format": "pt"})
        weight_map.update({key: name for key in tensors})
        return name

    def commit(self, state: dict[str, Any]) -> Path:
        """Rank 0, after every rank's :meth:`write_resume`: the trainer state (tensors and plain types
        only, reloaded with weights_only=True) stamped with the writing version, fsync, the marker with
        every file's size (and the small files' checksums), the atomic rename. The state is serialized
        in memory first: ``torch.save`` into a file that fails reports only a stream position, and a
        pickling error is then no write error."""
        from rsgrpo import __version__

        buffer = io.BytesIO()
        torch.save({**state, FORMAT_KEY: __version__}, buffer)
        with self._writing(self.tmp / STATE_FILE, buffer.getbuffer().nbytes):
            (self.tmp / STATE_FILE).write_bytes(buffer.getbuffer())
        with self._writing(self.tmp / MARKER):  # fsync reports what a network file system could not store
            files = integrity.record_files(self.tmp, exclude=(MARKER,))
            (self.tmp / MARKER).write_text(json.dumps({"step": self.step, "files": files}, indent=1) + "\n")
            fsync_path(self.tmp / MARKER)
            fsync_path(self.tmp)
        if self.final.exists():  # a leftover of an earlier attempt at the same step: replace it
            shutil.rmtree(self.final)
        with self._writing(self.final):
            os.rename(self.tmp, self.final)
        fsync_path(self.root)
        return self.final


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


class ShardedTensors(Mapping):
    """The tensors under one prefix (``exp_avg/``, ``master/``...) of a checkpoint's resume shards, by
    parameter name, read one at a time when asked for (so a reader holds one tensor, not the set)."""

    def __init__(self, folder: Path, prefix: str):
        from safetensors import safe_open

        self.prefix, self.files = prefix, {}
        for path in sorted(folder.glob("rank-*.safetensors")):
            with safe_open(str(path), framework="pt") as handle:
                self.files.update({key[len(prefix):]: path for key in handle.keys() if key.startswith(prefix)})

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.files[name]), framework="pt") as handle:
            return handle.get_tensor(self.prefix + name)

    def __iter__(self):
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """What resuming from a complete checkpoint needs: the trainer state (``torch.load(weights_only=
    True)`` only), with ``state["optimizer"]`` = ``{"step", "exp_avg", "exp_avg_sq"}`` and
    ``state["masters"]`` (None for fp32 runs) as lazy per-name views of the resume shards."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"{path} is an evaluation-only checkpoint (its resume state was pruned)")
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    if FORMAT_KEY not in state:
        raise ValueError(f"{path} was written by rsgrpo before {FIRST_RESUMABLE}, whose checkpoints this version "
                         "does not resume (CHANGELOG.md); finish the run with the version that started it, "
                         "or start it again in a new run_dir")
    folder = path / RESUME_DIR
    state["optimizer"] = {"step": int(state.pop("optimizer_step")), "exp_avg": ShardedTensors(folder, "exp_avg/"),
                          "exp_avg_sq": ShardedTensors(folder, "exp_avg_sq/")}
    masters = ShardedTensors(folder, "master/")
    state["masters"] = masters if len(masters) else None
    return state


def _newest_loadable(run_dir: str | os.PathLike) -> tuple[Path | None, dict | None]:
    """``(path, state)`` of the newest resumable checkpoint that passes :func:`verify_checkpoint` and
    loads, each damaged newer one named in a warning; ``(None, None)`` when there is none at all;
    :class:`CheckpointDamagedError` naming each when all are damaged."""
    from safetensors import SafetensorError

    damaged = []
    for _, path in reversed(resumable_checkpoints(run_dir)):
        problems = verify_checkpoint(path)
        if not problems:
            try:  # a marker without sizes lets a short file by; torch's zip reader then raises RuntimeError
                return path, load_state(path)
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as exc:
                problems = [f"its resume state does not load ({' '.join(str(exc).split())})"]
        log.warning("checkpoint %s is damaged: %s; trying the checkpoint before it", path, "; ".join(problems))
        damaged.append(f"{path} ({'; '.join(problems)})")
    if damaged:
        raise CheckpointDamagedError(
            f"no intact checkpoint to resume from in {str(run_dir)!r}: {', '.join(damaged)}; restore them, or move "
            "them away to start the run again from the beginning (keep_resumable >= 2 keeps an older one to "
            "fall back on)")
    return None, None


def resume_state(run_dir: str | os.PathLike, *, config_hash: str, data_hash: str,
                 prompts_per_step: int) -> tuple[Path | None, dict | None]:
    """``(path, state)`` of the newest intact checkpoint to resume from (a damaged newer one is named
    in a warning and passed over), ``(None, None)`` for a fresh run; ValueError when it was written
    with another config or other training records, or when its data position is not a whole number
    of steps' prompts, :class:`CheckpointDamagedError` when every checkpoint is damaged."""
    path, state = _newest_loadable(run_dir)
    if path is None:
        return None, None
    if state["config_hash"] != config_hash:
        raise ValueError(f"run_dir {str(run_dir)!r} holds checkpoints of a different config (hash "
                         f"{state['config_hash'][:12]} vs {config_hash[:12]}); use a new run_dir or the "
                         "original config")
    if state.get("data_hash") != data_hash:
        raise ValueError(f"train_data changed since the checkpoint in {str(run_dir)!r} was written "
                         "(different records); resume needs the same data -- use a new run_dir")
    step, position = int(state["step"]), int(state["data_position"])
    if position < step * prompts_per_step or position % prompts_per_step:
        raise ValueError(f"checkpoint {path}: data_position {position} is not a multiple of "
                         f"prompts_per_step {prompts_per_step} of at least step x prompts_per_step "
                         f"= {step * prompts_per_step}")
    return path, state


def prune(run_dir: str | os.PathLike, keep_last: int, keep_resumable: int = 0) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (0 = keep all), and strip all but
    the newest ``keep_resumable`` of the rest to evaluation-only ones (HF weights; 0 = strip none):
    the optimizer state is only worth its bytes where a resume may start. Returns what it removed.

    Neither touches the newest intact resumable checkpoint. After a resume fell back past a damaged
    checkpoint, the damaged one is still the newest on disk until the run writes its step again;
    counted among the newest, it would have the checkpoint the run stands on removed or stripped."""
    removed = []
    ckpts = complete_checkpoints(run_dir)
    resumable = [p for _, p in resumable_checkpoints(run_dir)]
    doomed = ckpts[:-keep_last] if keep_last > 0 else []
    stripped = resumable[:-keep_resumable] if keep_resumable > 0 else []
    anchor = _newest_intact(run_dir) if doomed or stripped else None  # verified only when needed
    for _, p in doomed:
        if p == anchor:
            continue
        # Remove the marker first: a crash mid-delete then leaves an ignorable, incomplete dir.
        (p / MARKER).unlink(missing_ok=True)
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    for p in stripped:
        if p == anchor or not p.exists():
            continue
        # The state file first: a crash mid-strip leaves a checkpoint that is simply not resumable.
        (p / STATE_FILE).unlink(missing_ok=True)
        shutil.rmtree(p / RESUME_DIR, ignore_errors=True)
        removed.append(p / RESUME_DIR)
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
                   config: dict, training_set: dict | None = None) -> dict:
    """Write ``<run_dir>/manifest.json`` (atomically): the run's complete checkpoints, its final one,
    its config and what it trained on (``training_set``: records, prompts dropped as too long) -- the
    train verb's declared output, what the evaluation rules read."""
    checkpoints = complete_checkpoints(run_dir)
    manifest = {
        "final_step": final_step,
        "steps": steps,
        "run_dir": str(run_dir),
        "checkpoints": [{"step": step, "path": str(path)} for step, path in checkpoints],
        "final_checkpoint": str(checkpoints[-1][1]) if checkpoints else None,
        "config_hash": config_hash,
        "config": config,
        "training_set": training_set,
    }
    with atomic_path(Path(run_dir) / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return manifest
