"""plan stage: memory per GPU and GPU-hours of every job of a workflow config before anything runs
(rule and verb ``plan``); the arithmetic, pure and tested against DeepSpeed's own estimators, is
:mod:`rsgrpo.plan.capacity`. The workflow refuses a config whose jobs do not fit their GPU."""
