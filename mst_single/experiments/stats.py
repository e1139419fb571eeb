"""Statistics of an ablation over its test songs: paired differences, bootstrap CIs, win/tie/loss, gap closed.

Terms (results.csv rows, ``mst_single.experiments.records.RESULTS_COLUMNS``):

- a *condition* is ``(variant, eval_policy)``: a trained variant evaluated with one reference policy
  (``-`` where none applies), or a baseline (``identity``, ``mean-preset``, ``oracle``);
- a song's value of a condition is the mean over the seeds that tested that song (with K folds each
  song is a test song once per seed; a baseline has one value per song);
- a *paired* difference of conditions A and B is Δ = A − B per song, on the songs both tested, so the
  song-to-song spread (some songs are simply harder) cancels out;
- its 95 % confidence interval is the percentile bootstrap of the mean Δ over songs (songs resampled
  with replacement, ``N_BOOT`` resamples, seeded: the same rows give the same interval);
- win / tie / loss: A better than B by more than the metric's tie band ``metrics.ABS_TOL`` / within it
  / worse ("better" = lower, or higher for ``metrics.HIGHER_IS_BETTER``);
- gap closed: (mean-preset − A) / (mean-preset − oracle), the share of the distance from the one
  fixed setting to the per-song ceiling that A covers (1 = as good as the oracle, 0 = no better than
  one preset, < 0 = worse). Overall it is the ratio of the means over songs, per seed; the summary is
  the median over seeds (issue 10 §5). NaN when the oracle is not better than the mean preset by
  more than the tie band (there is no gap to close).

Reruns are not seeds: rows repeating the key of a row already read are dropped (:func:`dedupe`).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from mst_single.metrics import HIGHER_IS_BETTER, abs_tolerance

from mst_single.experiments.records import BASELINES, NONE  # noqa: F401 (re-exported)
# one evaluation of one run; with song and metric it identifies a results.csv row
EVAL_KEY = ("experiment", "budget", "data", "variant", "eval_policy", "fold", "seed")
ROW_KEY = EVAL_KEY + ("song", "metric")
N_BOOT = 10_000
PRIMARY = "mrstft"  # the metric of the headline table, the gap closed, the paired plot and the ranking check
# Approach 1's reference policies in the order tables show them, with what each row means
EVAL_ROLES = {"other": "headline", "song": "upper bound", "same": "upper bound", "shuffled": "control"}


# ----------------------------------------------------------------------------------------------- rows
def dedupe(rows: list[dict], key=ROW_KEY) -> tuple[list[dict], int]:
    """(rows with a unique ``key``, the first of each kept; how many were dropped).

    A rerun of the same experiment × budget × data × variant × fold × seed is the same run, not one
    more seed. Missing key columns read as ``-`` (older results.csv without budget/data/fold).
    """
    seen, out = set(), []
    for r in rows:
        k = tuple(str(r.get(c, NONE)) for c in key)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out, len(rows) - len(out)


def by_dataset(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """{(budget, data): rows} in first-seen order: budgets and data sets are never mixed in one table."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        out.setdefault((str(r.get("budget", NONE)), str(r.get("data", NONE))), []).append(r)
    return out


def condition(row: dict) -> tuple[str, str]:
    """(variant, eval_policy) of a results.csv or predictions.csv row."""
    return str(row["variant"]), str(row.get("eval_policy") or NONE)


def conditions(rows: list[dict]) -> list[tuple[str, str]]:
    """Conditions in first-seen order of their variant, Approach 1's policies as :data:`EVAL_ROLES` orders them."""
    seen = list(dict.fromkeys(condition(r) for r in rows))
    variants = list(dict.fromkeys(v for v, _ in seen))
    order = {p: i for i, p in enumerate(EVAL_ROLES)}
    return sorted(seen, key=lambda c: (variants.index(c[0]), order.get(c[1], -1 if c[1] == NONE else len(order))))


def headline(conds: list[tuple[str, str]], variant: str) -> tuple[str, str] | None:
    """The condition a variant is judged by: Approach 1 with another song's mix (``other``) as reference
    (a new vocal has no mix of its own), else the variant's only / first condition."""
    own = [c for c in conds if c[0] == variant]
    for policy in (NONE, "other"):
        if (variant, policy) in own:
            return (variant, policy)
    return own[0] if own else None


def label(cond: tuple[str, str]) -> str:
    """Table label: ``approach1 (eval ref: song, upper bound)``; the variant alone where no policy applies."""
    variant, policy = cond
    if policy == NONE:
        return variant
    role = EVAL_ROLES.get(policy)
    return f"{variant} (eval ref: {policy}{', ' + role if role and role != 'headline' else ''})"


def seed_song_values(rows: list[dict], metric: str) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """{condition: {seed: {song: value}}} of one metric, from the per-song rows (folds pooled)."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["metric"] == metric and r["song"] != "mean":
            out[condition(r)][str(r["seed"])][r["song"]] = float(r["value"])
    return out


def song_values(rows: list[dict], metric: str) -> dict[tuple[str, str], dict[str, float]]:
    """{condition: {song: mean over the seeds that tested it}} of one metric."""
    out = {}
    for cond, per_seed in seed_song_values(rows, metric).items():
        acc = defaultdict(list)
        for values in per_seed.values():
            for song, v in values.items():
                acc[song].append(v)
        out[cond] = {song: float(np.mean(v)) for song, v in acc.items()}
    return out


def seed_means(rows: list[dict]) -> dict[tuple[tuple[str, str], str], dict[str, float]]:
    """{(condition, metric): {seed: that seed's mean over all its test songs}}.

    With folds a seed's test songs are spread over K runs; their per-song rows are pooled. Where a
    source has only ``song == "mean"`` rows (run folders), the seed's value is the mean over its folds.
    """
    songs: dict = defaultdict(list)
    folds: dict = defaultdict(list)
    for r in rows:
        key = (condition(r), r["metric"], str(r["seed"]))
        (folds if r["song"] == "mean" else songs)[key].append(float(r["value"]))
    out: dict = defaultdict(dict)
    for key in list(dict.fromkeys(list(songs) + list(folds))):
        cond, metric, seed = key
        vals = songs.get(key) or folds[key]
        out[(cond, metric)][seed] = float(np.mean(vals))
    return dict(out)


def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample std with ddof 1 (NaN for one value), n)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


# ----------------------------------------------------------------------------------------------- statistics
def bootstrap_ci(diffs, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (songs resampled with replacement).

    Vectorised: resamples are drawn as an index array in chunks of about 2 M entries (bounded memory
    for thousands of songs). Fewer than two songs give (NaN, NaN), shown as n/a: one song's resamples are
    all that song, and a zero-width interval would read as certainty.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // d.size)
    means = np.concatenate([d[rng.integers(0, d.size, size=(min(chunk, n_boot - i), d.size))].mean(axis=1)
                            for i in range(0, n_boot, chunk)])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def win_tie_loss(diffs, tol: float, higher_is_better: bool = False) -> tuple[int, int, int]:
    """Counts of Δ = A − B per song: A better than B by more than ``tol``, within ``tol`` (tie), worse."""
    d = np.asarray(diffs, dtype=np.float64)
    better = d > tol if higher_is_better else d < -tol
    worse = d < -tol if higher_is_better else d > tol
    return int(better.sum()), int(d.size - better.sum() - worse.sum()), int(worse.sum())


def gap_closed(model, mean_preset, oracle, tol: float = 0.0) -> float:
    """(mean-preset − model) / (mean-preset − oracle) of matching arrays of per-song values, on their means.

    Holds for lower- and higher-is-better metrics alike. NaN when the oracle is not better than the mean
    preset by more than ``tol`` (in the metric's direction it is, by construction of the oracle).
    """
    m, p, o = (float(np.mean(np.asarray(x, dtype=np.float64))) for x in (model, mean_preset, oracle))
    gap = p - o
    return (p - m) / gap if abs(gap) > tol else math.nan


@dataclass
class Paired:
    """Paired difference A − B of one metric over the songs both tested (see the module docstring)."""

    a: tuple[str, str]
    b: tuple[str, str]
    metric: str
    songs: list[str]
    diffs: np.ndarray = field(repr=False)
    mean: float
    ci: tuple[float, float]
    wins: int
    ties: int
    losses: int
    tol: float
    gap_closed_per_seed: dict[str, float] = field(default_factory=dict)  # only against the mean preset

    @property
    def n(self) -> int:
        return len(self.songs)

    @property
    def gap_closed(self) -> float:
        """Median over seeds of the gap closed (NaN when not computed)."""
        vals = [v for v in self.gap_closed_per_seed.values() if math.isfinite(v)]
        return float(np.median(vals)) if vals else math.nan


def paired(a: dict[str, float], b: dict[str, float], metric: str, a_cond=("A", NONE), b_cond=("B", NONE),
           n_boot: int = N_BOOT, seed: int = 0) -> Paired | None:
    """Paired difference of per-song values ``a`` − ``b`` ({song: value}); None without common songs."""
    songs = sorted(set(a) & set(b))
    if not songs:
        return None
    d = np.array([a[s] - b[s] for s in songs])
    tol = abs_tolerance(metric)
    return Paired(a_cond, b_cond, metric, songs, d, float(d.mean()), bootstrap_ci(d, n_boot, seed),
                  *win_tie_loss(d, tol, metric in HIGHER_IS_BETTER), tol)


def default_pairs(conds: list[tuple[str, str]]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """The comparisons an ablation reports: every trained condition (and the ``descriptor-ridge``
    baseline) vs the mean preset, then every pair of variants' headline conditions (e.g. approach1
    with another song's mix vs approach2), then each headline vs ``descriptor-ridge`` when it ran."""
    model = [c for c in conds if c[0] not in BASELINES]
    ridge = ("descriptor-ridge", NONE)
    predictors = model + ([ridge] if ridge in conds else [])  # the ridge predicts per song: scored like a model
    pairs = [(c, ("mean-preset", NONE)) for c in predictors] if ("mean-preset", NONE) in conds else []
    heads = [h for h in (headline(conds, v) for v in dict.fromkeys(v for v, _ in model)) if h]
    pairs += [(heads[i], heads[j]) for i in range(len(heads)) for j in range(i + 1, len(heads))]
    if ridge in conds:  # does the network add anything to the map it started from?
        pairs += [(h, ridge) for h in heads]
    return pairs


def paired_comparisons(rows: list[dict], metrics: list[str], pairs=None, n_boot: int = N_BOOT,
                       seed: int = 0) -> list[Paired]:
    """:func:`paired` for every pair (default :func:`default_pairs`) × metric of one data set's rows.

    Against the mean preset, the gap closed per seed is filled in when the oracle tested the same songs.
    """
    conds = conditions(rows)
    pairs = default_pairs(conds) if pairs is None else pairs
    out = []
    for metric in metrics:
        values = song_values(rows, metric)
        per_seed = seed_song_values(rows, metric)
        for a, b in pairs:
            if a not in values or b not in values:
                continue
            p = paired(values[a], values[b], metric, a, b, n_boot, seed)
            if p is None:
                continue
            oracle = values.get(("oracle", NONE))
            if b == ("mean-preset", NONE) and oracle:
                for s, model in per_seed[a].items():
                    songs = sorted(set(model) & set(values[b]) & set(oracle))
                    if songs:
                        p.gap_closed_per_seed[s] = gap_closed([model[x] for x in songs], [values[b][x] for x in songs],
                                                              [oracle[x] for x in songs], p.tol)
            out.append(p)
    return out


def per_song_gap_closed(model: dict[str, float], mean_preset: dict[str, float], oracle: dict[str, float],
                        tol: float = 0.0) -> dict[str, float]:
    """{song: gap closed on that song alone} (NaN where that song's gap is within ``tol``)."""
    return {s: gap_closed([model[s]], [mean_preset[s]], [oracle[s]], tol)
            for s in sorted(set(model) & set(mean_preset) & set(oracle))}
