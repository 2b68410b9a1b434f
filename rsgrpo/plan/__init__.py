"""plan stage: memory per GPU and GPU-hours of every job of a workflow config before anything runs
(rule and verb ``plan``); the arithmetic, pure and tested against DeepSpeed's own estimators, is the
core module :mod:`rsgrpo.capacity`, which the trainer also uses to size its vLLM engine. The workflow
refuses a config whose jobs do not fit their GPU."""
