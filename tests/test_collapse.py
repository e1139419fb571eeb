"""Collapse metrics: a constant predictor and a reference-ignoring Approach 1 are flagged, working ones pass."""
import math

import numpy as np
import pytest

from mst_single.experiments import collapse

PARAMS = ["gain_db", "eq_hi_gain_db", "comp_threshold_db", "reverb_send_db", "out_gain_db"]
SONGS = [f"song{i:02d}" for i in range(12)]


def oracle_matrix(seed=0):
    """(songs, params) oracle settings in [0, 1]: four parameters vary per song, out_gain does not."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.1, 0.9, (len(SONGS), len(PARAMS)))
    m[:, -1] = 0.5
    return m


def pred_rows(variant, matrix, eval_policy="-", seed=0, folds=2, data="adaptive"):
    return [dict(experiment="e", budget="cpu", data=data, variant=variant, eval_policy=eval_policy, fold=i % folds,
                 seed=seed, song=s, param=p, value=float(matrix[i, j]))
            for i, s in enumerate(SONGS) for j, p in enumerate(PARAMS)]


def baseline_rows(oracle):
    return pred_rows("oracle", oracle) + pred_rows("mean-preset", np.tile(oracle.mean(0), (len(SONGS), 1)))


def by_variant(rows, truth=None):
    return {r["variant"]: r for r in collapse.collapse_rows(rows, truth) if r["seed"] == "0"}


def test_array_metrics():
    ref = oracle_matrix()
    mask = collapse.matters(ref)
    assert mask.tolist() == [True, True, True, True, False]  # out_gain_db is the same for every song
    np.testing.assert_allclose(collapse.correlation(ref, ref)[:4], 1.0)
    assert collapse.correlation(np.zeros_like(ref), ref)[0] == 0.0  # a constant follows nothing
    assert math.isnan(collapse.correlation(ref, ref)[4])  # nothing to follow
    assert collapse.spread_ratio(0.5 * ref, ref, mask) == pytest.approx(0.5)
    assert collapse.adaptivity(1 - ref, ref, mask) == pytest.approx(-1.0)
    assert collapse.distance(ref, ref + 0.1, mask) == pytest.approx(np.full(len(SONGS), 0.1))
    two = np.array([[0.0, 0.0], [0.4, 0.2]])
    assert collapse.between_songs(two, np.array([True, True])) == pytest.approx(0.3)


def test_constant_predictor_is_collapsed_and_oracle_plus_noise_passes():
    oracle = oracle_matrix()
    noisy = np.clip(oracle + np.random.default_rng(5).normal(0, 0.03, oracle.shape), 0, 1)
    rows = baseline_rows(oracle) + pred_rows("approach2", np.tile([0.3, 0.6, 0.4, 0.5, 0.5], (len(SONGS), 1)))
    rows += pred_rows("working", noisy)
    out = by_variant(rows)
    bad, good, preset = out["approach2"], out["working"], out["mean-preset"]
    assert bad["collapsed"] == "yes" and bad["spread_ratio"] == pytest.approx(0, abs=1e-9) and "spread ratio" in bad["why"]
    assert bad["adaptivity"] == 0.0 and bad["songs"] == 12 and bad["params"] == 4
    assert good["collapsed"] == "no" and good["adaptivity"] > 0.9 and 0.9 < good["spread_ratio"] < 1.1
    assert preset["collapsed"] == "yes"  # one setting for every song, by construction
    assert "oracle" not in out


def test_random_predictions_that_vary_but_do_not_follow_the_song_are_collapsed():
    oracle = oracle_matrix()
    shuffled = oracle[np.roll(np.arange(len(SONGS)), 1)]  # full spread, settings of the wrong songs
    out = by_variant(baseline_rows(oracle) + pred_rows("approach2", shuffled))["approach2"]
    assert out["spread_ratio"] == pytest.approx(1.0, rel=0.2) and out["adaptivity"] < collapse.COLLAPSE_ADAPTIVITY
    assert out["collapsed"] == "yes" and "adaptivity" in out["why"]


def test_adaptivity_against_truth_where_truth_json_gives_parameters():
    oracle = oracle_matrix()
    truth = {"adaptive": {s: {"gain_db": float(oracle[i, 0]), "eq_hi_gain_db": 1 - float(oracle[i, 1])}
                          for i, s in enumerate(SONGS)}}
    out = by_variant(baseline_rows(oracle) + pred_rows("approach2", oracle), truth)["approach2"]
    assert out["adaptivity"] == pytest.approx(1.0)
    assert out["adaptivity_truth"] == pytest.approx(0.0)  # +1 on gain_db, -1 on eq_hi_gain_db
    assert out["spread_ratio_truth"] == pytest.approx(1.0)
    assert "adaptivity_truth" not in by_variant(baseline_rows(oracle) + pred_rows("approach2", oracle))["approach2"]


def approach1_rows(oracle, predict):
    """Approach 1's predictions for every eval policy; ``predict(raw song, reference song)`` -> (P,)."""
    n = len(SONGS)
    refs = {"song": range(n), "song-alt": range(n), "other": [(i + 3) % n for i in range(n)],
            "shuffled": [(i + 5) % n for i in range(n)]}
    rows = []
    for policy, ref in refs.items():
        rows += pred_rows("approach1", np.array([predict(i, j) for i, j in enumerate(ref)]), eval_policy=policy)
    return rows


def test_reference_ignoring_approach1_is_flagged_and_a_reference_reader_passes():
    oracle = oracle_matrix()
    ignore = by_variant(baseline_rows(oracle) + approach1_rows(oracle, lambda raw, ref: oracle[raw]))["approach1"]
    assert ignore["eval_policy"] == "song" and ignore["collapsed"] == "no"  # it adapts to the raw...
    assert ignore["sensitivity"] == 0.0 and ignore["control"] == 0.0 and ignore["noise_floor"] == 0.0
    assert ignore["reads_reference"] == "no"  # ...but not to the reference
    scale = collapse.between_songs(oracle, collapse.matters(oracle))
    assert ignore["scale"] == pytest.approx(scale)

    reader = by_variant(baseline_rows(oracle) + approach1_rows(oracle, lambda raw, ref: oracle[ref]))["approach1"]
    assert reader["reads_reference"] == "yes" and reader["noise_floor"] == 0.0
    assert reader["sensitivity"] == pytest.approx(scale, rel=0.3) and reader["control"] > 0.5 * scale

    # a noise floor as large as the sensitivity: the reference moves it, but no more than a section change does
    rng = np.random.default_rng(0)
    jitter = {}

    def noisy(raw, ref):
        jitter[(raw, ref)] = jitter.get((raw, ref), rng.uniform(0, 1, len(PARAMS)))
        return jitter[(raw, ref)] if raw != ref else rng.uniform(0, 1, len(PARAMS))

    flat = by_variant(baseline_rows(oracle) + approach1_rows(oracle, noisy))["approach1"]
    assert flat["reads_reference"] == "no" and flat["noise_floor"] > 0.2


def test_summary_counts_collapsed_seeds_and_read_predictions_csv(tmp_path):
    oracle = oracle_matrix()
    const = np.tile(oracle.mean(0), (len(SONGS), 1))
    rows = baseline_rows(oracle) + pred_rows("approach2", oracle, seed=0) + pred_rows("approach2", const, seed=1)
    rows += pred_rows("approach2", oracle, seed=2)
    rows += pred_rows("approach2", const, seed=0)  # a rerun of seed 0: not another seed, not counted
    path = tmp_path / "predictions.csv"
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    got = {s["variant"]: s for s in collapse.summary(collapse.collapse_rows(collapse.read_predictions(path)))}
    a2 = got["approach2"]
    assert a2["seeds"] == 3 and a2["collapsed"] == "yes (1/3 seeds)"
    assert a2["spread_ratio_min"] == pytest.approx(0, abs=1e-9) and a2["spread_ratio"] == pytest.approx(2 / 3)
    assert got["mean-preset"]["collapsed"] == "yes (1/1 seeds)"
    # another data set without an oracle gives no rows; budgets/data sets stay apart
    assert collapse.collapse_rows(pred_rows("approach2", oracle, data="other")) == []


def test_the_true_settings_are_judged_against_the_oracle_like_a_model():
    # an oracle that is the truth plus wide fitting noise: the truth itself then looks collapsed against it
    rng = np.random.default_rng(3)
    true = 0.5 + 0.05 * rng.standard_normal((len(SONGS), len(PARAMS)))
    oracle = np.clip(true + 0.2 * rng.standard_normal(true.shape), 0, 1)
    truth = {"adaptive": {s: dict(zip(PARAMS, map(float, true[i]))) for i, s in enumerate(SONGS)}}
    rows = collapse.collapse_rows(baseline_rows(oracle), truth)
    row = next(r for r in rows if r["variant"] == collapse.TRUTH)
    assert row["seed"] == "-" and row["songs"] == len(SONGS) and row["spread_ratio_truth"] == 1.0
    assert row["spread_ratio"] < collapse.COLLAPSE_SPREAD and row["collapsed"] == "yes"
    # an exact oracle: the truth passes
    exact = {"adaptive": {s: dict(zip(PARAMS, map(float, oracle[i]))) for i, s in enumerate(SONGS)}}
    row = next(r for r in collapse.collapse_rows(baseline_rows(oracle), exact) if r["variant"] == collapse.TRUTH)
    assert row["adaptivity"] == pytest.approx(1.0) and row["spread_ratio"] == pytest.approx(1.0)
    assert row["collapsed"] == "no"
    assert not any(r["variant"] == collapse.TRUTH for r in collapse.collapse_rows(baseline_rows(oracle)))


def test_normalize_truth_uses_the_console_ranges():
    from mst_single.console import specs_for

    specs = specs_for(16000)
    spec = next(s for s in specs if s.name == "gain_db")
    mid = (spec.low + spec.high) / 2
    out = collapse.normalize_truth({"s": {"gain_db": mid, "not_a_param": 3.0}}, specs)
    assert out == {"s": {"gain_db": pytest.approx(0.5)}}


def test_a_constant_per_fold_is_collapsed_although_the_folds_differ():
    # one trained model per fold: two different constants pooled over folds look like a spread
    oracle = oracle_matrix()
    per_fold = np.array([[0.2, 0.3, 0.4, 0.3, 0.5] if i % 2 == 0 else [0.8, 0.7, 0.6, 0.7, 0.5]
                         for i in range(len(SONGS))])
    rows = baseline_rows(oracle) + pred_rows("approach2", per_fold)  # pred_rows puts song i in fold i % 2
    bad = by_variant(rows)["approach2"]
    assert bad["collapsed"] == "yes" and bad["spread_ratio"] == pytest.approx(0, abs=1e-9)
    pooled = collapse.spread_ratio(per_fold, oracle, collapse.matters(oracle))
    assert pooled > 0.5  # what the folds-pooled metric reported
