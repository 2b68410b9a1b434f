"""``python -m rsgrpo train``: one RL run (:class:`rsgrpo.train.trainer.Trainer`) from a config.

The verb starts its ranks itself (``--nproc``, or the nodes of a SLURM job, under
torch.distributed.run: :mod:`rsgrpo.train.distributed.launch`), keeps every attempt's output in the
run directory's log (:mod:`rsgrpo.train.run_log`), and copies the manifest and metrics to the
workflow's declared outputs. A stop request (SIGTERM, SIGUSR1, SIGURG) ends it with status 75
(:data:`rsgrpo.train.preemption.EXIT_PREEMPTED`) after the step in progress is checkpointed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from rsgrpo.io import atomic_path
from rsgrpo.layout import MANIFEST
from rsgrpo.train import checkpoint as ckpt
from rsgrpo.train import mismatch, preemption
from rsgrpo.train.config import load_config
from rsgrpo.train.distributed import collectives, launch
from rsgrpo.train.run_log import teed_into_run_log
from rsgrpo.train.trainer import Trainer

__all__ = ["add_arguments", "main"]


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None,
                        help="YAML config (keys = TrainConfig fields, see config/train_defaults.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (value parsed as YAML); repeatable")
    parser.add_argument("--run-dir", default=None,
                        help="run directory (overrides config run_dir); its train.log keeps every attempt's output")
    parser.add_argument("--out-manifest", default=None, help="also copy manifest.json to this path")
    parser.add_argument("--out-metrics", default=None, help="also copy metrics.csv to this path")
    parser.add_argument("--nproc", type=int, default=1,
                        help="data-parallel ranks per node (GPUs per node; CPU: gloo processes). With more "
                             "than 1, or in a SLURM job of several nodes, the command starts itself again "
                             "under torch.distributed.run")


def _copy(src: Path, dst: str) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _error(exc: Exception) -> int:
    print(f"rsgrpo train: error: {exc}", file=sys.stderr)
    return 2


def main(args) -> int:
    if args.nproc < 1:
        return _error(ValueError(f"--nproc must be >= 1 (got {args.nproc})"))
    overrides = list(args.overrides or [])
    if args.run_dir:
        overrides.append(f"run_dir={json.dumps(args.run_dir)}")
    try:
        cfg = load_config(args.config, overrides)
    except ValueError as exc:  # a user error in the config: the message says what and where
        return _error(exc)
    if collectives.under_launcher() or not cfg.run_dir:  # a rank: the verb that started it keeps the log
        return _run(args, cfg)
    with teed_into_run_log(cfg.run_dir):
        return _run(args, cfg)


def _run(args, cfg) -> int:
    if launch.needs_relaunch(args.nproc):
        try:  # before starting N processes that would all fail the same way
            launch.check_rank_split(cfg.prompts_per_step, args.nproc * launch.slurm_job_nodes())
        except ValueError as exc:
            return _error(exc)
        return launch.relaunch_verb("train", args.nproc)
    try:
        trainer = Trainer(cfg)
    except ValueError as exc:
        return _error(exc)
    try:
        trainer.run()
    except preemption.Preempted as stopped:
        if trainer.dist.is_main:
            print(f"rsgrpo train: {stopped} (run dir {trainer.run_dir}); exit status "
                  f"{preemption.EXIT_PREEMPTED}", file=sys.stderr)
        return preemption.EXIT_PREEMPTED
    except (ckpt.CheckpointWriteError, ckpt.CheckpointDamagedError, mismatch.RolloutMismatchError) as exc:
        return _error(exc)  # one line naming what to do, not a traceback
    if trainer.dist.is_main:
        if args.out_manifest:
            _copy(trainer.run_dir / MANIFEST, args.out_manifest)
        if args.out_metrics:
            _copy(trainer.metrics_log.path, args.out_metrics)
    return 0
