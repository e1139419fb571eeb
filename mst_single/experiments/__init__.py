"""Ablations (``mst-single ablate``), split by job.

- ``config``: experiment configs, budgets, data sets, and THE data settings (``DATA_KEYS``).
- ``folds``: which songs each run trains, validates and is tested on (hash split, K folds, subsets).
- ``runner``: units (variant × data × fold × seed), subprocess workers, reuse, baselines, W&B, outputs.
- ``evaluate``: whole-song evaluation of a checkpoint or a fixed setting.
- ``baselines``: identity, mean-preset and oracle, fitted until converged.
- ``records``: the columns of results.csv / predictions.csv / runs.csv and the run ids.
- ``tables`` / ``stats`` / ``collapse`` / ``report``: the statistics, tables, plots and report.
"""
