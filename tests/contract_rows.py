"""Synthetic rows of results.csv / predictions.csv / runs.csv in the pipeline contract's format.

Every song has an oracle setting (random in [0, 1]); each run predicts a setting per test song, and
its metrics follow from the distance d of that setting to the song's oracle (mrstft = hardness ×
(0.7 + d), si_sdr = 12 − 5 d, ...), so the results and the predictions tell one consistent story.
"""
from __future__ import annotations

import numpy as np

PARAMS = ["gain_db", "eq_band2_gain_db", "comp_threshold_db", "reverb_wet_db", "output_gain_db"]


def experiment_rows(data="demo-adaptive", budget="cpu", songs=10, seeds=3, folds=2, approach2="adapts",
                    approach1="reads", noise=0.05, seed=0, experiment="e01"):
    """(results rows, prediction rows, run rows) of one experiment on one data set.

    approach2: ``adapts`` (oracle + noise) or ``collapsed`` (the same setting for every song);
    approach1: ``reads`` (predicts the reference song's oracle + noise) or ``ignores`` (the raw's
    oracle whatever the reference). Approach 1 is evaluated with song / other / shuffled references
    (and song-alt predictions); baselines identity, mean-preset, oracle once per fold (seed 0).
    """
    rng = np.random.default_rng(seed)
    names = [f"song{i:03d}" for i in range(songs)]
    hard = rng.uniform(0.8, 1.3, songs)
    oracle = rng.uniform(0.1, 0.9, (songs, len(PARAMS)))
    res, pred, runs = [], [], []
    base = dict(experiment=experiment, budget=budget, data=data)

    def add(variant, approach, policy, eval_policy, fold, run_seed, settings, with_metrics=True):
        idx = [i for i in range(songs) if i % folds == fold]
        key = dict(base, variant=variant, eval_policy=eval_policy, fold=fold, seed=run_seed)
        for i in idx:
            pred.extend(dict(key, song=names[i], param=p, value=float(v)) for p, v in zip(PARAMS, settings[i]))
        if not with_metrics:
            return
        d = {i: float(np.abs(settings[i] - oracle[i]).mean()) for i in idx}
        per_song = {i: {"mrstft": hard[i] * (0.7 + d[i]), "l1": 0.03 + 0.01 * d[i], "si_sdr": 12 - 5 * d[i],
                        "lufs_err": 0.3 + d[i], "centroid_err": 50 + 300 * d[i], "dynamics_err": 1 + d[i],
                        "param_err": d[i]} for i in idx}
        row = dict(key, approach=approach, policy=policy)
        for m in per_song[idx[0]]:
            res.extend(dict(row, song=names[i], metric=m, value=per_song[i][m]) for i in idx)
            res.append(dict(row, song="mean", metric=m, value=float(np.mean([per_song[i][m] for i in idx]))))

    preset = np.tile(oracle.mean(0), (songs, 1))
    for fold in range(folds):
        idx = [i for i in range(songs) if i % folds == fold]
        res.extend(dict(base, variant="identity", approach="-", policy="-", eval_policy="-", fold=fold, seed=0,
                        song=s, metric=m, value=v)
                   for s, v in [(names[i], hard[i] * 1.3) for i in idx] + [("mean", float(np.mean(hard[idx] * 1.3)))]
                   for m in ["mrstft"])
        add("mean-preset", "-", "-", "-", fold, 0, preset)
        add("oracle", "-", "-", "-", fold, 0, oracle)
        runs += [dict(base, variant=v, fold=fold, seed=0, run_id=f"{v}-f{fold}", train_seconds="", steps=steps,
                      eval_seconds=1.0, checkpoint="") for v, steps in (("mean-preset", 140), ("oracle", 95))]
        for s in range(seeds):
            r = np.random.default_rng(1000 * seed + 10 * fold + s)
            jitter = r.normal(0, noise, oracle.shape)
            a2 = np.clip(oracle + jitter, 0, 1) if approach2 == "adapts" else np.tile(r.uniform(0.3, 0.7, len(PARAMS)),
                                                                                   (songs, 1))
            add("approach2", "approach2", "-", "-", fold, s, a2)
            refs = {"song": np.arange(songs), "song-alt": np.arange(songs), "other": (np.arange(songs) + 1) % songs,
                    "shuffled": (np.arange(songs) + 2) % songs}
            for policy, ref in refs.items():
                src = oracle[ref] if approach1 == "reads" else oracle
                add("approach1", "approach1", "song", policy, fold, s, np.clip(src + jitter, 0, 1),
                    with_metrics=policy != "song-alt")
            runs += [dict(base, variant=v, fold=fold, seed=s, run_id=f"{v}-f{fold}-s{s}", train_seconds=100.0 + s,
                          steps=300, eval_seconds=5.0, checkpoint=f"runs/{v}-f{fold}-s{s}/checkpoints/last.ckpt")
                     for v in ("approach1", "approach2")]
    return res, pred, runs
