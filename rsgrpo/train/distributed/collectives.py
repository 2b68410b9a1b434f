"""Data-parallel plumbing for ``python -m rsgrpo train``: process group, collectives, full-state
gathers that do not depend on the ZeRO stage or the number of ranks, and the launcher command.

Why a module of its own: the trainer's loop reads the same whether it runs as 1 process or as N
ranks; everything that knows about ranks (who writes files, how to sum a metric over ranks, how to
get the full weights out of a ZeRO-3 partition) lives here.

* :func:`init_distributed` -- the process group (gloo on CPU, NCCL on GPU). Without a launcher it
  is a 1-rank group; under ``torchrun`` (or SLURM's ``srun`` + ``torchrun``) the launcher's
  ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` win.
* :func:`all_reduce` / :func:`all_gather_json` / :func:`barrier` -- no-ops for one rank.
* :func:`gathered_parameters` -- the full weights of every parameter, gathered in buckets under
  ZeRO-3 (each bucket is gathered, copied out and released before the next one, so the peak extra
  memory is one bucket, not the model).
* :func:`owned_state_tensors` / :func:`load_full_optimizer_state` -- AdamW moments (and fp32
  masters) per parameter name in full shape, each rank yielding the parameters it owns: a
  checkpoint written by N ranks at any ZeRO stage resumes on M ranks at any stage (DeepSpeed's own
  checkpoints are partitioned per rank and unpickle arbitrary objects); :func:`full_optimizer_state`
  is the whole state in one dict (every rank gets it).
* :func:`launch_command` -- the ``torch.distributed.run`` command line for ``--nproc N`` (one node)
  or a SLURM multi-node job (rendezvous on the job's first node, one launcher per node via srun);
  :func:`needs_relaunch` / :func:`relaunch_verb` -- a verb starting itself again as its ranks.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DistInfo", "info", "init_distributed", "die_with_parent", "all_reduce", "all_gather_json", "barrier",
           "gathered_parameters", "full_optimizer_state", "load_full_optimizer_state", "owned_state_tensors",
           "optimizer_step_count", "load_master_weights",
           "launch_command", "relaunch", "relaunch_verb", "needs_relaunch", "check_rank_split",
           "slurm_job_nodes", "srun_environment", "node_name", "under_launcher", "rendezvous_port", "IGNORING_USR1"]

log = logging.getLogger(__name__)

# Ports of the c10d rendezvous on a multi-node job's first node: one per job id in
# [BASE, BASE + SPAN), below Linux's ephemeral range (32768+) so no outgoing connection holds it.
RENDEZVOUS_PORT_BASE = 20000
RENDEZVOUS_PORT_SPAN = 10000


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


def init_distributed() -> DistInfo:
    """Initialise the process group for DeepSpeed (idempotent) and return this rank's place.

    Backend: NCCL when CUDA is available, gloo otherwise (DeepSpeed needs ``torch.distributed`` even
    for one process). Environment defaults (rank 0 of 1, a free local port) are set only where the
    launcher set nothing. DeepSpeed would JIT-compile a shared-memory collective kernel for its CPU
    backend (~2 minutes of C++ build on a fresh machine); gloo does every collective the trainer
    needs, so that op is marked unavailable on CPU.
    """
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
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
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


# ------------------------------------------------------------------------------------------------
# full weights and optimizer state, whatever the partitioning
# ------------------------------------------------------------------------------------------------
def _is_zero3(param: torch.nn.Parameter) -> bool:
    return hasattr(param, "ds_id")


def _numel(param: torch.nn.Parameter) -> int:
    return int(param.ds_numel) if _is_zero3(param) else param.numel()


def gathered_parameters(model: torch.nn.Module, *, bucket_numel: int = 50_000_000,
                        include_aliases: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, full tensor)`` for every parameter and persistent buffer of ``model``.

    Collective under ZeRO-3: every rank must consume the whole iterator. Parameters are gathered
    ``bucket_numel`` elements at a time with ``deepspeed.zero.GatheredParameters`` and copied out
    (CPU tensors) before the bucket is released. Without ZeRO-3 the tensors are the module's own
    (detached, not copied).

    ``include_aliases``: also yield state-dict names that alias another parameter (a tied
    ``lm_head.weight``) -- an engine that loads weights by name needs them (vLLM keeps the old
    output head otherwise).
    """
    named = list(model.named_parameters())
    by_id = {id(p): n for n, p in named}
    state = model.state_dict(keep_vars=True)
    alias_of: dict[str, list[str]] = {}
    if include_aliases:
        for key, t in state.items():
            owner = by_id.get(id(t))
            if owner is not None and owner != key:
                alias_of.setdefault(owner, []).append(key)
    buffers = [(k, b) for k, b in state.items() if id(b) not in by_id and not isinstance(b, torch.nn.Parameter)]
    zero3 = any(_is_zero3(p) for _, p in named)

    def with_aliases(items):
        for name, tensor in items:
            yield name, tensor
            for key in alias_of.get(name, ()):
                yield key, tensor

    if not zero3:
        yield from with_aliases((n, p.detach()) for n, p in named)
    else:
        import deepspeed

        bucket: list[tuple[str, torch.nn.Parameter]] = []

        def flush():
            with deepspeed.zero.GatheredParameters([p for _, p in bucket], modifier_rank=None):
                out = [(n, p.detach().to("cpu", copy=True)) for n, p in bucket]
            bucket.clear()
            return out

        size = 0
        for n, p in named:
            bucket.append((n, p))
            size += _numel(p)
            if size >= bucket_numel:
                yield from with_aliases(flush())
                size = 0
        if bucket:
            yield from with_aliases(flush())
    for k, b in buffers:
        yield k, b.detach().to("cpu", copy=zero3)


def load_master_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Set every parameter's fp32 master copy from ``weights[name]`` (any float dtype, full shape;
    read lazily, one tensor at a time). Collective under ZeRO-3."""
    from deepspeed.utils import safe_set_full_fp32_param

    for name, param in model.named_parameters():
        value = weights[name]
        shape = tuple(param.ds_shape) if _is_zero3(param) else tuple(param.shape)
        if tuple(value.shape) != shape:
            raise ValueError(f"master weight {name}: shape {tuple(value.shape)} != {shape}")
        safe_set_full_fp32_param(param, value.to(torch.float32))


_MOMENTS = ("exp_avg", "exp_avg_sq")


def _zero_stage(ds_engine) -> int:
    return int(ds_engine.zero_optimization_stage()) if hasattr(ds_engine, "zero_optimization_stage") else 0


def _inner_optimizer(ds_engine):
    """The torch optimizer that owns the moments: AdamW itself (stage 0) or the AdamW over the
    flat fp32 partitions inside DeepSpeed's ZeRO optimizer (stages 1-3)."""
    return ds_engine.optimizer if _zero_stage(ds_engine) == 0 else ds_engine.optimizer.optimizer


def _adam_step(inner_opt) -> int:
    steps = {int(float(s["step"])) for s in inner_opt.state.values() if "step" in s}
    if len(steps) > 1:
        raise RuntimeError(f"optimizer parameters disagree on the step count: {sorted(steps)}")
    return steps.pop() if steps else 0


def optimizer_step_count(ds_engine) -> int:
    """AdamW's step count (0 before the first step)."""
    return _adam_step(_inner_optimizer(ds_engine))


def owned_state_tensors(ds_engine, model: torch.nn.Module, *, rank: int, world_size: int,
                        masters: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """This rank's share of the state resume needs, as ``("exp_avg/<name>", full tensor)``,
    ``("exp_avg_sq/<name>", ...)`` and with ``masters`` ``("master/<name>", fp32 master)``: parameter
    ``i`` (``model.named_parameters()`` order) belongs to rank ``i % world_size``.

    Collective for ZeRO 1-3 and for masters (each tensor is assembled from all ranks' fragments):
    every rank walks every parameter, keeps the tensors it owns and drops the others, so no rank
    ever holds more than its share plus the one tensor being assembled.
    """
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    stage = _zero_stage(ds_engine)
    inner = _inner_optimizer(ds_engine)
    step = _adam_step(inner)
    for index, (name, param) in enumerate(model.named_parameters()):
        mine = index % world_size == rank
        for moment in _MOMENTS:
            if stage == 0:
                tensor = inner.state.get(param, {}).get(moment) if mine else None
            else:  # a collective whether or not this rank keeps it
                tensor = safe_get_full_optimizer_state(param, moment) if step > 0 else None
            if mine:
                if tensor is None:  # no step taken yet: the moments are still zero
                    shape = tuple(param.ds_shape) if _is_zero3(param) else tuple(param.shape)
                    tensor = torch.zeros(shape, dtype=torch.float32)
                yield f"{moment}/{name}", tensor.detach().to("cpu", torch.float32, copy=True)
        if masters:
            master = safe_get_full_fp32_param(param)
            if master is None:
                raise RuntimeError(f"parameter {name} has no fp32 master copy (not a bf16-mixed DeepSpeed model)")
            if mine:
                yield f"master/{name}", master.detach().to("cpu", torch.float32, copy=True)


def full_optimizer_state(ds_engine, model: torch.nn.Module) -> dict[str, Any]:
    """AdamW state as ``{"step": int, "exp_avg": {name: full tensor}, "exp_avg_sq": {...}}``.

    Collective for ZeRO stages 1-3 (DeepSpeed assembles each tensor from the partitions of all
    ranks); every rank gets the full state. Names are those of ``model.named_parameters()``.
    """
    out: dict[str, Any] = {"step": optimizer_step_count(ds_engine), **{m: {} for m in _MOMENTS}}
    for key, tensor in owned_state_tensors(ds_engine, model, rank=0, world_size=1):
        moment, name = key.split("/", 1)
        out[moment][name] = tensor
    return out


def load_full_optimizer_state(ds_engine, model: torch.nn.Module, state: Mapping[str, Any]) -> None:
    """Inverse of :func:`full_optimizer_state` for any ZeRO stage and world size (collective for 1-3).

    Raises ``ValueError`` when the parameter names or shapes do not match the model.
    """
    from deepspeed.utils import safe_set_full_optimizer_state

    stage = _zero_stage(ds_engine)
    inner = _inner_optimizer(ds_engine)
    step = int(state["step"])
    named = list(model.named_parameters())
    names = {n for n, _ in named}
    saved = set(state["exp_avg"])
    if names != saved:
        missing, extra = sorted(names - saved)[:5], sorted(saved - names)[:5]
        raise ValueError(f"optimizer state does not match the model: missing {missing}, unexpected {extra}")
    if step == 0:
        return
    if stage == 0:
        for name, p in named:
            st = inner.state[p]
            st["step"] = torch.tensor(float(step))
            for m in _MOMENTS:
                src = state[m][name]
                if tuple(src.shape) != tuple(p.shape):
                    raise ValueError(f"optimizer state of {name}: shape {tuple(src.shape)} != {tuple(p.shape)}")
                st[m] = src.to(p.device, p.dtype if p.is_floating_point() else torch.float32, copy=True)
        return
    # ZeRO 1-3: create the (lazily initialised) moments of the flat partitions, then fill them
    # parameter by parameter through DeepSpeed's fragment mapping.
    if stage == 3:  # ZeRO-3 swaps its sub-groups in and out of param_groups around each step
        flats = list(ds_engine.optimizer.fp32_partitioned_groups_flat)
    else:
        flats = [flat for group in inner.param_groups for flat in group["params"]]
    for flat in flats:
        st = inner.state[flat]
        st["step"] = torch.tensor(float(step))
        for m in _MOMENTS:
            st[m] = torch.zeros_like(flat, memory_format=torch.preserve_format)
    if stage in (1, 2):
        # point each parameter's fragment mapping at the state tensors just created (DeepSpeed does
        # this lazily at the first step otherwise)
        ds_engine.optimizer._lazy_init_hp_params_optimizer_state()
    for name, p in named:
        shape = tuple(p.ds_shape) if _is_zero3(p) else tuple(p.shape)
        for m in _MOMENTS:
            src = state[m][name]
            if tuple(src.shape) != shape:
                raise ValueError(f"optimizer state of {name}: shape {tuple(src.shape)} != {shape}")
            safe_set_full_optimizer_state(p, src.to(torch.float32), m)


# ------------------------------------------------------------------------------------------------
# launcher
# ------------------------------------------------------------------------------------------------
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
    # executor wraps it in `srun -n1`), whose CPUs the launchers' step shares.
    return ["srun", "--overlap", f"--nodes={nnodes}", f"--ntasks={nnodes}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1", *torchrun, *limits, "--nnodes", str(nnodes), "--rdzv-backend", "c10d",
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
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
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
    """Run the launcher and pass the stop signals (:data:`rsgrpo.preemption.STOP_SIGNALS`) this
    process receives on to it and its ranks; return its exit status, or
    :data:`rsgrpo.preemption.EXIT_PREEMPTED` when a stop signal came and the launch ended in failure
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
