"""bandit stage: the paper's 100-armed bandit (Fig. 3), independent of LLMs: the pure simulation in
:mod:`rsgrpo.bandit.simulation`, its CSV and figure by the verb :mod:`rsgrpo.bandit.bandit`."""
