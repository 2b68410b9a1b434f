"""Starting the ranks of a data-parallel verb: one node, or a SLURM job of several.

Why a module of its own: a verb asked for ``--nproc N`` (or running in a multi-node SLURM job)
starts itself again as its ranks; what that takes -- the launcher's command line, the rendezvous,
the environment ``srun`` must see, and the stop signals passed on to the ranks -- is kept apart from
what the ranks do once they run (:mod:`rsgrpo.train.distributed.collectives`).

* :func:`launch_command` -- the ``torch.distributed.run`` command line for ``--nproc N`` (one node)
  or a SLURM multi-node job (rendezvous on the job's first node, one launcher per node via srun);
  :func:`needs_relaunch` / :func:`relaunch_verb` -- a verb starting itself again as its ranks.
* :func:`check_rank_split` -- the batch divides over the ranks (checked before the launch and by
  every rank).
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import zlib
from collections.abc import Mapping, Sequence

from rsgrpo.resources import allocated_cpus, job_cpus_per_node
from rsgrpo.train.distributed.collectives import die_with_parent, under_launcher

__all__ = ["launch_command", "relaunch", "relaunch_verb", "needs_relaunch", "check_rank_split",
           "slurm_job_nodes", "srun_environment", "rendezvous_port", "IGNORING_USR1"]

log = logging.getLogger(__name__)


# Ports of the c10d rendezvous on a multi-node job's first node: one per job id in
# [BASE, BASE + SPAN), below Linux's ephemeral range (32768+) so no outgoing connection holds it.
RENDEZVOUS_PORT_BASE = 20000
RENDEZVOUS_PORT_SPAN = 10000


@functools.cache
def _scontrol_show(kind: str, name: str) -> dict[str, str]:
    """``scontrol show <kind> <name> --oneliner`` as ``{key: value}`` ({} without scontrol, or for an
    entity it does not know). Cached: a launch asks for the same job several times."""
    if not shutil.which("scontrol"):
        return {}
    out = subprocess.run(["scontrol", "show", kind, name, "--oneliner"], capture_output=True, text=True, timeout=60)
    return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


def _scontrol_job(env: Mapping[str, str]) -> dict[str, str]:
    """``scontrol show job $SLURM_JOB_ID`` ({} outside a job)."""
    job = env.get("SLURM_JOB_ID")
    return _scontrol_show("job", job) if job else {}


def slurm_job_nodes(env: Mapping[str, str] | None = None) -> int:
    """Nodes of the surrounding SLURM job (1 outside SLURM). The job's count, not the step's: the
    train command usually runs inside a one-node step of a larger job, whose variables describe the
    step (and Snakemake's jobstep executor strips the job's but ``SLURM_JOB_ID``), so ``scontrol``
    tells first; the variables are the fallback without it."""
    env = os.environ if env is None else env
    count = _scontrol_job(env).get("NumNodes", "").split("-")[0]  # a step's own variables say 1
    return int(count or env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)


def _slurm_head_node(env: Mapping[str, str]) -> str:
    """Address of the job's first node: its ``NodeAddr`` (``scontrol show node``; SLURM defaults it to
    the node name, and a cluster whose node names do not resolve sets it), from the first name of the
    job's node list (``scontrol show hostnames`` expands ``n[01-04]``)."""
    nodelist = _scontrol_job(env).get("NodeList") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise RuntimeError("a SLURM job of several nodes, but SLURM_JOB_NODELIST is not set")
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                         check=True)
    first = out.stdout.split()[0]
    return _scontrol_show("node", first).get("NodeAddr") or first


def launch_command(nproc: int, argv: Sequence[str], env: Mapping[str, str] | None = None, *,
                   head_node: str | None = None, python: str | None = None,
                   entry: Sequence[str] = ("-m", "rsgrpo")) -> list[str]:
    """The command that runs ``python <entry> <argv>`` (``python -m rsgrpo train ...``) as ``nproc``
    ranks per node.

    One node (no SLURM job, or a job of one node): ``torch.distributed.run --standalone``.
    A SLURM job of more nodes (``SLURM_JOB_NUM_NODES``): ``srun`` starts one launcher per node
    (``--ntasks-per-node=1``: the job itself declares no tasks), and the launchers meet at a c10d
    rendezvous on the job's first node (``head_node``, looked up with ``scontrol`` when not given),
    keyed by the job id. ``--max-restarts 0``: a failing rank fails the whole launch (torchrun stops
    the other ranks), so the job fails instead of hanging and Snakemake's retry resumes it.
    """
    env = os.environ if env is None else env
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"--nproc must be an integer >= 1, got {nproc!r}")
    python = python or sys.executable
    nnodes = slurm_job_nodes(env)
    torchrun = [*IGNORING_USR1, python, "-m", "torch.distributed.run"]
    limits = ["--max-restarts", "0", "--nproc-per-node", str(nproc)]
    tail = [*entry, *argv]
    if nnodes <= 1:
        return [*torchrun, "--standalone", *limits, *tail]
    head = head_node or _slurm_head_node(env)
    job = env.get("SLURM_JOB_ID", "rsgrpo")
    # --overlap: the train command itself may run inside a one-task step (Snakemake's jobstep
    # executor wraps it in `srun -n1`), whose CPUs the launchers' step shares. --cpus-per-task: each
    # node's one launcher task gets the node's CPUs of the job (srun does not inherit the job's
    # --cpus-per-task, and where SLURM binds tasks to cores every rank would share one core).
    cpus = job_cpus_per_node(env.get("SLURM_JOB_CPUS_PER_NODE"))
    return ["srun", "--overlap", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1",
            *([f"--cpus-per-task={cpus}"] if cpus else []), "--kill-on-bad-exit=1", *torchrun, *limits,
            "--nnodes", str(nnodes), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{head}:{rendezvous_port(job)}", "--rdzv-id", str(job), *tail]


def rendezvous_port(job_id: str) -> int:
    """The c10d rendezvous port of SLURM job ``job_id``, the same on every node of the job.

    A fixed port is not enough: two jobs whose first node is the same node (partial nodes, or test
    clusters whose nodes share one host) would meet at one port. torch.distributed.run then does not
    fail; the second job's launchers fall back to being clients of the first job's store (keyed by
    job id, so the ranks still pair up), and the second job dies when the first one ends and takes
    its store along. Consecutive job ids get distinct ports, so two jobs share one only when their
    ids differ by a multiple of the span while both run on one head node.
    """
    key = int(job_id) if job_id.isdigit() else zlib.crc32(job_id.encode())
    return RENDEZVOUS_PORT_BASE + key % RENDEZVOUS_PORT_SPAN


# Every torch.distributed.run starts through this: it runs its arguments with SIGUSR1 ignored (an
# ignored signal stays ignored across exec). torch.distributed.run has no handler for SIGUSR1, whose
# default action would end the launch before the ranks checkpoint, and it gets the signal from the
# launcher's forwarding or, on every node, from SLURM itself (every process of a step gets a job's
# --signal). The ranks install their own handler.
IGNORING_USR1 = ("bash", "-c", 'trap "" USR1; exec "$@"', "rsgrpo-launcher")


def relaunch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``launch_command(nproc, argv)`` and return its exit status (the caller's).

    The ranks run the same entry point as this process (``rsgrpo/__main__.py``, or a wrapper script).
    """
    script = sys.argv[0] if sys.argv and os.path.isfile(sys.argv[0]) else None
    cmd = launch_command(nproc, argv, entry=[script] if script else ("-m", "rsgrpo"))
    log.info("launching %d rank(s) per node: %s", nproc, " ".join(shlex.quote(c) for c in cmd))
    env = srun_environment(os.environ) if cmd[0] == "srun" else dict(os.environ)
    # each rank's share of the CPUs this job may use on the node, not of the node's hardware threads
    # (read from this process's own environment: srun's has the step's SLURM variables stripped)
    env.setdefault("OMP_NUM_THREADS", str(allocated_cpus(os.environ, ranks=nproc)))
    return _run_forwarding_stop_signals(cmd, env)


# What srun needs to find the job's allocation; kept when the rest of SLURM_* is dropped.
_SLURM_IDENTITY = frozenset({"SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CLUSTER_NAME", "SLURM_CONF",
                             "SLURM_SUBMIT_DIR", "SLURM_SUBMIT_HOST"})


def srun_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` for the launchers' ``srun``: without the variables of the step this command runs in.

    Inside a step (Snakemake's jobstep executor runs the train command under ``srun -n1``) the
    ``SLURM_*`` variables describe that step, one node and one task, and srun takes them as its own
    limits ("Only allocated 1 nodes asked for 2"). With only the job's identity left, srun asks the
    controller for the job's allocation, as the jobstep executor's own srun does; ``SRUN_*`` and
    ``SBATCH_*`` defaults go too.
    """
    return {k: v for k, v in env.items()
            if not (k.startswith(("SRUN_", "SBATCH_")) or (k.startswith("SLURM_") and k not in _SLURM_IDENTITY))}


def _descendants(pid: int) -> list[int]:
    """The process ids below ``pid`` (Linux ``/proc/<pid>/task/<tid>/children``; [] where unreadable)."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as fh:
                    children = [int(c) for c in fh.read().split()]
            except OSError:
                continue
            out.extend(children)
            todo.extend(children)
    return out


def _run_forwarding_stop_signals(cmd: Sequence[str], env: Mapping[str, str]) -> int:
    """Run the launcher and pass the stop signals (:data:`rsgrpo.train.preemption.STOP_SIGNALS`) this
    process receives on to it and its ranks; return its exit status, or
    :data:`rsgrpo.train.preemption.EXIT_PREEMPTED` when a stop signal came and the launch ended in failure
    (torch.distributed.run does not pass the ranks' own status through).

    In a job of several nodes the launcher is ``srun``, which passes the signals on to the tasks of
    its step on every node. Every torch.distributed.run runs under :data:`IGNORING_USR1`."""
    from rsgrpo.train.preemption import EXIT_PREEMPTED, STOP_SIGNALS

    proc = subprocess.Popen(cmd, env=dict(env), preexec_fn=die_with_parent)
    received: list[int] = []

    def forward(signum, _frame):
        # to the launcher and its ranks (each in a session of its own, so no process group holds them)
        received.append(signum)
        for pid in [proc.pid, *_descendants(proc.pid)]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        status = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status != 0 and any(sig in STOP_SIGNALS for sig in received):
        log.warning("launch stopped on %s with status %d", signal.Signals(received[0]).name, status)
        return EXIT_PREEMPTED
    return status


def needs_relaunch(nproc: int, env: Mapping[str, str] | None = None) -> bool:
    """True when a verb asked for ``nproc`` ranks per node (or running in a SLURM job of several
    nodes) is not yet one of those ranks, i.e. must start them."""
    return not under_launcher(env) and (nproc > 1 or slurm_job_nodes(env) > 1)


def check_rank_split(prompts_per_step: int, ranks: int) -> None:
    """Each rank takes an equal block of every step's prompts: refuse a batch that does not divide
    (checked by the launcher before it starts ranks, and by every rank)."""
    if prompts_per_step % ranks:
        raise ValueError(f"key 'prompts_per_step': {prompts_per_step} prompts cannot be split evenly "
                         f"over {ranks} ranks; use a multiple of the rank count")


def _argv_without(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` and ``flag=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def relaunch_verb(verb: str, nproc: int, argv: Sequence[str] | None = None) -> int:
    """Run this process's command line (``python -m rsgrpo <verb> ...``, default ``sys.argv``) again
    as ``nproc`` ranks per node, without its ``--nproc``; return the launch's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] != verb:  # called as `python -m rsgrpo <verb> ...`: argv[0] is the verb
        argv = [verb, *argv]
    return relaunch(nproc, _argv_without(argv, "--nproc"))
