"""What a checkpoint's completion marker records about its files, the check of a checkpoint against
that record, and the one-line error of a failed checkpoint write (:mod:`rsgrpo.train.checkpoint`).

The marker (``COMPLETE``) is written after every file of the checkpoint is fsynced, so it vouches only
for what the writer saw. A node that dies on a network file system can still leave a file shorter
than it was written, or a block that reads back wrong, behind an intact marker; resume then has to
tell such a checkpoint from a good one before loading it. The marker therefore maps each file's
path (relative, ``/``-separated) to ``{"bytes": size}`` and, for the small files, also to
``{"blake2b": hex digest}``. Markers written before these records hold only ``{"step"}``: such a
checkpoint has no sizes recorded, and the only check possible is that its files open.

A failed write (disk full, quota, I/O error on a network file system) surfaces from deep inside
safetensors, transformers or the ``open`` of a JSON file, each in its own words and with a
traceback that names none of what a user needs to act on. :func:`write_error` turns it into one line:
the file, the reason, the free space on its file system, the bytes the file needed where known, and
the checkpoint a restart resumes from.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

__all__ = ["CHECKSUM", "CheckpointWriteError", "CheckpointDamagedError", "record_files", "verify_files",
           "write_error", "human_bytes", "fsync_path", "tensor_bytes"]

CHECKSUM = "blake2b"


class CheckpointWriteError(OSError):
    """A checkpoint file could not be written; the message is one line (see :func:`write_error`),
    ``path`` the file (or folder) being written, ``errno`` the system's error number where known."""

    def __init__(self, message: str, *, path: Path, errno: int | None):
        super().__init__(message)  # one argument: str() is the message, without an "[Errno N]" prefix
        self.path, self.errno = path, errno


class CheckpointDamagedError(ValueError):
    """No checkpoint of a run is intact enough to resume from; the message names each damaged one."""


def _checksummed(rel: str) -> bool:
    """Whether the marker records a checksum of file ``rel``, besides its size.

    Every file but the safetensors ones: those hold the weights and the optimizer state, the bulk of a
    checkpoint (gigabytes per rank), and a checksum means reading them back whole once when writing
    and again on every resume, minutes on a network file system. What a crash leaves there (a short
    file, a missing one) the size and the safetensors header catch. The rest (trainer state, JSON,
    tokenizer files) is small, and a wrong byte there (an RNG state, the data position) would resume
    silently wrong, so its checksum costs nothing and catches what the size cannot.
    """
    return not rel.endswith(".safetensors")


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """Fsync a file or a folder (a folder's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def record_files(folder: Path, *, exclude: tuple[str, ...] = ()) -> dict[str, dict]:
    """Fsync every file and folder under ``folder`` and return the marker's record of its files
    (``exclude``: relative paths left out). Sizes are taken from the opened file: on a network file
    system opening a file another node wrote is what makes its size current on this one."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_dir():
            fsync_path(path)
        elif path.is_file() and rel not in exclude:
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
                files[rel] = {"bytes": os.fstat(fh.fileno()).st_size}
            if _checksummed(rel):
                files[rel][CHECKSUM] = _digest(path)
    fsync_path(folder)
    return files


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _unreadable_safetensors(path: Path) -> str | None:
    """Why the header of safetensors file ``path`` cannot be read (it also checks that the file is as
    long as its header says), None when it can."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # SafetensorError, OSError: either way the file does not load
        return _one_line(exc)
    return None


def verify_files(folder: Path, files: dict | None, *, skip: str | None = None) -> list[str]:
    """What is wrong with the files of checkpoint ``folder`` measured against the marker's record
    ``files`` ([] when nothing is): each listed file present with its recorded size, its checksum where
    one is recorded, and every safetensors header readable. ``files`` None (a marker from before the
    records) checks only that the safetensors files open. Paths starting with ``skip`` are left out."""
    if files is None:
        files = {p.relative_to(folder).as_posix(): {} for p in folder.rglob("*.safetensors")}
    problems = []
    for rel, recorded in sorted(files.items()):
        if skip and rel.startswith(skip):
            continue
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
            continue
        size = path.stat().st_size
        if "bytes" in recorded and size != recorded["bytes"]:
            problems.append(f"{rel} has {size} bytes, its marker records {recorded['bytes']}")
        elif CHECKSUM in recorded and _digest(path) != recorded[CHECKSUM]:
            problems.append(f"{rel} does not match the {CHECKSUM} checksum its marker records")
        elif rel.endswith(".safetensors") and (why := _unreadable_safetensors(path)):
            problems.append(f"{rel} does not load ({why})")
    return problems


def tensor_bytes(tensors) -> int:
    """The bytes of a mapping's distinct tensors (tied weights count once): about what their file needs."""
    return sum({t.data_ptr(): t.numel() * t.element_size() for t in tensors.values()}.values())


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _reason(exc: BaseException) -> tuple[str, int | None]:
    """The reason of a failed write in the system's words, and its errno where one is known: an
    OSError carries it, a SafetensorError has it only in its text (``... (os error 28)``)."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None and (found := re.search(r"os error (\d+)", str(exc))):
        code = int(found.group(1))
    if code:
        return f"{os.strerror(code)} (errno {code})", code
    return _one_line(exc), None


def write_error(step: int, target: Path, exc: BaseException, *, needed: int | None, last_complete: Path | None,
                removed: bool) -> CheckpointWriteError:
    """The one-line error of checkpoint ``step``'s failed write of ``target`` (a file, or the folder a
    library writes several files into), e.g. ``cannot write checkpoint step 2: run/checkpoints/.tmp-
    step-000002/resume/rank-00000-000.safetensors: No space left on device (errno 28); 0 B free on its
    file system, about 2.3 MiB needed for this write, 4.6 MiB for a whole checkpoint (the last one's
    size); last complete checkpoint: run/checkpoints/step-000001 (a restart resumes from it); the
    partial checkpoint was removed``. Call it before the partial checkpoint is removed: the free space
    it reports is the one the write met."""
    if isinstance(exc, OSError) and exc.filename:  # the library named the file it failed on
        target = Path(exc.filename)
    reason, code = _reason(exc)
    free = _free_bytes(target)
    space = "free space on its file system unknown" if free is None else \
        f"{human_bytes(free)} free on its file system"
    if needed:
        space += f", about {human_bytes(needed)} needed for this write"
    if last_complete is not None:
        whole = sum(p.stat().st_size for p in last_complete.rglob("*") if p.is_file())
        space += f", {human_bytes(whole)} for a whole checkpoint (the last one's size)"
    last = f"{last_complete} (a restart resumes from it)" if last_complete is not None else "none yet"
    partial = "the partial checkpoint was removed" if removed else \
        "the partial checkpoint is removed when the run starts again"
    message = f"cannot write checkpoint step {step}: {target}: {reason}; {space}; last complete checkpoint: " \
              f"{last}; {partial}"
    return CheckpointWriteError(message, path=target, errno=code)
