"""Experiment configs: ``experiments/base.yaml`` + ``experiments/NAME/config.yaml``, budgets, data sets,
and the data settings that decide what a run trains and is tested on.

Experiment config (its first line is the command that runs it)::

    # mst-single ablate experiments/NAME --budget smoke
    question: ...                       # free text, shown in results.md / report.html
    data: data/demo                     # a folder, a list of folders, or {name: folder | {folder, build}}
    variants:                           # name -> what it trains
      approach1:
        configs: [configs/approach1.yaml]       # training configs, in order (``__base__`` followed)
        overrides: {model.loss.l1_weight: 0}    # dotted keys set on top (optional)
        train_fraction: 0.25                    # optional: keep this share of the training songs
        data: [demo-adaptive]                   # optional: only these data sets
        param_targets: truth                    # optional, with model.param_loss_weight > 0: the
                                                # oracle's fits (default), oracle-prior (refitted
                                                # toward the fold's median fit) or truth.json (demo data)
        refine: {steps: 30, crops: 4}           # optional, Approach 1: at evaluation, refine each song's
                                                # setting on its references' style (mst_single/style.py);
                                                # start: network | ridge, other_vocal: refine | house (a
                                                # reference that is not a mix of this vocal gets the
                                                # model's house preset, model.house_preset; e17)
    eval: {reference_policies: [other]}        # optional: anything of the base to change

The experiment config is deep-merged over its base (``base:``, default ``../base.yaml``; mappings
merge, lists replace). ``budgets`` (``smoke`` / ``cpu`` / ``full`` ...) give ``seeds``, ``folds``,
dotted ``overrides`` of the training configs (``data.*``, ``trainer.*``, ``model.*``) and the
``baselines`` fitting budgets.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

from mst_single.errors import MstError
from mst_single.provenance import REPO_ROOT
from mst_single.train import read_yaml_mapping

CONFIG_NAME = "config.yaml"
COMMAND_PREFIX = "# mst-single ablate "
from mst_single.experiments.records import BASELINES, NONE  # noqa: E402,F401 (re-exported)
RESERVED = set(BASELINES) | {"raw", "target"}
VARIANT_KEYS = {"configs", "overrides", "train_fraction", "description", "data", "param_targets", "refine"}


def _bool(v) -> bool:
    if not isinstance(v, bool):  # bool("false") is True: a typo must not switch a setting on
        raise ValueError(v)
    return v


REFINE_KEYS = {"steps": int, "lr": float, "crops": int, "match_level": _bool,  # style.refine_setting's arguments
               "start": str,  # + where it starts: mix.REFINE_STARTS
               "other_vocal": str}  # + what a reference that is not a mix of this vocal gets: mix.OTHER_VOCAL
TARGET_SOURCES = ("oracle", "oracle-prior", "truth")  # where the parameter targets come from (runner.prepare_targets)
PRIOR_WEIGHT = 0.05  # oracle-prior: pull toward the fold's median fit (``param_target_prior_weight:`` overrides)
DEMO_BUILD = "mst-single demo-data {folder}"

# The data settings: the ``data:`` keys (of ``mst_single.data.VocalDataModule``, whose signature gives
# their defaults) that decide which songs a run sees and how they are read. Everything that indexes,
# splits or evaluates songs takes them from here.
DATA_KEYS = ("root", "sample_rate", "segment_seconds", "split_seed", "val_fraction", "test_fraction",
             "split_file", "max_lag_seconds", "allow_unmatched", "cache_dir", "silence_threshold_db")
# ... of which these must be equal across the variants of one experiment (same test songs, same rate)
EVALUATION_KEYS = ("sample_rate", "split_seed", "val_fraction", "test_fraction", "split_file")


def data_settings(data: dict) -> dict:
    """The data settings (:data:`DATA_KEYS`) of a ``data:`` section, defaults filled in; other keys dropped."""
    from mst_single.data import VocalDataModule

    params = inspect.signature(VocalDataModule.__init__).parameters
    out = {k: params[k].default for k in DATA_KEYS if k in params and params[k].default is not inspect.Parameter.empty}
    out.update({k: data[k] for k in DATA_KEYS if k in data})
    return out


def index_kwargs(settings: dict) -> dict:
    """``mst_single.data.index_songs`` keyword arguments of data settings."""
    return {k: settings[k] for k in ("sample_rate", "max_lag_seconds", "allow_unmatched", "cache_dir")}


def split_kwargs(settings: dict) -> dict:
    """``mst_single.data.split_songs`` keyword arguments of data settings."""
    return dict(seed=settings["split_seed"], val_fraction=settings["val_fraction"],
                test_fraction=settings["test_fraction"], split_file=settings["split_file"])


# ----------------------------------------------------------------------------------------------- merging
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


def stable_hash(obj, length: int = 16) -> str:
    """Hex digest of the JSON of ``obj`` (sorted keys): the same settings give the same hash anywhere."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


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


# ----------------------------------------------------------------------------------------------- experiment
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
        bad = set(v) - VARIANT_KEYS
        if bad:
            raise MstError(f"variant {name!r} has unknown keys: {', '.join(sorted(bad))}", path,
                           f"use {', '.join(sorted(VARIANT_KEYS))}")
        if v.get("param_targets", "oracle") not in TARGET_SOURCES:
            raise MstError(f"variant {name!r}: param_targets {v['param_targets']!r} is not one of "
                           f"{', '.join(TARGET_SOURCES)}", path, "use `oracle` or `oracle-prior` (fitted, any data) or `truth` (demo data)")
        if "refine" in v:
            v["refine"] = refine_settings(v["refine"], f"variant {name!r}", path)
        if "/" in name or name in RESERVED:
            raise MstError(f"variant name {name!r} is reserved or contains '/'", path, "rename the variant")
    unknown = set(exp.get("baselines") or []) - set(BASELINES)
    if unknown:
        raise MstError(f"unknown baselines: {', '.join(sorted(unknown))}", path, f"use some of {', '.join(BASELINES)}")
    return exp


def refine_settings(refine, what: str, path) -> dict:
    """A variant's ``refine:`` mapping checked and typed ({steps, lr, crops, match_level, start, other_vocal}; steps >= 1
    required)."""
    if not isinstance(refine, dict) or "steps" not in refine or set(refine) - set(REFINE_KEYS):
        raise MstError(f"{what}: `refine:` must be a mapping with `steps` (and optionally lr, crops, match_level), "
                       f"got {refine!r}", path, "e.g. `refine: {steps: 30, lr: 0.05, crops: 4}`")
    try:
        out = {k: REFINE_KEYS[k](v) for k, v in refine.items()}
    except (TypeError, ValueError):
        raise MstError(f"{what}: `refine:` values must be numbers (match_level: true/false), got {refine!r}", path,
                       "e.g. `refine: {steps: 30, lr: 0.05, crops: 4}`") from None
    from mst_single.mix import REFINE_STARTS

    if out.get("start", "network") not in REFINE_STARTS:
        raise MstError(f"{what}: `refine: start:` must be one of {', '.join(REFINE_STARTS)}, got {out['start']!r}",
                       path, "`start: ridge` needs the runs trained with model.style_ridge: true (e09 ridge-start)")
    from mst_single.mix import OTHER_VOCAL

    if out.get("other_vocal", "refine") not in OTHER_VOCAL:
        raise MstError(f"{what}: `refine: other_vocal:` must be one of {', '.join(OTHER_VOCAL)}, got "
                       f"{out['other_vocal']!r}", path, "`other_vocal: house` needs the runs trained with "
                       "model.house_preset: true (e17)")
    if out["steps"] < 1 or out.get("crops", 1) < 1 or out.get("lr", 1.0) <= 0:
        raise MstError(f"{what}: `refine:` needs steps >= 1, crops >= 1 and lr > 0, got {refine!r}", path,
                       "remove `refine:` for no refinement")
    return out


def budget_of(exp: dict, budget: str) -> dict:
    """The budget's section (``seeds``, ``folds``, ``overrides``, ``baselines``); MstError if undefined."""
    budgets = exp.get("budgets") or {}
    if budget not in budgets:
        raise MstError(f"unknown budget {budget!r}", Path(exp["folder"]) / CONFIG_NAME,
                       f"use one of: {', '.join(budgets) or '(none defined: add budgets: to experiments/base.yaml)'}")
    return budgets[budget] or {}


def seeds_of(exp: dict, budget: str, override: int | None = None) -> list[int]:
    """Seeds 0..N-1: ``--seeds``, else the budget's ``seeds``, else the experiment's (default 3)."""
    n = override if override is not None else int(budget_of(exp, budget).get("seeds", exp.get("seeds", 3)))
    if n < 1:
        raise MstError("--seeds must be at least 1", fix="e.g. --seeds 3")
    return list(range(n))


def folds_of(exp: dict, budget: str, override: int | None = None) -> int:
    """Number of cross-validation folds: ``--folds``, else the budget's / experiment's ``folds``; 0 = none."""
    k = override if override is not None else int(budget_of(exp, budget).get("folds", exp.get("folds", 0)) or 0)
    if k < 0 or k == 1:
        raise MstError(f"--folds {k}: use 0 (no folds: the hash split) or at least 2", fix="e.g. --folds 5")
    return k


def prior_weight(exp: dict) -> float:
    """The ``oracle-prior`` targets' pull toward the prior (``param_target_prior_weight:``, default
    ``PRIOR_WEIGHT``): x the mean squared logit distance, next to an MR-STFT + L1 loss of ~0.5-1."""
    w = exp.get("param_target_prior_weight", PRIOR_WEIGHT)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
        raise MstError(f"param_target_prior_weight {w!r} is not a positive number",
                       Path(exp["folder"]) / CONFIG_NAME, f"e.g. param_target_prior_weight: {PRIOR_WEIGHT}")
    return float(w)


def baseline_settings(exp: dict, budget: str) -> dict:
    """The baselines' fitting settings (``seed``, ``mean_preset``, ``oracle``) of a budget."""
    return deep_merge(exp.get("baseline_settings") or {}, budget_of(exp, budget).get("baselines") or {})


def data_sets(exp: dict, cli: list[str] | None = None) -> dict[str, dict]:
    """{data name: {"folder": Path, "build": command}} from ``--data`` (``DIR`` or ``NAME=DIR``, repeatable)
    or the config's ``data:`` (a folder, a list of folders, or {name: folder | {folder, build}}).

    A data set's name is its mapping key, else its folder's name. ``build`` is the command that
    makes a missing folder (default ``mst-single demo-data FOLDER``).
    """
    where = Path(exp["folder"]) / CONFIG_NAME
    if cli:
        spec = {}
        for item in cli:
            name, sep, folder = str(item).partition("=")
            spec[name if sep else Path(str(item)).name] = folder if sep else str(item)
    else:
        spec = exp.get("data") or "data/demo"
    if isinstance(spec, str):
        spec = [spec]
    if isinstance(spec, list):
        spec = {Path(str(f)).name: str(f) for f in spec}
    if not isinstance(spec, dict) or not spec:
        raise MstError("`data:` must be a folder, a list of folders or a mapping {name: folder}", where,
                       "e.g. `data: {demo-adaptive: data/demo-adaptive, demo-per-song: data/demo-per-song}`")
    out = {}
    for name, v in spec.items():
        v = {"folder": v} if isinstance(v, (str, Path)) else v
        if not isinstance(v, dict) or not v.get("folder") or set(v) - {"folder", "build"}:
            raise MstError(f"data set {name!r}: give a folder, or {{folder: DIR, build: COMMAND}}", where,
                           "e.g. `demo-adaptive: {folder: data/demo-adaptive, build: mst-single demo-data ...}`")
        if "/" in str(name) or not str(name):
            raise MstError(f"data set name {name!r} must be a plain name (no '/')", where, "rename it")
        out[str(name)] = {"folder": Path(v["folder"]), "build": v.get("build") or DEMO_BUILD.format(folder=v["folder"])}
    for name, v in (exp.get("variants") or {}).items():
        bad = set(v.get("data") or []) - set(out)
        if bad:
            raise MstError(f"variant {name!r} names data sets that the experiment does not have: {', '.join(sorted(bad))}",
                           where, f"use some of {', '.join(out)} in its `data:` list")
    return out


def check_data_folder(name: str, data: dict) -> None:
    """MstError naming the folder and the command that builds it when it has no raw/ and mixed/."""
    folder = data["folder"]
    if not (folder / "raw").is_dir() or not (folder / "mixed").is_dir():
        what = "does not exist" if not folder.exists() else "has no raw/ and mixed/ subfolders"
        raise MstError(f"the data folder of data set {name!r} {what}", folder,
                       f"build it with `{data['build']}`, or pass --data DIR (a folder with raw/ and mixed/)")


def variant_data(exp: dict, variant: str, names: list[str]) -> list[str]:
    """The data sets a variant runs on: its ``data:`` list, else all of them (in the experiment's order)."""
    only = exp["variants"][variant].get("data")
    return [n for n in names if not only or n in only]


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
    """(approach, training reference policy) of a training config; policy ``-`` for approach2."""
    approach = (cfg.get("model") or {}).get("approach", NONE)
    policy = (cfg.get("data") or {}).get("reference_policy", "same") if approach == "approach1" else NONE
    return approach, policy


def eval_policies(exp: dict, approach: str) -> list[str]:
    """The evaluation reference policies of an approach (``-`` only for approaches without a reference)."""
    from mst_single.experiments.evaluate import EVAL_POLICIES

    if approach != "approach1":
        return [NONE]
    policies = list((exp.get("eval") or {}).get("reference_policies") or ["other"])
    bad = set(policies) - set(EVAL_POLICIES)
    if bad:
        raise MstError(f"unknown evaluation reference policies: {', '.join(sorted(bad))}",
                       Path(exp["folder"]) / CONFIG_NAME, f"use some of {', '.join(EVAL_POLICIES)}")
    return policies


def check_comparable(configs: dict[str, dict], folder: Path) -> None:
    """Every variant must be evaluated on the same songs at the same rate, or the table lies.

    ``configs``: {variant: training config}.
    """
    items = list(configs.items())
    first_name, first_cfg = items[0]
    first = {k: data_settings(first_cfg["data"])[k] for k in EVALUATION_KEYS}
    for name, cfg in items[1:]:
        here = {k: data_settings(cfg["data"])[k] for k in EVALUATION_KEYS}
        if here != first:
            diff = {k: (first[k], here[k]) for k in EVALUATION_KEYS if first[k] != here[k]}
            raise MstError(f"variant {name!r} changes the evaluation data settings of {first_name!r}: {diff}",
                           folder / CONFIG_NAME, "keep data.sample_rate and the split settings equal across variants "
                                                 "(use train_fraction to vary the training data)")
