"""`mst-single compare PATH...`: mean ± std over seeds per variant, and `--check-same`: did a rerun reproduce?

A PATH is
- an ablation results folder (``experiments/NAME/results/BUDGET/``) or its ``results.csv``, or an
  experiment folder / ``results/`` above it (every budget below it, each its own table);
- a run folder (``runs/NAME/`` from ``mst-single fit``, or a run of ``ablate``): its ``eval.json``
  when present, else the last value of each ``val/<metric>`` / ``test/<metric>`` of its ``metrics.csv``.
  Its variant is the folder name without a ``-s<SEED>`` (``-f<FOLD>-s<SEED>``) tail.

``--wandb ENTITY/PROJECT --group G`` reads the runs of W&B group G online (``ablate`` logs to
``EXPERIMENT/BUDGET``; a G without ``/`` also takes every ``G/BUDGET``, each budget its own table; summary values
``eval/[POLICY/]<metric>``, else ``test/*``/``val/*``); ``--wandb FOLDER`` reads the offline runs
(``wandb/offline-run-*``) under a local folder the same way, without network or account.

Tables never mix budgets or data sets: each (budget, data) gets its own. Reruns are not seeds: a row
whose (experiment, budget, data, variant, eval_policy, fold, seed, song, metric) was already read
(another folder holding the same run, a W&B run logged twice) is dropped, and the count is printed.

``--check-same REL_TOL`` (two results folders, committed then rerun; :func:`check_same`) exits 0 when
the rerun gives the same answer. Per metric a difference counts only beyond the larger of the
metric's absolute tolerance (``metrics.ABS_TOL``: near-zero values such as the identity's lufs_err
are compared absolutely) and REL_TOL of the value; a table over seeds passes when every seed mean
(variant × eval policy × metric, its seed's mean over all test songs) is within the larger of those
and two standard errors of the difference of the seed means. Rows beyond the per-row tolerance are
listed; they decide only where there is a single seed.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mst_single.errors import MstError
from mst_single.experiments.stats import (EVAL_ROLES, NONE, PRIMARY, ROW_KEY, by_dataset, dedupe, label, mean_std,
                                         seed_means)
from mst_single.metrics import HIGHER_IS_BETTER, abs_tolerance

# the three CSVs of a results folder (see mst_single.experiments.records)
from mst_single.experiments.records import RESULTS_COLUMNS as COLUMNS  # noqa: E402
# columns an older results.csv may lack, and the value they read as
_DEFAULTS = {"budget": NONE, "data": NONE, "fold": "0"}
_RUN_TAIL = re.compile(r"(?:[-_]f(\d+))?(?:[-_]s|[-_]seed)(\d+)$")
EVAL_POLICIES = tuple(EVAL_ROLES) + ("song-alt",)


# ----------------------------------------------------------------------------------------------- reading
def read_results_csv(path: Path) -> list[dict]:
    """Rows of a results.csv; columns an older one lacks (budget, data, fold) read as ``-``/``-``/``0``."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not set(COLUMNS) - set(_DEFAULTS) <= set(rows[0]):
        raise MstError(f"not an ablation results.csv: its columns are {list(rows[0])}, expected {list(COLUMNS)}",
                       path, "pass a results folder written by `mst-single ablate`, or a run folder")
    return [{**_DEFAULTS, **r} for r in rows]


def rows_from_run_folder(folder: Path) -> list[dict]:
    """Rows (COLUMNS) for one run folder: its ``eval.json`` if present, else ``metrics.csv``."""
    if (folder / "eval.json").exists():
        return [{**_DEFAULTS, **r} for r in json.loads((folder / "eval.json").read_text())["rows"]]
    cfg = _read_yaml(folder / "config.yaml")
    m = _RUN_TAIL.search(folder.name)
    variant = folder.name[: m.start()] if m else folder.name
    seed = cfg.get("seed_everything")
    seed = str(seed) if seed not in (None, True, False) else (m.group(2) if m else "0")
    metrics_csv = folder / "metrics.csv"
    if not metrics_csv.exists():
        found = sorted(folder.glob("**/metrics.csv"))
        if not found:
            raise MstError("no eval.json and no metrics.csv in this run folder", folder,
                           "pass a run folder written by `mst-single fit` or `mst-single ablate`")
        metrics_csv = found[-1]
    last = _last_eval_values(metrics_csv)
    if not last:  # a fit without validation songs: `mst-single test` of its checkpoint logs under test/
        for sub in ("test", "validate"):
            if (folder / sub / "metrics.csv").is_file():
                last = _last_eval_values(folder / sub / "metrics.csv")
                if last:
                    break
    if not last:
        prov = folder / "provenance.json"
        songs = (json.loads(prov.read_text()).get("songs") or {}) if prov.is_file() else {}
        # waiting would not help: no validation ever (val_fraction 0, or a split file that leaves none)
        if (cfg.get("data") or {}).get("val_fraction") == 0 or songs.get("val") == []:
            raise MstError("its metrics.csv has no val/* or test/* values, and the run has no validation songs "
                           "(data.val_fraction 0 or its split file)", metrics_csv,
                           f"score its test songs (logged under {folder / 'test'}): mst-single test -c "
                           f"{folder / 'config.yaml'} --ckpt_path {folder / 'checkpoints' / 'last.ckpt'}; "
                           "or evaluate whole songs with `mst-single ablate`")
        raise MstError("its metrics.csv has no val/* or test/* values yet", metrics_csv,
                       "let the run reach a validation step, or pass a results folder")
    data = (cfg.get("data") or {}).get("root")
    base = dict(experiment=cfg.get("wandb_group") or NONE, budget=NONE, data=Path(data).name if data else NONE,
                variant=variant, approach=(cfg.get("model") or {}).get("approach", NONE), policy=NONE,
                eval_policy=NONE, fold=m.group(1) if m and m.group(1) else "0", seed=seed, song="mean")
    return [dict(base, metric=k, value=v) for k, v in sorted(last.items())]


def _last_eval_values(metrics_csv: Path) -> dict[str, float]:
    """The last value of each ``val/<metric>`` / ``test/<metric>`` of a Lightning metrics.csv."""
    last: dict[str, float] = {}
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):  # Lightning's CSV logger: one sparse row per log step
            for k, v in r.items():
                if k and k.startswith(("val/", "test/")) and k.count("/") == 1 and v not in ("", None):
                    last[k] = float(v)
    return last


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text()) if path.exists() else {}
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def rows_from_path(path: str | Path) -> list[dict]:
    """Rows from a results folder or results.csv, an experiment folder (every budget), or a run folder."""
    p = Path(path)
    if not p.exists():
        raise MstError("no such file or folder", p, "pass a results folder or a run folder")
    if p.is_file() and p.name == "results.csv":
        return read_results_csv(p)
    for candidate in (p / "results.csv", p / "results" / "results.csv"):
        if candidate.is_file():
            return read_results_csv(candidate)
    budgets = sorted(p.glob("*/results.csv")) or sorted(p.glob("results/*/results.csv"))
    if budgets:
        return [r for f in budgets for r in read_results_csv(f)]
    if p.is_dir() and any((p / f).exists() for f in ("eval.json", "metrics.csv", "config.yaml")):
        return rows_from_run_folder(p)
    raise MstError("neither a results folder (results.csv) nor a run folder (eval.json / metrics.csv)", p,
                   "pass experiments/NAME/results/BUDGET, or runs/RUN_NAME")


@dataclass
class WandbRun:
    """What compare reads of a W&B run (the fields of ``wandb.apis.public.Run`` it uses)."""

    id: str
    name: str
    group: str = ""
    tags: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def offline_runs(folder: Path) -> list[WandbRun]:
    """The W&B offline runs under ``folder`` (``**/offline-run-*/run-*.wandb``), read without network.

    A ``.wandb`` file is a LevelDB-style log (7-byte ``:W&B`` header, 32 KiB blocks of records with a
    7-byte header: crc32, length, type full/first/middle/last) of ``wandb_internal_pb2.Record``
    protobufs; compare keeps the run record (id, name, group, tags), the config updates and the
    latest summary value of every top-level key.
    """
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    runs = []
    for path in sorted(Path(folder).glob("**/offline-run-*/run-*.wandb")):
        run = WandbRun(id="", name="")
        for raw in _log_records(path.read_bytes(), path):
            rec = pb.Record()
            try:
                rec.ParseFromString(raw)
            except DecodeError:  # the cut-off tail of a run that was killed while writing
                break
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                run.id, run.name, run.group, run.tags = (rec.run.run_id, rec.run.display_name, rec.run.run_group,
                                                         list(rec.run.tags))
                run.config.update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            elif kind == "config":
                run.config.update({u.key: json.loads(u.value_json) for u in rec.config.update})
            elif kind == "summary":
                for u in rec.summary.update:
                    keys = list(u.nested_key) or [u.key]
                    if len(keys) == 1:  # nested values are histograms and W&B internals
                        run.summary[keys[0]] = json.loads(u.value_json)
        if run.id:
            runs.append(run)
    return runs


def _log_records(data: bytes, path: Path):
    """Payloads of a W&B ``.wandb`` file (see :func:`offline_runs`)."""
    if data[:4] != b":W&B":
        raise MstError("not a W&B run file (no :W&B header)", path, "pass a folder holding wandb/offline-run-*")
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk


def group_matches(run_group: str | None, group: str) -> bool:
    """``ablate`` logs to group ``EXPERIMENT/BUDGET``: ``--group EXPERIMENT`` takes all its budgets."""
    return run_group == group or ("/" not in group and str(run_group or "").startswith(group + "/"))


def group_filter(group: str) -> dict:
    """The W&B API filter of :func:`group_matches` (server side: a project holds many experiments)."""
    if "/" in group:
        return {"group": group}
    return {"group": {"$regex": f"^{re.escape(group)}(/[^/]+)?$"}}


def online_runs(project: str, group: str) -> list[WandbRun]:
    """The runs of W&B ``group`` (:func:`group_matches`) in ``ENTITY/PROJECT`` (needs network and a login)."""
    try:
        import wandb
    except ImportError as e:
        raise MstError("wandb is not installed", fix="pip install wandb") from e
    try:
        runs = list(wandb.Api(timeout=30).runs(project, filters=group_filter(group)))
    except Exception as e:  # wandb raises many types (CommError, ValueError, requests errors)
        raise MstError(f"cannot read W&B project {project!r} ({type(e).__name__}: {e})",
                       fix="check the network, `wandb login`, and ENTITY/PROJECT spelling; or read the offline "
                           "runs directly: mst-single compare --wandb RESULTS_FOLDER") from e
    return [WandbRun(r.id, r.name or "", getattr(r, "group", None) or group, list(getattr(r, "tags", []) or []),
                     dict(r.config or {}), dict(r.summary)) for r in runs]


def rows_from_wandb(runs: list[WandbRun], group: str | None = None) -> list[dict]:
    """results.csv-like rows (song ``mean``) from W&B runs (online or offline), one per summary metric.

    experiment / budget / data / variant / fold / seed come from the run's config when it has them
    (``ablate`` logs them), else from tags ``budget-X`` / ``data-X``, the group, and the run name
    (``VARIANT[-fF]-sS``). Summary keys ``eval/[POLICY/]<metric>`` are preferred; ``test/*``/``val/*``
    otherwise. A run id seen twice is read once.
    """
    rows, seen = [], set()
    for run in runs:
        if group is not None and not group_matches(run.group, group) or run.id in seen:
            continue
        seen.add(run.id)
        cfg, tags = run.config, dict(t.split("-", 1) for t in run.tags if "-" in t)

        def meta(key, default):  # ablate logs these in the run config; a bare fit has tags at most
            v = cfg.get(key)
            return str(v) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else tags.get(key, default)

        fit_seed = (cfg.get("config") or {}).get("seed_everything") if isinstance(cfg.get("config"), dict) else None
        m = _RUN_TAIL.search(run.name)
        base = dict(experiment=meta("experiment", run.group or NONE), budget=meta("budget", NONE),
                    data=meta("data", NONE), variant=meta("variant", run.name[: m.start()] if m else run.name),
                    approach=meta("approach", NONE), policy=meta("policy", NONE),
                    fold=meta("fold", m.group(1) if m and m.group(1) else "0"),
                    seed=meta("seed", str(fit_seed) if fit_seed is not None else m.group(2) if m else "0"), song="mean")
        summary = {k: v for k, v in run.summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        picked = {}
        for k, v in summary.items():
            parts = k.split("/")
            if parts[0] == "eval" and len(parts) == 3 and parts[1] in EVAL_POLICIES:
                picked[(parts[1], parts[2])] = v
            elif parts[0] == "eval" and len(parts) == 2:
                picked[(NONE, parts[1])] = v
        if not picked:
            picked = {(NONE, k): v for k, v in summary.items() if k.startswith(("test/", "val/")) and k.count("/") == 1}
        rows += [dict(base, eval_policy=p, metric=metric, value=float(v)) for (p, metric), v in sorted(picked.items())]
    if not rows:
        raise MstError(f"no W&B runs{f' of group {group!r}' if group else ''} with eval/, test/ or val/ summary values",
                       fix="check --group (EXPERIMENT or EXPERIMENT/BUDGET, e.g. e01-approach1-vs-approach2/cpu) "
                           "and that the runs finished")
    return rows


# ----------------------------------------------------------------------------------------------- check
@dataclass
class SameReport:
    """The answer of :func:`check_same`: ``ok``, and ``text`` listing what differs and by how much."""

    ok: bool
    groups: list[dict]  # one per (budget, data, condition, metric) seed mean: a, b, delta, allowed, n_a, n_b, ok
    rows_beyond: list[dict]  # per-row differences beyond the per-row tolerance
    missing: list[str]
    notes: list[str]
    rel_tol: float
    identical: int = 0  # values present on both sides that are equal bit for bit (NaN = NaN)
    shared: int = 0  # values present on both sides
    max_rel: float = 0.0  # largest |a - b| / max(|a|, |b|) over them

    @property
    def text(self) -> str:
        from mst_single.experiments.tables import fmt

        out = list(self.notes)
        out += [f"missing: {m}" for m in self.missing[:20]]
        bad = [g for g in self.groups if not g["ok"]]
        for g in bad[:30]:
            out.append(f"DIFFERS {g['budget']}/{g['data']} {g['label']} {g['metric']}: seed mean {fmt(g['a'])} "
                       f"-> {fmt(g['b'])} (Δ {fmt(g['delta'], g['a'])}, allowed {fmt(g['allowed'], g['a'])}: "
                       f"{g['why']}; seeds {g['n_a']}/{g['n_b']})")
        if self.rows_beyond:
            worst = sorted(self.rows_beyond, key=lambda r: -r["excess"])[:10]
            out.append(f"{len(self.rows_beyond)} single rows (runs, songs) differ beyond max(abs tol, "
                       f"{self.rel_tol:g} relative){' (not decisive: the seed means are)' if self.ok else ''}; largest:")
            out += [f"  {r['key']}: {fmt(r['a'])} -> {fmt(r['b'])} (Δ {fmt(r['b'] - r['a'], r['a'])})" for r in worst]
        if self.shared:
            out.append(f"values: {self.identical} of {self.shared} identical bit for bit"
                       + (f" (largest relative difference {self.max_rel:.2g})" if self.identical < self.shared else ""))
        n = len(self.groups)
        out.append(f"{'REPRODUCED' if self.ok else 'NOT REPRODUCED'}: {n - len(bad)} of {n} seed means within "
                   f"tolerance (relative {self.rel_tol:g}, absolute per metric, 2 standard errors), "
                   f"{len(self.missing)} rows missing on one side")
        return "\n".join(out)


def check_same(committed_rows: list[dict], rerun_rows: list[dict], rel_tol: float = 0.02) -> SameReport:
    """Does ``rerun_rows`` give the same answer as ``committed_rows`` (results.csv rows)?

    Refuses (MstError) when the two hold different budgets or data sets. Seed means (variant × eval
    policy × metric; a seed's mean over all its test songs, folds pooled) must agree within
    max(ABS_TOL of the metric, ``rel_tol`` × |value|, 2 × the standard error of the difference of the
    seed means, sqrt(s_a²/n_a + s_b²/n_b), where both sides have ≥ 2 seeds). Every row present on one
    side only is a failure; single rows beyond max(ABS_TOL, ``rel_tol``) are listed (and decide
    through the seed means only).
    """
    notes = []
    a, dropped_a = dedupe(committed_rows)
    b, dropped_b = dedupe(rerun_rows)
    if dropped_a or dropped_b:
        notes.append(f"ignored repeated rows (reruns are not seeds): {dropped_a} in the first, {dropped_b} in the second")
    da, db = by_dataset(a), by_dataset(b)
    if set(da) != set(db):
        raise MstError(f"the two tables hold different budgets/data sets: {sorted(da)} vs {sorted(db)} "
                       "(budget, data); a rerun must use the same ones",
                       fix="rerun with the same --budget and --data, or compare the matching results folders")

    ka, kb = _keyed(a, ROW_KEY), _keyed(b, ROW_KEY)
    missing = [f"only in the first: {k}" for k in sorted(set(ka) - set(kb))]
    missing += [f"only in the second: {k}" for k in sorted(set(kb) - set(ka))]
    rows_beyond = []
    for k in sorted(set(ka) & set(kb)):
        x, y = ka[k], kb[k]
        if _same_bits(x, y):
            continue
        allowed = max(abs_tolerance(k[-1]), rel_tol * max(abs(x), abs(y)))
        if not abs(x - y) <= allowed:
            rows_beyond.append(dict(key=k, a=x, b=y, excess=abs(x - y) / allowed if allowed > 0 else math.inf))
    groups = []
    for ds in da:
        ma, mb = seed_means(da[ds]), seed_means(db[ds])
        for key in ma:
            if key not in mb:
                continue
            groups.append(_same_mean(ds, key, list(ma[key].values()), list(mb[key].values()), rel_tol))
        ra, rb = _ranking(ma), _ranking(mb)
        if ra != rb:  # issue 15: a ranking that flips within tolerance names no winner
            notes.append(f"{ds[0]}/{ds[1]}: the ranking by {PRIMARY} changed (best first): {', '.join(ra)} -> "
                         f"{', '.join(rb)}; name no winner between the rows that swapped")
    ok = not missing and all(g["ok"] for g in groups)
    bits = _bit_counts(ka, kb)
    return SameReport(ok, groups, rows_beyond, missing, notes, rel_tol, bits["identical"], bits["shared"], bits["max_rel"])


def _keyed(rows: list[dict], columns) -> dict:
    return {tuple(str(r.get(c, NONE)) for c in columns): float(r["value"]) for r in rows}


def _same_bits(x: float, y: float) -> bool:
    return x == y or (math.isnan(x) and math.isnan(y))


def _bit_counts(ka: dict, kb: dict) -> dict:
    both = set(ka) & set(kb)
    differ = [(ka[k], kb[k]) for k in both if not _same_bits(ka[k], kb[k])]
    rel = [abs(x - y) / max(abs(x), abs(y)) if math.isfinite(x - y) else math.inf for x, y in differ]
    return dict(identical=len(both) - len(differ), shared=len(both), one_side=len(set(ka) ^ set(kb)),
                max_rel=max(rel, default=0.0))


def bitwise(rows_a: list[dict], rows_b: list[dict], key_columns) -> dict:
    """How many values of two tables (e.g. predictions.csv) with the same key are equal bit for bit:
    {"identical", "shared", "one_side": keys in one table only, "max_rel": largest relative difference}."""
    return _bit_counts(_keyed(rows_a, key_columns), _keyed(rows_b, key_columns))


def _ranking(means: dict) -> list[str]:
    """Condition labels by their mean over seeds of the primary metric, best first."""
    vals = {label(c): sum(v.values()) / len(v) for (c, m), v in means.items() if m == PRIMARY}
    return sorted(vals, key=lambda k: vals[k] if PRIMARY not in HIGHER_IS_BETTER else -vals[k])


def _same_mean(ds, key, va: list[float], vb: list[float], rel_tol: float) -> dict:
    (cond, metric), (mean_a, sd_a, n_a), (mean_b, sd_b, n_b) = key, mean_std(va), mean_std(vb)
    se = math.sqrt(sd_a**2 / n_a + sd_b**2 / n_b) if n_a > 1 and n_b > 1 else 0.0
    bounds = {"absolute": abs_tolerance(metric), "relative": rel_tol * max(abs(mean_a), abs(mean_b)), "2 SE": 2 * se}
    why = max(bounds, key=bounds.get)
    delta = mean_b - mean_a
    same = (math.isnan(mean_a) and math.isnan(mean_b)) or mean_a == mean_b or abs(delta) <= bounds[why]
    return dict(budget=ds[0], data=ds[1], label=label(cond), metric=metric, a=mean_a, b=mean_b, delta=delta,
                allowed=bounds[why], why=why, n_a=n_a, n_b=n_b, ok=bool(same))


def mixed_rate_warnings(per_path: list[tuple[Path, list[dict]]]) -> list[str]:
    """A warning per data set whose run folders (bare ``fit`` runs, read from their config.yaml) were
    trained at different sample rates: one table would rank losses computed on different signals."""
    rates: dict[str, dict[int, list[str]]] = {}
    for path, part in per_path:
        sr = (_read_yaml(path / "config.yaml").get("data") or {}).get("sample_rate") if path.is_dir() else None
        if sr and part:
            rates.setdefault(part[0]["data"], {}).setdefault(int(sr), []).append(path.name)
    return [f"warning: runs on data `{data}` were trained at different sample rates ("
            + "; ".join(f"{sr} Hz: {', '.join(names)}" for sr, names in sorted(by.items()))
            + "): their losses are measured on different signals, so one table does not rank them"
            for data, by in rates.items() if len(by) > 1]


# ----------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="results folders, experiment folders or run folders")
    parser.add_argument("--out", type=Path, help="also write the tables as markdown to this file")
    parser.add_argument("--csv", type=Path, help="also write mean/std per variant and metric as CSV")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT|FOLDER",
                        help="read W&B runs instead: online (ENTITY/PROJECT, with --group) or the offline runs under a folder")
    parser.add_argument("--group", help="the W&B group with --wandb: EXPERIMENT/BUDGET as `ablate` logs it "
                        "(e.g. e01-approach1-vs-approach2/cpu), or EXPERIMENT for all its budgets")
    parser.add_argument("--check-same", type=float, metavar="REL_TOL",
                        help="with two results folders (committed, rerun): exit 1 unless the rerun gives the same "
                             "answer within REL_TOL (e.g. 0.02 = 2 %%), per-metric absolute tolerances and 2 "
                             "standard errors of the seed means")


def run(args) -> int:
    from mst_single.experiments import tables
    from mst_single.fileio import write_text

    if args.check_same is not None:
        if len(args.paths) != 2 or args.wandb:
            raise MstError("--check-same needs exactly two results folders (committed, rerun)",
                           fix="mst-single compare experiments/NAME/results/BUDGET RERUN_FOLDER --check-same 0.02")
        report = check_same(rows_from_path(args.paths[0]), rows_from_path(args.paths[1]), args.check_same)
        print(report.text)
        return 0 if report.ok else 1
    if args.wandb:
        if Path(args.wandb).is_dir():
            runs = offline_runs(Path(args.wandb))
            if not runs:
                raise MstError("no W&B offline runs (wandb/offline-run-*/run-*.wandb) under this folder", args.wandb,
                               "pass the folder holding the run folders (e.g. experiments/NAME/results/BUDGET/runs)")
        elif not args.group:
            raise MstError("--wandb ENTITY/PROJECT needs --group G (the experiment name)",
                           fix="add --group e01-approach1-vs-approach2")
        else:
            runs = online_runs(args.wandb, args.group)
        rows = rows_from_wandb(runs, args.group)
    elif args.paths:
        per_path = [(Path(p), rows_from_path(p)) for p in args.paths]
        rows = [r for _, part in per_path for r in part]
        for line in mixed_rate_warnings(per_path):
            print(line, file=sys.stderr)
    else:
        raise MstError("nothing to compare", fix="pass results/run folders, or --wandb ENTITY/PROJECT --group G")
    rows, dropped = dedupe(rows)
    if dropped:
        print(f"note: {dropped} repeated rows ignored (the same experiment/budget/data/variant/fold/seed read twice: "
              "a rerun is not another seed)")
    md, csv_text = [], []
    for (budget, data), part in by_dataset(rows).items():
        labels, metrics, stats = tables.summarize(part)
        md.append(f"budget `{budget}`, data `{data}`:\n\n" + tables.markdown_table(labels, metrics, stats))
        csv_text.append(tables.summary_csv(labels, metrics, stats, budget, data))
    text = "\n".join(md)
    print(text, end="")
    if args.out:
        write_text(args.out, text)
    if args.csv:
        write_text(args.csv, csv_text[0] + "".join(c.split("\n", 1)[1] for c in csv_text[1:]))
    return 0

