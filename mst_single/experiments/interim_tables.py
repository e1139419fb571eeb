"""INTERIM: today's results.md, plots and report.html, until ``mst_single/experiments/tables.py`` (the
statistics and tables of the pipeline contract) is merged; ``runner.write_tables`` then uses that
module and this file is deleted.

``write_results(out_dir, **kw) -> README block`` is the interface both implement (see
``runner.write_outputs`` for the keyword arguments and ``runner.report_inputs`` for ``report``).
Tables: one per data set, mean ± sample std over the runs (folds × seeds) of each run's mean over
its test songs (``compare.summarize``).
"""
from __future__ import annotations

import re
from pathlib import Path

from mst_single.fileio import write_text


def write_results(out_dir: Path, *, experiment: dict, budget: str, command: str, results: list[dict],
                  predictions: list[dict], runs: list[dict], data: dict, seeds: list, folds: int,
                  wall_seconds: float, report: dict) -> str:
    from mst_single.compare import markdown_table, summarize
    from mst_single.report import metric_plots, training_curves_png

    out_dir = Path(out_dir)
    names = list(data)
    text = [f"# {experiment['name']}: results (budget `{budget}`)", ""]
    if experiment.get("question"):
        text += [f"**Question.** {str(experiment['question']).strip()}", ""]
    text += [f"Command: `{command}`  ",
             f"Seeds {list(seeds)}; " + (f"{folds} folds (every song a test song once per seed); " if folds else "")
             + f"baselines fitted per data set and fold. Wall time {wall_seconds / 60:.1f} min.", "",
             "Each cell: mean ± sample std over runs (folds × seeds) of a run's mean over its test songs (whole "
             "songs, see `mst_single/experiments/evaluate.py`). ↓ lower is better, ↑ higher is better; best in bold. "
             "`(eval ref: P)`: Approach 1 evaluated with references chosen by policy P (`other`: the headline; "
             "`song`: upper bound, the song's own mix; `shuffled`: control).", ""]
    tables, plots = [], []
    for d in names:
        rows = [r for r in results if r["data"] == d]
        songs = sorted({r["song"] for r in rows if r["song"] != "mean"})
        labels, metrics, stats = summarize(rows, with_experiment=False)
        table = markdown_table(labels, metrics, stats)
        tables.append(table)
        text += [f"## Data `{d}` (`{data[d]}`, {len(songs)} test songs)", "", table]
        sub = out_dir / "plots" / (d if len(names) > 1 else "")
        plots += metric_plots(rows, sub)
    curves = training_curves_png(report.get("training_curves") or {}, out_dir / "plots" / "training_curves.png")
    plots += [curves] if curves else []
    md = "\n".join(text)
    rel = [p.relative_to(out_dir).as_posix() for p in plots]
    write_text(out_dir / "results.md", md + "\n" + "\n".join(f"![{Path(p).stem}]({p})" for p in rel) + "\n")
    build_report(out_dir, experiment, command, "\n".join(tables), plots, report)
    return md.split("\n", 2)[2]


def build_report(out: Path, experiment: dict, command: str, table_md: str, plots: list[Path], report: dict) -> Path:
    """report.html: per report song, players for raw / target / each variant / baselines, a spectrogram
    of all of them, and the predicted vs true parameters."""
    import soundfile as sf

    from mst_single.report import spectrogram_png, write_report

    units = dict(report.get("specs") or [])
    songs = []
    for s in report.get("songs") or []:
        signals, sr = [], report.get("sample_rate")
        for label, f in s["audio"]:
            x, sr = sf.read(f, always_2d=True, dtype="float32")
            signals.append((label, x.T))
        stem = re.sub(r"[^\w.-]+", "_", f"{s['data']}-{s['song']}")
        spec = spectrogram_png(signals, sr, out / "spectrograms" / f"{stem}.png") if signals else None
        columns, per = ["true"], [s.get("truth") or {}]
        for key, p in s["params"].items():
            columns.append(key)
            per.append(p)
        rows = [[n, units.get(n, ""), *[d.get(n) for d in per]] for n in units]
        note = (f"First {report['seconds']:g} s of the song (16-bit FLAC, clipped at 0 dBFS for listening; "
                "metrics use the whole song in float). Parameters in units; `true` from truth.json "
                "where the console has a counterpart.")
        songs.append(dict(name=f"{s['song']} ({s['data']})", note=note, audio=s["audio"], spectrogram=spec,
                          params=dict(columns=columns, rows=rows)))
    intro = (f"{str(experiment.get('question') or '').strip()} Command: {command}. Results folder written by "
             "mst-single ablate; audio players reference files under audio/.")
    return write_report(out / "report.html", experiment["name"], intro, table_md, plots, songs)
