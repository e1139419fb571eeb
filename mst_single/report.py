"""Plots and the HTML report of an ablation: metric plots, training curves, spectrograms, audio players.

Everything is written atomically (``mst_single.fileio``); the HTML references audio and images by
paths relative to itself, so a results folder can be moved or served as it is.
"""
from __future__ import annotations

import csv
import html
import math
from collections import defaultdict
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
def metric_plots(rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per metric (``metric_<name>.png``): a box of the per-seed song means for every variant.

    ``rows`` are results.csv rows; only ``song == "mean"`` rows are plotted, so each point is one
    seed's mean over the test songs (a single point for a baseline fitted once).
    """
    from mst_single.compare import label_of, metric_order
    from mst_single.metrics import HIGHER_IS_BETTER, METRIC_UNITS

    plt = _plt()
    by_metric: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["song"] == "mean" and not r["metric"].startswith("param_err/"):
            by_metric[r["metric"]][label_of(r)].append(float(r["value"]))
    paths = []
    for metric in metric_order(by_metric):
        data = by_metric[metric]
        labels = list(data)
        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels) + 1.5), 3.2))
        finite = [[v for v in data[lab] if math.isfinite(v)] or [float("nan")] for lab in labels]
        ax.boxplot(finite, widths=0.5)
        for i, vals in enumerate(finite, start=1):
            ax.scatter(np.full(len(vals), i), vals, s=14, zorder=3, color="C1")
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=25, ha="right", fontsize=8)
        unit = METRIC_UNITS.get(metric, "")
        better = "higher" if metric in HIGHER_IS_BETTER else "lower"
        ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
        ax.set_title(f"{metric}: {better} is better (points: seeds)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        paths.append(_save(fig, Path(out_dir) / f"metric_{metric.replace('/', '_')}.png"))
    return paths


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


def training_curves_png(runs: dict[str, Path], path: Path) -> Path | None:
    """Training curves of several runs ({label: metrics.csv}) on one figure, one panel per quantity."""
    plt = _plt()
    loaded = {lab: read_metrics_csv(p) for lab, p in runs.items() if Path(p).exists()}
    keys = sorted({k for c in loaded.values() for k in pick_curves(c)})
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (lab, curves) in enumerate(loaded.items()):
            if key in curves:
                xs, ys = curves[key]
                ax.plot(xs, ys, label=lab, color=f"C{i % 10}", marker="o" if len(xs) < 15 else None, ms=3, lw=1)
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
    """The pipe tables written by :func:`mst_single.compare.markdown_table` as an HTML table."""
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


def write_report(path: Path, title: str, intro: str, table_md: str, plots: Sequence[Path],
                 songs: Sequence[dict]) -> Path:
    """Write the HTML report.

    Args:
        path: the ``report.html`` to write; every other path is made relative to its folder.
        title: page title (the experiment name).
        intro: a short paragraph of plain text (question, command).
        table_md: the results table (markdown from ``compare.markdown_table``).
        plots: PNG files shown under the table.
        songs: one dict per test song: ``name``, ``note`` (text), ``audio`` [(label, file)],
            ``spectrogram`` (PNG file or None), ``params`` (see :func:`params_table_html`, or None).
    """
    path = Path(path)
    base = path.parent

    def rel(p):
        return html.escape(Path(p).resolve().relative_to(base.resolve()).as_posix(), quote=True)

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p>{html.escape(intro)}</p>", "<h2>Results (mean ± std over seeds)</h2>", markdown_table_to_html(table_md)]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f"<img src='{rel(p)}' alt='{html.escape(Path(p).stem)}'>" for p in plots]
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
            parts.append("<h4>Parameters (units)</h4>" + params_table_html(song["params"]))
        parts.append("</section>")
    parts.append("</body></html>\n")
    return write_text(path, "\n".join(parts))
