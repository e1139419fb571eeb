"""results.md, paired.csv, collapse.csv, plots and report.html of an ablation: :func:`write_results`.

results.md leads, per data set, with the answer: the paired per-song differences (every trained
variant against the mean preset, and the variants' headline conditions against each other) with
bootstrap 95 % CIs, win/tie/loss and the share of the mean-preset → oracle gap closed
(``stats.py``), then the collapse metrics (``collapse.py``), then mean ± std over seeds of every
metric. Approach 1's headline is its evaluation with another song's mix as reference (``other``);
the song's own mix (``song``) is its upper bound and ``shuffled`` the control, labelled so.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

from mst_single.errors import MstError
from mst_single.experiments import collapse as C
from mst_single.experiments import stats as S
from mst_single.experiments.records import write_csv
from mst_single.experiments.stats import PRIMARY
from mst_single.fileio import write_text
from mst_single.metrics import ABS_TOL, HIGHER_IS_BETTER, METRIC_UNITS


# ----------------------------------------------------------------------------------------------- numbers
def fmt(x: float | None, ref: float | None = None) -> str:
    """Short number: decimals chosen from the magnitude of ``ref`` (default ``x``)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    a = abs(ref if ref is not None and math.isfinite(ref) else x)
    return f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.3f}" if a >= 0.01 else f"{x:.2e}"


def metric_order(names) -> list[str]:
    """Known metrics first in their documented order, then the rest alphabetically."""
    names = set(names)
    known = [m for m in METRIC_UNITS if m in names]
    return known + sorted(names - set(known))


def _head(m: str) -> str:
    arrow = "↑" if m in HIGHER_IS_BETTER else "↓"
    return f"{m} ({METRIC_UNITS[m]}) {arrow}" if METRIC_UNITS.get(m) else f"{m} {arrow}" if m in METRIC_UNITS else m


# ----------------------------------------------------------------------------------------------- mean ± std
def summarize(rows: list[dict], with_experiment: bool | None = None) -> tuple[list[str], list[str], dict]:
    """Mean ± std over seeds of each condition × metric (``stats.seed_means``: a seed's mean over all its
    test songs, folds pooled). Call it on one (budget, data) at a time.

    Returns (labels in :func:`stats.conditions` order, metrics in documented order,
    {(label, metric): (mean, sample std (NaN for one seed), seeds)}). Per-parameter errors
    (``param_err/<name>``) are left out; their mean ``param_err`` stays.
    """
    rows = [r for r in rows if not r["metric"].startswith("param_err/")]
    if with_experiment is None:
        with_experiment = len({r.get("experiment") for r in rows}) > 1
    by_exp: dict[str, list[dict]] = {}
    for r in rows:
        by_exp.setdefault(r.get("experiment", S.NONE), []).append(r)
    labels, stats = [], {}
    for exp, part in by_exp.items():
        means = S.seed_means(part)
        for cond in S.conditions(part):
            lab = f"{exp}/{S.label(cond)}" if with_experiment else S.label(cond)
            labels.append(lab)
            for (c, metric), per_seed in means.items():
                if c == cond:
                    stats[(lab, metric)] = S.mean_std(per_seed.values())
    return labels, metric_order({m for _, m in stats}), stats


def markdown_table(labels, metrics, stats) -> str:
    """Markdown table: one row per label, one column per metric (unit in the header), best in bold."""
    best = {}
    for m in metrics:
        means = [(stats[(lab, m)][0], lab) for lab in labels if (lab, m) in stats and math.isfinite(stats[(lab, m)][0])]
        if len(means) > 1:
            best[m] = (max if m in HIGHER_IS_BETTER else min)(means)[1]
    head = ["variant", "seeds"] + [_head(m) for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for lab in labels:
        ns = {stats[(lab, m)][2] for m in metrics if (lab, m) in stats}
        cells = [lab, "/".join(str(n) for n in sorted(ns))]
        for m in metrics:
            if (lab, m) not in stats:
                cells.append("")
                continue
            mean, std, _ = stats[(lab, m)]
            cell = fmt(mean) if math.isnan(std) else f"{fmt(mean)} ± {fmt(std, mean)}"
            cells.append(f"**{cell}**" if best.get(m) == lab else cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_csv(labels, metrics, stats, budget: str = S.NONE, data: str = S.NONE) -> str:
    """Long CSV: budget, data, variant (label), metric, n, mean, std."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["budget", "data", "variant", "metric", "n", "mean", "std"])
    for lab in labels:
        for m in metrics:
            if (lab, m) in stats:
                mean, std, n = stats[(lab, m)]
                w.writerow([budget, data, lab, m, n, repr(mean), "" if math.isnan(std) else repr(std)])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- paired
def _ci(p: S.Paired) -> str:
    return f"{fmt(p.mean)} [{fmt(p.ci[0], p.mean)}, {fmt(p.ci[1], p.mean)}]"


def _gap(p: S.Paired) -> str:
    if not p.gap_closed_per_seed:
        return ""
    seeds = ", ".join(f"{v:.0%}" if math.isfinite(v) else "n/a" for v in p.gap_closed_per_seed.values())
    return f"{p.gap_closed:.0%} ({seeds})" if math.isfinite(p.gap_closed) else f"n/a ({seeds})"


def paired_markdown(comparisons: list[S.Paired], metric: str = PRIMARY) -> str:
    """The headline table: one row per comparison of ``metric``: Δ [95 % CI], win/tie/loss, gap closed."""
    rows = [p for p in comparisons if p.metric == metric]
    if not rows:
        return ""
    lines = [f"| A vs B | songs | Δ {metric} = A − B, mean [95 % CI] | A wins / ties / loses "
             "| gap closed (median; per seed) |",
             "|---|---:|---:|---:|---:|"]
    for p in rows:
        lines.append(f"| {S.label(p.a)} vs {S.label(p.b)} | {p.n} | {_ci(p)} | {p.wins} / {p.ties} / {p.losses} | "
                     f"{_gap(p)} |")
    return "\n".join(lines) + "\n"


def paired_all_markdown(comparisons: list[S.Paired]) -> str:
    """Every metric: one row per comparison, cells ``Δ w/t/l`` with ``*`` where the 95 % CI excludes 0
    (the intervals themselves are in paired.csv)."""
    metrics = metric_order({p.metric for p in comparisons})
    pairs = list(dict.fromkeys((p.a, p.b) for p in comparisons))
    cell = {(p.a, p.b, p.metric): p for p in comparisons}
    lines = ["| A vs B | " + " | ".join(_head(m) for m in metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for a, b in pairs:
        cells = [f"{fmt(p.mean)}{'*' if p.ci[0] > 0 or p.ci[1] < 0 else ''} ({p.wins}/{p.ties}/{p.losses})"
                 if (p := cell.get((a, b, m))) else "" for m in metrics]
        lines.append(f"| {S.label(a)} vs {S.label(b)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_csv(comparisons: list[S.Paired], budget: str, data: str) -> list[dict]:
    """Rows of paired.csv for one data set."""
    return [dict(budget=budget, data=data, a=S.label(p.a), b=S.label(p.b), metric=p.metric, songs=p.n, mean=p.mean,
                 ci_low=p.ci[0], ci_high=p.ci[1], wins=p.wins, ties=p.ties, losses=p.losses, tie_band=p.tol,
                 gap_closed=p.gap_closed if p.gap_closed_per_seed else "",
                 gap_closed_per_seed=json.dumps(p.gap_closed_per_seed) if p.gap_closed_per_seed else "")
            for p in comparisons]


# ----------------------------------------------------------------------------------------------- collapse
def collapse_markdown(summary: list[dict]) -> str:
    """One row per variant: adaptivity, spread ratio, collapsed; Approach 1's reference sensitivity."""
    if not summary:
        return ""
    has_truth = any(math.isfinite(s.get("adaptivity_truth", math.nan)) for s in summary)
    has_ref = any("reads_reference" in s for s in summary)
    head = ["variant (predictions judged)", "seeds", "songs", "params that matter", "adaptivity (min)"]
    head += ["adaptivity vs truth"] if has_truth else []
    head += ["spread ratio (min)"] + (["spread ratio vs truth"] if has_truth else []) + ["collapsed"]
    head += ["ref. sensitivity (other)", "control (shuffled)", "noise floor (song-alt)", "scale", "reads reference"] \
        if has_ref else []
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for s in summary:
        cells = [S.label((s["variant"], s["eval_policy"])), str(s["seeds"]), f"{s['songs']:.0f}", f"{s['params']:.0f}",
                 f"{_f2(s['adaptivity'])} ({_f2(s['adaptivity_min'])})"]
        cells += [_f2(s.get("adaptivity_truth", math.nan))] if has_truth else []
        cells += [f"{_f2(s['spread_ratio'])} ({_f2(s['spread_ratio_min'])})"]
        cells += [_f2(s.get("spread_ratio_truth", math.nan))] if has_truth else []
        cells += [s["collapsed"]]
        if has_ref:
            cells += [_f2(s[k]) for k in ("sensitivity", "control", "noise_floor", "scale")] + [s["reads_reference"]] \
                if "reads_reference" in s else [""] * 5
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _f2(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "n/a"


COLLAPSE_NOTE = (
    f"Over all test songs of a seed, against the oracle's per-song settings ([0, 1] units; "
    f"`mst_single/experiments/collapse.py`). *Params that matter*: oracle std across songs > "
    f"{C.MATTER_STD}. *Adaptivity*: mean correlation across songs between predicted and oracle value "
    f"(1 = follows the song, 0 = does not); *spread ratio*: std of the predictions across songs / the "
    f"oracle's (0 = one setting for all). Mean over seeds (smallest seed in brackets). *Collapsed*: spread "
    f"ratio < {C.COLLAPSE_SPREAD} or adaptivity < {C.COLLAPSE_ADAPTIVITY} in a seed. Approach 1 is judged on "
    f"its predictions with the song's own mix. *Reference sensitivity*: mean parameter distance between its "
    f"predictions for the same raw with the song's own mix vs another song's (control: the shuffled "
    f"references; noise floor: another section of the song's own mix; scale: the oracle's distance between "
    f"songs). *Reads reference*: sensitivity − noise floor ≥ {C.REF_MIN} × scale. `mean-preset` shows what "
    f"a collapsed predictor scores; `truth` (demo data) the true settings themselves: a perfect predictor. "
    f"*vs truth*: the same measures against the true settings (spread ratio: std of the predictions / "
    f"the true settings').")


# ----------------------------------------------------------------------------------------------- results.md
def _tie_bands(metrics) -> str:
    return ", ".join(f"{m} {ABS_TOL[m]:g}{' ' + METRIC_UNITS[m] if METRIC_UNITS.get(m) else ''}"
                     for m in metrics if m in ABS_TOL)


def dataset_sections(rows: list[dict], predictions: list[dict], truth: dict | None, n_boot: int = S.N_BOOT):
    """{(budget, data): dict(paired, collapse_rows, collapse_summary, table)} for every data set of ``rows``."""
    out = {}
    crows = C.collapse_rows(predictions, truth)
    for ds, part in S.by_dataset(rows).items():
        metrics = metric_order({r["metric"] for r in part if not r["metric"].startswith("param_err/")})
        mine = [r for r in crows if (r["budget"], r["data"]) == ds]
        out[ds] = dict(paired=S.paired_comparisons(part, metrics, n_boot=n_boot), n_boot=n_boot, collapse_rows=mine,
                       collapse_summary=C.summary(mine), table=markdown_table(*summarize(part, with_experiment=False)),
                       songs=sorted({r["song"] for r in part if r["song"] != "mean"}),
                       seeds=sorted({str(r["seed"]) for r in part if r["variant"] not in S.BASELINES}, key=_num),
                       folds=sorted({str(r.get("fold", "0")) for r in part}, key=_num))
    return out


def _num(x: str):
    return (0, int(x)) if str(x).isdigit() else (1, str(x))


def results_markdown(exp: dict, budget: str, sections: dict, run_rows: list[dict], meta: dict) -> str:
    """The text of results.md (without plots): per data set, paired statistics, collapse, mean ± std."""
    text = [f"# {exp['name']}: results (budget `{budget}`)", ""]
    if exp.get("question"):
        text += [f"**Question.** {str(exp['question']).strip()}", ""]
    if meta.get("command"):
        text += [f"Command: `{meta['command']}`" + (f"; wall time {meta['wall_seconds'] / 60:.1f} min."
                                                    if meta.get("wall_seconds") else ""), ""]
    for (_, data), sec in sections.items():
        path = (meta.get("data_paths") or {}).get(data)
        text += [f"## Data `{data}`" + (f" (`{path}`)" if path else ""), "",
                 f"{len(sec['songs'])} test songs; seeds {', '.join(sec['seeds'])}; {len(sec['folds'])} "
                 f"fold{'s (every song is a test song once per seed)' if len(sec['folds']) > 1 else ''}."
                 + _runs_line([r for r in run_rows if str(r.get("data", S.NONE)) == data]), ""]
        if sec["paired"]:
            text += [f"### Paired differences per song ({PRIMARY})", "",
                     "Δ = A − B per test song (each song's value averaged over seeds first); mean over songs with "
                     f"its bootstrap 95 % CI ({sec['n_boot']} resamples of the songs); wins/ties/losses of A with a tie "
                     f"band of ±{ABS_TOL.get(PRIMARY, 0):g}; gap closed = (mean preset − A) / (mean preset − "
                     "oracle) over songs, median over seeds (1 = oracle, 0 = mean preset, < 0 worse). ↓ metrics: "
                     "negative Δ = A better.", "", paired_markdown(sec["paired"]),
                     "All metrics: mean Δ (wins/ties/losses of A); * = its 95 % CI excludes 0 (intervals in "
                     f"`paired.csv`); tie bands {_tie_bands(metric_order({p.metric for p in sec['paired']}))}.", "",
                     paired_all_markdown(sec["paired"])]
        if sec["collapse_summary"]:
            text += ["### Collapse: do the predictions follow the song?", "", COLLAPSE_NOTE, "",
                     collapse_markdown(sec["collapse_summary"])]
        text += ["### Mean ± std over seeds", "",
                 "Each cell: mean ± sample std over seeds of the seed's mean over all test songs (whole songs, "
                 "see `mst_single/experiments/evaluate.py`); baselines are fitted once. ↓ lower is better, "
                 "↑ higher is better; best in bold. `(eval ref: P)`: Approach 1 evaluated with references chosen "
                 "by policy P (`other` = another song's mix: the headline; `song` = the song's own mix: an upper "
                 "bound; `shuffled` = the control).", "", sec["table"]]
    return "\n".join(text)


def _runs_line(run_rows: list[dict]) -> str:
    trained = [r for r in run_rows if r.get("variant") not in S.BASELINES]
    parts = []
    if trained:
        secs = [float(r["train_seconds"]) for r in trained if r.get("train_seconds") not in (None, "")]
        parts.append(f"{len(trained)} training runs" + (f", median {statistics.median(secs):.0f} s each" if secs else ""))
    for name in ("mean-preset", "oracle"):
        steps = [r.get("steps") for r in run_rows if r.get("variant") == name and r.get("steps") not in (None, "")]
        if steps:
            parts.append(f"{name} fitted in {', '.join(str(s) for s in steps)} steps")
    return " Runs: " + "; ".join(parts) + "." if parts else ""


# ----------------------------------------------------------------------------------------------- entry point
def readme_block(md: str, budget: str) -> str:
    """results.md for the experiment's README (``experiments/NAME/README.md``): no title line, and
    the plots linked from there (``results/BUDGET/plots/``), not from the results folder."""
    body = md.split("\n", 2)[2] if md.startswith("# ") else md
    return body.replace("](plots/", f"](results/{budget}/plots/")


def write_results(out_dir, exp: dict, budget: str, results_rows: list[dict], prediction_rows: list[dict],
                  run_rows: list[dict], meta: dict | None = None, n_boot: int = S.N_BOOT) -> dict:
    """Write results.md, paired.csv, collapse.csv, plots/ and report.html of one budget's results folder.

    The runner writes results.csv / predictions.csv / runs.csv (``records.RESULTS_COLUMNS``,
    ``PREDICTIONS_COLUMNS``, ``RUNS_COLUMNS``) and calls this with the same rows.

    Args:
        out_dir: the results folder (``experiments/NAME/results/BUDGET``).
        exp: the experiment config: ``name`` and, optionally, ``question``.
        budget: the budget name; every row must have it (budgets are never mixed).
        results_rows, prediction_rows, run_rows: rows of the three CSVs (reruns are dropped).
        meta: optional keys: ``command`` (str), ``wall_seconds`` (float), ``data_paths`` {data: folder},
            ``truth`` {data: {song: {param: value in [0, 1]}}} (``collapse.normalize_truth``),
            ``specs`` (the console's ParamSpec list: parameters in units in the report),
            ``report_songs`` [{"data", "name", "audio": [(label, clip file)]}] (players and spectrograms),
            ``curves`` {label: metrics.csv} (default: each run's folder, from runs.csv's checkpoint).
        n_boot: bootstrap resamples.

    Returns:
        {"results_md", "report_html", "paired_csv", "collapse_csv": Path, "plots": [Path],
        "readme_block": results.md without its title line (for the experiment README)}.
    """
    from mst_single.experiments import report as R

    meta, out = dict(meta or {}), Path(out_dir)
    rows, _ = S.dedupe(results_rows)
    preds, _ = S.dedupe(prediction_rows, C.PREDICTION_KEY)
    budgets = {str(r.get("budget", S.NONE)) for r in rows + preds}
    if budgets - {budget}:
        raise MstError(f"results of budgets {sorted(budgets)} given to one results folder of budget {budget!r}", out,
                       "write each budget to its own folder (experiments/NAME/results/BUDGET)")
    sections = dataset_sections(rows, preds, meta.get("truth"), n_boot)
    plots = []
    for (_, data), part in S.by_dataset(rows).items():
        tag = data if len(sections) > 1 else ""
        name = f"_{R.safe(tag)}" if tag else ""
        p = R.paired_png(sections[(budget, data)]["paired"], PRIMARY, out / "plots" / f"paired{name}.png", tag)
        q = R.params_scatter_png([r for r in preds if str(r.get("data", S.NONE)) == data],
                                 out / "plots" / f"params_vs_oracle{name}.png", tag)
        plots += [x for x in (p, q) if x] + R.metric_plots(part, out / "plots", tag, [PRIMARY])
    curves = R.training_curves_png(_curves(meta, run_rows), out / "plots" / "training_curves.png")
    plots += [curves] if curves else []
    md = results_markdown(exp, budget, sections, run_rows, meta)
    md += "\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n"
    paths = dict(results_md=write_text(out / "results.md", md),
                 paired_csv=write_csv(out / "paired.csv", [r for (b, d), s in sections.items()
                                                           for r in paired_csv(s["paired"], b, d)]),
                 collapse_csv=write_csv(out / "collapse.csv", [r for s in sections.values() for r in s["collapse_rows"]]),
                 plots=plots, readme_block=readme_block(md, budget))
    html_sections = []
    for (_, data), sec in sections.items():
        html_sections += [(f"Data {data}: paired differences per song ({PRIMARY})", "", paired_markdown(sec["paired"])),
                          (f"Data {data}: collapse", COLLAPSE_NOTE, collapse_markdown(sec["collapse_summary"])),
                          (f"Data {data}: mean ± std over seeds", "", sec["table"])]
    songs = R.song_sections(out, meta.get("report_songs") or [], preds, meta.get("truth") or {}, meta.get("specs"))
    intro = f"{str(exp.get('question') or '').strip()} Command: {meta.get('command', '')}".strip()
    paths["report_html"] = R.write_report(out / "report.html", exp["name"], intro, html_sections, plots, songs)
    return paths


def _curves(meta: dict, run_rows: list[dict]) -> list[tuple[str, Path]]:
    """(variant, metrics.csv) of every training run: ``meta["curves"]``, else next to each checkpoint."""
    if meta.get("curves"):
        return [(k, Path(v)) for k, v in meta["curves"].items()]
    out = []
    for r in run_rows:
        ckpt = Path(str(r.get("checkpoint") or ""))
        if r.get("variant") not in S.BASELINES and ckpt.parent.name == "checkpoints":
            out.append((r["variant"], ckpt.parent.parent / "metrics.csv"))
    return out
