"""Data-parallel plumbing for ``python -m rsgrpo train``, one module per job.

Why a package of its own: the trainer's loop reads the same whether it runs as 1 process or as N
ranks; everything that knows about ranks lives here, split by what it touches:

* :mod:`rsgrpo.train.distributed.collectives` -- the process group and this rank's place in it, and
  the few collectives the trainer needs (no-ops for one rank).
* :mod:`rsgrpo.train.distributed.zero_state` -- full weights and AdamW state out of (and back into) a
  DeepSpeed engine, whatever the ZeRO stage and the number of ranks, and the public handles on the
  DeepSpeed optimizer that the actor and checkpoints need.
* :mod:`rsgrpo.train.distributed.launch` -- starting the ranks: the ``torch.distributed.run`` (and
  SLURM ``srun``) command line, the relaunch of a verb as its ranks, and the stop signals passed on.

Callers import the module they need; this package re-exports nothing.
"""
