"""Baselines of every ablation, fitted until converged and scored per whole song like the models.

- ``identity``: the raw vocal on both channels with the models' input normalisation (the whole-song
  gain ``loudness.song_gain_db`` to ``target_lufs``) and nothing else. It is NOT matched to the
  target's loudness: its ``lufs_err`` is what doing nothing costs.
- ``identity-level-matched`` (optional): the raw vocal scaled to the target's integrated loudness,
  i.e. given the answer's loudness for free; labelled so.
- ``mean-preset``: ONE setting fitted over random segments of the run's training songs (the house
  style as a single preset; no network), per data set × fold.
- ``oracle``: a setting fitted per test song on random crops of that song's own aligned pair, with
  restarts; the restart whose setting scores best on the whole song wins. The chain's ceiling.
- ``descriptor-ridge`` (optional): no network: each test song's setting predicted from its 13 take
  descriptors by the ridge regression fitted to the training songs' ``oracle-prior`` settings
  (:func:`descriptor_ridge`); the map a ``model.descriptor_init: ridge`` network starts from, mixed
  at the house loudness as ``model.match_loudness`` does (experiments/e12).
- ``true-setting`` (optional, demo data only): each test song's true setting from ``truth.json``, the
  setting that made its mix (``runner.true_settings``). What a network that predicts settings
  perfectly would score; below the oracle's score only where the console cannot follow the engine.

Fitting (:func:`fit_setting`): Adam on the logits of p = sigmoid(logits) through the ``VocalConsole``
and the training loss, until an exponential moving average of the loss (``EMA_BETA``) has not
improved by ``min_delta`` (relative) for ``patience`` steps, capped at ``max_steps``; the steps used
and why it stopped are reported (``FitInfo``). Seeded: segment draws, crops and restart starts come
from seeded generators. Inputs are normalised as everywhere: every segment by its whole song's gain.
Settings per budget (``baselines:`` in experiments/base.yaml)::

    mean_preset: {max_steps, patience, min_delta, lr, batch_size, segment_seconds}
    oracle:      {max_steps, patience, min_delta, lr, batch_size, segment_seconds, restarts}

Interface shared with ``mst_single/oracle.py`` (pipeline contract: ``fit_setting``, ``fit_songs``,
``fit_mean_preset`` with these signatures); until that module is merged they are implemented here.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

EMA_BETA = 0.9  # smoothing of the per-step loss (random crops make it noisy) for the stopping rule
FIT_DEFAULTS = dict(max_steps=300, patience=20, min_delta=1e-3, lr=0.05, batch_size=4, segment_seconds=2.0)


@dataclass
class FitInfo:
    """How a fit went: ``steps`` taken, the loss per step, and ``stopped_by`` "converged" | "max_steps"."""

    steps: int
    losses: list = field(default_factory=list, repr=False)
    stopped_by: str = "max_steps"
    score: float | None = None  # whole-song loss of the chosen setting (oracle)
    restarts: list = field(default_factory=list)  # per restart: {"steps", "stopped_by", "score"} (oracle)


def _logits(p: torch.Tensor) -> torch.Tensor:
    # neutral settings sit on the box edges (e.g. reverb wet -60 dB = 0): pull them inside so that
    # sigmoid's gradient is not ~0 there
    p = p.clamp(0.02, 0.98)
    return torch.log(p / (1 - p))


def _budget(budget: dict | None) -> dict:
    """The fitting settings with defaults; MstError-free: unknown keys (e.g. ``restarts``) pass through."""
    b = dict(FIT_DEFAULTS, **(budget or {}))
    if "steps" in b and "max_steps" not in (budget or {}):  # the old fixed-step key
        b["max_steps"] = b.pop("steps")
    return b


def fit_setting(console, batches, *, max_steps: int, lr: float, patience: int, min_delta: float,
                init: torch.Tensor | None = None, loss_fn=None, desc: str = "fitting",
                progress: bool = True, prior: torch.Tensor | None = None,
                prior_weight: float = 0.0, min_steps: int = 0) -> tuple[torch.Tensor, FitInfo]:
    """Fit one setting p (1, P) in [0, 1] by Adam on ``loss_fn(console(raw, p), target)["loss"]``.

    Args:
        console: a ``VocalConsole``.
        batches: callable step -> (raw (B, 1, T) already loudness-normalised, target (B, 2, T)).
        max_steps: cap on the optimiser steps; lr: Adam learning rate (on the logits).
        patience, min_delta: stop when the smoothed loss has not gone below ``best * (1 - min_delta)``
            for ``patience`` steps in a row; min_steps: not before that many steps.
        init: starting setting (1, P); default the console's neutral setting.
        loss_fn: default ``MRSTFTL1Loss()`` (the training loss at its default weights).
        prior, prior_weight: a setting (1, P) and a weight: adds ``prior_weight`` x the mean over
            the P parameters of the squared logit distance to ``prior``, so that a parameter the
            audio barely constrains stays at the prior instead of wandering (``oracle-prior``).

    Returns:
        (p (1, P) detached, FitInfo).
    """
    from mst_single.losses import MRSTFTL1Loss
    from mst_single.progress import progress as progress_bar

    loss_fn = loss_fn or MRSTFTL1Loss()
    start = console.default_params(1) if init is None else init.detach().reshape(1, -1)
    logits = torch.nn.Parameter(_logits(start.float()))
    anchor = None if prior is None or not prior_weight else _logits(prior.detach().reshape(1, -1).float())
    opt = torch.optim.Adam([logits], lr=lr)
    history, ema, best, since = [], None, float("inf"), 0
    stopped_by = "max_steps"
    bar = progress_bar(total=int(max_steps), desc=desc, unit="steps", enabled=progress, leave=False)
    with bar:
        for step in range(int(max_steps)):
            raw, target = batches(step)
            p = torch.sigmoid(logits).expand(raw.shape[0], -1)
            loss = loss_fn(console(raw, p), target)["loss"]
            if anchor is not None:
                loss = loss + float(prior_weight) * (logits - anchor).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            if not torch.isfinite(logits.grad).all():  # one bad crop must not poison the setting
                logits.grad = torch.nan_to_num(logits.grad, nan=0.0, posinf=0.0, neginf=0.0)
            opt.step()
            history.append(loss.item())
            bar.set_postfix(loss=f"{history[-1]:.4f}")
            bar.update(1)
            if not np.isfinite(history[-1]):
                continue
            ema = history[-1] if ema is None else EMA_BETA * ema + (1 - EMA_BETA) * history[-1]
            if ema < best * (1 - min_delta):
                best, since = ema, 0
            else:
                since += 1
            if since >= patience and step + 1 >= min_steps:
                stopped_by = "converged"
                break
    return torch.sigmoid(logits).detach(), FitInfo(len(history), history, stopped_by)


def _normalised_batch(items: list[dict], console, target_lufs: float) -> tuple[torch.Tensor, torch.Tensor]:
    from mst_single.loudness import normalize_loudness

    raw = torch.stack([it["raw"] for it in items])
    target = torch.stack([it["mixed"] for it in items])
    raw, _ = normalize_loudness(raw, console.sample_rate, target_lufs, lufs=torch.stack([it["raw_lufs"] for it in items]))
    return raw, target


def _mean_preset_key(songs, console, target_lufs, budget, seed, silence_threshold_db, loss_fn) -> str:
    from mst_single.experiments.config import stable_hash

    files = [[s.name, file_digest(s.raw_path), file_digest(s.mixed_path), s.lag, s.raw_offset, s.mixed_offset, s.length]
             for s in songs]  # the order too: it decides which segments are drawn
    loss = "default" if loss_fn is None else repr(loss_fn)
    return stable_hash(["mean-preset", 1, files, console.sample_rate, console.stages, target_lufs, budget, seed,
                        silence_threshold_db, loss])


def fit_mean_preset(console, songs, *, target_lufs: float, budget: dict | None = None, seed: int = 0,
                    silence_threshold_db: float = -50.0, loss_fn=None, progress: bool = True,
                    desc: str = "mean-preset", cache_dir: str | os.PathLike | None = None,
                    refit: bool = False) -> tuple[torch.Tensor, FitInfo]:
    """The ``mean-preset`` baseline: one setting (1, P) fitted over random segments of ``songs``
    (``SongInfo`` list: the training songs), drawn by ``VocalReferenceDataset(split="train", seed=seed)``.

    With ``cache_dir``: kept in ``cache_dir/mean-preset-<hash>.json``, keyed by the songs (their files'
    sha256, alignment, order), sample rate, console stages, loudness target, budget, seed, silence
    threshold and loss, so that the same fit is made once (the ``mean-preset`` baseline and the
    ``model.house_preset`` of every run on that training set); ``refit`` ignores and replaces it."""
    b = _budget(budget)
    cache = None
    if cache_dir:
        cache = Path(cache_dir) / f"mean-preset-{_mean_preset_key(songs, console, target_lufs, b, seed, silence_threshold_db, loss_fn)}.json"
        if cache.exists() and not refit:
            saved = json.loads(cache.read_text())
            return torch.tensor([saved["p"]], dtype=torch.float32), FitInfo(**saved["info"])
    p, info = _fit_mean_preset(console, songs, b, target_lufs, seed, silence_threshold_db, loss_fn, progress, desc)
    if cache is not None:
        from mst_single.fileio import write_json

        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, {"p": [float(v) for v in p.reshape(-1)], "info": asdict(info)})
    return p, info


def _fit_mean_preset(console, songs, b, target_lufs, seed, silence_threshold_db, loss_fn, progress, desc):
    from mst_single.data import VocalReferenceDataset

    bs = int(b["batch_size"])
    ds = VocalReferenceDataset(split="train", sample_rate=console.sample_rate, segment_seconds=b["segment_seconds"],
                               reference_policy="same", segments_per_epoch=int(b["max_steps"]) * bs,
                               silence_threshold_db=silence_threshold_db, seed=seed, songs=list(songs))
    # min_steps: the smoothed loss starts at the first batch; over a few songs a lucky first batch is a
    # best that noise does not beat, and the preset "converged" after `patience` steps with its loss
    # rising (a baseline understated, every model's gap overstated). Committed baselines ran far longer.
    return fit_setting(console, lambda step: _normalised_batch([ds[step * bs + i] for i in range(bs)], console, target_lufs),
                       max_steps=int(b["max_steps"]), lr=float(b["lr"]), patience=int(b["patience"]),
                       min_delta=float(b["min_delta"]), loss_fn=loss_fn, desc=desc, progress=progress,
                       min_steps=2 * int(b["patience"]))


def _song_loss(console, target_lufs: float, song, raw: np.ndarray, y: torch.Tensor, p: torch.Tensor, loss_fn) -> float:
    """The training loss of setting p on the whole song, mixed as the evaluation mixes it."""
    from mst_single.experiments.evaluate import mix_song

    out = torch.from_numpy(mix_song(console, target_lufs, raw, p, song.raw_lufs))[None]
    with torch.no_grad():
        return float(loss_fn(out, y)["loss"])


_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime) -> sha256 of the file, hashed once per process


def file_digest(path) -> str:
    """sha256 of a file's bytes (memoised per path, size and mtime)."""
    import hashlib

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _oracle_key(song, console, target_lufs, budget, seed, loss_fn, prior=None) -> str:
    from mst_single.experiments.config import stable_hash

    # the files' contents, not their path and mtime: a data folder copied elsewhere (a fresh clone
    # given the cache, Drive -> a Colab disk) keeps its fits; a changed file is refitted
    files = [file_digest(f) for f in (song.raw_path, song.mixed_path)]
    loss = "default" if loss_fn is None else repr(loss_fn)
    key = ["oracle", 2, files, song.lag, console.sample_rate, console.stages, target_lufs, budget, seed, loss]
    return stable_hash(key if prior is None else key + [prior])  # unchanged without a prior: old caches stay valid


def fit_songs(console, songs, *, target_lufs: float, budget: dict | None = None, cache_dir: str | os.PathLike | None = None,
              seed: int = 0, restarts: int | None = None, loss_fn=None, progress: bool = True,
              refit: bool = False, prior: torch.Tensor | None = None,
              prior_weight: float = 0.0, jobs: int = 1) -> dict[str, tuple[torch.Tensor, FitInfo]]:
    """The ``oracle``: per song (``SongInfo`` list) a setting fitted on crops of its own pair.

    Restart 0 starts from the neutral setting, restart r > 0 from a random one (seeded by ``seed``
    and r); each restart draws its own crops (``batch_size`` crops of ``segment_seconds`` per step,
    the whole song if shorter). The restart whose setting has the lowest loss on the whole song
    wins (its ``FitInfo.score``). Cached per song in ``cache_dir/oracle-<hash>.json`` by the song's
    files (their sha256: a copied data folder keeps its fits), alignment, sample rate, console stages, loss, budget and seed;
    ``refit`` ignores (and replaces) the cached fits.

    ``prior`` (1, P) with ``prior_weight`` > 0 (the ``oracle-prior`` parameter targets): one start,
    from the prior, and the loss pulled toward it (``fit_setting``); ``restarts`` is ignored. Songs
    with a similar take then get similar settings where the audio leaves a parameter free, which
    makes the fits a regression target a network can follow.

    ``jobs`` > 1 fits that many songs at once, each in its own process with this process's torch
    threads divided among them (at least 1). Each song's fit depends only on the song and the
    settings, so with one thread per fit the result is the same bit for bit as ``jobs=1``.
    """
    import time

    from mst_single.fileio import write_json
    from mst_single.progress import clock

    b = _budget(budget)
    restarts = int(restarts if restarts is not None else b.get("restarts", 1))
    anchored = prior is not None and prior_weight > 0
    prior_key = None
    if anchored:
        restarts = 1
        prior = prior.detach().reshape(1, -1).float()
        prior_key = {"prior": [round(float(v), 6) for v in prior.reshape(-1)], "weight": float(prior_weight)}
    b["restarts"] = restarts
    out, todo = {}, []
    for k, song in enumerate(songs):
        key = _oracle_key(song, console, target_lufs, b, seed, loss_fn, prior_key)
        cache = Path(cache_dir) / f"oracle-{key}.json" if cache_dir else None
        if cache is not None and cache.exists() and not refit:
            saved = json.loads(cache.read_text())
            out[song.name] = (torch.tensor([saved["p"]], dtype=torch.float32), FitInfo(**saved["info"]))
        else:
            todo.append((k, song, cache))
    kw = dict(target_lufs=target_lufs, budget=b, seed=seed, restarts=restarts, loss_fn=loss_fn,
              prior=prior if anchored else None, prior_weight=prior_weight if anchored else 0.0)

    t0, fitted = time.monotonic(), []

    def done(k, song, cache, p, info):
        out[song.name] = (p, info)
        fitted.append(song.name)
        if progress:  # a line per song, with how far the uncached fits are (they finish in any order)
            n, elapsed = len(fitted), time.monotonic() - t0
            print(f"oracle {song.name} ({k + 1}/{len(songs)}): " + "; ".join(
                f"restart {i + 1}: {t['steps']} steps ({t['stopped_by']}), whole-song loss {t['score']:.4f}"
                for i, t in enumerate(info.restarts))
                + f" [{n}/{len(todo)} fitted, {clock(elapsed)} elapsed, ETA {clock(elapsed / n * (len(todo) - n))}]",
                flush=True)
        if cache is not None:
            write_json(cache, {"song": song.name, "p": p.reshape(-1).tolist(), "info": asdict(info)})

    jobs = min(int(jobs), len(todo))
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn, not fork: a forked child of a process that has run torch's thread pool can hang
        threads = max(1, torch.get_num_threads() // jobs)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_fit_song_in_worker, console.sample_rate, console.stages, threads, song,
                                   f"({k + 1}/{len(songs)})", kw): (k, song, cache) for k, song, cache in todo}
            try:
                for fut in as_completed(futures):
                    done(*futures[fut], *fut.result())
            except BaseException:  # one song failed: say so now, not after every other song (the done ones are cached)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    else:
        for k, song, cache in todo:
            done(k, song, cache, *fit_song(console, song, desc=f"({k + 1}/{len(songs)})", progress=progress, **kw))
    return {s.name: out[s.name] for s in songs}


def fit_song(console, song, *, target_lufs: float, budget: dict, seed: int, restarts: int, loss_fn=None,
             prior: torch.Tensor | None = None, prior_weight: float = 0.0, desc: str = "",
             progress: bool = True) -> tuple[torch.Tensor, FitInfo]:
    """One song's oracle fit (``fit_songs`` without the cache): (p (1, P), FitInfo with ``score``
    and ``restarts``). ``budget`` as ``_budget`` returns it."""
    from mst_single.data import load_aligned, song_loudness
    from mst_single.losses import MRSTFTL1Loss
    from mst_single.loudness import song_gain_db

    fit_b = {k: budget[k] for k in ("max_steps", "lr", "patience", "min_delta")}
    score_fn = loss_fn or MRSTFTL1Loss()
    raw, target = load_aligned(song)
    gain = 10.0 ** (song_gain_db(song_loudness(song), target_lufs) / 20.0)
    x = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))[None] * gain  # as it is evaluated
    y = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None]
    n = x.shape[-1]
    crop = min(n, int(round(float(budget["segment_seconds"]) * console.sample_rate)))
    best, tried = None, []
    for r in range(restarts):
        rng = np.random.default_rng([seed, r, 7])

        def batches(step, rng=rng):
            starts = rng.integers(0, n - crop + 1, size=int(budget["batch_size"]))
            return torch.cat([x[..., s:s + crop] for s in starts]), torch.cat([y[..., s:s + crop] for s in starts])

        init = prior if prior is not None else (
            None if r == 0 else torch.from_numpy(rng.uniform(0.1, 0.9, (1, console.num_params))).float())
        p, info = fit_setting(console, batches, **fit_b, init=init, loss_fn=loss_fn, progress=progress,
                              prior=prior, prior_weight=prior_weight,
                              desc=f"oracle {song.name} {desc} restart {r + 1}/{restarts}")
        info.score = _song_loss(console, target_lufs, song, raw, y, p, score_fn)
        tried.append({"steps": info.steps, "stopped_by": info.stopped_by, "score": info.score})
        if best is None or info.score < best[1].score:
            best = (p, info)
    p, info = best
    info.restarts = tried
    return p, info


_WORKER_CONSOLES: dict = {}  # (sample rate, stages) -> VocalConsole, one per worker process


def _fit_song_in_worker(sample_rate, stages, threads, song, desc, kw):
    from mst_single.console import VocalConsole

    torch.set_num_threads(threads)
    key = (sample_rate, tuple(sorted(stages.items())))
    if key not in _WORKER_CONSOLES:
        _WORKER_CONSOLES[key] = VocalConsole(sample_rate, stages)
    return fit_song(_WORKER_CONSOLES[key], song, desc=desc, progress=False, **kw)


def median_setting(settings) -> torch.Tensor:
    """The per-parameter median, in logit space, of settings (each (1, P) in [0, 1]): the prior of
    the ``oracle-prior`` fits. The median, because audio-equivalent fits scatter to the box edges."""
    logits = torch.cat([_logits(torch.as_tensor(p, dtype=torch.float32).reshape(1, -1)) for p in settings])
    return torch.sigmoid(logits.median(dim=0).values)[None]


def descriptor_ridge(train, targets: np.ndarray, songs) -> tuple[dict[str, torch.Tensor], float]:
    """The ``descriptor-ridge`` baseline: ({song: (1, P) in [0, 1]}, ridge strength) for ``songs``,
    from the ridge regression of ``targets`` (len(train), P) in [0, 1] on the ``train`` songs' take
    descriptors, standardised by their statistics (``descriptors.ridge_logits``, leave-one-out
    strength): exactly what ``model.descriptor_init: ridge`` puts in the network's descriptor map."""
    from mst_single.audio import song_descriptors
    from mst_single.descriptors import descriptor_stats, ridge_logits, standardise

    D = np.stack([song_descriptors(s) for s in train])
    mean, std = descriptor_stats(D)
    W, b, lam = ridge_logits(standardise(D, mean, std), targets)
    out = {}
    for s in songs:
        z = b + standardise(song_descriptors(s), mean, std) @ W
        out[s.name] = torch.from_numpy(1 / (1 + np.exp(-z))).float().reshape(1, -1)
    return out, lam
