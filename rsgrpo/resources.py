"""How many CPUs this process may use: the job's allocation, not the machine's size.

Why a module of its own: the grading pool (a worker process per CPU) and the launcher (the
``OMP_NUM_THREADS`` of each rank) both size themselves by it, and both used to ask
``os.cpu_count()``, which counts every hardware thread of the node. A GPU node has ~192 of them while
a SLURM job on it is typically given 32 CPUs; every rank then started hundreds of processes or
threads on the job's few cores. Standard library only (core: the grading package imports it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

__all__ = ["allocated_cpus", "job_cpus_per_node", "local_ranks", "visible_cpus"]


def visible_cpus() -> int:
    """CPUs this process may run on: its affinity mask (which a SLURM cgroup or ``taskset`` narrows;
    the kernel also narrows it to a cgroup's cpuset), ``os.cpu_count()`` where there is no mask."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def job_cpus_per_node(value: str | None) -> int | None:
    """``SLURM_JOB_CPUS_PER_NODE`` when every node of the job has the same count (``"32"``,
    ``"32(x2)"``); None for a mixed list (``"72(x2),36"``: which entry is this node's is not said)."""
    if not value:
        return None
    counts = {m.group(1) for m in re.finditer(r"(\d+)(?:\(x\d+\))?", value)}
    return _positive_int(counts.pop()) if len(counts) == 1 else None


def local_ranks(env: Mapping[str, str] | None = None) -> int:
    """Ranks of this launch on this node: ``LOCAL_WORLD_SIZE`` (torchrun sets it in every rank), 1
    elsewhere (a single process, or the launcher itself, which passes its ``--nproc`` instead)."""
    env = os.environ if env is None else env
    return _positive_int(env.get("LOCAL_WORLD_SIZE")) or 1


def allocated_cpus(env: Mapping[str, str] | None = None, *, ranks: int | None = None) -> int:
    """CPUs for one rank: the CPUs this process may use on this node, shared out among the node's
    ``ranks`` (default :func:`local_ranks`), at least 1.

    The CPUs this process may use are the fewest of:

    * its affinity mask (:func:`visible_cpus`): what a SLURM cgroup, ``taskset`` or a container grants;
    * ``SLURM_CPUS_PER_TASK`` (set when the job or step asks ``--cpus-per-task``): the CPUs of the
      task this process belongs to. The ranks of a launch are not SLURM tasks (torchrun starts them
      as children of one task per node), so the task's CPUs are what the node's ranks share;
    * ``SLURM_CPUS_ON_NODE``: the CPUs of the job step (or batch step) on this node;
    * ``SLURM_JOB_CPUS_PER_NODE`` when it names one count for all nodes (it is the job's, per node).

    The SLURM variables cap a mask that is wider than the allocation (a cluster that does not bind
    tasks to their cores); without SLURM the mask alone counts.
    """
    env = os.environ if env is None else env
    caps = [visible_cpus(), _positive_int(env.get("SLURM_CPUS_PER_TASK")),
            _positive_int(env.get("SLURM_CPUS_ON_NODE")),
            job_cpus_per_node(env.get("SLURM_JOB_CPUS_PER_NODE"))]
    mine = min(c for c in caps if c is not None)
    share = local_ranks(env) if ranks is None else max(1, int(ranks))
    return max(1, mine // share)
