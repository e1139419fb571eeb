"""Baselines of every ablation: ``identity``, ``mean-preset`` and ``oracle``.

- ``identity``: the raw vocal on both channels, scaled to the target's integrated loudness
  (``evaluate.identity_output``): what you get by doing nothing but a level match.
- ``mean-preset``: ONE parameter setting, a (P,) vector of logits (p = sigmoid(logits) in [0, 1]),
  fitted by Adam through the ``VocalConsole`` and the training loss over random segments of the
  whole training split (the house style as a single preset; no network).
- ``oracle``: a setting fitted the same way per test song, on random crops of that song's own
  aligned raw/mixed pair: the best the chain can do for that song, the ceiling for every model.

Both fits start from the console's neutral setting, are seeded (segment draws and crops come from
seeded generators, no other randomness) and take their budgets from the experiment config
(``baselines.mean_preset`` / ``baselines.oracle``: steps, batch_size, segment_seconds, lr).
Inputs are loudness-normalised to ``target_lufs`` as in training and evaluation: every segment by
its whole song's gain (``loudness.song_gain_db`` of ``SongInfo.raw_lufs``).
"""
from __future__ import annotations

import numpy as np
import torch

NAMES = ("identity", "mean-preset", "oracle")


def _logits(p: torch.Tensor) -> torch.Tensor:
    # neutral settings sit on the box edges (e.g. reverb wet -60 dB = 0): pull them inside so that
    # sigmoid's gradient is not ~0 there
    p = p.clamp(0.02, 0.98)
    return torch.log(p / (1 - p))


def fit_setting(console, batches, steps: int, lr: float, loss_fn=None, init: torch.Tensor | None = None,
                desc: str = "fitting", progress: bool = True) -> tuple[torch.Tensor, list[float]]:
    """Fit one setting p (1, P) in [0, 1] by Adam on ``loss_fn(console(raw, p), target)["loss"]``.

    Args:
        console: a ``VocalConsole``.
        batches: callable step -> (raw (B, 1, T) already loudness-normalised, target (B, 2, T)).
        steps: optimiser steps; lr: Adam learning rate (on the logits).
        loss_fn: default ``MRSTFTL1Loss()`` (the training loss at its default weights).
        init: starting setting (1, P); default the console's neutral setting.

    Returns:
        (p (1, P) detached, loss per step).
    """
    from tqdm import tqdm

    from mst_single.losses import MRSTFTL1Loss

    loss_fn = loss_fn or MRSTFTL1Loss()
    start = console.default_params(1) if init is None else init.detach().reshape(1, -1)
    logits = torch.nn.Parameter(_logits(start.float()))
    opt = torch.optim.Adam([logits], lr=lr)
    history = []
    bar = tqdm(range(int(steps)), desc=desc, unit="step", disable=not progress, leave=False)
    for step in bar:
        raw, target = batches(step)
        p = torch.sigmoid(logits).expand(raw.shape[0], -1)
        loss = loss_fn(console(raw, p), target)["loss"]
        opt.zero_grad()
        loss.backward()
        if not torch.isfinite(logits.grad).all():  # one bad crop must not poison the setting
            logits.grad = torch.nan_to_num(logits.grad, nan=0.0, posinf=0.0, neginf=0.0)
        opt.step()
        history.append(loss.item())
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    return torch.sigmoid(logits).detach(), history


def mean_preset(console, train_songs, target_lufs: float, steps: int, batch_size: int, segment_seconds: float,
                lr: float, seed: int, split_seed: int = 0, silence_threshold_db: float = -50.0,
                loss_fn=None, progress: bool = True) -> tuple[torch.Tensor, list[float]]:
    """The ``mean-preset`` baseline: one setting (1, P) fitted over random training-split segments.

    ``train_songs``: the training split's ``SongInfo`` list (``TestSet.splits["train"]``). Segments
    are drawn by ``VocalReferenceDataset(split="train", seed=seed)``, so the same seed draws the same
    segments.
    """
    from mst_single.data import VocalReferenceDataset
    from mst_single.loudness import normalize_loudness

    ds = VocalReferenceDataset(split="train", sample_rate=console.sample_rate, segment_seconds=segment_seconds,
                               reference_policy="same", split_seed=split_seed, segments_per_epoch=steps * batch_size,
                               silence_threshold_db=silence_threshold_db, seed=seed, songs=list(train_songs))

    def batches(step):
        items = [ds[step * batch_size + i] for i in range(batch_size)]
        raw = torch.stack([it["raw"] for it in items])
        target = torch.stack([it["mixed"] for it in items])
        raw, _ = normalize_loudness(raw, console.sample_rate, target_lufs, lufs=torch.stack([it["raw_lufs"] for it in items]))
        return raw, target

    return fit_setting(console, batches, steps, lr, loss_fn, desc="mean-preset", progress=progress)


def oracle(console, raw: np.ndarray, target: np.ndarray, target_lufs: float, steps: int, batch_size: int,
           segment_seconds: float, lr: float, seed: int, raw_lufs: float, loss_fn=None, name: str = "",
           progress: bool = True) -> tuple[torch.Tensor, list[float]]:
    """The ``oracle`` baseline for one song: a setting (1, P) fitted on crops of its own pair.

    raw (1, N) and target (2, N) aligned whole song, ``raw_lufs`` its loudness (``SongInfo.raw_lufs``);
    each step takes ``batch_size`` random crops of ``segment_seconds`` (the whole song if shorter)
    drawn from ``default_rng(seed)``.
    """
    from mst_single.loudness import song_gain_db

    gain = 10.0 ** (song_gain_db(raw_lufs, target_lufs) / 20.0)
    x = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))[None] * gain  # as it is evaluated
    y = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None]
    n = x.shape[-1]
    crop = min(n, int(round(segment_seconds * console.sample_rate)))
    rng = np.random.default_rng([seed, 7])

    def batches(step):
        starts = rng.integers(0, n - crop + 1, size=batch_size)
        return (torch.cat([x[..., s:s + crop] for s in starts]), torch.cat([y[..., s:s + crop] for s in starts]))

    return fit_setting(console, batches, steps, lr, loss_fn, desc=f"oracle {name}".strip(), progress=progress)
