"""What limits e09's `refine`: where it starts, its statistics, or its batch? (a diagnostic, not a variant)

Refines each test song's setting as `refine` does (``style.refine_setting`` on the `song` references
the network read), but from chosen starts and with chosen settings, using the committed `network`
predictions of e09's results/cpu/predictions.csv (no training), and scores the whole song like
``ablate``. Prints MR-STFT over the fold's songs and the share of the mean-preset -> oracle gap
closed, against the committed baselines. Needs `make demo-data` (data/demo-per-song). From the
repository root (e09 README, "What limits it"):

    OMP_NUM_THREADS=1 python scripts/refine_probe.py --fold 1 --start truth

--start network|mean|truth|ridge[,...]: the network's prediction (as `refine`), the mean preset, the TRUE
setting (truth.json: not available to a real model; it asks whether the statistics keep the answer once
there), or a `ridge` map from (reference statistics - raw statistics) to the setting, fitted on the
console's own renders of the fold's training and validation raws at random settings (`--renders` per
song; no mix, no truth and no network: ``style.fit_style_ridge``, which e09's `ridge-start` uses).
Several: each is refined and the one with the lowest style loss on all of the song's raw segments
is kept; the line says how often each won (e.g. `network,truth`: does the loss prefer the answer's basin?).
--screen N: also draw N uniform settings, keep the --top K by style loss on 4 raw segments and refine
those too, as further starts (does a global search on the same statistics help?).
--crops: raw segments per step (`refine` uses 4; a song has ~10).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from mst_single import style as S

REPO = Path(__file__).resolve().parents[1]
STARTS = ("network", "mean", "truth", "ridge")


def refine_from_starts(console, raw: torch.Tensor, reference: torch.Tensor, starts: dict, steps: int, lr: float,
                       crops: int, seed: int = 0) -> tuple[str, torch.Tensor, dict]:
    """Refine every start {name: (1, P) in [0, 1]} on the reference's style (``style.refine_setting``);
    keep the one whose refined setting has the lowest style loss on ALL raw segments (n, 1, samples)
    (not the noisy last step's crops). Returns (its name, its setting (1, P), {name: final style loss})."""
    loss = S.StyleLoss(reference, console.sample_rate)
    final, settings = {}, {}
    for name, p0 in starts.items():
        with torch.enable_grad():
            settings[name] = S.refine_setting(console, raw, reference, p0, steps=steps, lr=lr, crops=crops, seed=seed)
        with torch.no_grad():
            final[name] = float(loss(console(raw, settings[name].expand(raw.shape[0], -1)))["loss"])
    best = min(final, key=final.get)
    return best, settings[best], final


def screened_starts(console, raw: torch.Tensor, reference: torch.Tensor, n: int, top: int, seed: int) -> dict:
    """``top`` of ``n`` uniform settings in [0.02, 0.98], ranked by style loss on 4 raw segments."""
    g = torch.Generator().manual_seed(777 + seed)
    pop = 0.02 + 0.96 * torch.rand(n, len(console.param_names), generator=g)
    pick = torch.randperm(raw.shape[0], generator=g)[:4]
    loss = S.StyleLoss(reference, console.sample_rate)
    with torch.no_grad():
        pre = [float(loss(console(raw[pick], c.expand(len(pick), -1)))["loss"]) for c in pop]
    return {f"screen{j}": pop[j].reshape(1, -1) for j in np.argsort(pre)[:top]}


def main(argv=None) -> int:
    from mst_single.console import VocalConsole
    from mst_single.experiments import evaluate as E
    from mst_single.experiments import runner as R

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiment", default=str(REPO / "experiments" / "e09-refine"))
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="which committed network run (and the refinement's crop seed)")
    ap.add_argument("--start", default="network", help="network, mean, truth, or several joined by commas")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--crops", type=int, default=4)
    ap.add_argument("--screen", type=int, default=0)
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--part", default="0/1", help="i/n: every n-th song from the i-th (run n processes)")
    ap.add_argument("--renders", type=int, default=30, help="`ridge`: random settings rendered per training song")
    a = ap.parse_args(argv)
    if not set(a.start.split(",")) <= set(STARTS):
        ap.error(f"--start: {', '.join(STARTS)} (comma-separated), got {a.start!r}")

    folder = Path(a.experiment)
    plan = R.make_plan(argparse.Namespace(
        experiment=str(folder), budget="cpu", data=None, seeds=None, folds=None, out="/tmp/refine-probe", force=False,
        jobs=1, variant=None, seed=None, fold=None, data_name=None, export_sweep=False, check=False, cached_fits=False))
    R.prepare_data(plan)
    unit = R._unit(plan, "refine", "demo-per-song", a.fold, a.seed)
    ts, model = E.TestSet(**unit.eval_data), unit.config["model"]
    console = VocalConsole(ts.sample_rate, model.get("stages"))
    target_lufs = float(model.get("target_lufs", -23.0))

    committed = folder / "results" / "cpu"
    setting = defaultdict(lambda: defaultdict(dict))  # variant -> song -> param -> [0, 1]
    for r in csv.DictReader(open(committed / "predictions.csv")):
        if int(r["fold"]) == a.fold and (r["variant"] == "mean-preset" or (
                r["variant"] == "network" and r["eval_policy"] == "song" and int(r["seed"]) == a.seed)):
            setting[r["variant"]][r["song"]][r["param"]] = float(r["value"])
    baseline = defaultdict(dict)
    for r in csv.DictReader(open(committed / "results.csv")):
        if r["metric"] == "mrstft" and int(r["fold"]) == a.fold and r["variant"] in ("mean-preset", "oracle"):
            baseline[r["variant"]][r["song"]] = float(r["value"])

    ridge = None
    if "ridge" in a.start.split(","):  # the fold's training + validation songs: the songs its network trained on
        from mst_single.data import VocalReferenceDataset

        t1, train = time.time(), list(ts.splits["train"]) + list(ts.splits["val"])
        own = VocalReferenceDataset(split="test", sample_rate=ts.sample_rate, segment_seconds=ts.segment_seconds,
                                    split_seed=ts.split_seed, silence_threshold_db=ts.silence_threshold_db,
                                    songs=train, reference_policy="song")
        ridge = S.fit_style_ridge(console, [E.song_segments(own, s.name, ts.sample_rate, target_lufs)[0] for s in train],
                                  a.renders, seed=1000 * a.seed + a.fold)
        print(f"ridge start: {int(ridge['samples'])} renders of {len(train)} training songs, strength "
              f"{float(ridge['strength']):g}, "
              f"{time.time() - t1:.0f} s", file=sys.stderr, flush=True)
    i, n = map(int, a.part.split("/"))
    names, dataset = ts.names[i::n], ts.segments("song")
    as_p = lambda d: torch.tensor([[d[k] for k in console.param_names]])  # noqa: E731
    scores, won, t0 = {}, defaultdict(int), time.time()
    for name in names:
        raw, ref = E.song_segments(dataset, name, ts.sample_rate, target_lufs)
        every = {"network": lambda: as_p(setting["network"][name]), "mean": lambda: as_p(setting["mean-preset"][name]),
                 "truth": lambda: console.known_setting(ts.truth_params(name)).reshape(1, -1).float(),
                 "ridge": lambda: S.style_ridge_setting(ridge, raw, ref, ts.sample_rate)}
        starts = {k: every[k]() for k in a.start.split(",")}
        if a.screen:
            starts.update(screened_starts(console, raw, ref, a.screen, a.top, a.seed))
        what, p, final = refine_from_starts(console, raw, ref, starts, a.steps, a.lr, a.crops, a.seed)
        won["screen" if what.startswith("screen") else what] += 1
        raw_song, target = ts.audio(name)
        scores[name] = E._result(console, target_lufs, ts, name, p, raw_song, target, False).metrics["mrstft"]
        print(f"{name}: mrstft {scores[name]:.4f}, style loss {final[what]:.4f} from {what}", file=sys.stderr, flush=True)

    mean = lambda d: float(np.mean([d[s] for s in names]))  # noqa: E731
    mp, orc, x = mean(baseline["mean-preset"]), mean(baseline["oracle"]), mean(scores)
    print(f"fold {a.fold} seed {a.seed} part {a.part} ({len(names)} songs), start {a.start}"
          f"{f', screen {a.screen} top {a.top}' if a.screen else ''}{f', {a.renders} renders' if ridge else ''}, "
          f"{a.steps} steps x {a.crops} crops, lr {a.lr}: "
          f"mrstft {x:.4f}, gap closed {(mp - x) / (mp - orc):.1%} (mean preset {mp:.4f}, oracle {orc:.4f}); "
          f"lowest style loss from {dict(won)}; {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # here, not in main(): a caller's (a test's) process keeps its own thread count
    sys.exit(main())
