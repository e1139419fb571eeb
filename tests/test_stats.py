"""Paired statistics: per-song differences over seeds, bootstrap CI, win/tie/loss, gap closed, dedupe."""
import math

import numpy as np
import pytest

from mst_single.experiments import stats


def row(variant, song, value, seed=0, fold=0, metric="mrstft", eval_policy="-", data="d", budget="b"):
    return dict(experiment="e", budget=budget, data=data, variant=variant, approach="-", policy="-",
                eval_policy=eval_policy, fold=fold, seed=seed, song=song, metric=metric, value=value)


def test_bootstrap_ci_is_seeded_covers_the_mean_and_shrinks_with_more_songs():
    rng = np.random.default_rng(1)
    d = rng.normal(-0.1, 0.05, 20)
    lo, hi = stats.bootstrap_ci(d, seed=3)
    assert (lo, hi) == stats.bootstrap_ci(d, seed=3)  # same rows, same interval
    assert lo < d.mean() < hi < 0  # a clear improvement: the interval excludes 0
    # the percentile interval of the mean is about mean ± 1.96 sd / sqrt(n)
    half = 1.96 * d.std() / math.sqrt(d.size)
    assert hi - lo == pytest.approx(2 * half, rel=0.15)
    lo4, hi4 = stats.bootstrap_ci(np.tile(d, 4), seed=3)
    assert hi4 - lo4 == pytest.approx((hi - lo) / 2, rel=0.15)
    assert all(math.isnan(x) for x in stats.bootstrap_ci([0.3]))  # one song: no interval, not a certain one
    assert all(math.isnan(x) for x in stats.bootstrap_ci([]))
    # chunked resampling (many songs) gives an interval just as well
    big = rng.normal(0, 1, 5000)
    lo, hi = stats.bootstrap_ci(big, n_boot=1000)
    assert lo < big.mean() < hi and hi - lo == pytest.approx(2 * 1.96 / math.sqrt(5000), rel=0.2)


def test_win_tie_loss_uses_the_tie_band_and_the_metric_direction():
    d = [-0.5, -0.005, 0.0, 0.009, 0.2]
    assert stats.win_tie_loss(d, 0.01) == (1, 3, 1)  # lower is better: -0.5 wins
    assert stats.win_tie_loss(d, 0.01, higher_is_better=True) == (1, 3, 1)  # 0.2 wins
    assert stats.win_tie_loss([-0.5, -0.4], 0.0, higher_is_better=True) == (0, 0, 2)


def test_gap_closed_is_the_share_of_the_preset_to_oracle_distance():
    assert stats.gap_closed([0.8], [1.0], [0.6]) == pytest.approx(0.5)
    assert stats.gap_closed([1.2, 1.0], [1.0, 1.0], [0.6, 0.6]) == pytest.approx(-0.25)  # worse than the preset
    assert stats.gap_closed([9.0], [8.0], [10.0]) == pytest.approx(0.5)  # higher is better (si_sdr) too
    assert math.isnan(stats.gap_closed([0.9], [1.0], [0.995], tol=0.01))  # no gap to close


def test_paired_comparisons_average_seeds_per_song_then_pair_with_the_mean_preset():
    songs = {"a": 1.0, "b": 1.2, "c": 0.9, "d": 1.1}
    oracle = {s: v - 0.4 for s, v in songs.items()}
    rows = [row("mean-preset", s, v) for s, v in songs.items()] + [row("oracle", s, v) for s, v in oracle.items()]
    # approach2 closes exactly half the gap in seed 0 and all of it in seed 1; folds split the songs
    for seed, share in ((0, 0.5), (1, 1.0)):
        for i, (s, v) in enumerate(songs.items()):
            rows.append(row("approach2", s, v - 0.4 * share, seed=seed, fold=i % 2))
    # approach1: ties with the preset (within 0.01) on every song, with the song's mix
    for s, v in songs.items():
        rows.append(row("approach1", s, v + 0.005, eval_policy="other"))
        rows.append(row("approach1", s, v - 0.3, eval_policy="song"))
    out = {(p.a, p.b): p for p in stats.paired_comparisons(rows, ["mrstft"])}
    assert list(out) == [(("approach2", "-"), ("mean-preset", "-")), (("approach1", "other"), ("mean-preset", "-")),
                         (("approach1", "song"), ("mean-preset", "-")), (("approach2", "-"), ("approach1", "other"))]
    p = out[(("approach2", "-"), ("mean-preset", "-"))]
    assert p.n == 4 and p.mean == pytest.approx(-0.3)  # (0.2 + 0.4) / 2 below the preset per song
    np.testing.assert_allclose(p.diffs, [-0.3] * 4)
    assert p.ci == pytest.approx((-0.3, -0.3)) and (p.wins, p.ties, p.losses) == (4, 0, 0) and p.tol == 0.01
    assert p.gap_closed_per_seed == pytest.approx({"0": 0.5, "1": 1.0}) and p.gap_closed == pytest.approx(0.75)
    tie = out[(("approach1", "other"), ("mean-preset", "-"))]
    assert (tie.wins, tie.ties, tie.losses) == (0, 4, 0) and tie.gap_closed == pytest.approx(-0.0125)
    head = out[(("approach2", "-"), ("approach1", "other"))]  # headline vs headline, not the upper bound
    assert head.mean == pytest.approx(-0.305) and head.gap_closed_per_seed == {}


def test_seed_means_pool_folds_and_reruns_are_not_seeds():
    rows = [row("v", "a", 1.0, seed=0, fold=0), row("v", "b", 3.0, seed=0, fold=1),
            row("v", "a", 2.0, seed=1, fold=0), row("v", "b", 2.0, seed=1, fold=1),
            row("v", "mean", 1.0, seed=0, fold=0), row("v", "mean", 3.0, seed=0, fold=1)]
    assert stats.seed_means(rows)[(("v", "-"), "mrstft")] == {"0": 2.0, "1": 2.0}
    only_means = [r for r in rows if r["song"] == "mean"]
    assert stats.seed_means(only_means)[(("v", "-"), "mrstft")] == {"0": 2.0}  # mean over folds
    rerun = [dict(r, value=r["value"] + 1) for r in rows]
    kept, dropped = stats.dedupe(rows + rerun)
    assert dropped == len(rows) and kept == rows
    # a different budget or data set is another key
    assert stats.dedupe(rows + [dict(r, budget="x") for r in rows])[1] == 0
    assert list(stats.by_dataset(rows + [dict(r, data="z") for r in rows])) == [("b", "d"), ("b", "z")]


def test_labels_and_headline_of_approach1():
    conds = stats.conditions([row("approach1", "a", 1, eval_policy=p) for p in ("song", "shuffled", "other")]
                             + [row("approach2", "a", 1), row("mean-preset", "a", 1)])
    assert conds == [("approach1", "other"), ("approach1", "song"), ("approach1", "shuffled"), ("approach2", "-"),
                     ("mean-preset", "-")]
    assert stats.headline(conds, "approach1") == ("approach1", "other")
    assert [stats.label(c) for c in conds[:4]] == ["approach1 (eval ref: other)",
                                                   "approach1 (eval ref: song, upper bound)",
                                                   "approach1 (eval ref: shuffled, control)", "approach2"]
    assert stats.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)
