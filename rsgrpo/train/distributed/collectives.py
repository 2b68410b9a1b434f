"""The process group and the collectives of data-parallel training.

Why a module of its own: the trainer's loop reads the same whether it runs as 1 process or as N
ranks; who this rank is, and how to sum a metric or gather a list over ranks, is asked here, and
every collective is a no-op for one rank (no process group needed beyond DeepSpeed's own).

* :func:`init_distributed` -- the process group (gloo on CPU, NCCL on GPU). Without a launcher it
  is a 1-rank group; under ``torchrun`` (or SLURM's ``srun`` + ``torchrun``) the launcher's
  ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` win.
* :func:`all_reduce` / :func:`all_gather_json` / :func:`barrier` -- no-ops for one rank.
* :func:`under_launcher` / :func:`die_with_parent` / :func:`node_name` -- what a rank knows about
  the launch it belongs to (:mod:`rsgrpo.train.distributed.launch` starts it).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DistInfo", "info", "init_distributed", "die_with_parent", "all_reduce", "all_gather_json", "barrier",
           "node_name", "under_launcher"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def info() -> DistInfo:
    """This process's place in the process group (rank 0 of 1 before/without initialisation)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def node_name(env: Mapping[str, str] | None = None) -> str:
    """This machine's name: SLURM's node name inside a job step (``SLURMD_NODENAME``; several nodes
    of a test cluster can share a host), its host name elsewhere."""
    env = os.environ if env is None else env
    return env.get("SLURMD_NODENAME") or socket.gethostname()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def under_launcher(env: Mapping[str, str] | None = None) -> bool:
    """True inside a rank started by torchrun (it sets TORCHELASTIC_RUN_ID) or another launcher of
    several ranks (WORLD_SIZE > 1). A leftover ``RANK=0 WORLD_SIZE=1 LOCAL_RANK=0`` -- what DeepSpeed
    leaves in the environment of any process that initialised it, and so in its children -- is not."""
    env = os.environ if env is None else env
    return "TORCHELASTIC_RUN_ID" in env or int(env.get("WORLD_SIZE", "1") or 1) > 1


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (no-op elsewhere).

    torchrun starts each rank in a session of its own, so a SIGKILL of the launcher (OOM killer,
    ``kill -9``, a killed ``srun`` step) would leave the ranks training on, orphaned, while a
    restarted job trains in the same run directory. Called by every launched rank, and for the
    launcher by :func:`relaunch`.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except OSError:  # pragma: no cover - no glibc
        return
    if os.getppid() == 1:  # the parent died before the call: follow it now
        os.kill(os.getpid(), signal.SIGKILL)


def init_distributed(timeout_minutes: float | None = None) -> DistInfo:
    """Initialise the process group for DeepSpeed (idempotent) and return this rank's place.

    Backend: NCCL when CUDA is available, gloo otherwise (DeepSpeed needs ``torch.distributed`` even
    for one process). Environment defaults (rank 0 of 1, a free local port) are set only where the
    launcher set nothing. DeepSpeed would JIT-compile a shared-memory collective kernel for its CPU
    backend (minutes of C++ build on a fresh machine); gloo does every collective the trainer
    needs, so that op is marked unavailable on CPU.

    ``timeout_minutes``: how long a collective waits for the other ranks before it fails the job
    (the trainer passes ``collective_timeout_minutes``). DeepSpeed's default is 10 minutes, shorter
    than a rank waits while the others generate and grade a long step or rank 0 writes a large
    checkpoint. None keeps DeepSpeed's default (``DEEPSPEED_TIMEOUT``, 10 minutes); a group that is
    already initialised gets the new timeout set on it.
    """
    import datetime

    import deepspeed
    import torch.distributed as dist

    if under_launcher():
        die_with_parent()
    defaults = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    added = [k for k in defaults if k not in os.environ]
    for k in added:
        os.environ[k] = defaults[k]
    for name in ("DeepSpeed", "deepspeed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
    except Exception:  # pragma: no cover - logger location differs across versions
        pass
    cuda = torch.cuda.is_available()
    if not cuda:
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    else:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    timeout = None if timeout_minutes is None else datetime.timedelta(minutes=float(timeout_minutes))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo",
                                   **({} if timeout is None else {"timeout": timeout}))
    elif timeout is not None:
        dist.distributed_c10d._set_pg_timeout(timeout)
    # The rendezvous address we chose is in use by this process now: do not hand it to children
    # (a `train` subprocess of a test or a benchmark would otherwise try to bind the same port).
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        if k in added:
            os.environ.pop(k, None)
    return info()


# ------------------------------------------------------------------------------------------------
# collectives (no-ops for one rank)
# ------------------------------------------------------------------------------------------------
def _multi() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _device() -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(values: Sequence[float], op: str = "sum") -> list[float]:
    """Element-wise sum / max / min of ``values`` over all ranks (float64)."""
    if not _multi():
        return [float(v) for v in values]
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=ops[op])
    return t.cpu().tolist()


def all_gather_json(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` for JSON-serialisable ``obj``.

    Sent as UTF-8 JSON bytes in tensors rather than with ``all_gather_object``, which unpickles
    what it receives.
    """
    if not _multi():
        return [obj]
    import torch.distributed as dist

    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=_device())
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64, device=_device()) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64, device=_device()))
    longest = int(max(int(n) for n in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=_device())
    padded[: data.numel()] = data
    chunks = [torch.zeros(longest, dtype=torch.uint8, device=_device()) for _ in range(world)]
    dist.all_gather(chunks, padded)
    return [json.loads(bytes(c[: int(n)].cpu().tolist()).decode()) for c, n in zip(chunks, sizes)]


def barrier() -> None:
    if _multi():
        import torch.distributed as dist

        dist.barrier()

