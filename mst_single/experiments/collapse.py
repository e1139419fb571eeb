"""Does a trained model adapt, or is it one preset in disguise? Collapse metrics from predictions.csv.

Input: every test song's setting in the console's normalised [0, 1] space (predictions.csv,
``records.PREDICTIONS_COLUMNS``) for each run (variant, eval_policy, fold, seed) and for the
``mean-preset`` and ``oracle`` baselines. The oracle (a setting fitted on each test song's own pair)
is the reference answer; where truth.json gives true parameters they are a second reference.

Per variant and seed, within each fold (one trained model per fold: pooled over folds, two
different constant predictors would look like a spread), then averaged over folds weighted by
their test songs:

- **parameters that matter**: those whose reference values vary across the test songs by a standard
  deviation above ``MATTER_STD`` = 0.05 of their range. A parameter the style sets alike for every
  song cannot show adaptation, and would only add noise to the summaries.
- **adaptivity**: the mean, over the parameters that matter, of the Pearson correlation across songs
  between predicted and reference value. 1 = the predictions rise and fall with the oracle's; 0 =
  unrelated, or constant (a constant has no correlation: it counts as 0).
- **spread ratio**: sqrt(Σ var(predicted) / Σ var(reference)) over the parameters that matter: how
  much the predictions vary across songs relative to how much the answers do. 0 = one setting for
  every song, 1 = as much as the oracle.
- **collapsed**: ``yes`` when the spread ratio is below ``COLLAPSE_SPREAD`` = 0.25 (the predictions
  barely move) or the adaptivity is below ``COLLAPSE_ADAPTIVITY`` = 0.2 (they move, but not with
  the song). Approach 1 is judged on its predictions with the song's own mix as reference
  (eval_policy ``song``): that is where the song's oracle is the right answer.

Approach 1's **reference sensitivity**, per seed, means over songs of d(x, y) = the mean absolute
difference over the parameters that matter (the unit of ``param_err``):

- ``sensitivity`` = d(``song``, ``other``): how far the prediction for the same raw moves when the
  reference changes from the song's own mix to another song's;
- ``control`` = d(``song``, ``shuffled``): the same with the seeded derangement of the test songs'
  mixes (the control row of the results);
- ``noise floor`` = d(``song``, ``song-alt``): the move between two sections of the song's own mix,
  i.e. what changing the reference moves without changing the style;
- ``scale`` = the mean of d(oracle_i, oracle_j) over pairs of different test songs: the sensitivity
  of a model that copied the reference song's oracle setting;
- **reads reference**: ``yes`` when sensitivity − noise floor ≥ ``REF_MIN`` = 0.25 × scale
  (``other``, else ``shuffled``, is the sensitivity used), ``no`` below, ``n/a`` when the scale is
  below ``MIN_SCALE`` = 0.01 (the songs' answers do not differ: there is nothing to read).
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from mst_single.experiments.stats import EVAL_KEY, NONE, condition, dedupe

MATTER_STD = 0.05
COLLAPSE_SPREAD = 0.25
COLLAPSE_ADAPTIVITY = 0.2
REF_MIN = 0.25
MIN_SCALE = 0.01
OWN_REFERENCE = (NONE, "song", "same")  # eval policies whose right answer is the song's own oracle
PREDICTION_KEY = EVAL_KEY + ("song", "param")


# ----------------------------------------------------------------------------------------------- arrays
def matters(reference: np.ndarray, threshold: float = MATTER_STD) -> np.ndarray:
    """(P,) bool: the parameters whose values in ``reference`` (songs, P) vary with std > ``threshold``."""
    return np.asarray(reference, dtype=np.float64).std(axis=0) > threshold


def correlation(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(P,) Pearson correlation across songs of each column of (songs, P) arrays; 0 where ``pred`` is
    constant, NaN where ``ref`` is."""
    p, r = (np.asarray(x, dtype=np.float64) for x in (pred, ref))
    pc, rc = p - p.mean(0), r - r.mean(0)
    sp, sr = np.sqrt((pc**2).sum(0)), np.sqrt((rc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (pc * rc).sum(0) / (sp * sr)
    c = np.where(sp < 1e-12, 0.0, c)
    return np.where(sr < 1e-12, np.nan, c)


def adaptivity(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Mean correlation over the parameters in ``mask`` (NaN when none)."""
    return float(np.mean(correlation(pred, ref)[mask])) if np.any(mask) else math.nan


def spread_ratio(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """sqrt(Σ var(pred) / Σ var(ref)) over the parameters in ``mask`` (NaN when none)."""
    if not np.any(mask):
        return math.nan
    vp, vr = np.var(pred, axis=0)[mask].sum(), np.var(ref, axis=0)[mask].sum()
    return float(math.sqrt(vp / vr)) if vr > 0 else math.nan


def is_collapsed(adapt: float, spread: float) -> str:
    """The reason a model counts as collapsed (``""`` if it does not): see the module docstring."""
    if math.isfinite(spread) and spread < COLLAPSE_SPREAD:
        return f"spread ratio {spread:.2f} < {COLLAPSE_SPREAD}"
    if math.isfinite(adapt) and adapt < COLLAPSE_ADAPTIVITY:
        return f"adaptivity {adapt:.2f} < {COLLAPSE_ADAPTIVITY}"
    return ""


def distance(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(songs,) mean absolute difference over the parameters in ``mask`` of two (songs, P) settings."""
    return np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))[:, mask].mean(axis=1)


def between_songs(ref: np.ndarray, mask: np.ndarray) -> float:
    """Mean of :func:`distance` over pairs of different songs of ``ref`` (songs, P) (NaN below 2 songs)."""
    r = np.asarray(ref, dtype=np.float64)[:, mask]
    n = r.shape[0]
    if n < 2 or r.shape[1] == 0:
        return math.nan
    d = np.abs(r[:, None, :] - r[None, :, :]).mean(axis=2)
    return float(d.sum() / (n * (n - 1)))


def reads_reference(sensitivity: float, noise_floor: float, scale: float) -> str:
    """``yes`` / ``no`` / ``n/a`` (see the module docstring)."""
    if not math.isfinite(scale) or scale < MIN_SCALE or not math.isfinite(sensitivity):
        return "n/a"
    floor = noise_floor if math.isfinite(noise_floor) else 0.0
    return "yes" if sensitivity - floor >= REF_MIN * scale else "no"


# ----------------------------------------------------------------------------------------------- rows
def read_predictions(path: str | Path) -> list[dict]:
    """Rows of a predictions.csv."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def settings(rows: list[dict]) -> dict[tuple[str, str], dict[tuple[str, str], dict[str, dict[str, dict[str, float]]]]]:
    """{(budget, data): {condition: {seed: {song: {param: value}}}}} from predictions.csv rows (deduped)."""
    rows, _ = dedupe(rows, PREDICTION_KEY)
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(dict))))
    for r in rows:
        out[(str(r.get("budget", NONE)), str(r.get("data", NONE)))][condition(r)][str(r["seed"])][r["song"]][
            r["param"]] = float(r["value"])
    return out


def song_folds(rows: list[dict]) -> dict[tuple[str, str, str], str]:
    """{(data, variant, song): fold} of the trained runs' predictions (a song is tested in one fold)."""
    return {(str(r.get("data", NONE)), r["variant"], r["song"]): str(r.get("fold", "0")) for r in rows}


def _per_fold(songs: list[str], fold: dict[str, str]) -> list[list[str]]:
    groups: dict = defaultdict(list)
    for s in songs:
        groups[fold.get(s, "0")].append(s)
    return [groups[k] for k in sorted(groups)]


def _fold_mean(values: list[tuple[float, int]]) -> float:
    """Mean of per-fold values weighted by the fold's songs, NaN folds left out."""
    ok = [(v, n) for v, n in values if math.isfinite(v)]
    return float(sum(v * n for v, n in ok) / sum(n for _, n in ok)) if ok else math.nan


def _merged(per_seed: dict) -> dict[str, dict[str, float]]:
    """{song: {param: mean over seeds}} (a baseline has one seed; this also covers several)."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for songs in per_seed.values():
        for song, params in songs.items():
            for k, v in params.items():
                acc[song][k].append(v)
    return {s: {k: float(np.mean(v)) for k, v in p.items()} for s, p in acc.items()}


def _matrix(values: dict[str, dict[str, float]], songs: list[str], params: list[str]) -> np.ndarray:
    return np.array([[values[s].get(p, math.nan) for p in params] for s in songs], dtype=np.float64)


def _common(params: list[str], *settings_: dict) -> list[str]:
    """Songs with every parameter in every one of ``settings_``."""
    songs = set.intersection(*(set(s) for s in settings_))
    return sorted(s for s in songs if all(all(p in x[s] for p in params) for x in settings_))


TRUTH = "truth"  # the row of the true settings (demo data), judged against the oracle like a model


def collapse_rows(prediction_rows: list[dict], truth: dict | None = None) -> list[dict]:
    """One row per (budget, data, variant, seed): the collapse metrics of the module docstring.

    Args:
        prediction_rows: predictions.csv rows.
        truth: optional {data: {song: {param: true value in [0, 1]}}} (``normalize_truth``); adds
            ``adaptivity_truth`` / ``spread_ratio_truth`` over the parameters truth.json gives.

    Keys of a row: budget, data, variant, eval_policy (the predictions judged), seed, songs,
    params (how many matter), adaptivity, spread_ratio, collapsed (yes/no), why, adaptivity_truth,
    spread_ratio_truth, and for Approach 1 sensitivity, control, noise_floor, scale, reads_reference.
    Data sets without oracle predictions give no rows.
    """
    out = []
    folds = song_folds(prediction_rows)
    for (budget, data), conds in settings(prediction_rows).items():
        oracle = _merged(conds.get(("oracle", NONE), {}))
        if not oracle:
            continue
        params = list(dict.fromkeys(p for s in oracle.values() for p in s))
        true = (truth or {}).get(data) or {}
        true_params = [p for p in params if any(p in t for t in true.values())]
        for variant in dict.fromkeys(v for v, _ in conds):
            if variant == "oracle":
                continue
            own = next((p for p in OWN_REFERENCE if (variant, p) in conds), None)
            if own is None:
                continue
            fold = {s: f for (d, v, s), f in folds.items() if d == data and v == variant}
            for seed, pred in conds[(variant, own)].items():
                row = dict(budget=budget, data=data, variant=variant, eval_policy=own, seed=seed)
                songs = _common(params, pred, oracle)
                mask = matters(_matrix(oracle, songs, params))
                parts = [(_matrix(pred, g, params), _matrix(oracle, g, params), len(g)) for g in _per_fold(songs, fold)]
                row.update(songs=len(songs), params=int(mask.sum()),
                           adaptivity=_fold_mean([(adaptivity(P, R, mask), n) for P, R, n in parts]),
                           spread_ratio=_fold_mean([(spread_ratio(P, R, mask), n) for P, R, n in parts]))
                why = is_collapsed(row["adaptivity"], row["spread_ratio"])
                row.update(collapsed="yes" if why else "no", why=why)
                tsongs = _common(true_params, pred, true) if true_params else []
                if tsongs:
                    tmask = matters(_matrix(true, tsongs, true_params))
                    parts = [(_matrix(pred, g, true_params), _matrix(true, g, true_params), len(g))
                             for g in _per_fold(tsongs, fold)]
                    row.update(adaptivity_truth=_fold_mean([(adaptivity(P, T, tmask), n) for P, T, n in parts]),
                               spread_ratio_truth=_fold_mean([(spread_ratio(P, T, tmask), n) for P, T, n in parts]))
                if own == "song" and any((variant, p) in conds for p in ("other", "shuffled")):
                    row.update(_sensitivity(conds, variant, seed, oracle, params))
                out.append(row)
        if true_params:  # the true settings judged like a model: what a perfect predictor scores
            fold = {s: f for (d, v, s), f in folds.items() if d == data and v == "oracle"}
            songs = _common(true_params, true, oracle)
            if songs:
                mask = matters(_matrix(oracle, songs, true_params))
                parts = [(_matrix(true, g, true_params), _matrix(oracle, g, true_params), len(g))
                         for g in _per_fold(songs, fold)]
                row = dict(budget=budget, data=data, variant=TRUTH, eval_policy=NONE, seed="-", songs=len(songs),
                           params=int(mask.sum()),
                           adaptivity=_fold_mean([(adaptivity(P, R, mask), n) for P, R, n in parts]),
                           spread_ratio=_fold_mean([(spread_ratio(P, R, mask), n) for P, R, n in parts]),
                           adaptivity_truth=1.0, spread_ratio_truth=1.0)
                why = is_collapsed(row["adaptivity"], row["spread_ratio"])
                out.append(dict(row, collapsed="yes" if why else "no", why=why))
    return out


def _sensitivity(conds: dict, variant: str, seed: str, oracle: dict, params: list[str]) -> dict:
    """Approach 1's reference sensitivity, control, noise floor, scale and flag for one seed."""
    song = conds[(variant, "song")][seed]
    songs = _common(params, song, oracle)
    mask = matters(_matrix(oracle, songs, params))
    out = {"scale": between_songs(_matrix(oracle, songs, params), mask)}
    for key, policy in (("sensitivity", "other"), ("control", "shuffled"), ("noise_floor", "song-alt")):
        other = conds.get((variant, policy), {}).get(seed, {})
        common = _common(params, song, other, oracle)
        out[key] = (float(distance(_matrix(song, common, params), _matrix(other, common, params), mask).mean())
                    if common and mask.any() else math.nan)
    used = out["sensitivity"] if math.isfinite(out["sensitivity"]) else out["control"]
    out["reads_reference"] = reads_reference(used, out["noise_floor"], out["scale"])
    return out


def summary(rows: list[dict]) -> list[dict]:
    """One row per (budget, data, variant) over its seeds: means of the numbers, the smallest adaptivity
    and spread ratio, ``collapsed`` = ``no`` or ``yes (k/n seeds)``, the same for ``reads_reference``."""
    groups: dict = defaultdict(list)
    for r in rows:
        groups[(r["budget"], r["data"], r["variant"])].append(r)
    out = []
    for (budget, data, variant), rs in groups.items():
        s = dict(budget=budget, data=data, variant=variant, eval_policy=rs[0]["eval_policy"], seeds=len(rs))
        for k in ("songs", "params", "adaptivity", "spread_ratio", "adaptivity_truth", "spread_ratio_truth",
                  "sensitivity", "control", "noise_floor", "scale"):
            vals = [float(r[k]) for r in rs if k in r and math.isfinite(float(r[k]))]
            s[k] = float(np.mean(vals)) if vals else math.nan
        for k in ("adaptivity", "spread_ratio"):
            vals = [float(r[k]) for r in rs if math.isfinite(float(r[k]))]
            s[f"{k}_min"] = min(vals) if vals else math.nan
        n_bad = sum(r["collapsed"] == "yes" for r in rs)
        s["collapsed"] = "no" if n_bad == 0 else f"yes ({n_bad}/{len(rs)} seeds)"
        flags = [r["reads_reference"] for r in rs if "reads_reference" in r]
        if flags:
            yes = sum(f == "yes" for f in flags)
            s["reads_reference"] = ("n/a" if all(f == "n/a" for f in flags) else "yes" if yes == len(flags)
                                    else f"{'no' if yes == 0 else 'partly'} ({yes}/{len(flags)} seeds)")
        out.append(s)
    return out


def normalize_truth(truth_units: dict[str, dict[str, float]], specs) -> dict[str, dict[str, float]]:
    """{song: {param: value in units}} (truth.json ``songs[NAME]["params"]``) -> the same in [0, 1] of
    the console's ``specs`` (parameters the console lacks are dropped)."""
    from mst_single.metrics import normalize_value

    by_name = {s.name: s for s in specs}
    return {song: {k: normalize_value(v, by_name[k]) for k, v in (p or {}).items() if k in by_name}
            for song, p in truth_units.items()}
