"""How far can a linear map from the 13 take descriptors take Approach 2 on `adaptive` demo data?

For each fold of a committed e10-style results folder (its splits and parameter targets), fit a
ridge regression of the settings' logits on the standardised take descriptors of the training
songs, once to their *true* settings (truth.json) and once to their *oracle* settings (the
parameter targets training used); the ridge strength is chosen by leave-one-out on the training
songs. Each test song is then mixed with its predicted setting at the house loudness (as
`model.match_loudness` does) and scored like `mst-single ablate`; the gap closed is measured
against the folder's own mean-preset and oracle rows. No network is involved.

``--prior-weight W`` (repeatable) adds a row per W: the ridge fitted to the ``oracle-prior`` settings
(each training song refitted from, and pulled toward, the median of the oracle settings with weight
W: ``param_targets: oracle-prior``), fitted here with the folder's oracle budget and cached with
the oracle's fits (experiments/.cache/oracle).

    python scripts/descriptor_ceiling.py experiments/e10-descriptors/results/cpu [--data data/demo-adaptive] [--prior-weight 0.05]
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import numpy as np
import torch
import yaml

from mst_single.audio import load_audio, song_descriptors
from mst_single.console import VocalConsole
from mst_single.descriptors import descriptor_stats, ridge_logits, standardise
from mst_single.experiments import baselines as B
from mst_single.experiments import config as C
from mst_single.experiments import evaluate as E
from mst_single.loudness import integrated_loudness

def ridge(Z: np.ndarray, Y: np.ndarray, Zt: np.ndarray) -> tuple[np.ndarray, float]:
    """Settings predicted for Zt by the logit-space ridge of Y (songs, P) on Z (songs, D), and its strength."""
    W, b, lam = ridge_logits(Z, Y)
    return 1 / (1 + np.exp(-(b + Zt @ W))), lam


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="an ablate results folder on adaptive data, e.g. experiments/e10-descriptors/results/cpu")
    ap.add_argument("--data", type=Path, default=Path("data/demo-adaptive"))
    ap.add_argument("--prior-weight", type=float, action="append", default=[],
                    help="also the ridge on the oracle-prior settings refitted with this weight (repeatable)")
    ap.add_argument("--cache", type=Path, default=Path("experiments/.cache/oracle"), help="the oracle's fit cache")
    args = ap.parse_args()
    prov = json.loads((args.results / "provenance.json").read_text())
    data_name = next(iter(prov["data"]))
    rows = list(csv.DictReader(open(args.results / "results.csv")))
    base = args.results / "runs" / "_data" / data_name
    cfg = yaml.safe_load(next((args.results / "runs").glob("*-f0-s0/config.yaml")).read_text())
    d = cfg["data"]
    console = VocalConsole(int(d["sample_rate"]))
    truth = json.loads((args.data / "truth.json").read_text())["songs"]
    fitting = C.baseline_settings(prov["experiment_config"], prov["budget"])  # the oracle budget of the folder
    print("| fold | setting | MR-STFT | gap closed | ridge strength |\n|---|---|---:|---:|---:|")
    for fold in range(int(prov["folds"])):
        ts = E.TestSet(args.data, sample_rate=d["sample_rate"], segment_seconds=d["segment_seconds"],
                       split_file=str(base / "splits" / f"fold{fold}.json"))
        train = ts.splits["train"] + ts.splits["val"]
        house = float(np.median([integrated_loudness(*load_audio(s.mixed_path)) for s in ts.splits["train"]]))
        D = np.stack([song_descriptors(s) for s in train])
        mu, sd = descriptor_stats(D)
        Z, Zt = standardise(D, mu, sd), standardise(np.stack([song_descriptors(s) for s in ts.songs]), mu, sd)
        targets = json.loads((base / f"param-targets-fold{fold}.json").read_text())["params"]
        true = np.stack([console.known_setting(truth[s.name]["params"])[0].numpy() for s in train])
        oracle = np.stack([np.asarray(targets[s.name]) for s in train])

        def score(v):
            return {r["song"]: float(r["value"]) for r in rows if r["variant"] == v and r["fold"] == str(fold)
                    and r["metric"] == "mrstft" and r["seed"] in ("0", "-")}

        mp, orc = score("mean-preset"), score("oracle")
        a, o = (statistics.mean(m[n] for n in ts.names) for m in (mp, orc))
        rows_y = [("ridge on the true settings", true), ("ridge on the oracle settings", oracle)]
        prior = B.median_setting([targets[s.name] for s in train])
        for w in args.prior_weight:
            fits = B.fit_songs(console, train, target_lufs=float(cfg["model"]["target_lufs"]),
                               budget=fitting.get("oracle") or {}, cache_dir=args.cache,
                               seed=int(fitting.get("seed", 0)), prior=prior, prior_weight=w)
            rows_y.append((f"ridge on the oracle-prior settings (weight {w:g})",
                           np.stack([fits[s.name][0].reshape(-1).numpy() for s in train])))
        for label, Y in rows_y:
            pred, lam = ridge(Z, Y, Zt)
            settings = {n: torch.from_numpy(pred[i:i + 1]).float() for i, n in enumerate(ts.names)}
            res = E.evaluate_setting(console, float(cfg["model"]["target_lufs"]), ts, settings,
                                     keep_audio=False, progress=False, output_lufs=house)
            x = statistics.mean(r.metrics["mrstft"] for r in res)
            print(f"| {fold} | {label} | {x:.3f} | {100 * (a - x) / (a - o):.0f} % | {lam:.3g} |", flush=True)
        print(f"| {fold} | mean preset / oracle (the folder's) | {a:.3f} / {o:.3f} | | |", flush=True)


if __name__ == "__main__":
    main()
