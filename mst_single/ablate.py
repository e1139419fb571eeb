"""`mst-single ablate experiments/NAME`: train and evaluate every variant × seed of an experiment, plus
the baselines, and write one results folder.

Experiment config (``experiments/NAME/config.yaml``; its first line is the command that runs it)::

    # mst-single ablate experiments/NAME --budget smoke
    question: ...                       # free text, shown in results.md / report.html
    variants:                           # name -> what it trains
      approach1:
        configs: [configs/approach1.yaml]       # training configs, in order (``__base__`` followed)
        overrides: {model.loss.l1_weight: 0}    # dotted keys set on top (optional)
        train_fraction: 0.25                    # optional: keep this share of the training songs
    eval: {reference_policies: [other]}        # optional: anything of the base to change

Everything else comes from ``experiments/base.yaml`` (``base:`` names another file): ``seeds``,
``data`` (default data folder), ``budgets`` (``smoke`` / ``full`` / ...: dotted ``overrides`` for
every variant and the ``baselines`` budgets), the ``baselines`` list, ``eval`` and ``wandb``
settings. The experiment config is deep-merged over the base (mappings merge, lists replace).

Per variant, the training configs are merged (following ``__base__``) into one config, the budget's
overrides and then the variant's are applied, and the result is written to the run folder as
``variant.yaml`` and run as ``mst-single fit -c variant.yaml`` in a subprocess (fresh Lightning/W&B
state per run), with ``seed_everything`` = the seed. The same subprocess then evaluates
``checkpoints/last.ckpt`` on the test split (``mst_single.evaluate``; Approach 1 once per evaluation
reference policy) and writes ``eval.json``. A run whose ``eval.json`` was made from the same
settings is reused (``--force`` retrains). Then the baselines are fitted and evaluated in this
process, and ``results/`` is written: results.csv, results.md, PNG plots, report.html (+ audio/,
spectrograms/), provenance.json. Run folders are under ``results/runs/`` (not committed).

W&B: group = experiment name, run name = ``VARIANT-sSEED``, tags = approach, policy, experiment,
variant; each run's summary gets the test metrics as ``eval/<metric>`` (``eval/<policy>/<metric>``
for Approach 1). ``--export-sweep`` writes ``sweep.yaml``, a W&B grid over variant × seed whose
agents run ``mst-single ablate experiments/NAME --variant V --seed S``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mst_single.compare import COLUMNS, NONE
from mst_single.errors import MstError
from mst_single.fileio import write_json, write_text
from mst_single.provenance import REPO_ROOT
from mst_single.train import read_yaml_mapping

RESULTS = "results"
RUNS = "runs"  # under results/: training runs and data subsets (gitignored)
CONFIG_NAME = "config.yaml"
COMMAND_PREFIX = "# mst-single ablate "
README_BEGIN = "<!-- BEGIN results budget={budget} (written by mst-single ablate; do not edit) -->"
README_END = "<!-- END results budget={budget} -->"


# ----------------------------------------------------------------------------------------------- config
def deep_merge(a: dict, b: dict) -> dict:
    """``b`` over ``a``: mappings merge recursively, anything else (lists too) is replaced."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_dotted(cfg: dict, key: str, value) -> None:
    """``cfg["a"]["b"]["c"] = value`` for key ``a.b.c`` (creating mappings on the way)."""
    parts = key.split(".")
    node = cfg
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def resolve_path(p: str | Path, *bases: Path) -> Path:
    """``p`` as given if it exists (relative to the working folder), else under each base in turn."""
    p = Path(p)
    if p.is_absolute() or p.exists():
        return p
    for b in bases:
        if (b / p).exists():
            return b / p
    return p


def load_config_chain(path: Path, _chain: tuple = ()) -> dict:
    """A training config with its ``__base__`` chain merged in (base first), without the key."""
    path = path.resolve()
    if path in _chain:
        raise MstError("config inheritance loops back to this file", path, "remove the __base__ cycle")
    if not path.is_file():
        raise MstError("training config not found", path, "list files like configs/approach1.yaml in `configs:`")
    data = read_yaml_mapping(path)
    base = data.pop("__base__", None)
    merged: dict = {}
    for b in ([] if base is None else base if isinstance(base, list) else [base]):
        merged = deep_merge(merged, load_config_chain(path.parent / str(b), _chain + (path,)))
    return deep_merge(merged, data)


def load_experiment(folder: Path) -> dict:
    """The experiment config merged over its base, with ``name``, ``folder`` and ``command`` added."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise MstError(f"no {CONFIG_NAME} in the experiment folder", folder,
                       "pass a folder like experiments/e01-approach1-vs-approach2 (see experiments/README.md)")
    first = path.read_text(encoding="utf-8").splitlines()[:1]
    if not first or not first[0].startswith(COMMAND_PREFIX):
        raise MstError(f"the first line must be the command that runs it, as a comment ({COMMAND_PREFIX.strip()} ...)",
                       path, f"add e.g. '{COMMAND_PREFIX}{folder.as_posix()} --budget smoke' as line 1")
    own = read_yaml_mapping(path)
    base_name = own.pop("base", "../base.yaml")
    base = read_yaml_mapping(folder / base_name) if base_name else {}
    exp = deep_merge(base, own)
    exp.update(name=folder.resolve().name, folder=str(folder), command=first[0][2:].strip())
    variants = exp.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise MstError("the experiment lists no variants", path,
                       "add `variants:` mapping names to {configs: [configs/approach1.yaml], overrides: {...}}")
    for name, v in variants.items():
        if not isinstance(v, dict) or not v.get("configs"):
            raise MstError(f"variant {name!r} needs `configs:` (a list of training config files)", path,
                           "e.g. `configs: [configs/approach1.yaml]`")
        bad = set(v) - {"configs", "overrides", "train_fraction", "description"}
        if bad:
            raise MstError(f"variant {name!r} has unknown keys: {', '.join(sorted(bad))}", path,
                           "use configs, overrides, train_fraction, description")
        if "/" in name or name in {"identity", "mean-preset", "oracle", "raw", "target"}:
            raise MstError(f"variant name {name!r} is reserved or contains '/'", path, "rename the variant")
    return exp


def budget_of(exp: dict, budget: str) -> dict:
    budgets = exp.get("budgets") or {}
    if budget not in budgets:
        raise MstError(f"unknown budget {budget!r}", Path(exp["folder"]) / CONFIG_NAME,
                       f"use one of: {', '.join(budgets) or '(none defined: add budgets: to experiments/base.yaml)'}")
    return budgets[budget] or {}


def variant_config(exp: dict, name: str, budget: str, data_root: str) -> dict:
    """The complete training config of a variant: merged configs + budget overrides + variant overrides."""
    v = exp["variants"][name]
    budget_overrides = budget_of(exp, budget).get("overrides") or {}
    folder = Path(exp["folder"])
    cfg: dict = {}
    for c in v["configs"]:
        cfg = deep_merge(cfg, load_config_chain(resolve_path(c, REPO_ROOT, folder)))
    for key, value in {**budget_overrides, **(v.get("overrides") or {})}.items():
        set_dotted(cfg, key, value)
    set_dotted(cfg, "data.root", str(data_root))
    return cfg


def approach_policy(cfg: dict) -> tuple[str, str]:
    approach = (cfg.get("model") or {}).get("approach", NONE)
    policy = (cfg.get("data") or {}).get("reference_policy", "same") if approach == "approach1" else NONE
    return approach, policy


def eval_policies(exp: dict, approach: str) -> list[str]:
    if approach != "approach1":
        return [NONE]
    return list((exp.get("eval") or {}).get("reference_policies") or ["song"])


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- data
def train_subset(data_root: Path, cfg_data: dict, fraction: float, out: Path) -> Path:
    """A data folder of symlinks holding every val/test song and the first ``fraction`` of the
    training songs (ordered by a hash of their name, so smaller subsets are nested in larger ones).

    The hash split is per song name, so val/test of the subset are the full data's (checked).
    """
    from mst_single.data import _unit_hash, index_songs, split_songs

    kw = dict(sample_rate=int(cfg_data.get("sample_rate", 48000)), max_lag_seconds=cfg_data.get("max_lag_seconds", 0.5),
              allow_unmatched=cfg_data.get("allow_unmatched", False))
    split_kw = dict(seed=cfg_data.get("split_seed", 0), val_fraction=cfg_data.get("val_fraction", 0.1),
                    test_fraction=cfg_data.get("test_fraction", 0.1), split_file=cfg_data.get("split_file"))
    full = split_songs(index_songs(data_root, **kw, progress=False), **split_kw)
    train = sorted(full["train"], key=lambda s: _unit_hash(s.name, 12345))
    keep_train = train[:max(1, math.ceil(fraction * len(train)))]
    keep = keep_train + full["val"] + full["test"]
    if out.exists():
        shutil.rmtree(out)
    for sub in ("raw", "mixed"):
        (out / sub).mkdir(parents=True)
    for s in keep:
        for sub, src in (("raw", s.raw_path), ("mixed", s.mixed_path)):
            os.symlink(Path(src).resolve(), out / sub / Path(src).name)
    if (data_root / "truth.json").exists():
        os.symlink((data_root / "truth.json").resolve(), out / "truth.json")
    again = split_songs(index_songs(out, **kw, progress=False), **split_kw)
    for split in ("val", "test"):
        if [s.name for s in again[split]] != [s.name for s in full[split]]:
            raise MstError(f"the {fraction:g} training subset changes the {split} split", out,
                           "use a split_file listing val/test songs explicitly")
    return out


# ----------------------------------------------------------------------------------------------- units
class Unit:
    """One training run: a variant at a seed."""

    def __init__(self, exp: dict, variant: str, seed: int, budget: str, data_root: Path, runs_dir: Path):
        self.variant, self.seed = variant, int(seed)
        self.name = f"{variant}-s{seed}"
        self.run_dir = runs_dir / self.name
        self.config = variant_config(exp, variant, budget, str(data_root))
        if not self.config["data"].get("cache_dir"):  # analyse (align) each song once, not once per run
            self.config["data"]["cache_dir"] = str(runs_dir / "_cache")
        self.train_fraction = exp["variants"][variant].get("train_fraction")
        self.approach, self.policy = approach_policy(self.config)
        self.eval_policies = eval_policies(exp, self.approach)


def prepare_unit(unit: Unit, exp: dict, data_root: Path, runs_dir: Path, report: dict) -> dict:
    """Finish the unit's config (run folder, seed, W&B group/tags, data subset) and its worker spec."""
    cfg = json.loads(json.dumps(unit.config))
    if unit.train_fraction is not None and float(unit.train_fraction) < 1.0:
        sub = runs_dir / "_data" / f"train-{float(unit.train_fraction):g}"
        cfg["data"]["root"] = str(sub)
    cfg.update(seed_everything=unit.seed, run_name=unit.name, runs_dir=str(runs_dir),
               wandb_group=exp["name"], wandb_project=(exp.get("wandb") or {}).get("project", cfg.get("wandb_project")),
               tags=list(cfg.get("tags") or []) + [exp["name"], f"variant-{unit.variant}"])
    if (exp.get("wandb") or {}).get("enabled") is False:
        cfg["wandb"] = False
    ev = exp.get("eval") or {}
    spec = dict(experiment=exp["name"], variant=unit.variant, seed=unit.seed, approach=unit.approach,
                policy=unit.policy, eval_policies=unit.eval_policies, config=cfg,
                eval_data=dict(cfg["data"], root=str(data_root)),
                checkpoint=ev.get("checkpoint", "last"), train_fraction=unit.train_fraction)
    spec["hash"] = _hash(spec)
    spec["report"] = report if unit.seed == report.get("seed") else None
    return spec


def unit_done(unit: Unit, spec: dict) -> bool:
    f = unit.run_dir / "eval.json"
    if not f.exists():
        return False
    try:
        return json.loads(f.read_text()).get("hash") == spec["hash"]
    except ValueError:
        return False


def run_unit_subprocess(unit: Unit, spec: dict, index: int, total: int) -> dict:
    """Train + evaluate one unit in a fresh Python process; its output goes to ``run_dir/ablate.log``."""
    if unit.run_dir.exists():  # a stale or different earlier run: fit refuses existing checkpoints
        shutil.rmtree(unit.run_dir)
    unit.run_dir.mkdir(parents=True)
    write_json(unit.run_dir / "unit.json", spec)
    log = unit.run_dir / "ablate.log"
    print(f"[{index}/{total}] {unit.name}: training + evaluation ({unit.approach}"
          + (f", policy {unit.policy}" if unit.policy != NONE else "") + f")  log: {log}", flush=True)
    t0 = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_SILENT", "true")
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run([sys.executable, "-m", "mst_single.ablate", "--worker", str(unit.run_dir / "unit.json")],
                              stdout=f, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd())
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise MstError(f"run {unit.name} failed (exit code {proc.returncode}); last lines of its log:\n{tail}", log,
                       "fix the problem shown above and rerun (finished runs are reused)")
    result = json.loads((unit.run_dir / "eval.json").read_text())
    means = {r["eval_policy"]: r["value"] for r in result["rows"] if r["song"] == "mean" and r["metric"] == "mrstft"}
    shown = ", ".join(f"{k if k != NONE else 'test'} mrstft {v:.4f}" for k, v in means.items())
    print(f"[{index}/{total}] {unit.name}: done in {time.time() - t0:.0f} s ({shown})", flush=True)
    return result


# ----------------------------------------------------------------------------------------------- worker
def worker(spec_path: Path) -> int:
    """Inside the subprocess: ``fit``, then evaluate the checkpoint, then write ``eval.json``."""
    from mst_single import evaluate as E
    from mst_single.train import cli_main

    spec = json.loads(Path(spec_path).read_text())
    run_dir = Path(spec_path).parent
    t0 = time.time()
    write_text(run_dir / "variant.yaml", yaml.safe_dump(spec["config"], sort_keys=False))
    rc = cli_main(["fit", "-c", str(run_dir / "variant.yaml")])
    if rc != 0:
        return rc
    train_s = time.time() - t0
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if spec["checkpoint"] == "best":
        best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
        ckpt = best[-1] if best else ckpt
    model = E.load_model(ckpt)
    testset = E.TestSet(**spec["eval_data"])
    rows, params, audio = [], {}, {}
    report = spec.get("report")
    for policy in spec["eval_policies"]:
        results = E.evaluate_model(model, testset, "same" if policy == NONE else policy, progress=False)
        rows += result_rows(spec, policy, spec["seed"], results)
        key = label_key(spec["variant"], policy)
        params[key] = {r.song: r.params for r in results}
        if report:
            audio[key] = write_report_audio(results, report, key, testset.sample_rate)
    result = dict(hash=spec["hash"], experiment=spec["experiment"], variant=spec["variant"], seed=spec["seed"],
                  approach=spec["approach"], policy=spec["policy"], checkpoint=str(ckpt), train_seconds=train_s,
                  eval_seconds=time.time() - t0 - train_s, rows=rows, params=params, audio=audio)
    write_json(run_dir / "eval.json", result)
    _wandb_summary(rows)
    return 0


def _wandb_summary(rows: list[dict]) -> None:
    """Test metrics into the (still open) W&B run of this process, then close it."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is None:
        return
    summary = {}
    for r in rows:
        if r["song"] == "mean":
            key = "eval/" + (f"{r['eval_policy']}/" if r["eval_policy"] != NONE else "") + r["metric"]
            summary[key] = r["value"]
    wandb.run.summary.update(summary)
    wandb.finish()


def label_key(variant: str, eval_policy: str) -> str:
    return variant if eval_policy in (NONE, None) else f"{variant}@{eval_policy}"


def result_rows(spec: dict, eval_policy: str, seed: int, results) -> list[dict]:
    """results.csv rows (:data:`mst_single.compare.COLUMNS`) for one evaluation: per song + mean."""
    from mst_single.evaluate import song_means

    base = dict(experiment=spec["experiment"], variant=spec["variant"], approach=spec["approach"],
                policy=spec["policy"], eval_policy=eval_policy, seed=seed)
    rows = [dict(base, song=r.song, metric=k, value=float(v)) for r in results for k, v in r.metrics.items()]
    rows += [dict(base, song="mean", metric=k, value=v) for k, v in song_means(results).items()]
    return rows


def write_report_audio(results, report: dict, key: str, sample_rate: int) -> dict:
    """The first ``report["seconds"]`` of each report song's output -> results/audio/SONG/KEY.flac."""
    out = {}
    for r in results:
        if r.song in report["songs"] and r.output is not None:
            out[r.song] = str(save_clip(Path(report["audio_dir"]) / r.song / f"{_safe(key)}.{report['format']}",
                                        r.output, sample_rate, report["seconds"]))
    return out


def save_clip(path: Path, audio, sample_rate: int, seconds: float) -> Path:
    """A short 16-bit clip for listening (clipped to +-1: it is for the ear, the metrics used float)."""
    import numpy as np

    from mst_single.fileio import write_audio

    clip = np.clip(np.asarray(audio, dtype=np.float32)[..., : int(seconds * sample_rate)], -1.0, 1.0)
    return write_audio(path, clip, sample_rate, subtype="PCM_16")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name)


# ----------------------------------------------------------------------------------------------- baselines
def run_baselines(exp: dict, budget: str, units: list[Unit], data_root: Path, runs_dir: Path, report: dict) -> dict:
    """Fit and evaluate the experiment's baselines (cached in ``runs/_baselines/baselines.json``)."""
    import torch

    from mst_single import baselines as B
    from mst_single import evaluate as E
    from mst_single.console import VocalConsole

    names = list(exp.get("baselines") or [])
    unknown = set(names) - set(B.NAMES)
    if unknown:
        raise MstError(f"unknown baselines: {', '.join(sorted(unknown))}", Path(exp["folder"]) / CONFIG_NAME,
                       f"use some of {', '.join(B.NAMES)}")
    if not names:
        return {"rows": [], "params": {}, "audio": {}}
    cfg = units[0].config
    data, model = dict(cfg["data"], root=str(data_root)), cfg.get("model") or {}
    settings = deep_merge(exp.get("baseline_settings") or {}, budget_of(exp, budget).get("baselines") or {})
    seed = int(settings.get("seed", 0))
    spec = dict(names=names, data=data, model={k: model.get(k) for k in ("stages", "target_lufs")},
                settings=settings, report=report)
    spec_hash = _hash(spec)
    cache = runs_dir / "_baselines" / "baselines.json"
    if cache.exists():
        old = json.loads(cache.read_text())
        if old.get("hash") == spec_hash:
            print(f"baselines: reusing {cache}", flush=True)
            return old
    t0 = time.time()
    torch.manual_seed(seed)
    testset = E.TestSet(**data)
    console = VocalConsole(int(data["sample_rate"]), model.get("stages"))
    target_lufs = float(model.get("target_lufs", -23.0))
    rows, params, audio, fits = [], {}, {}, {}
    meta = dict(experiment=exp["name"], approach="baseline", policy=NONE)
    for name in names:
        t1 = time.time()
        if name == "identity":
            results = E.evaluate_identity(testset)
        elif name == "mean-preset":
            mp = settings.get("mean_preset") or {}
            p, hist = B.mean_preset(console, testset.splits["train"], target_lufs, int(mp.get("steps", 100)),
                                    int(mp.get("batch_size", 4)), float(mp.get("segment_seconds", data["segment_seconds"])),
                                    float(mp.get("lr", 0.05)), seed, data.get("split_seed", 0),
                                    data.get("silence_threshold_db", -50.0))
            fits[name] = {"loss_first": hist[0], "loss_last": hist[-1], "steps": len(hist)}
            results = E.evaluate_setting(console, target_lufs, testset, p)
        else:  # oracle
            oc = settings.get("oracle") or {}
            per_song = {}
            for song in testset.names:
                raw, target = testset.audio(song)
                per_song[song], hist = B.oracle(console, raw, target, target_lufs, int(oc.get("steps", 100)),
                                                int(oc.get("batch_size", 4)),
                                                float(oc.get("segment_seconds", data["segment_seconds"])),
                                                float(oc.get("lr", 0.05)), seed, testset.raw_lufs(song), name=song)
                fits.setdefault(name, {})[song] = {"loss_first": hist[0], "loss_last": hist[-1], "steps": len(hist)}
            results = E.evaluate_setting(console, target_lufs, testset, per_song)
        rows += result_rows(dict(meta, variant=name), NONE, seed, results)
        params[name] = {r.song: r.params for r in results if r.params}
        audio[name] = write_report_audio(results, report, name, testset.sample_rate)
        print(f"baseline {name}: {time.time() - t1:.0f} s, mrstft "
              f"{next(r['value'] for r in rows if r['variant'] == name and r['song'] == 'mean' and r['metric'] == 'mrstft'):.4f}",
              flush=True)
    # the unprocessed inputs for the report
    for song in report["songs"]:
        raw, target = testset.audio(song)
        audio.setdefault("raw", {})[song] = str(save_clip(Path(report["audio_dir"]) / song / f"raw.{report['format']}",
                                                         raw, testset.sample_rate, report["seconds"]))
        audio.setdefault("target", {})[song] = str(save_clip(
            Path(report["audio_dir"]) / song / f"target.{report['format']}", target, testset.sample_rate, report["seconds"]))
    out = dict(hash=spec_hash, rows=rows, params=params, audio=audio, fits=fits, seconds=time.time() - t0,
               truth={s: testset.truth_params(s) for s in testset.names}, test_songs=testset.names,
               sample_rate=testset.sample_rate, specs=[[s.name, s.unit] for s in console.specs])
    write_json(cache, out)
    return out


# ----------------------------------------------------------------------------------------------- outputs
def write_results_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "value": repr(float(r["value"]))})
    write_text(path, buf.getvalue())


def results_markdown(exp: dict, budget: str, seeds: list[int], rows: list[dict], data_root: Path, wall_s: float,
                     command: str, baseline_seed: int) -> tuple[str, str]:
    """(results.md text, the bare table) — mean ± std over seeds of the per-seed song means."""
    from mst_single.compare import markdown_table, summarize

    labels, metrics, stats = summarize(rows, with_experiment=False)
    table = markdown_table(labels, metrics, stats)
    songs = sorted({r["song"] for r in rows if r["song"] != "mean"})
    text = [f"# {exp['name']}: results (budget `{budget}`)", ""]
    if exp.get("question"):
        text += [f"**Question.** {str(exp['question']).strip()}", ""]
    text += [
        f"Command: `{command}`  ",
        f"Data: `{data_root}` ({len(songs)} test songs: {', '.join(songs)}); seeds {seeds}; "
        f"baselines fitted once (seed {baseline_seed}). Wall time {wall_s / 60:.1f} min.",
        "",
        "Each cell: mean ± sample std over seeds of the mean over test songs (whole songs, see "
        "`mst_single/evaluate.py`). ↓ lower is better, ↑ higher is better; best in bold. "
        "`(eval ref: P)`: Approach 1 evaluated with references chosen by policy P.",
        "",
        table,
    ]
    return "\n".join(text), table


def update_readme(folder: Path, budget: str, block: str) -> bool:
    """Replace the README's results block for ``budget`` (between the BEGIN/END markers) if it has one."""
    readme = folder / "README.md"
    if not readme.exists():
        return False
    text = readme.read_text(encoding="utf-8")
    begin, end = README_BEGIN.format(budget=budget), README_END.format(budget=budget)
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    write_text(readme, f"{head}{begin}\n{block.strip()}\n{end}{tail}")
    return True


def build_report(out: Path, exp: dict, table_md: str, plots: list[Path], evals: list[dict], base: dict,
                 report: dict, command: str) -> Path:
    """report.html: per report song, players for raw / target / each variant (first seed) / baselines,
    a spectrogram of all of them, and the predicted vs true parameters."""
    import soundfile as sf

    from mst_single.report import spectrogram_png, write_report

    first = [e for e in evals if e["seed"] == report["seed"]]
    sources = [("raw", base["audio"].get("raw", {})), ("target (mixed)", base["audio"].get("target", {}))]
    for e in first:
        for key, files in e["audio"].items():
            sources.append((f"{key} (seed {e['seed']})", files))
    for name in exp.get("baselines") or []:
        sources.append((f"{name} (baseline)", base["audio"].get(name, {})))
    units = dict(base.get("specs") or [])
    songs = []
    for song in report["songs"]:
        audio = [(label, files[song]) for label, files in sources if song in files]
        signals = []
        for label, f in audio:
            x, sr = sf.read(f, always_2d=True, dtype="float32")
            signals.append((label, x.T))
        spec = spectrogram_png(signals, sr, out / "spectrograms" / f"{_safe(song)}.png") if signals else None
        truth = base.get("truth", {}).get(song) or {}
        columns, per = ["true"], [truth]
        for e in first:
            for key, p in e["params"].items():
                columns.append(key)
                per.append(p.get(song, {}))
        for name, p in base.get("params", {}).items():
            if not p:  # identity has no setting
                continue
            columns.append(name)
            per.append(p.get(song, {}))
        rows = [[n, units.get(n, ""), *[d.get(n) for d in per]] for n in units]
        note = (f"First {report['seconds']:g} s of the song (16-bit FLAC, clipped at 0 dBFS for listening; "
                "metrics use the whole song in float). Parameters in units; `true` from truth.json "
                "where the console has a counterpart.")
        songs.append(dict(name=song, note=note, audio=audio, spectrogram=spec, params=dict(columns=columns, rows=rows)))
    intro = (f"{str(exp.get('question') or '').strip()} Command: {command}. Results folder written by "
             "mst-single ablate; audio players reference files under audio/.")
    return write_report(out / "report.html", f"{exp['name']}", intro, table_md, plots, songs)


# ----------------------------------------------------------------------------------------------- sweep
def sweep_yaml(exp: dict, budget: str, seeds: list[int]) -> str:
    """A W&B sweep (grid over variant × seed) whose agents run this same command, one unit each."""
    folder = Path(exp["folder"]).as_posix()
    sweep = {
        "name": exp["name"],
        "project": (exp.get("wandb") or {}).get("project", "vocal-mst"),
        "program": "mst-single",
        "method": "grid",
        "parameters": {"variant": {"values": list(exp["variants"])}, "seed": {"values": list(seeds)}},
        "command": ["mst-single", "ablate", folder, "--budget", budget, "${args}"],
    }
    head = (f"# W&B sweep for {exp['name']} (budget {budget}), written by: mst-single ablate {folder} --budget {budget} "
            f"--export-sweep\n# wandb sweep {folder}/sweep.yaml   then on each machine:   wandb agent ENTITY/PROJECT/SWEEP_ID\n"
            f"# Each agent runs one variant × seed (`--variant V --seed S`); collect with\n"
            f"#   mst-single compare --wandb ENTITY/{sweep['project']} --group {exp['name']}\n")
    return head + yaml.safe_dump(sweep, sort_keys=False)


# ----------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", type=Path, help="experiment folder, e.g. experiments/e01-approach1-vs-approach2")
    parser.add_argument("--data", type=Path, help="data folder (raw/, mixed/); default: the base config's `data`")
    parser.add_argument("--budget", default="smoke", help="budget defined in experiments/base.yaml (smoke, full)")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 per variant (default: the config's `seeds`)")
    parser.add_argument("--out", type=Path, help="results folder (default: EXPERIMENT/results)")
    parser.add_argument("--force", action="store_true", help="retrain runs even if their eval.json is up to date")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at the same time (each uses OMP_NUM_THREADS threads; results do not change)")
    parser.add_argument("--variant", help="run only this variant (training + evaluation; no baselines or tables)")
    parser.add_argument("--seed", type=int, help="run only this seed (with or without --variant)")
    parser.add_argument("--export-sweep", action="store_true",
                        help="write EXPERIMENT/sweep.yaml (W&B grid over variant × seed) and stop")


def run(args) -> int:
    t_start = time.time()
    exp = load_experiment(args.experiment)
    folder = Path(args.experiment)
    budget = args.budget
    budget_of(exp, budget)
    n_seeds = args.seeds if args.seeds is not None else int(budget_of(exp, budget).get("seeds", exp.get("seeds", 3)))
    if n_seeds < 1:
        raise MstError("--seeds must be at least 1", fix="e.g. --seeds 3")
    seeds = list(range(n_seeds))
    if args.export_sweep:
        path = write_text(folder / "sweep.yaml", sweep_yaml(exp, budget, seeds))
        print(f"wrote {path}")
        return 0
    data_root = Path(args.data or exp.get("data") or "data/demo")
    if not (data_root / "raw").is_dir() or not (data_root / "mixed").is_dir():
        raise MstError("the data folder has no raw/ and mixed/ subfolders", data_root,
                       "build the demo data with `mst-single demo-data data/demo` (or `make demo`), or pass --data DIR")
    out = Path(args.out) if args.out else folder / RESULTS
    runs_dir = out / RUNS
    variants = list(exp["variants"])
    if args.variant:
        if args.variant not in variants:
            raise MstError(f"no variant {args.variant!r} in this experiment", folder / CONFIG_NAME,
                           f"use one of {', '.join(variants)}")
        variants = [args.variant]
    if args.seed is not None:
        seeds = [args.seed]
    unit_mode = bool(args.variant) or args.seed is not None
    ev = exp.get("eval") or {}
    units = [Unit(exp, v, s, budget, data_root, runs_dir) for v in variants for s in seeds]
    _check_comparable(units, folder)

    from mst_single.evaluate import TestSet

    test_names = TestSet(**dict(units[0].config["data"], root=str(data_root))).names
    if not test_names:
        raise MstError("the test split is empty", data_root, "add songs or raise data.test_fraction")
    report = dict(seed=seeds[0] if not unit_mode else 0, songs=test_names[: int(ev.get("report_songs", 3))],
                  seconds=float(ev.get("report_seconds", 8.0)), format=ev.get("audio_format", "flac"),
                  audio_dir=str(out / "audio"))
    for fraction in sorted({u.train_fraction for u in units if u.train_fraction is not None and u.train_fraction < 1}):
        train_subset(data_root, units[0].config["data"], float(fraction), runs_dir / "_data" / f"train-{float(fraction):g}")

    print(f"{exp['name']}: {len(units)} runs ({', '.join(variants)} × seeds {seeds}), budget {budget}, data {data_root}, "
          f"{len(test_names)} test songs", flush=True)
    specs = [prepare_unit(u, exp, data_root, runs_dir, report) for u in units]

    def one(i):
        unit, spec = units[i], specs[i]
        if not args.force and unit_done(unit, spec):
            print(f"[{i + 1}/{len(units)}] {unit.name}: up to date, reusing {unit.run_dir / 'eval.json'}", flush=True)
            return json.loads((unit.run_dir / "eval.json").read_text())
        return run_unit_subprocess(unit, spec, i + 1, len(units))

    base = None
    if args.jobs > 1:  # each run is its own process; threads only wait for them
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(one, i) for i in range(len(units))]
            if not unit_mode:  # the baselines need no trained run: fit them meanwhile
                base = run_baselines(exp, budget, units, data_root, runs_dir, report)
            evals = [f.result() for f in futures]
    else:
        evals = [one(i) for i in range(len(units))]
    unit_info = [dict(run=u.name, run_dir=str(u.run_dir), train_seconds=e.get("train_seconds"),
                      eval_seconds=e.get("eval_seconds"), config=sp["config"]) for u, e, sp in zip(units, evals, specs)]
    if unit_mode:
        print("unit mode (--variant/--seed): run folders written; no baselines or tables "
              f"(run `mst-single ablate {folder.as_posix()} --budget {budget}` to collect)")
        return 0

    if base is None:
        base = run_baselines(exp, budget, units, data_root, runs_dir, report)
    rows = [r for e in evals for r in e["rows"]] + base["rows"]
    out.mkdir(parents=True, exist_ok=True)
    write_results_csv(out / "results.csv", rows)

    from mst_single.report import metric_plots, training_curves_png

    plots = metric_plots(rows, out / "plots")
    curves = training_curves_png({u.name: u.run_dir / "metrics.csv" for u in units}, out / "plots" / "training_curves.png")
    plots += [curves] if curves else []
    command = "mst-single ablate " + " ".join(_argv_of(args))
    wall = time.time() - t_start
    md, table = results_markdown(exp, budget, seeds, rows, data_root, wall, command,
                                 int((deep_merge(exp.get("baseline_settings") or {},
                                                 budget_of(exp, budget).get("baselines") or {})).get("seed", 0)))
    write_text(out / "results.md", md + "\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n")
    build_report(out, exp, table, plots, evals, base, report, command)
    write_json(out / "provenance.json", _provenance(exp, budget, seeds, data_root, command, unit_info, base, time.time() - t_start))
    if args.out is None:
        block = md.split("\n", 2)[2] if md.startswith("# ") else md
        update_readme(folder, budget, block)
    print()
    print(table, end="")
    print(f"\nwrote {out}/results.csv, results.md, report.html, plots/, provenance.json "
          f"({(time.time() - t_start) / 60:.1f} min)")
    return 0


def _check_comparable(units: list[Unit], folder: Path) -> None:
    """Every variant must be evaluated on the same songs at the same rate, or the table lies."""
    keys = ("sample_rate", "split_seed", "val_fraction", "test_fraction", "split_file")
    first = {k: units[0].config["data"].get(k) for k in keys}
    for u in units[1:]:
        here = {k: u.config["data"].get(k) for k in keys}
        if here != first:
            diff = {k: (first[k], here[k]) for k in keys if first[k] != here[k]}
            raise MstError(f"variant {u.variant!r} changes the evaluation data settings {diff}", folder / CONFIG_NAME,
                           "keep data.sample_rate and the split settings equal across variants "
                           "(use train_fraction to vary the training data)")


def _argv_of(args) -> list[str]:
    out = [Path(args.experiment).as_posix()]
    for flag, value in (("--data", args.data), ("--budget", args.budget), ("--seeds", args.seeds), ("--out", args.out),
                        ("--variant", args.variant), ("--seed", args.seed)):
        if value is not None:
            out += [flag, str(value)]
    out += ["--jobs", str(args.jobs)] if getattr(args, "jobs", 1) > 1 else []
    return out + (["--force"] if args.force else [])


def _provenance(exp, budget, seeds, data_root, command, unit_info, base, wall_s) -> dict:
    from mst_single import provenance

    exp_public = {k: v for k, v in exp.items() if k not in ("folder",)}
    return provenance.collect(command=command, experiment=exp["name"], budget=budget, seeds=seeds,
                              data=str(data_root), experiment_config=exp_public, runs=unit_info,
                              baselines={"seconds": base.get("seconds"), "fits": base.get("fits")},
                              wall_time_s=round(wall_s, 1))


def main(argv=None) -> int:
    """``python -m mst_single.ablate --worker SPEC`` (used by ``ablate`` itself) or the normal CLI."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return worker(Path(argv[1]))
    parser = argparse.ArgumentParser(prog="mst-single ablate")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except MstError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
