"""A training run's directory as one rank sees it: the lock, the checkpoint to resume from, when the
next checkpoint is due, writing it, and the manifest at the end.

Why apart from the :class:`~rsgrpo.train.trainer.Trainer`: the step pipeline does not care how or
when its state reaches the disk, and everything here is a collective every rank joins in the same
order (the files themselves are :mod:`rsgrpo.train.checkpoint`'s).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from rsgrpo.train import checkpoint as ckpt
from rsgrpo.train.config import TrainConfig, to_dict
from rsgrpo.train.distributed import collectives

__all__ = ["RunDirectory"]

log = logging.getLogger(__name__)


class RunDirectory:
    """``path`` of a run of ``cfg`` (config hash ``config_hash``) on this rank (``dist``)."""

    def __init__(self, cfg: TrainConfig, path: Path, dist, config_hash: str):
        self.cfg, self.path, self.dist, self.hash = cfg, Path(path), dist, config_hash
        self.lock = None                        # rank 0 holds it from open() to close()
        self.newest_step: int | None = None     # the step of the newest checkpoint (resumed from or written)
        self.last_checkpoint = time.monotonic()  # when it was written (or the run began)

    def open(self) -> None:
        """Lock the directory and remove checkpoints a killed process left half-written (rank 0)."""
        if self.dist.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock = ckpt.lock_run_dir(self.path)
            for path in ckpt.clean_incomplete(self.path):
                log.info("removed incomplete checkpoint %s", path)
        collectives.barrier()

    def resume_state(self, data_hash: str):
        """``(path, state)`` of the newest intact checkpoint of this run and data; ``(None, None)``.
        Every rank verifies and loads it; a rank that sees another one than rank 0 (a network file
        system showing the ranks different files) stops the run instead of resuming from a mix."""
        path, state = ckpt.resume_state(self.path, config_hash=self.hash, data_hash=data_hash,
                                        prompts_per_step=self.cfg.prompts_per_step)
        chosen = collectives.all_gather_json(str(path) if path is not None else None)
        if len(set(chosen)) > 1:
            raise RuntimeError(f"the ranks found different checkpoints to resume from in {str(self.path)!r}: "
                               + ", ".join(f"rank {rank}: {choice}" for rank, choice in enumerate(chosen))
                               + "; check that every node sees the same run directory")
        self.newest_step = int(state["step"]) if state is not None else None
        self.last_checkpoint = time.monotonic()
        return path, state

    def due(self, done: int) -> bool:
        """Is a checkpoint due after step ``done``: every ``checkpoint_every`` steps, or once
        ``checkpoint_every_minutes`` have passed since the last one (rank 0's clock decides, so every
        rank agrees: a collective)."""
        cfg = self.cfg
        late = cfg.checkpoint_every_minutes > 0 and self.dist.is_main and \
            time.monotonic() - self.last_checkpoint >= 60 * cfg.checkpoint_every_minutes
        late = collectives.all_reduce([float(late)], op="max")[0] > 0
        return late or bool(cfg.checkpoint_every and done % cfg.checkpoint_every == 0)

    def save(self, step_done: int, actor, state: dict) -> Path | None:
        """Checkpoint ``step_done``. Every rank calls it and writes its own share of the optimizer
        state (assembling each tensor is a collective, and so is the ZeRO-3 gather of the weights);
        rank 0 writes the HF weights and the trainer ``state`` (plus the step, the optimizer step, the
        RNG and the run's identity) and renames the checkpoint into place. Returns the checkpoint path
        on rank 0, None elsewhere."""
        writer = ckpt.CheckpointWriter(self.path, step_done, rank=self.dist.rank)
        collectives.barrier()  # the temporary directory exists
        actor.write_checkpoint_files(writer, rank=self.dist.rank, world_size=self.dist.world_size,
                                     is_main=self.dist.is_main)
        collectives.barrier()  # every rank's files are written
        path = None
        if self.dist.is_main:
            path = writer.commit({
                "step": step_done, "optimizer_step": actor.optimizer_step_count(), "rng": ckpt.capture_rng(),
                **state, "config_hash": self.hash,
                "config": json.dumps(to_dict(self.cfg), sort_keys=True, default=str),
                "world_size": self.dist.world_size,
            })
            ckpt.prune(self.path, self.cfg.keep_last, self.cfg.keep_resumable)
        collectives.barrier()
        self.newest_step, self.last_checkpoint = step_done, time.monotonic()
        return path

    def finish(self, final_step: int, **extra) -> dict | None:
        """Write the manifest (rank 0), then release the lock; every rank returns together."""
        manifest = None
        try:
            if self.dist.is_main:
                manifest = ckpt.write_manifest(self.path, final_step=final_step, steps=self.cfg.steps,
                                               config_hash=self.hash, config=to_dict(self.cfg), **extra)
        finally:
            self.close()  # held until the manifest is written
        collectives.barrier()
        return manifest

    def close(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None
