"""Plots and the HTML report of an ablation: paired differences, predicted vs oracle parameters, metric
plots, training curves, spectrograms, audio players (``tables.write_results`` calls these).

Everything is written atomically (``mst_single.fileio``); the HTML references audio and images by
paths relative to itself, so a results folder can be moved or served as it is.
"""
from __future__ import annotations

import csv
import html
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mst_single.fileio import atomic_path, write_text


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on CI/servers
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------------------------- plots
def safe(name: str) -> str:
    """``name`` usable as a file name."""
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in str(name))


def metric_plots(rows: list[dict], out_dir: Path, tag: str = "", metrics=None) -> list[Path]:
    """One PNG per metric (``metric_<name>[_<tag>].png``; all, or ``metrics``): a box of the seed means
    for every condition: how much a result moves from seed to seed.

    ``rows`` are one data set's results.csv rows; each point is one seed's mean over all its test songs
    (``stats.seed_means``; a single point for a baseline).
    """
    from mst_single.experiments import stats as S
    from mst_single.experiments.tables import metric_order
    from mst_single.metrics import HIGHER_IS_BETTER, METRIC_UNITS

    plt = _plt()
    means = S.seed_means([r for r in rows if not r["metric"].startswith("param_err/")])
    conds = S.conditions(rows)
    paths = []
    for metric in metrics or metric_order({m for _, m in means}):
        if not any(m == metric for _, m in means):
            continue
        labels = [S.label(c) for c in conds if (c, metric) in means]
        data = [list(means[(c, metric)].values()) for c in conds if (c, metric) in means]
        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels) + 1.5), 3.2))
        finite = [[v for v in vals if math.isfinite(v)] or [float("nan")] for vals in data]
        ax.boxplot(finite, widths=0.5)
        for i, vals in enumerate(finite, start=1):
            ax.scatter(np.full(len(vals), i), vals, s=14, zorder=3, color="C1")
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=25, ha="right", fontsize=8)
        unit = METRIC_UNITS.get(metric, "")
        better = "higher" if metric in HIGHER_IS_BETTER else "lower"
        ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
        ax.set_title(f"{tag + ': ' if tag else ''}{metric}: {better} is better (points: seeds)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        paths.append(_save(fig, Path(out_dir) / f"metric_{safe(metric)}{'_' + safe(tag) if tag else ''}.png"))
    return paths


def paired_png(comparisons: list, metric: str, path: Path, tag: str = "") -> Path | None:
    """Per-song paired differences of ``metric`` (``stats.Paired``): one row per comparison, a dot per
    song, the mean with its 95 % CI as a bar, the tie band shaded. None without comparisons."""
    from mst_single.experiments.stats import label

    rows = [p for p in comparisons if p.metric == metric]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(rows) + 1.4))
    for i, p in enumerate(rows):
        y = len(rows) - 1 - i
        jitter = np.random.default_rng(i).uniform(-0.15, 0.15, p.n)
        ax.scatter(p.diffs, y + jitter, s=10, alpha=0.6, color="C0", zorder=2)
        err = [[p.mean - p.ci[0]], [p.ci[1] - p.mean]] if np.isfinite(p.ci).all() else None  # one song: no interval
        ax.errorbar([p.mean], [y], xerr=err, fmt="D", color="C3", ms=5, capsize=4, zorder=3)
    ax.axvline(0, color="k", lw=0.8)
    if rows[0].tol > 0:
        ax.axvspan(-rows[0].tol, rows[0].tol, color="0.85", zorder=0, label=f"tie band ±{rows[0].tol:g}")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(range(len(rows)), [f"{label(p.a)} vs {label(p.b)}" for p in rows][::-1], fontsize=7)
    ax.set_xlabel(f"Δ {metric} = A − B per song (dots), mean and 95 % CI (red)", fontsize=8)
    ax.set_title(f"{tag + ': ' if tag else ''}paired differences per test song", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def params_scatter_png(prediction_rows: list[dict], path: Path, tag: str = "", max_params: int = 6,
                       max_conditions: int = 4) -> Path | None:
    """Predicted vs oracle value ([0, 1]) of the parameters whose oracle values vary most across songs,
    for each variant judged by ``collapse`` (points: songs × seeds). None without oracle predictions."""
    from mst_single.experiments import collapse as C
    from mst_single.experiments.stats import NONE, label

    sets = [v for v in C.settings(prediction_rows).values()]
    if not sets or ("oracle", NONE) not in sets[0]:
        return None
    conds = sets[0]
    oracle = C._merged(conds[("oracle", NONE)])
    params = list(dict.fromkeys(p for v in oracle.values() for p in v))
    songs = sorted(oracle)
    spread = C._matrix(oracle, songs, params).std(axis=0)
    shown = [params[i] for i in np.argsort(-spread)[:max_params] if spread[i] > 0]
    judged = [(v, p) for v in dict.fromkeys(v for v, _ in conds) if v != "oracle"
              for p in [next((p for p in C.OWN_REFERENCE if (v, p) in conds), None)] if p][:max_conditions]
    if not shown or not judged:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(judged), len(shown), figsize=(2.1 * len(shown), 2.1 * len(judged)), squeeze=False)
    for i, cond in enumerate(judged):
        for j, param in enumerate(shown):
            ax = axes[i][j]
            xs, ys = [], []
            for per_song in conds[cond].values():
                for song, vals in per_song.items():
                    if song in oracle and param in vals and param in oracle[song]:
                        xs.append(oracle[song][param])
                        ys.append(vals[param])
            ax.plot([0, 1], [0, 1], color="0.6", lw=0.8)
            ax.scatter(xs, ys, s=8, alpha=0.6)
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(param, fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{label(cond)}\npredicted", fontsize=7)
            if i == len(judged) - 1:
                ax.set_xlabel("oracle", fontsize=7)
    fig.suptitle(f"{tag + ': ' if tag else ''}predicted vs oracle setting per test song ([0, 1]; diagonal = oracle)",
                 fontsize=9)
    return _save(fig, path)


def read_metrics_csv(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Lightning CSV-logger ``metrics.csv`` -> {column: (steps, values)} for every numeric column."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            step = r.get("step")
            if step in (None, ""):
                continue
            for k, v in r.items():
                if k in ("step", "epoch") or v in ("", None):
                    continue
                try:
                    value = float(v)
                except ValueError:
                    continue
                xs, ys = curves.setdefault(k, ([], []))
                xs.append(float(step))
                ys.append(value)
    return curves


def pick_curves(curves: dict) -> list[str]:
    """The loss curves worth plotting: train/val loss and MR-STFT terms (step-level first)."""
    wanted = []
    for key in curves:
        k = key.lower()
        if ("loss" in k or "mrstft" in k) and (k.startswith("train") or k.startswith("val")) and "epoch" not in k:
            wanted.append(key)
    if not wanted:
        wanted = [k for k in curves if "loss" in k.lower()]
    return sorted(wanted)


def training_curves_png(runs, path: Path) -> Path | None:
    """Training curves of several runs on one figure, one panel per quantity.

    ``runs``: {label: metrics.csv} or [(label, metrics.csv)]; runs sharing a label (e.g. the seeds and
    folds of a variant) share a colour and one legend entry. Missing files are skipped.
    """
    plt = _plt()
    pairs = list(runs.items()) if isinstance(runs, dict) else list(runs)
    loaded = [(lab, read_metrics_csv(p)) for lab, p in pairs if Path(p).exists()]
    keys = sorted({k for _, c in loaded for k in pick_curves(c)})
    if not keys:
        return None
    colours = {lab: f"C{i % 10}" for i, lab in enumerate(dict.fromkeys(lab for lab, _ in loaded))}
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        shown = set()
        for lab, curves in loaded:
            if key in curves:
                xs, ys = curves[key]
                ax.plot(xs, ys, label=None if lab in shown else lab, color=colours[lab],
                        marker="o" if len(xs) < 15 else None, ms=3, lw=1, alpha=0.8)
                shown.add(lab)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def spectrogram_png(signals: Sequence[tuple[str, np.ndarray]], sample_rate: int, path: Path,
                    n_fft: int = 1024) -> Path:
    """Stacked log-magnitude spectrograms (dB, channels summed) of labelled (C, T) signals."""
    plt = _plt()
    fig, axes = plt.subplots(len(signals), 1, figsize=(7, 1.5 * len(signals) + 0.4), squeeze=False, sharex=True)
    hop = n_fft // 4
    window = np.hanning(n_fft)
    for ax, (label, x) in zip(axes[:, 0], signals):
        mono = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1]).sum(0)
        if mono.size < n_fft:
            mono = np.pad(mono, (0, n_fft - mono.size))
        frames = np.lib.stride_tricks.sliding_window_view(mono, n_fft)[::hop] * window
        db = 20 * np.log10(np.abs(np.fft.rfft(frames, axis=-1)).T + 1e-6)
        seconds = mono.size / sample_rate
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=db.max() - 80, vmax=db.max(),
                  extent=(0, seconds, 0, sample_rate / 2000))
        ax.set_ylabel("kHz", fontsize=7)
        ax.set_title(label, fontsize=8, loc="left")
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("s", fontsize=7)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------- HTML
_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.players{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.6em}
.players figure{margin:0}.players figcaption{font-size:.85em}audio{width:100%}
img{max-width:100%}section.song{border-top:2px solid #ddd;margin-top:2em}code{background:#f3f3f3}"""


def markdown_table_to_html(md: str) -> str:
    """The pipe tables written by ``tables.markdown_table`` (and the other tables there) as an HTML table."""
    lines = [ln.strip() for ln in md.strip().splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return ""

    def cells(line):
        return [c.strip() for c in line.strip("|").split("|")]

    def cell_html(c, tag):
        bold = c.startswith("**") and c.endswith("**")
        text = html.escape(c.strip("*"))
        cls = ' class="num"' if tag == "td" and any(ch.isdigit() for ch in c[:3]) else ""
        return f"<{tag}{cls}>{'<b>' + text + '</b>' if bold else text}</{tag}>"

    out = ["<table>", "<tr>" + "".join(cell_html(c, "th") for c in cells(lines[0])) + "</tr>"]
    for line in lines[2:]:
        out.append("<tr>" + "".join(cell_html(c, "td") for c in cells(line)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def params_table_html(params: dict) -> str:
    """``params``: {"columns": [labels], "rows": [[name, unit, value|None, ...]]} -> HTML table."""
    if not params or not params.get("rows"):
        return ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ["parameter", "unit", *params["columns"]])
    body = []
    for name, unit, *vals in params["rows"]:
        tds = "".join(
            f'<td class="num">{"" if v is None else html.escape(f"{v:.3g}" if isinstance(v, float) else str(v))}</td>'
            for v in vals)
        body.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(unit or '')}</td>{tds}</tr>")
    return f"<table><tr>{head}</tr>\n" + "\n".join(body) + "</table>"


def write_report(path: Path, title: str, intro: str, sections: Sequence[tuple[str, str, str]],
                 plots: Sequence[Path], songs: Sequence[dict]) -> Path:
    """Write the HTML report.

    Args:
        path: the ``report.html`` to write; every other path is made relative to its folder.
        title: page title (the experiment name).
        intro: a short paragraph of plain text (question, command).
        sections: (heading, note in plain text, markdown table) shown in order (the paired statistics,
            the collapse metrics, the mean ± std table, per data set); empty tables are skipped.
        plots: PNG files shown under the tables.
        songs: one dict per report song (:func:`song_sections`): ``name``, ``note`` (text),
            ``audio`` [(label, file)], ``spectrogram`` (PNG file or None), ``params`` (see
            :func:`params_table_html`, or None).
    """
    path = Path(path)
    base = path.parent

    def rel(p):  # relative to the report (files under the results folder move with it)
        return html.escape(Path(os.path.relpath(Path(p).resolve(), base.resolve())).as_posix(), quote=True)

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>"]
    for heading, note, table_md in sections:
        if table_md:
            parts += [f"<h2>{html.escape(heading)}</h2>"] + ([f"<p>{html.escape(note)}</p>"] if note else [])
            parts.append(markdown_table_to_html(table_md))
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f"<img src='{rel(p)}' alt='{html.escape(Path(p).stem)}'>" for p in plots]
    if songs:
        parts.append("<h2>Test songs</h2>")
    for song in songs:
        parts.append(f"<section class='song'><h3>{html.escape(song['name'])}</h3>")
        if song.get("note"):
            parts.append(f"<p>{html.escape(song['note'])}</p>")
        parts.append("<div class='players'>")
        for label, f in song.get("audio", []):
            parts.append(f"<figure><figcaption>{html.escape(label)}</figcaption>"
                         f"<audio controls preload='none' src='{rel(f)}'></audio></figure>")
        parts.append("</div>")
        if song.get("spectrogram"):
            parts.append(f"<img src='{rel(song['spectrogram'])}' alt='spectrograms of {html.escape(song['name'])}'>")
        if song.get("params"):
            parts.append(f"<h4>Parameters ({song.get('params_unit', 'units')})</h4>" + params_table_html(song["params"]))
        parts.append("</section>")
    parts.append("</body></html>\n")
    return write_text(path, "\n".join(parts))


def song_sections(out_dir: Path, report_songs: Sequence[dict], prediction_rows: list[dict], truth: dict,
                  specs=None) -> list[dict]:
    """The report's song entries: players for the given clips, their spectrograms, and the settings.

    Args:
        out_dir: the results folder (spectrograms go to ``spectrograms/``).
        report_songs: [{"data", "name", "audio": [(label, clip file)]}] from the runner.
        prediction_rows: predictions.csv rows; each condition's first seed is shown, with the
            ``oracle`` and ``mean-preset`` baselines and ``truth``.
        truth: {data: {song: {param: value in [0, 1]}}}.
        specs: the console's ParamSpec list: values shown in units (else in [0, 1]).
    """
    import soundfile as sf

    from mst_single.experiments.stats import label
    from mst_single.metrics import value_in_units

    by_name = {s.name: s for s in specs or []}
    out = []
    for entry in report_songs:
        data, song = entry.get("data", "-"), entry["name"]
        signals, sr = [], None
        for lab, f in entry.get("audio", []):
            x, sr = sf.read(f, always_2d=True, dtype="float32")
            signals.append((lab, x.T))
        spec = spectrogram_png(signals, sr, Path(out_dir) / "spectrograms" / f"{safe(data)}_{safe(song)}.png") \
            if signals else None
        columns, per = [], []
        if (truth.get(data) or {}).get(song):
            columns.append("true")
            per.append(truth[data][song])
        first: dict = {}
        for r in prediction_rows:
            if str(r.get("data", "-")) == data and r["song"] == song:
                cond = (r["variant"], r.get("eval_policy") or "-")
                seed = first.setdefault(cond, {}).setdefault("seed", str(r["seed"]))
                if str(r["seed"]) == seed:
                    first[cond][r["param"]] = float(r["value"])
        for cond, vals in first.items():
            columns.append(label(cond))
            per.append(vals)
        params = list(dict.fromkeys(k for d in per for k in d if k != "seed"))

        def show(name, v):
            return None if v is None else value_in_units(v, by_name[name]) if name in by_name else v

        rows = [[n, by_name[n].unit if n in by_name else "[0, 1]", *[show(n, d.get(n)) for d in per]] for n in params]
        note = ("Clips: the first seconds of the song (16-bit, clipped at 0 dBFS for listening; metrics use the "
                "whole song in float). Settings: each variant's first seed; `true` from truth.json.")
        out.append(dict(name=f"{song} ({data})" if data != "-" else song, note=note, audio=entry.get("audio", []),
                        spectrogram=spec, params=dict(columns=columns, rows=rows) if rows else None,
                        params_unit="units" if by_name else "[0, 1] of each parameter's range"))
    return out
