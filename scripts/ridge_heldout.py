"""Does e09's `ridge-start` hold on data it was never looked at on? (a check, not a variant)

`ridge-start`'s setting comes from the style ridge and the refinement alone: the network it trains plays
no part in it. So it can be scored on any data set without training: per fold, the experiment's
baselines (``runner.run_baselines``: mean preset, oracle) on the new data, then per seed the style
ridge fitted on the fold's training + validation raws (``style.style_ridge_raws``/``fit_style_ridge``,
as `fit` does) and every test song refined from it on its `song` references (as ``ablate`` evaluates
the variant). Prints the share of the mean-preset -> oracle gap closed per fold and seed and over all
songs. From the repository root (e09 README, "Held-out check"):

    mst-single demo-data data/demo-per-song-s1 --style per-song --songs 48 --seconds 15 --seed 1
    OMP_NUM_THREADS=1 python scripts/ridge_heldout.py --data demo-per-song=data/demo-per-song-s1 --variant ridge-start-60

``--fold K``, ``--steps N`` and ``--lr X`` score one fold with another refinement: how e09's
`ridge-start-60` got its 60 steps (e09 README, "How `ridge-start-60`'s steps were chosen").
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def ridge_start_settings(console, testset, target_lufs: float, refine: dict, renders: int, seed: int) -> dict:
    """{test song: setting (1, P)} of `ridge-start` without a network: the style ridge fitted on the
    test set's training + validation songs, then ``style.refine_setting`` from its setting on each test
    song's `song` references (``refine``: the variant's `refine:` without `start`)."""
    from mst_single import style as S
    from mst_single.experiments import evaluate as E

    s = testset.settings
    raws, _ = S.style_ridge_raws(list(testset.splits["train"]) + list(testset.splits["val"]), testset.sample_rate,
                                 target_lufs, testset.segment_seconds, s["split_seed"], s["silence_threshold_db"])
    ridge = S.fit_style_ridge(console, raws, renders, seed=seed)
    dataset, out = testset.segments("song"), {}
    kw = {k: v for k, v in refine.items() if k != "start"}
    for name in testset.names:
        raw, ref = E.song_segments(dataset, name, testset.sample_rate, target_lufs)
        with torch.enable_grad():
            out[name] = S.refine_setting(console, raw, ref, S.style_ridge_setting(ridge, raw, ref, testset.sample_rate),
                                         seed=seed, **kw)
    return out


def main(argv=None) -> int:
    from mst_single.console import VocalConsole
    from mst_single.errors import MstError
    from mst_single.experiments import config as C
    from mst_single.experiments import evaluate as E
    from mst_single.experiments import runner as R

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiment", default=str(REPO / "experiments" / "e09-refine"))
    ap.add_argument("--variant", default="ridge-start")
    ap.add_argument("--budget", default="cpu")
    ap.add_argument("--data", required=True, help="NAME=DIR: the new data under the experiment's data name")
    ap.add_argument("--folds", type=int, default=None)
    ap.add_argument("--fold", type=int, default=None, help="score this fold only")
    ap.add_argument("--steps", type=int, default=None, help="refinement steps instead of the variant's")
    ap.add_argument("--lr", type=float, default=None, help="refinement learning rate instead of the variant's")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="/tmp/ridge-heldout", help="baselines and splits (runs/_data) go here")
    a = ap.parse_args(argv)
    plan = R.make_plan(argparse.Namespace(
        experiment=a.experiment, budget=a.budget, data=[a.data], seeds=None, folds=a.folds, out=a.out, force=False,
        jobs=1, variant=a.variant, seed=None, fold=a.fold, data_name=None, export_sweep=False, check=False,
        cached_fits=False))
    unit = plan.units[0]
    refine, model = unit.spec.get("refine") or {}, unit.config.get("model") or {}
    if refine.get("start") != "ridge" or not model.get("style_ridge"):
        raise MstError(f"variant {a.variant!r} is not refined from a style ridge", Path(a.experiment) / "config.yaml",
                       "pick a variant with `refine: {start: ridge}` and model.style_ridge: true (e09: ridge-start)")
    refine = C.refine_settings(dict(refine, **{k: v for k, v in (("steps", a.steps), ("lr", a.lr)) if v is not None}),
                               "--steps/--lr", Path(a.experiment) / "config.yaml")  # the experiment's own checks
    R.prepare_data(plan)
    seeds = [int(s) for s in a.seeds.split(",")]
    scores, base, t0 = {s: {} for s in seeds}, {}, time.time()
    for fold in sorted(plan.splits[unit.data]):
        b = R.run_baselines(plan, unit.data, fold)
        for r in b["rows"]:
            if r["metric"] == "mrstft" and r["song"] != "mean" and r["variant"] in ("mean-preset", "oracle"):
                base[(r["variant"], r["song"])] = r["value"]
        u = next(x for x in plan.units if x.fold == fold)
        ts = E.TestSet(**u.eval_data)
        console, lufs = VocalConsole(ts.sample_rate, model.get("stages")), float(model.get("target_lufs", -23.0))
        for seed in seeds:
            p = ridge_start_settings(console, ts, lufs, refine, int(model.get("style_ridge_renders", 30)), seed)
            got = {r.song: r.metrics["mrstft"] for r in E.evaluate_setting(console, lufs, ts, p, keep_audio=False,
                                                                           progress=False)}
            scores[seed].update(got)
            print(f"fold {fold} seed {seed}: {_line(got, base)} ({time.time() - t0:.0f} s)", flush=True)
    for seed in seeds:
        print(f"{'all folds' if a.fold is None else f'fold {a.fold} only'}, seed {seed}: {_line(scores[seed], base)}")
    return 0


def _line(got: dict, base: dict) -> str:
    songs = sorted(got)
    m = lambda k: float(np.mean([base[(k, s)] for s in songs]))  # noqa: E731
    x, mp, orc = float(np.mean([got[s] for s in songs])), m("mean-preset"), m("oracle")
    better = sum(got[s] < base[("mean-preset", s)] for s in songs)
    return (f"{len(songs)} songs, mrstft {x:.4f} (mean preset {mp:.4f}, oracle {orc:.4f}), gap closed "
            f"{(mp - x) / (mp - orc):.1%}, better than the mean preset on {better}")


if __name__ == "__main__":
    torch.set_num_threads(1)  # here, not in main(): a caller's (a test's) process keeps its own thread count
    sys.exit(main())
