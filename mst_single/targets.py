"""`mst-single targets DATA -o TARGETS.json`: the per-song parameter targets `fit` reads.

Approach 2's best recipe (experiments/e12: 55 % of the mean-preset -> oracle gap on the adaptive demo
data) trains toward each training song's ``oracle-prior`` setting: the console fitted on the song's
own raw/mixed pair, started from and pulled toward the median of the plain fits of all songs, so a
parameter the audio leaves free gets one value for every song (experiments/e11). `mst-single ablate`
makes these per fold; this command makes them for your own data, for

    mst-single fit -c configs/approach2-ridge-init-slow.yaml --data.root DATA --data.param_targets TARGETS.json

Every song of DATA is fitted (the training loss reads only the training and validation songs'
targets; the prior, a median, sees the test songs' fits too). Fits are cached per song next to the
output (``.cache/oracle/``, keyed by the files' sha256 and every fitting setting), so a run cut off
by a lost notebook session resumes where it stopped, and a second call with other settings refits.
The fits run on the CPU: about 30 s a song at 48 kHz on one core (a plain fit with 2 restarts, then
the prior refit; 3 demo songs of 15 s took 1 min 38 s on a machine busy with other work), so a few
hundred songs take hours; ``--jobs N`` fits N songs at once (the same numbers with one torch thread
per fit), and `--max-steps` or a lower `--sample-rate` (the fit's too) trade precision for time.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mst_single.experiments.config import PRIOR_WEIGHT  # the experiments' param_target_prior_weight default

# The `cpu` budget's oracle settings (experiments/base.yaml), with which e11/e12's targets were fitted.
ORACLE_SETTINGS = dict(max_steps=150, patience=20, min_delta=0.001, batch_size=2, segment_seconds=1.0, lr=0.1,
                       restarts=2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="data folder holding raw/NAME.wav and mixed/NAME.wav")
    parser.add_argument("-o", "--output", required=True, help="targets JSON to write (for --data.param_targets)")
    parser.add_argument("--sample-rate", type=int, default=48000,
                        help="the fit's data.sample_rate (Hz; configs/base.yaml: 48000)")
    parser.add_argument("--target-lufs", type=float, default=-23.0, help="the fit's model.target_lufs (LUFS)")
    parser.add_argument("--prior-weight", type=float, default=PRIOR_WEIGHT,
                        help="pull toward the median fit (x mean squared logit distance); 0 = the plain oracle fits")
    parser.add_argument("--max-steps", type=int, default=ORACLE_SETTINGS["max_steps"],
                        help="optimiser steps per fit at most (each stops earlier when it stops improving)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1,
                        help="songs fitted at once, each in its own process (e.g. the CPU cores; same results)")
    parser.add_argument("--cache-dir", default=None, help="per-song fit cache (default: OUTPUT's folder/.cache/oracle)")
    parser.add_argument("--allow-unmatched", action="store_true",
                        help="skip names with only a raw or only a mixed file (a warning) instead of failing; "
                             "`fit` on the same folder then needs --data.allow_unmatched true")


def make_targets(root, *, sample_rate: int = 48000, target_lufs: float = -23.0, prior_weight: float = PRIOR_WEIGHT,
                 settings: dict | None = None, seed: int = 0, cache_dir=None, jobs: int = 1,
                 allow_unmatched: bool = False) -> dict:
    """The targets JSON (``{"names": [P], "params": {song: [P] in [0, 1]}}``, what
    ``data.read_param_targets`` reads) of every song of ``root``; see the module docstring."""
    from mst_single.audio import index_songs
    from mst_single.console import VocalConsole
    from mst_single.errors import DataError
    from mst_single.experiments import baselines as B

    if not prior_weight >= 0:
        raise DataError(f"--prior-weight {prior_weight!r} is negative", None, f"e.g. --prior-weight {PRIOR_WEIGHT}")
    if jobs < 1:  # before the songs are analysed, which takes a while on a few hundred
        raise DataError(f"--jobs {jobs}: at least 1 song must be fitted at a time", None, "e.g. --jobs 2")
    songs = index_songs(root, sample_rate=sample_rate, allow_unmatched=allow_unmatched,
                        skip_hint="pass --allow-unmatched to skip them")
    if prior_weight > 0 and len(songs) < 3:
        raise DataError(f"{len(songs)} song(s): the prior (a median fit) needs at least 3", root,
                        "add pairs, or --prior-weight 0 for the plain fits")
    console = VocalConsole(sample_rate)
    budget = dict(ORACLE_SETTINGS, **(settings or {}))
    common = dict(target_lufs=target_lufs, budget=budget, cache_dir=cache_dir, seed=seed, jobs=jobs)
    print(f"targets: fitting the console to each of {len(songs)} songs' own pair", flush=True)
    fits = B.fit_songs(console, songs, restarts=budget["restarts"], **common)
    if prior_weight > 0:
        prior = B.median_setting([fits[s.name][0] for s in songs])
        print(f"targets: refitting {len(songs)} songs toward their median fit (weight {prior_weight:g})", flush=True)
        fits = B.fit_songs(console, songs, prior=prior, prior_weight=prior_weight, **common)
    # fit checks these against its own: targets fitted at another rate or level mean other settings
    return {"names": list(console.param_names), "sample_rate": int(sample_rate), "target_lufs": float(target_lufs),
            "prior_weight": float(prior_weight),
            "params": {n: p.reshape(-1).tolist() for n, (p, _) in sorted(fits.items())}}


def run(args) -> int:
    from mst_single.fileio import write_json

    out = Path(args.output)
    cache = Path(args.cache_dir) if args.cache_dir else out.parent / ".cache" / "oracle"
    targets = make_targets(args.data, sample_rate=args.sample_rate, target_lufs=args.target_lufs,
                           prior_weight=args.prior_weight, settings={"max_steps": args.max_steps}, seed=args.seed,
                           cache_dir=cache, jobs=args.jobs, allow_unmatched=args.allow_unmatched)
    write_json(out, targets)
    print(f"wrote {out}: {len(targets['params'])} songs x {len(targets['names'])} parameters (fits cached in {cache})")
    return 0
