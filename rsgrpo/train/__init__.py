"""train stage: one RL run of a cell (rule ``train``, verb :mod:`rsgrpo.train.train`).

The loop is :class:`rsgrpo.train.trainer.Trainer`, a pipeline of stages over one
:class:`rsgrpo.train.rollout.Rollout`: engines (:mod:`~rsgrpo.train.engines`) generate, rewards
(:mod:`~rsgrpo.train.rewards`, a registry) score, the estimators of :mod:`rsgrpo.estimators` give
advantages, the actor (:mod:`~rsgrpo.train.actor`, DeepSpeed; loss in :mod:`~rsgrpo.train.loss`)
updates, metrics and sinks record. Checkpoints, preemption, the run log and the distributed plumbing
(:mod:`~rsgrpo.train.distributed`) make a run resumable on any rank count.
"""
