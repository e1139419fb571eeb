"""TEMPORARY: today's `ablate` imports its plots and report from here. Revert this commit once the runner
(branch wp-runner) calls ``mst_single.experiments.tables.write_results`` instead."""
from mst_single.experiments import report as _report
from mst_single.experiments.report import metric_plots, spectrogram_png, training_curves_png  # noqa: F401


def write_report(path, title, intro, table_md, plots, songs):
    return _report.write_report(path, title, intro, [("Results (mean ± std over seeds)", "", table_md)], plots, songs)
