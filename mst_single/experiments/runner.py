"""`mst-single ablate` at work: plan the units, train and evaluate each in a subprocess, fit the
baselines, and write the results folder.

A unit is one training run: variant × data set × fold × seed. Per unit the variant's training
configs are merged (``__base__`` followed), the budget's overrides and then the variant's are
applied, ``data.root`` / ``data.split_file`` point at the data set and the unit's split (see
``folds``), and the result is written to the run folder as ``variant.yaml`` and run as
``mst-single fit -c variant.yaml`` in a fresh Python process (``python -m mst_single.ablate --worker
unit.json``: fresh Lightning/W&B state; its output goes to the run folder's ``ablate.log``), with
``seed_everything`` = the seed. The same process evaluates the checkpoint on the unit's test songs
(``experiments.evaluate``; Approach 1 once per evaluation reference policy, plus the ``song-alt``
predictions) and writes ``eval.json``. A unit whose ``eval.json`` was made from the same settings
is reused (``--force`` retrains). The baselines are fitted per data set × fold in this process
(``experiments.baselines``), meanwhile when ``--jobs`` > 1.

Results folder (``experiments/NAME/results/<budget>/``, or ``--out``): ``results.csv``,
``predictions.csv``, ``runs.csv`` (``experiments.records``), the tables, plots and report (written
by ``experiments.tables.write_results``), ``provenance.json``, and ``runs/`` (not committed): run
folders ``VARIANT-DATA-fFOLD-sSEED/``, ``_data/DATA/`` (split files, training subsets, the
baselines' fits) and ``_cache/`` (song analysis).

W&B (offline unless ``WANDB_MODE=online``): group ``EXPERIMENT/BUDGET``; run id =
``records.run_id(experiment, budget, data, variant, fold, seed)`` (a rerun resumes/replaces its
run, ``resume="allow"``); run name ``VARIANT-DATA-fFOLD-sSEED``; tags experiment, ``budget-B``,
``data-D``, ``variant-V``, ``fold-K``, ``seed-S`` (+ approach/policy); the same keys in the run
config; test metrics in the summary as ``eval/<metric>`` (``eval/<policy>/<metric>`` for
Approach 1). Each baseline × data × fold is a run of the group too (job type ``baseline``, its
metrics and fit steps in the summary).

Logs: one line per step of the plan (``[3/12] approach1 fold 1 seed 0 (demo): training +
evaluation ...``), the baselines' progress, and progress bars only on a terminal
(``mst_single.progress``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mst_single.errors import MstError
from mst_single.experiments import config as C
from mst_single.experiments import folds as F
from mst_single.experiments import records as R
from mst_single.experiments.config import NONE
from mst_single.fileio import write_json, write_text
from mst_single.progress import say

RESULTS = "results"
RUNS = "runs"  # under the results folder: run folders, split files, caches (gitignored)
README_BEGIN = "<!-- BEGIN results budget={budget} (written by mst-single ablate; do not edit) -->"
README_END = "<!-- END results budget={budget} -->"


# ----------------------------------------------------------------------------------------------- plan
@dataclass
class Unit:
    """One training run: a variant on a data set, fold and seed."""

    variant: str
    data: str
    fold: int
    seed: int
    config: dict  # the complete training config (data.root/split_file set)
    eval_data: dict  # data section the evaluation reads (the whole data folder, the unit's split file)
    split: dict  # {"train", "val", "test": [song names]} of the training data
    run_dir: Path
    run_id: str
    approach: str
    policy: str
    eval_policies: list
    train_fraction: float | None = None
    subset: Path | None = None  # training-subset folder to build (train_fraction < 1)
    targets: str | None = None  # where its parameter targets come from (C.TARGET_SOURCES); None: no targets
    spec: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def label(self) -> str:
        return f"{self.variant} fold {self.fold} seed {self.seed} ({self.data})"


@dataclass
class Plan:
    exp: dict
    budget: str
    seeds: list
    folds: int
    data: dict  # name -> {"folder": Path, "build": str}
    out: Path
    runs_dir: Path
    splits: dict  # data -> {fold: split}
    split_files: dict  # data -> {fold: path}
    units: list
    report: dict
    unit_mode: bool = False
    refitted: set = field(default_factory=set)  # (data, song) whose oracle --force already refitted

    @property
    def group(self) -> str:
        return f"{self.exp['name']}/{self.budget}"


def variants_of(args) -> list[str]:
    """--variant's values (a list from the CLI; one name from scripts that build the namespace)."""
    v = getattr(args, "variant", None)
    return [v] if isinstance(v, str) else list(v or [])


def make_plan(args) -> Plan:
    """Everything a run of ``mst-single ablate`` will do, checked before anything is trained."""
    exp = C.load_experiment(args.experiment)
    folder = Path(args.experiment)
    budget = args.budget
    C.budget_of(exp, budget)
    seeds = C.seeds_of(exp, budget, args.seeds)
    k = C.folds_of(exp, budget, args.folds)
    data = C.data_sets(exp, args.data)
    variants = list(exp["variants"])
    # --variant picks units (unit mode); `only_variants` (ablate --check --variant) keeps baselines and tables
    unit_variants = variants_of(args)
    chosen = unit_variants or list(getattr(args, "only_variants", None) or [])
    if chosen:
        for v in chosen:
            if v not in variants:
                raise MstError(f"no variant {v!r} in this experiment", folder / C.CONFIG_NAME,
                               f"use one of {', '.join(variants)}")
        variants = [v for v in variants if v in chosen]
    if args.data_name:
        if args.data_name not in data:
            raise MstError(f"no data set {args.data_name!r} in this experiment", folder / C.CONFIG_NAME,
                           f"use one of {', '.join(data)}")
        data = {args.data_name: data[args.data_name]}
    # the report's seed and songs come from every seed and fold even when --seed/--fold pick one: they key
    # the baselines' cache, which a fold-1 plan (scripts/ridge_heldout.py --fold 1) would otherwise refit
    report_seed = seeds[0]
    if args.seed is not None:
        seeds = [args.seed]
    used = [d for d in data if any(d in C.variant_data(exp, v, list(data)) for v in variants)]
    if not used:
        raise MstError("no variant runs on the chosen data sets", folder / C.CONFIG_NAME, "check the variants' `data:` lists")
    for d in used:
        C.check_data_folder(d, data[d])
    out = Path(args.out) if args.out else folder / RESULTS / budget
    runs_dir = out / RUNS
    configs = {v: C.variant_config(exp, v, budget, str(data[used[0]]["folder"])) for v in variants}
    C.check_comparable(configs, folder)
    settings = C.data_settings(configs[variants[0]]["data"])

    splits, split_files, all_splits = {}, {}, {}
    for d in used:
        # ablate has no flag for it: the budget's overrides reach every variant's data settings
        skip = (f"add `budgets: {{{budget}: {{overrides: {{data.allow_unmatched: true}}}}}}` to "
                f"{folder / C.CONFIG_NAME} to skip them")
        names = F.song_names(data[d]["folder"], settings["allow_unmatched"], skip)
        splits[d] = all_splits[d] = F.splits(names, dict(settings, root=str(data[d]["folder"])), k)
        if args.fold is not None:
            if args.fold not in splits[d]:
                raise MstError(f"fold {args.fold} has no test songs in data set {d!r}", data[d]["folder"],
                               f"use one of the folds {sorted(splits[d])}")
            splits[d] = {args.fold: splits[d][args.fold]}
        if not any(s["test"] for s in splits[d].values()):
            raise MstError("the test split is empty", data[d]["folder"], "add songs or raise data.test_fraction")
        split_files[d] = {f: data_dir(runs_dir, d) / "splits" / f"fold{f}.json" for f in splits[d]}

    ev = exp.get("eval") or {}
    report_songs = {}
    for d in used:
        tested = [n for f in sorted(all_splits[d]) for n in all_splits[d][f]["test"]]
        report_songs[d] = tested[: int(ev.get("report_songs", 3))]
    report = dict(seed=report_seed, songs=report_songs, seconds=float(ev.get("report_seconds", 8.0)),
                  format=ev.get("audio_format", "flac"), audio_dir=str(out / "audio"))
    plan = Plan(exp, budget, seeds, k, data, out, runs_dir, splits, split_files, [], report,
                unit_mode=bool(unit_variants) or args.seed is not None or args.fold is not None or bool(args.data_name))
    for v in variants:
        for d in C.variant_data(exp, v, used):
            for f in sorted(splits[d]):
                for s in seeds:
                    plan.units.append(_unit(plan, v, d, f, s))
    return plan


def _unit(plan: Plan, variant: str, data: str, fold: int, seed: int) -> Unit:
    exp = plan.exp
    root = plan.data[data]["folder"]
    cfg = C.variant_config(exp, variant, plan.budget, str(root))
    if not cfg["data"].get("cache_dir"):  # analyse (align) each song once, not once per run
        cfg["data"]["cache_dir"] = str(plan.runs_dir / "_cache")
    split_file = plan.split_files[data][fold]
    cfg["data"]["split_file"] = str(split_file)
    eval_data = dict(cfg["data"], root=str(root), split_file=str(split_file))
    split = plan.splits[data][fold]
    fraction = exp["variants"][variant].get("train_fraction")
    subset = None
    if fraction is not None and float(fraction) < 1.0:
        subset = data_dir(plan.runs_dir, data) / f"fold{fold}-train-{float(fraction):g}"
        cfg["data"]["root"] = str(subset)
        cfg["data"]["split_file"] = str(subset_split_file(subset))
    approach, policy = C.approach_policy(cfg)
    refine = exp["variants"][variant].get("refine")
    if refine and approach != "approach1":
        raise MstError(f"variant {variant!r}: `refine:` needs a reference, so Approach 1 (it trains {approach})",
                       Path(exp["folder"]) / C.CONFIG_NAME, "remove `refine:` or train configs/approach1.yaml")
    if refine and refine.get("start") == "ridge" and not (cfg.get("model") or {}).get("style_ridge"):
        raise MstError(f"variant {variant!r}: `refine: {{start: ridge}}` starts from the model's style ridge, which "
                       "only runs trained with model.style_ridge: true have", Path(exp["folder"]) / C.CONFIG_NAME,
                       "add `model.style_ridge: true` to the variant's overrides, or `start: network`")
    if refine and refine.get("other_vocal") == "house" and not (cfg.get("model") or {}).get("house_preset"):
        raise MstError(f"variant {variant!r}: `refine: {{other_vocal: house}}` mixes with the model's house preset, "
                       "which only runs trained with model.house_preset: true have", Path(exp["folder"]) / C.CONFIG_NAME,
                       "add `model.house_preset: true` to the variant's overrides, or `other_vocal: refine`")
    targets = exp["variants"][variant].get("param_targets", "oracle") if uses_targets(cfg) else None
    if targets:  # each training song's oracle (or true) setting, written by prepare_targets before training
        cfg["data"]["param_targets"] = str(targets_file(plan.runs_dir, data, fold, targets))
    run_dir = plan.runs_dir / f"{variant}-{data}-f{fold}-s{seed}"
    rid = R.run_id(exp["name"], plan.budget, data, variant, fold, seed)
    unit = Unit(variant, data, fold, seed, cfg, eval_data, split, run_dir, rid, approach, policy,
                C.eval_policies(exp, approach), fraction, subset, targets)
    wb = exp.get("wandb") or {}
    cfg.update(seed_everything=seed, run_name=run_dir.name, runs_dir=str(run_dir.parent), wandb_group=plan.group,
               wandb_project=wb.get("project", cfg.get("wandb_project")),
               tags=list(cfg.get("tags") or []) + wandb_tags(exp["name"], plan.budget, data, variant, fold, seed))
    if wb.get("enabled") is False:
        cfg["wandb"] = False
    spec = dict(experiment=exp["name"], budget=plan.budget, data=data, variant=variant, fold=fold, seed=seed,
                run_id=rid, approach=approach, policy=policy, eval_policies=unit.eval_policies, config=cfg,
                eval_data=eval_data, split=split, checkpoint=(exp.get("eval") or {}).get("checkpoint", "last"),
                train_fraction=fraction)
    if refine:  # only when set: the hashes (and reuse) of every other run stay as they were
        spec["refine"] = refine
    if targets:  # the targets' content depends on the oracle's fitting settings
        oracle = C.baseline_settings(exp, plan.budget).get("oracle")
        prior = dict(oracle=oracle, prior_weight=C.prior_weight(exp)) if targets == "oracle-prior" else None
        spec["param_targets"] = {"oracle": oracle, "oracle-prior": prior}.get(targets, targets)
    spec["hash"] = C.stable_hash(spec)
    spec["report"] = report_for(plan, data) if seed == plan.report["seed"] else None
    unit.spec = spec
    return unit


def subset_split_file(subset: Path) -> Path:
    """A training subset's own split file, next to its folder: ``fold0-train-0.25`` -> ``fold0-train-0.25.json``
    (not ``with_suffix``, which would give every fraction the one file ``fold0-train-0.json``)."""
    return subset.parent / f"{subset.name}.json"


def data_dir(runs_dir: Path, data: str) -> Path:
    """Per data set: split files, training subsets, the baselines' fits (``runs/_data/DATA/``)."""
    return runs_dir / "_data" / data


def oracle_cache(plan: Plan) -> Path:
    """The oracle's per-song fits (``experiments/.cache/oracle/``, gitignored; $MST_ORACLE_CACHE
    overrides): shared by every experiment and budget, keyed by the song's files and every fitting
    setting (``baselines.fit_songs``), so a song is fitted once for the baseline and the targets."""
    env = os.environ.get("MST_ORACLE_CACHE")
    return Path(env) if env else Path(plan.exp["folder"]).parent / ".cache" / "oracle"


def uses_targets(cfg: dict) -> bool:
    return float((cfg.get("model") or {}).get("param_loss_weight") or 0.0) > 0.0


def targets_file(runs_dir: Path, data: str, fold: int, source: str = "oracle") -> Path:
    return data_dir(runs_dir, data) / (f"param-targets-fold{fold}.json" if source == "oracle"
                                       else f"param-targets-{source}-fold{fold}.json")


def fit_oracle(plan: Plan, data: str, model: dict, songs: list, force: bool = False,
               jobs: int = 1) -> tuple[dict, object]:
    """The oracle baseline's fits of ``songs`` (SongInfo) on one data set: ({song: (p (1, P), FitInfo)},
    console). ``force`` refits each song once per ``ablate`` run, then reuses that fit; ``jobs``
    songs at once (``baselines.fit_songs``)."""
    from mst_single.console import VocalConsole
    from mst_single.experiments import baselines as B

    settings = C.baseline_settings(plan.exp, plan.budget)
    oc = settings.get("oracle") or {}
    console = VocalConsole(int(songs[0].sample_rate), model.get("stages")) if songs else None
    fresh = [s for s in songs if force and (data, s.name) not in plan.refitted]
    fits = {}
    fresh_names = {s.name for s in fresh}
    for todo, refit in ((fresh, True), ([s for s in songs if s.name not in fresh_names], False)):
        if todo:
            fits.update(B.fit_songs(console, todo, target_lufs=float(model.get("target_lufs", -23.0)), budget=oc,
                                    cache_dir=oracle_cache(plan), seed=int(settings.get("seed", 0)),
                                    restarts=oc.get("restarts"), refit=refit, jobs=jobs))
    plan.refitted |= {(data, s.name) for s in fresh}
    return fits, console


def prepare_targets(plan: Plan, force: bool = False, jobs: int = 1) -> None:
    """Per data set × fold × source whose runs use ``model.param_loss_weight``: write the setting of
    each of the fold's training and validation songs to ``runs/_data/DATA/param-targets[-truth]-foldK.json``
    (``mst_single.data.read_param_targets``); the fold's test songs are never in it. Source ``oracle``
    (the default): the oracle baseline's fits (cached, shared with the baseline); ``oracle-prior``:
    each song refitted from, and pulled toward, the median of those fits over the fold's training and
    validation songs (``baselines.fit_songs(prior=...)``, cached too); ``truth``: the data's
    truth.json (demo data only: the ceiling of what the parameter loss can give). Nothing else runs
    yet, so the fits use ``jobs`` processes."""
    from mst_single.experiments import evaluate as E

    need = {}
    for u in plan.units:
        if u.targets:
            need.setdefault((u.data, u.fold, u.targets), u)
    for (d, f, source), u in sorted(need.items(), key=lambda kv: kv[0]):
        path = targets_file(plan.runs_dir, d, f, source)
        testset = E.TestSet(**u.eval_data)
        songs = list(testset.splits["train"]) + list(testset.splits["val"])
        model = u.config.get("model") or {}
        if source == "truth":
            say(f"parameter targets fold {f} ({d}): the true setting of {len(songs)} training/validation songs "
                f"(truth.json)")
            write_json(path, truth_targets(Path(plan.data[d]["folder"]), model, songs))
            continue
        say(f"parameter targets fold {f} ({d}): the oracle setting of {len(songs)} training/validation songs "
            f"(cached in {oracle_cache(plan)})")
        fits, console = fit_oracle(plan, d, model, songs, force, jobs)
        if source == "oracle-prior":
            fits = fit_prior(plan, model, songs, console, fits, force, jobs)
        write_json(path, {"names": list(console.param_names) if console else [],
                          "params": {n: p.reshape(-1).tolist() for n, (p, _) in sorted(fits.items())}})


def prepare_house_presets(plan: Plan, force: bool = False, jobs: int = 1) -> None:
    """Per data set × fold whose runs use ``model.house_preset``: fit that preset (``system.house_preset_fit``)
    into the runs' data cache before they start, the folds ``jobs`` at a time, so that a fold's runs (and
    its `mean-preset` baseline, at the same settings) read one fit instead of each making it at once."""
    from concurrent.futures import ProcessPoolExecutor

    todo = {}
    for u in plan.units:
        if (u.config.get("model") or {}).get("house_preset") and (force or not unit_done(u)):
            todo.setdefault((u.data, u.fold), u)
    if not todo:
        return
    say(f"house presets: {len(todo)} training set(s) (model.house_preset), fitted before the runs start")
    t0, args = time.time(), [(u.eval_data, u.config.get("model") or {}, force) for _, u in sorted(todo.items())]
    if jobs > 1 and len(args) > 1:
        with ProcessPoolExecutor(min(jobs, len(args))) as pool:
            done = list(pool.map(_house_preset, args))
    else:
        done = [_house_preset(a) for a in args]
    for ((d, f), _), (steps, stopped_by, seconds) in zip(sorted(todo.items()), done):
        say(f"house preset fold {f} ({d}): {steps} steps ({stopped_by}), {seconds:.0f} s")
    say(f"house presets: {time.time() - t0:.0f} s in all")


def _house_preset(args) -> tuple[int, str, float]:
    """One fold's house preset, as ``VocalMST`` fits it when `fit` starts, into the runs' data cache (in a
    worker: one torch thread) -> (steps, stopped_by, seconds)."""
    import torch

    from mst_single.console import VocalConsole
    from mst_single.experiments import evaluate as E
    from mst_single.system import house_preset_fit

    eval_data, model, force = args
    torch.set_num_threads(1)
    t0, testset = time.time(), E.TestSet(**eval_data)
    _, info = house_preset_fit(VocalConsole(int(testset.sample_rate), model.get("stages")), testset.splits["train"],
                               float(model.get("target_lufs", -23.0)), testset.segment_seconds,
                               testset.silence_threshold_db, eval_data.get("cache_dir"), refit=force)
    return info.steps, info.stopped_by, time.time() - t0


def fit_prior(plan: Plan, model: dict, songs: list, console, fits: dict, force: bool = False, jobs: int = 1) -> dict:
    """The ``oracle-prior`` targets: ``songs`` refitted from the median of their oracle ``fits``,
    pulled toward it (``C.prior_weight``); cached with the oracle's fits."""
    from mst_single.experiments import baselines as B

    settings = C.baseline_settings(plan.exp, plan.budget)
    prior, weight = B.median_setting([fits[s.name][0] for s in songs]), C.prior_weight(plan.exp)
    say(f"parameter targets: refitting {len(songs)} songs toward their median oracle setting "
        f"(weight {weight:g})")
    return B.fit_songs(console, songs, target_lufs=float(model.get("target_lufs", -23.0)),
                       budget=settings.get("oracle") or {}, cache_dir=oracle_cache(plan),
                       seed=int(settings.get("seed", 0)), refit=force, prior=prior, prior_weight=weight, jobs=jobs)


def truth_targets(folder: Path, model: dict, songs: list) -> dict:
    """The parameter-targets JSON of ``songs`` (SongInfo) from ``folder/truth.json`` (what
    ``mst-single demo-data`` wrote), in [0, 1] of the console the runs train. A stage the song's true
    chain did not use (e.g. no reverb in the house style) gets the console's neutral value."""
    from mst_single.console import VocalConsole
    from mst_single.experiments.evaluate import read_truth

    path = folder / "truth.json"
    try:
        truth = read_truth(folder)["songs"]
    except (OSError, ValueError, KeyError) as e:
        raise MstError(f"param_targets: truth needs the data's true settings ({type(e).__name__}: {e})", path,
                       "use param_targets: oracle, or data made by `mst-single demo-data`") from None
    console = VocalConsole(int(songs[0].sample_rate), model.get("stages")) if songs else None
    out = {}
    for s in songs:
        units = (truth.get(s.name) or {}).get("params")
        if not units:
            raise MstError(f"song {s.name!r} has no true setting", path,
                           "use param_targets: oracle, or regenerate the data with `mst-single demo-data`")
        out[s.name] = console.known_setting(units).reshape(-1).tolist()
    return {"names": list(console.param_names) if console else [], "params": dict(sorted(out.items()))}


def true_settings(testset, console) -> dict:
    """{song: (1, P)} each test song's true setting (demo data's truth.json) in [0, 1] of ``console``,
    for the ``true-setting`` baseline: what the console scores when the network is perfect. A stage
    the song's chain did not use gets the console's neutral value."""
    missing = [s for s in testset.names if not testset.truth_params(s)]
    if missing:
        raise MstError(f"the true-setting baseline needs every test song's true setting; {len(missing)} have none "
                       f"(e.g. {missing[0]!r})", Path(testset.root) / "truth.json",
                       "use it on data made by `mst-single demo-data`, or drop true-setting from `baselines`")
    return {s: console.known_setting(testset.truth_params(s)) for s in testset.names}


def report_for(plan: Plan, data: str) -> dict:
    """The report settings for one data set: its report songs, clips under ``audio/DATA/SONG/``."""
    return dict(plan.report, songs=plan.report["songs"].get(data, []), audio_dir=str(Path(plan.report["audio_dir"]) / data))


def wandb_tags(experiment: str, budget: str, data: str, variant: str, fold: int, seed: int | None) -> list[str]:
    tags = [experiment, f"budget-{budget}", f"data-{data}", f"variant-{variant}", f"fold-{fold}"]
    return tags + ([f"seed-{seed}"] if seed is not None else [])


def prepare_data(plan: Plan) -> None:
    """Write the split files and build the training subsets the units need."""
    for d, files in plan.split_files.items():
        for f, path in files.items():
            F.write_split(path, plan.splits[d][f])
    done = set()
    for u in plan.units:
        if u.subset is not None and u.subset not in done:
            _, sub = F.train_subset(plan.data[u.data]["folder"], u.split, float(u.train_fraction), u.subset)
            F.write_split(subset_split_file(u.subset), sub)
            done.add(u.subset)


# ----------------------------------------------------------------------------------------------- units
def unit_done(unit: Unit) -> bool:
    f = unit.run_dir / "eval.json"
    if not f.exists():
        return False
    try:
        return json.loads(f.read_text()).get("hash") == unit.spec["hash"]
    except ValueError:
        return False


CODE_ENV = "MST_ABLATE_CODE"  # the package's code_fingerprint when ablate started (see worker)


def worker_env(unit: Unit, code: str | None = None) -> dict:
    """The subprocess environment: unbuffered, W&B offline and quiet unless set, the unit's W&B run id,
    and ``code``, the package's fingerprint when ``ablate`` started."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if code:
        env[CODE_ENV] = code
    # our own W&B service, not one this process inherited: a stream left open there under the same
    # run id (a killed or resumed run) makes the next run with that id fail "run ID is in use"
    env.pop("WANDB_SERVICE", None)
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_SILENT", "true")
    if not env.get("WANDB_SWEEP_ID"):  # a sweep agent names the run it expects itself
        env["WANDB_RUN_ID"] = unit.run_id
    return env


def run_unit(unit: Unit, index: int, total: int, code: str | None = None) -> dict:
    """Train + evaluate one unit in a fresh Python process; its output goes to ``run_dir/ablate.log``."""
    if unit.run_dir.exists():  # a stale or different earlier run: fit refuses existing checkpoints
        shutil.rmtree(unit.run_dir)
    unit.run_dir.mkdir(parents=True)
    write_json(unit.run_dir / "unit.json", unit.spec)
    log = unit.run_dir / "ablate.log"
    what = unit.approach + (f", trained with {unit.policy} references" if unit.policy != NONE else "")
    say(f"[{index}/{total}] {unit.label}: training + evaluation ({what}); log {log}")
    t0 = time.time()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run([sys.executable, "-m", "mst_single.ablate", "--worker", str(unit.run_dir / "unit.json")],
                              stdout=f, stderr=subprocess.STDOUT, env=worker_env(unit, code), cwd=os.getcwd())
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise MstError(f"run {unit.label} failed (exit code {proc.returncode}); last lines of its log:\n{tail}", log,
                       "fix the problem shown above and rerun (finished runs are reused)")
    result = json.loads((unit.run_dir / "eval.json").read_text())
    means = {r["eval_policy"]: r["value"] for r in result["rows"] if r["song"] == "mean" and r["metric"] == "mrstft"}
    shown = ", ".join(f"{'test' if k == NONE else k + ' refs'} mrstft {v:.4f}" for k, v in means.items())
    say(f"[{index}/{total}] {unit.label}: done in {time.time() - t0:.0f} s, {result.get('steps')} steps ({shown})")
    return result


def worker(spec_path: Path) -> int:
    """Inside the subprocess: ``fit``, then evaluate the checkpoint, then write ``eval.json``."""
    from mst_single.experiments import evaluate as E
    from mst_single.mix import load_model
    from mst_single.train import cli_main

    from mst_single.provenance import code_fingerprint

    # each run is a new process that imports the package from the checkout as it is now: an edit
    # made while the experiment runs would otherwise train part of one table with other code
    started = os.environ.get(CODE_ENV)
    if started and started != code_fingerprint():
        raise MstError("the package's code changed since this `ablate` started, so this run would use other "
                       "code than the runs before it", Path(spec_path).parent,
                       "edit in another checkout (git worktree) while an experiment runs; rerun `ablate` "
                       "(finished runs are reused)")
    spec = json.loads(Path(spec_path).read_text())
    run_dir = Path(spec_path).parent
    t0 = time.time()
    write_text(run_dir / "variant.yaml", yaml.safe_dump(spec["config"], sort_keys=False))
    rc = cli_main(["fit", "-c", str(run_dir / "variant.yaml")], keep_wandb=True)
    if rc != 0:
        _wandb_finish(spec, [])
        return rc
    train_s = time.time() - t0
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if spec["checkpoint"] == "best":
        best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
        ckpt = best[-1] if best else ckpt
    device = E.eval_device((spec["config"].get("trainer") or {}).get("accelerator"))
    model, meta = load_model(ckpt)
    model.to(device)
    testset = E.TestSet(**spec["eval_data"])
    say(f"evaluation on {device}: {len(testset.names)} test songs, reference policies "
        f"{', '.join(spec['eval_policies'])}")
    rows, predictions, params, audio = [], [], {}, {}
    report = spec.get("report")
    for policy in spec["eval_policies"]:
        t1 = time.time()
        results = E.evaluate_model(model, testset, "same" if policy == NONE else policy, refine=spec.get("refine"),
                                   seed=spec["seed"])
        rows += result_rows(spec, policy, spec["seed"], results)
        predictions += prediction_rows(spec, policy, spec["seed"], {r.song: r.setting for r in results})
        key = label_key(spec["variant"], policy)
        params[key] = {r.song: r.params for r in results}
        if report:
            audio[key] = write_report_audio(results, report, key, testset.sample_rate)
        m = next(r["value"] for r in rows if r["eval_policy"] == policy and r["song"] == "mean" and r["metric"] == "mrstft")
        say(f"evaluation ({'test' if policy == NONE else policy + ' refs'}): mrstft {m:.4f} "
            f"({time.time() - t1:.0f} s)")
    if spec["approach"] == "approach1":  # the within-song noise floor of reference sensitivity
        alt = E.predict_settings(model, testset, "song-alt", refine=spec.get("refine"), seed=spec["seed"])
        predictions += prediction_rows(spec, "song-alt", spec["seed"], {
            n: dict(zip(model.console.param_names, p.reshape(-1).tolist())) for n, p in alt.items()})
    result = dict(hash=spec["hash"], experiment=spec["experiment"], budget=spec["budget"], data=spec["data"],
                  variant=spec["variant"], fold=spec["fold"], seed=spec["seed"], run_id=spec["run_id"],
                  approach=spec["approach"], policy=spec["policy"], checkpoint=str(ckpt), steps=meta.get("global_step"),
                  train_seconds=train_s, eval_seconds=time.time() - t0 - train_s, rows=rows, predictions=predictions,
                  params=params, audio=audio, specs=[[s.name, s.unit] for s in model.console.specs],
                  sample_rate=testset.sample_rate, truth={n: testset.truth_params(n) for n in testset.names})
    write_json(run_dir / "eval.json", result)
    _wandb_finish(spec, rows)
    return 0


def _wandb_finish(spec: dict, rows: list[dict]) -> None:
    """Test metrics and the unit's keys into the (still open) W&B run of this process, then close it."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is None:
        return
    wandb.run.config.update({k: spec[k] for k in ("experiment", "budget", "data", "variant", "fold", "seed", "run_id",
                                                  "approach", "policy")}, allow_val_change=True)
    wandb.run.summary.update(summary_of(rows))
    wandb.finish()


def summary_of(rows: list[dict]) -> dict:
    """{"eval/<metric>" or "eval/<policy>/<metric>": mean over the test songs} of results rows."""
    return {"eval/" + (f"{r['eval_policy']}/" if r["eval_policy"] != NONE else "") + r["metric"]: r["value"]
            for r in rows if r["song"] == "mean"}


def label_key(variant: str, eval_policy: str) -> str:
    return variant if eval_policy in (NONE, None) else f"{variant}@{eval_policy}"


def result_rows(spec: dict, eval_policy: str, seed: int, results) -> list[dict]:
    """results.csv rows (``records.RESULTS_COLUMNS``) of one evaluation: per song + mean."""
    from mst_single.experiments.evaluate import song_means

    base = dict(experiment=spec["experiment"], budget=spec["budget"], data=spec["data"], variant=spec["variant"],
                approach=spec["approach"], policy=spec["policy"], eval_policy=eval_policy, fold=spec["fold"], seed=seed)
    rows = [dict(base, song=r.song, metric=k, value=float(v)) for r in results for k, v in r.metrics.items()]
    rows += [dict(base, song="mean", metric=k, value=v) for k, v in song_means(results).items()]
    return rows


def prediction_rows(spec: dict, eval_policy: str, seed: int, settings: dict[str, dict]) -> list[dict]:
    """predictions.csv rows: {song: {param: value in [0, 1]}} of one run and evaluation policy."""
    base = dict(experiment=spec["experiment"], budget=spec["budget"], data=spec["data"], variant=spec["variant"],
                eval_policy=eval_policy, fold=spec["fold"], seed=seed)
    return [dict(base, song=song, param=k, value=float(v)) for song, s in settings.items() for k, v in s.items()]


def write_report_audio(results, report: dict, key: str, sample_rate: int) -> dict:
    """The first ``report["seconds"]`` of each report song's output -> audio/SONG/KEY.flac."""
    out = {}
    for r in results:
        if r.song in report["songs"] and r.output is not None:
            out[r.song] = str(save_clip(Path(report["audio_dir"]) / _safe(r.song) / f"{_safe(key)}.{report['format']}",
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
def run_baselines(plan: Plan, data: str, fold: int, force: bool = False) -> dict:
    """Fit and evaluate the experiment's baselines on one data set × fold (cached in
    ``runs/_data/DATA/baselines-foldK.json``; the oracle's per-song fits in ``oracle_cache``)."""
    import numpy as np
    import torch

    from mst_single.audio import house_loudness
    from mst_single.console import VocalConsole
    from mst_single.experiments import baselines as B
    from mst_single.experiments import evaluate as E

    exp, names = plan.exp, list(plan.exp.get("baselines") or [])
    empty = {"rows": [], "predictions": [], "runs": [], "params": {}, "audio": {}, "fits": {}}
    if not names:
        return empty
    first = next(u for u in plan.units if u.data == data and u.fold == fold)
    eval_data, model = first.eval_data, first.config.get("model") or {}
    settings = C.baseline_settings(exp, plan.budget)
    seed = int(settings.get("seed", 0))
    report = report_for(plan, data)
    spec = dict(experiment=exp["name"], budget=plan.budget, data=data, fold=fold, names=names,
                data_settings=C.data_settings(eval_data), split=plan.splits[data][fold],
                model={k: model.get(k) for k in ("stages", "target_lufs")}, settings=settings, report=report)
    if "descriptor-ridge" in names:  # only then: the other experiments' cached baselines keep their hash
        spec["prior_weight"] = C.prior_weight(exp)
    spec_hash = C.stable_hash(spec)
    cache = data_dir(plan.runs_dir, data) / f"baselines-fold{fold}.json"
    where = f"baselines fold {fold} ({data})"
    if cache.exists() and not force:
        old = json.loads(cache.read_text())
        if old.get("hash") == spec_hash:
            say(f"{where}: up to date, reusing {cache}")
            return dict(old, reused=True)
    t0 = time.time()
    torch.manual_seed(seed)
    testset = E.TestSet(**eval_data)
    console = VocalConsole(int(testset.sample_rate), model.get("stages"))
    target_lufs = float(model.get("target_lufs", -23.0))
    meta = dict(experiment=exp["name"], budget=plan.budget, data=data, approach=NONE, policy=NONE, fold=fold)
    out = dict(empty, hash=spec_hash)
    say(f"{where}: {', '.join(names)} on {len(testset.names)} test songs")
    for name in names:
        t1 = time.time()
        fit_info, steps = {}, 0
        if name in ("identity", "identity-level-matched"):
            results = E.evaluate_identity(testset, target_lufs, level_matched=name == "identity-level-matched")
        elif name == "mean-preset":
            # cached with the runs' data: a `model.house_preset` at the same settings is this very fit
            p, info = B.fit_mean_preset(console, testset.splits["train"], target_lufs=target_lufs,
                                        budget=settings.get("mean_preset"), seed=seed,
                                        silence_threshold_db=eval_data.get("silence_threshold_db", -50.0),
                                        cache_dir=eval_data.get("cache_dir"), refit=force)
            fit_info = {"steps": info.steps, "stopped_by": info.stopped_by, "loss_first": info.losses[0],
                        "loss_last": info.losses[-1], "train_songs": len(testset.splits["train"])}
            steps = info.steps
            say(f"{where}: mean-preset fitted on {len(testset.splits['train'])} training songs, {info.steps} steps "
                f"({info.stopped_by}), loss {info.losses[0]:.4f} -> {info.losses[-1]:.4f}")
            results = E.evaluate_setting(console, target_lufs, testset, p, desc="scoring mean-preset")
        elif name == "descriptor-ridge":
            train = list(testset.splits["train"])
            both = train + list(testset.splits["val"])  # the songs prepare_targets refits: the same cached fits
            fits, fit_console = fit_oracle(plan, data, model, both, force)
            prior = fit_prior(plan, model, both, fit_console, fits, force)
            p, lam = B.descriptor_ridge(train, np.stack([prior[s.name][0].reshape(-1).numpy() for s in train]),
                                        testset.songs)
            house = house_loudness(train)
            fit_info = {"strength": lam, "train_songs": len(train), "house_lufs": house}
            say(f"{where}: descriptor-ridge fitted on {len(train)} training songs (strength {lam:g}), mixed at "
                f"{house:.2f} LUFS")
            results = E.evaluate_setting(console, target_lufs, testset, p, desc="scoring descriptor-ridge",
                                         output_lufs=house)
        elif name == "true-setting":
            results = E.evaluate_setting(console, target_lufs, testset, true_settings(testset, console),
                                         desc="scoring true-setting")
        else:  # oracle
            fits = fit_oracle(plan, data, model, list(testset.songs), force)[0]
            for song, (_, info) in fits.items():
                fit_info[song] = {"steps": info.steps, "stopped_by": info.stopped_by,
                                  "score": getattr(info, "score", None), "restarts": getattr(info, "restarts", None)}
            steps = max((i["steps"] for i in fit_info.values()), default=0)
            converged = sum(i["stopped_by"] == "converged" for i in fit_info.values())
            say(f"{where}: oracle fitted on {len(fits)} songs, at most {steps} steps, {converged}/{len(fits)} "
                "converged")
            results = E.evaluate_setting(console, target_lufs, testset, {s: p for s, (p, _) in fits.items()},
                                         desc="scoring oracle")
        rows = result_rows(dict(meta, variant=name), NONE, seed, results)
        out["rows"] += rows
        if name in ("mean-preset", "oracle", "descriptor-ridge"):
            out["predictions"] += prediction_rows(dict(meta, variant=name), NONE, seed, {r.song: r.setting for r in results})
            out["params"][name] = {r.song: r.params for r in results}
        out["fits"][name] = fit_info
        out["audio"][name] = write_report_audio(results, report, name, testset.sample_rate)
        seconds = time.time() - t1
        out["runs"].append(dict(experiment=exp["name"], budget=plan.budget, data=data, variant=name, fold=fold, seed=seed,
                                run_id=R.run_id(exp["name"], plan.budget, data, name, fold, seed),
                                train_seconds=round(seconds, 3), steps=steps, eval_seconds="",
                                checkpoint=str(cache.relative_to(plan.out))))
        mean = next(r["value"] for r in rows if r["song"] == "mean" and r["metric"] == "mrstft")
        say(f"{where}: {name} mrstft {mean:.4f} ({seconds:.0f} s)")
    for song in [s for s in report["songs"] if s in testset.names]:  # the unprocessed inputs for the report
        raw, target = testset.audio(song)
        for role, x in (("raw", raw), ("target", target)):
            path = Path(report["audio_dir"]) / _safe(song) / f"{role}.{report['format']}"
            out["audio"].setdefault(role, {})[song] = str(save_clip(path, x, testset.sample_rate, report["seconds"]))
    out.update(seconds=time.time() - t0, truth={s: testset.truth_params(s) for s in testset.names},
               test_songs=testset.names, sample_rate=testset.sample_rate,
               specs=[[s.name, s.unit] for s in console.specs], settings=settings)
    write_json(cache, out)
    return out


def log_baselines_to_wandb(plan: Plan, data: str, fold: int, base: dict) -> None:
    """Each baseline of one data set × fold as a W&B run of the experiment's group (offline unless set)."""
    wb = plan.exp.get("wandb") or {}
    if wb.get("enabled") is False or os.environ.get("WANDB_MODE") == "disabled" or not base["runs"] or base.get("reused"):
        return
    import wandb

    for r in base["runs"]:
        rows = [x for x in base["rows"] if x["variant"] == r["variant"]]
        keys = dict(experiment=plan.exp["name"], budget=plan.budget, data=data, variant=r["variant"], fold=fold,
                    seed=r["seed"], run_id=r["run_id"], approach=NONE, policy=NONE)
        run = wandb.init(project=wb.get("project", "vocal-mst"), group=plan.group, job_type="baseline",
                         name=f"{r['variant']}-{data}-f{fold}", id=r["run_id"], resume="allow",
                         dir=str(data_dir(plan.runs_dir, data)), mode=os.environ.get("WANDB_MODE", "offline"),
                         tags=wandb_tags(plan.exp["name"], plan.budget, data, r["variant"], fold, None) + ["baseline"],
                         config=dict(keys, fit=base["settings"].get(r["variant"].replace("-", "_"))))
        run.summary.update({**summary_of(rows), "fit/steps": r["steps"], "fit/seconds": r["train_seconds"]})
        run.finish()


# ----------------------------------------------------------------------------------------------- run
def execute(plan: Plan, force: bool = False, jobs: int = 1) -> dict:
    """Train/evaluate every unit and fit the baselines; returns {"evals": [...], "baselines": {(data, fold): ...}}."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    from mst_single.provenance import code_fingerprint

    prepare_data(plan)
    prepare_targets(plan, force, jobs)
    prepare_house_presets(plan, force, jobs)
    units, n, code = plan.units, len(plan.units), code_fingerprint()

    def one(i):
        u = units[i]
        if not force and unit_done(u):
            say(f"[{i + 1}/{n}] {u.label}: up to date, reusing {u.run_dir / 'eval.json'}")
            return json.loads((u.run_dir / "eval.json").read_text())
        return run_unit(u, i + 1, n, code)

    def baselines():
        out = {}
        for d in plan.splits:
            for f in sorted(plan.splits[d]):
                if any(u.data == d and u.fold == f for u in units):
                    out[(d, f)] = run_baselines(plan, d, f, force)
                    log_baselines_to_wandb(plan, d, f, out[(d, f)])
        return out

    base = {}
    if jobs > 1:  # each run is its own process; threads only wait for them
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            if not plan.unit_mode:  # the baselines need no trained run: fit them meanwhile
                base = baselines()
            evals = [f.result() for f in futures]
    else:
        evals = [one(i) for i in range(n)]
        if not plan.unit_mode:
            base = baselines()
    return {"evals": evals, "baselines": base}


def collect(plan: Plan, done: dict) -> dict:
    """The rows of results.csv / predictions.csv / runs.csv, and the report's inputs."""
    evals, base = done["evals"], done["baselines"]
    results = [r for e in evals for r in e["rows"]] + [r for b in base.values() for r in b["rows"]]
    predictions = [r for e in evals for r in e["predictions"]] + [r for b in base.values() for r in b["predictions"]]
    runs = [dict(experiment=e["experiment"], budget=e["budget"], data=e["data"], variant=e["variant"], fold=e["fold"],
                 seed=e["seed"], run_id=e["run_id"], train_seconds=round(e["train_seconds"], 3), steps=e["steps"],
                 eval_seconds=round(e["eval_seconds"], 3), checkpoint=_rel(e["checkpoint"], plan.out)) for e in evals]
    runs += [r for b in base.values() for r in b["runs"]]
    return dict(results=results, predictions=predictions, runs=runs, report=report_inputs(plan, evals, base))


def _rel(path: str, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def report_inputs(plan: Plan, evals: list[dict], base: dict) -> dict:
    """What the report shows per report song: audio clips (label, file), the settings in units per
    label, the true settings; plus the training curves (label -> metrics.csv)."""
    first = [e for e in evals if e["seed"] == plan.report["seed"]]
    any_eval = evals[0] if evals else {}
    specs = any_eval.get("specs") or next((b.get("specs") for b in base.values() if b.get("specs")), [])
    songs = []
    for d, names in plan.report["songs"].items():
        for song in names:
            b = next((b for (bd, _), b in base.items() if bd == d and song in b.get("test_songs", [])), {})
            audio = [(lab, b.get("audio", {}).get(role, {}).get(song)) for lab, role in
                     (("raw", "raw"), ("target (mixed)", "target"))]
            params = {}
            truth = {}
            for e in first:
                if e["data"] != d or song not in (e.get("truth") or {}):
                    continue
                truth = e["truth"][song]
                for key, files in e["audio"].items():
                    audio.append((f"{key} (seed {e['seed']})", files.get(song)))
                for key, p in e["params"].items():
                    params[key] = p.get(song, {})
            for name in plan.exp.get("baselines") or []:
                audio.append((f"{name} (baseline)", b.get("audio", {}).get(name, {}).get(song)))
                if name in b.get("params", {}):
                    params[name] = b["params"][name].get(song, {})
            truth = truth or (b.get("truth") or {}).get(song, {})
            songs.append(dict(data=d, song=song, audio=[(lab, f) for lab, f in audio if f], params=params, truth=truth))
    curves = {f"{e['variant']}-{e['data']}-f{e['fold']}-s{e['seed']}": str(Path(e["checkpoint"]).parent.parent / "metrics.csv")
              for e in evals}
    sr = any_eval.get("sample_rate") or next((b.get("sample_rate") for b in base.values() if b.get("sample_rate")), None)
    # every test song's true setting (demo data), in [0, 1] of the console the runs used
    from mst_single.console import specs_for
    from mst_single.experiments.collapse import normalize_truth

    by_name = {s.name: s for s in specs_for(int(sr or 48000))}  # ranges depend on the rate, not the stages
    param_specs = [by_name[name] for name, _ in specs if name in by_name]
    truth_units: dict = {}
    for (d, _), b in base.items():
        truth_units.setdefault(d, {}).update({s: t for s, t in (b.get("truth") or {}).items() if t})
    truth = {d: normalize_truth(t, param_specs) for d, t in truth_units.items()}
    return dict(seconds=plan.report["seconds"], sample_rate=sr, specs=param_specs, songs=songs, training_curves=curves,
                truth=truth)


def write_outputs(plan: Plan, tables: dict, command: str, wall_s: float) -> str:
    """results.csv, predictions.csv, runs.csv, the tables/plots/report and provenance.json; returns the
    README block."""
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    R.write_csv(out / "results.csv", tables["results"], R.RESULTS_COLUMNS)
    R.write_csv(out / "predictions.csv", tables["predictions"], R.PREDICTIONS_COLUMNS)
    R.write_csv(out / "runs.csv", tables["runs"], R.RUNS_COLUMNS)
    from mst_single.experiments.tables import write_results

    rep = tables["report"]
    meta = dict(command=command, wall_seconds=wall_s, data_paths={d: str(plan.data[d]["folder"]) for d in plan.splits},
                truth=rep["truth"], specs=rep["specs"], curves=rep["training_curves"],
                report_songs=[dict(data=s["data"], name=s["song"], audio=s["audio"]) for s in rep["songs"]])
    return write_results(out, plan.exp, plan.budget, tables["results"], tables["predictions"], tables["runs"],
                         meta)["readme_block"]


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


def provenance(plan: Plan, done: dict, command: str, wall_s: float) -> dict:
    from mst_single import provenance as P

    exp_public = {k: v for k, v in plan.exp.items() if k != "folder"}
    runs = [dict(run=u.name, run_id=u.run_id, run_dir=_rel(str(u.run_dir), plan.out), config=u.config)
            for u in plan.units]
    fits = {f"{d}/fold{f}": {"seconds": b.get("seconds"), "fits": b.get("fits")} for (d, f), b in done["baselines"].items()}
    folder = Path(plan.exp["folder"]).resolve()
    try:  # the experiment's own config, e.g. a new experiment's not yet committed
        inputs = P.INPUTS + ((folder / C.CONFIG_NAME).relative_to(P.REPO_ROOT).as_posix(),)
    except ValueError:  # an experiment folder outside the repository
        inputs = P.INPUTS
    return P.collect(command=command, inputs=inputs, experiment=plan.exp["name"], budget=plan.budget, seeds=plan.seeds,
                     folds=plan.folds, data={d: str(plan.data[d]["folder"]) for d in plan.splits},
                     splits={d: {f"fold{f}": s for f, s in v.items()} for d, v in plan.splits.items()},
                     experiment_config=exp_public, runs=runs, baselines=fits, wall_time_s=round(wall_s, 1))
