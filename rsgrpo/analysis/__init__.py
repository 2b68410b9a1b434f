"""analysis stage: evaluated cells -> the paper's tables and figures.

Verbs (one module each): ``cell-index`` (:mod:`~rsgrpo.analysis.cell_index`: the results index
``cells.csv`` + ``benchmarks.csv`` and its reader), ``aggregate`` (:mod:`~rsgrpo.analysis.aggregate`:
Table 2, RS-GRPO - GRPO, ours vs published), ``regime-comparison``
(:mod:`~rsgrpo.analysis.regime_comparison`: which evaluation regimes reproduce the paper's base rows),
``figures`` (:mod:`~rsgrpo.analysis.figures`) and
``plot-advantages`` (:mod:`~rsgrpo.analysis.plot_advantages`). Beside them:
:mod:`~rsgrpo.analysis.cell_files` reads a cell's own files (graded samples, pass@k, training
metrics) and :mod:`~rsgrpo.analysis.figure_data` computes the numbers the figures draw.

Throughout, a group's advantage function is its ``estimator`` (a registry name of
:data:`rsgrpo.estimators.ESTIMATORS`) and its ``method`` the config key (``methods.<key>``); the
analysis selects and orders by estimator only.
"""
