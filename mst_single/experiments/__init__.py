"""The ablation pipeline: configs, runner, evaluation, baselines, statistics, collapse metrics, tables, report."""
