"""`mst-single compare PATH...`: one table, mean ± std over seeds per variant, from results or runs.

A PATH is either
- an ablation results folder (``experiments/NAME/results/``, or the experiment folder above it),
  whose ``results.csv`` holds one row per run × song × metric (see :data:`COLUMNS`), or
- a run folder (``runs/NAME/`` from ``mst-single fit``, or ``.../results/runs/VARIANT-sSEED/`` from
  ``ablate``): its ``eval.json`` (written by ``ablate``) when present, else the last value of every
  ``val/*`` and ``test/*`` column of its ``metrics.csv``.
Run folders are grouped into variants by their name without the ``-s<SEED>`` / ``_seed<SEED>`` tail.

``--wandb ENTITY/PROJECT --group G`` reads the runs of W&B group G instead (their summary values
``eval/<metric>``, else ``test/*``/``val/*``); it needs network access and a W&B login.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
from collections import defaultdict
from pathlib import Path

from mst_single.errors import MstError

# One row per (run, song, metric) in results.csv; song "mean" is the mean over the test songs.
COLUMNS = ("experiment", "variant", "approach", "policy", "eval_policy", "seed", "song", "metric", "value")
NONE = "-"  # the value of approach/policy/eval_policy where it does not apply (baselines, approach2)
_SEED_TAIL = re.compile(r"(?:[-_]s|[-_]seed)(\d+)$")


# ----------------------------------------------------------------------------------------------- tables
def metric_order(names) -> list[str]:
    """Known metrics first in their documented order, then the rest alphabetically."""
    from mst_single.metrics import METRIC_UNITS

    names = set(names)
    known = [m for m in METRIC_UNITS if m in names]
    return known + sorted(names - set(known))


def label_of(row: dict, with_experiment: bool = False) -> str:
    """A table row label: the variant, plus the evaluation reference policy where one applies."""
    label = row["variant"]
    if row.get("eval_policy", NONE) not in (NONE, "", None):
        label += f" (eval ref: {row['eval_policy']})"
    if with_experiment and row.get("experiment"):
        label = f"{row['experiment']}/{label}"
    return label


def summarize(rows: list[dict], with_experiment: bool | None = None) -> tuple[list[str], list[str], dict]:
    """Mean ± std over seeds of each label × metric, from the ``song == "mean"`` rows.

    Returns (labels in first-seen order, metrics in documented order, {(label, metric): (mean, std, n)}),
    std being the sample standard deviation (ddof 1; NaN for a single seed). Per-parameter errors
    (``param_err/<name>``) are left out of the table; their mean ``param_err`` stays.
    """
    if with_experiment is None:
        with_experiment = len({r.get("experiment") for r in rows}) > 1
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    labels: list[str] = []
    for r in rows:
        if r["song"] != "mean" or r["metric"].startswith("param_err/"):
            continue
        label = label_of(r, with_experiment)
        if label not in labels:
            labels.append(label)
        values[(label, r["metric"])].append(float(r["value"]))
    metrics = metric_order({m for _, m in values})
    stats = {}
    for key, vals in values.items():
        n = len(vals)
        mean = math.fsum(vals) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else float("nan")
        stats[key] = (mean, std, n)
    return labels, metrics, stats


def fmt(x: float, ref: float | None = None) -> str:
    """Short number: decimals chosen from the magnitude of ``ref`` (default ``x``)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    a = abs(ref if ref is not None and math.isfinite(ref) else x)
    return f"{x:.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.3f}" if a >= 0.01 else f"{x:.2e}"


def markdown_table(labels, metrics, stats) -> str:
    """Markdown table: one row per label, one column per metric (unit in the header), best in bold."""
    from mst_single.metrics import HIGHER_IS_BETTER, METRIC_UNITS

    best = {}
    for m in metrics:
        means = [(stats[(lab, m)][0], lab) for lab in labels if (lab, m) in stats and math.isfinite(stats[(lab, m)][0])]
        if len(means) > 1:
            best[m] = (max if m in HIGHER_IS_BETTER else min)(means)[1]
    head = ["variant", "seeds"] + [
        f"{m} ({METRIC_UNITS[m]}) {'↑' if m in HIGHER_IS_BETTER else '↓'}" if METRIC_UNITS.get(m)
        else f"{m} {'↑' if m in HIGHER_IS_BETTER else '↓'}" if m in METRIC_UNITS else m
        for m in metrics]
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


def summary_csv(labels, metrics, stats) -> str:
    """Long CSV: label, metric, n, mean, std."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["variant", "metric", "n", "mean", "std"])
    for lab in labels:
        for m in metrics:
            if (lab, m) in stats:
                mean, std, n = stats[(lab, m)]
                w.writerow([lab, m, n, repr(mean), "" if math.isnan(std) else repr(std)])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- reading
def read_results_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not set(COLUMNS) <= set(rows[0]):
        raise MstError(f"not an ablation results.csv: its columns are {list(rows[0])}, expected {list(COLUMNS)}",
                       path, "pass a results folder written by `mst-single ablate`, or a run folder")
    return rows


def rows_from_run_folder(folder: Path) -> list[dict]:
    """Rows (COLUMNS) for one run folder: its ``eval.json`` if present, else ``metrics.csv``."""
    name = folder.name
    m = _SEED_TAIL.search(name)
    variant, seed = (name[: m.start()], m.group(1)) if m else (name, "0")
    if (folder / "eval.json").exists():
        return json.loads((folder / "eval.json").read_text())["rows"]
    seed = _seed_from_config(folder / "config.yaml", seed)
    metrics_csv = folder / "metrics.csv"
    if not metrics_csv.exists():
        found = sorted(folder.glob("**/metrics.csv"))
        if not found:
            raise MstError("no eval.json and no metrics.csv in this run folder", folder,
                           "pass a run folder written by `mst-single fit` or `mst-single ablate`")
        metrics_csv = found[-1]
    last: dict[str, float] = {}
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):  # Lightning's CSV logger: one sparse row per log step
            for k, v in r.items():
                if k and (k.startswith("val/") or k.startswith("test/")) and v not in ("", None):
                    last[k] = float(v)
    if not last:
        raise MstError("its metrics.csv has no val/* or test/* values yet", metrics_csv,
                       "let the run reach a validation step, or pass a results folder")
    base = {"experiment": folder.parent.name, "variant": variant, "approach": NONE, "policy": NONE,
            "eval_policy": NONE, "seed": seed, "song": "mean"}
    return [dict(base, metric=k, value=v) for k, v in sorted(last.items())]


def _seed_from_config(path: Path, default: str) -> str:
    if path.exists():
        import yaml

        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            return default
        if isinstance(cfg, dict) and cfg.get("seed_everything") not in (None, True, False):
            return str(cfg["seed_everything"])
    return default


def rows_from_path(path: str | Path) -> list[dict]:
    """Rows from a results folder, an experiment folder, a results.csv, or a run folder."""
    p = Path(path)
    if not p.exists():
        raise MstError("no such file or folder", p, "pass a results folder or a run folder")
    for candidate in (p, p / "results.csv", p / "results" / "results.csv"):
        if candidate.is_file() and candidate.name == "results.csv":
            return read_results_csv(candidate)
    if p.is_dir() and ((p / "eval.json").exists() or (p / "metrics.csv").exists() or (p / "config.yaml").exists()):
        return rows_from_run_folder(p)
    raise MstError("neither a results folder (results.csv) nor a run folder (eval.json / metrics.csv)", p,
                   "pass experiments/NAME/results, or runs/RUN_NAME")


def rows_from_wandb(project: str, group: str) -> list[dict]:
    """Rows from the summaries of every run of W&B ``group`` in ``ENTITY/PROJECT`` (needs network)."""
    try:
        import wandb
    except ImportError as e:
        raise MstError("wandb is not installed", fix="pip install wandb") from e
    try:
        runs = list(wandb.Api(timeout=30).runs(project, filters={"group": group}))
    except Exception as e:  # wandb raises many types (CommError, ValueError, requests errors)
        raise MstError(f"cannot read W&B project {project!r} ({type(e).__name__}: {e})",
                       fix="check the network, `wandb login`, and ENTITY/PROJECT spelling; offline runs "
                           "can be synced with `wandb sync wandb/offline-run-*` first") from e
    rows = []
    for run in runs:
        cfg = dict(run.config or {})
        m = _SEED_TAIL.search(run.name or "")
        variant = cfg.get("variant") or (run.name[: m.start()] if m else run.name)
        seed = str(cfg.get("seed", cfg.get("seed_everything", m.group(1) if m else 0)))
        summary = {k: v for k, v in dict(run.summary).items() if isinstance(v, (int, float))}
        # ablate writes eval/<metric> (eval/<policy>/<metric> for Approach 1)
        evals = {tuple(k[5:].split("/", 1)) if k[5:].split("/", 1)[0] in ("same", "song", "other") else (NONE, k[5:]): v
                 for k, v in summary.items() if k.startswith("eval/") and not k.startswith("eval/param_err/")}
        picked = evals or {(NONE, k): v for k, v in summary.items() if k.startswith(("test/", "val/"))}
        for (eval_policy, metric), value in picked.items():
            rows.append({"experiment": group, "variant": variant, "approach": cfg.get("approach", NONE),
                         "policy": cfg.get("policy", NONE), "eval_policy": eval_policy, "seed": seed, "song": "mean",
                         "metric": metric, "value": float(value)})
    if not rows:
        raise MstError(f"W&B group {group!r} in {project!r} has no runs with eval/, test/ or val/ summary values",
                       fix="check --group (the experiment name) and that the runs finished")
    return rows


def reproduction_diff(a: list[dict], b: list[dict]) -> tuple[float, list[str]]:
    """(largest relative difference, problems) between two sets of results.csv rows.

    Rows are matched on every column but ``value``; the relative difference of a pair is
    |a - b| / max(|a|, |b|) (0 when both are 0; equal infinities count as equal). Unmatched rows
    are problems.
    """
    def keyed(rows):
        return {tuple(str(r[c]) for c in COLUMNS if c != "value"): float(r["value"]) for r in rows}

    ka, kb = keyed(a), keyed(b)
    problems = [f"only in the first: {k}" for k in sorted(set(ka) - set(kb))]
    problems += [f"only in the second: {k}" for k in sorted(set(kb) - set(ka))]
    worst = 0.0
    for k in sorted(set(ka) & set(kb)):
        x, y = ka[k], kb[k]
        if x == y or (math.isnan(x) and math.isnan(y)):
            continue
        scale = max(abs(x), abs(y))
        rel = abs(x - y) / scale if math.isfinite(scale) else math.inf
        worst = max(worst, rel)
    return worst, problems


# ----------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="results folders or run folders")
    parser.add_argument("--out", type=Path, help="also write the table as markdown to this file")
    parser.add_argument("--csv", type=Path, help="also write mean/std per variant and metric as CSV")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from W&B instead (online)")
    parser.add_argument("--group", help="the W&B group (experiment name) with --wandb")
    parser.add_argument("--check-same", type=float, metavar="REL_TOL",
                        help="with two results folders: exit 1 unless every row matches within REL_TOL "
                             "(e.g. 0.02 = 2 %%); shows that a rerun reproduced results.csv")


def run(args) -> int:
    from mst_single.fileio import write_text

    if args.wandb:
        if not args.group:
            raise MstError("--wandb needs --group G (the experiment name)", fix="add --group e01-approach1-vs-approach2")
        rows = rows_from_wandb(args.wandb, args.group)
    elif args.paths:
        rows = [r for p in args.paths for r in rows_from_path(p)]
    else:
        raise MstError("nothing to compare", fix="pass results/run folders, or --wandb ENTITY/PROJECT --group G")
    if args.check_same is not None:
        if len(args.paths) != 2 or args.wandb:
            raise MstError("--check-same needs exactly two results folders", fix="mst-single compare A B --check-same 0.02")
        worst, problems = reproduction_diff(rows_from_path(args.paths[0]), rows_from_path(args.paths[1]))
        for p in problems[:20]:
            print(p)
        ok = not problems and worst <= args.check_same
        print(f"{'REPRODUCED' if ok else 'NOT REPRODUCED'}: largest relative difference {worst:.2e} "
              f"(tolerance {args.check_same:g}), {len(problems)} unmatched rows")
        return 0 if ok else 1
    labels, metrics, stats = summarize(rows)
    table = markdown_table(labels, metrics, stats)
    print(table, end="")
    if args.out:
        write_text(args.out, table)
    if args.csv:
        write_text(args.csv, summary_csv(labels, metrics, stats))
    return 0
