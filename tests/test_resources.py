"""CPU counts follow the job's allocation, not the node: the affinity mask and SLURM's variables,
shared out among the node's ranks; the grading pool and the launcher's OMP_NUM_THREADS use them."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def node_192_threads(monkeypatch):
    """A GPU node of 192 hardware threads on which this process may run on 32."""
    monkeypatch.setattr(os, "cpu_count", lambda: 192)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)


def test_allocated_cpus_follow_the_affinity_and_slurm_and_are_shared_by_local_ranks(node_192_threads, monkeypatch):
    from rsgrpo.resources import allocated_cpus, local_ranks

    assert allocated_cpus({}) == 32
    assert allocated_cpus({"LOCAL_WORLD_SIZE": "4"}) == 8  # torchrun's ranks on this node
    assert allocated_cpus({}, ranks=4) == 8 == allocated_cpus({"LOCAL_WORLD_SIZE": "2"}, ranks=4)
    assert allocated_cpus({"SLURM_CPUS_PER_TASK": "16"}) == 16  # a mask wider than the task
    assert allocated_cpus({"SLURM_CPUS_PER_TASK": "16", "LOCAL_WORLD_SIZE": "4"}) == 4
    assert allocated_cpus({"SLURM_CPUS_PER_TASK": "64"}) == 32  # the mask is narrower
    assert allocated_cpus({"SLURM_CPUS_ON_NODE": "24"}) == 24
    assert allocated_cpus({"SLURM_JOB_CPUS_PER_NODE": "12(x2)"}) == 12
    assert allocated_cpus({"SLURM_JOB_CPUS_PER_NODE": "12(x2),8"}) == 32  # which entry is ours is not said
    assert allocated_cpus({"LOCAL_WORLD_SIZE": "64"}) == 1
    assert allocated_cpus({"SLURM_CPUS_PER_TASK": "", "LOCAL_WORLD_SIZE": "x"}) == 32
    assert local_ranks({"LOCAL_WORLD_SIZE": "8"}) == 8 and local_ranks({}) == 1
    monkeypatch.delattr(os, "sched_getaffinity")  # no affinity mask (not Linux): the CPU count
    assert allocated_cpus({}) == 192


def test_grading_workers_default_to_this_ranks_share_of_the_allocation(node_192_threads, monkeypatch):
    from rsgrpo.grading.pool import _resolve_workers

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)
    monkeypatch.delenv("SLURM_JOB_CPUS_PER_NODE", raising=False)
    assert _resolve_workers(None) == 8
    assert _resolve_workers(3) == 3 and _resolve_workers(0) == 0


def test_the_launcher_gives_each_rank_its_share_of_the_allocation_as_omp_threads(node_192_threads, monkeypatch):
    from rsgrpo.train.distributed import launch

    seen = {}
    monkeypatch.setattr(launch, "_run_forwarding_stop_signals", lambda cmd, env: seen.update(env) or 0)
    for key in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "SLURM_JOB_CPUS_PER_NODE",
                "SLURM_JOB_ID", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert launch.relaunch(4, ["train"]) == 0
    assert seen["OMP_NUM_THREADS"] == "8"  # 32 allowed CPUs / 4 ranks, not 192 / 4
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "16")
    assert launch.relaunch(4, ["train"]) == 0 and seen["OMP_NUM_THREADS"] == "4"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a user's setting wins
    assert launch.relaunch(4, ["train"]) == 0 and seen["OMP_NUM_THREADS"] == "3"
