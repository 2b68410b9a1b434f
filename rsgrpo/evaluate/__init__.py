"""evaluate stage: a checkpoint's completions on a benchmark (rule and verb ``sample``), graded with
math-verify and counted as unbiased pass@k with bootstrap CIs (rule and verb ``score``; the pure
arithmetic in :mod:`rsgrpo.evaluate.passk`)."""
