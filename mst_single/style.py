"""Alignment-free style statistics, a style loss, and test-time refinement of a setting on a reference.

Approach 1 gets a reference mix that is NOT time-aligned with the raw vocal (another section of the
song's mix, or another song's). Its network reads that reference once; :func:`refine_setting` then
moves the predicted setting a few optimiser steps so that the console's output has the reference's
*statistics*. Diff-MST (Vanka et al., ISMIR 2024) compares a mix with an unaligned reference the same
way, through differentiable production features (its ``AudioFeatureLoss``); here such a comparison is
used at test time, with our own statistics. Why statistics: the same style on different notes gives
different spectrograms but similar long-term distributions, so the loss compares distributions.

Statistics (:func:`style_stats`) of a signal (batch, channels 1|2, samples), pooled over the batch:
- ``quantiles`` (bands, Q): per log-mel band (mid = mean of the channels), quantiles of the frame
  level in dB over all frames. Their median follows EQ and gain, their spread compression, their
  low quantiles the noise floor and the reverb tail filling the pauses.
- ``side`` (bands,): side-to-mid energy ratio per band in dB (the console's reverb is the only
  stereo element: its wet level and tone show up here).
- ``delta`` (bands, 4): per band, quantiles of the level change from one frame to the next (dB per
  hop): how fast the level rises and falls, i.e. the compressor's attack/release and the reverb's decay.

:func:`style_loss`: mean absolute difference of the quantiles (dB) + ``side_weight`` x that of the
side ratios + ``delta_weight`` x that of the level changes, divided by 10 so that 1.0 ~ a 10 dB
mismatch. Defaults (48 mel bands from 40 Hz, 2048-point FFT, hop 512, weights 0.5 and 1.0) were
chosen on fold 0 of e09 (experiments/e09-refine/README.md says how).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9, 0.97)
DELTA_QUANTILES = (0.03, 0.15, 0.85, 0.97)
FLOOR_DB = -120.0  # digital silence reads this, not -inf


def _frames_db(x: torch.Tensor, sample_rate: int, n_bands: int, n_fft: int,
               hop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, channels, samples) -> band powers in dB of mid and side, each (frames pooled, bands)."""
    from mst_single.models import mel_filterbank

    if x.dim() != 3 or x.shape[1] not in (1, 2):
        raise ValueError(f"expected (batch, 1|2, samples), got {tuple(x.shape)}")
    mid = x.mean(1)
    side = (x[:, 0] - x[:, 1]) / 2 if x.shape[1] == 2 else torch.zeros_like(mid)
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    fb = torch.as_tensor(mel_filterbank(sample_rate, n_fft, n_bands, f_min=40.0)).to(x)
    out = []
    for s in (mid, side):
        spec = torch.stft(s, n_fft, hop, window=window, center=True, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # (batch, bins, frames)
        bands = torch.matmul(fb, power).transpose(1, 2).reshape(-1, n_bands)  # (batch * frames, bands)
        out.append(10.0 * torch.log10(bands + 10 ** (FLOOR_DB / 10)))
    return out[0], out[1]


def style_stats(x: torch.Tensor, sample_rate: int, n_bands: int = 48, n_fft: int = 2048,
                hop: int | None = None, quantiles=QUANTILES) -> dict[str, torch.Tensor]:
    """Alignment-free statistics of x (batch, channels 1|2, samples), pooled over batch and frames.

    Returns {"quantiles": (n_bands, len(quantiles)) dB, "side": (n_bands,) dB side/mid energy ratio,
    "delta": (n_bands, len(DELTA_QUANTILES)) dB per hop}.
    Differentiable in x. ``n_fft`` (default 2048: 46 ms at 44.1 kHz), hop ``n_fft // 4``.
    """
    b = x.shape[0]
    mid_db, side_db = _frames_db(x, sample_rate, n_bands, n_fft, hop or n_fft // 4)
    qs = torch.tensor(quantiles, dtype=mid_db.dtype, device=mid_db.device)
    q = torch.quantile(mid_db, qs, dim=0).T
    # level change from one frame to the next, within each item: attack/release and reverb decay
    frames = mid_db.reshape(b, -1, n_bands)
    delta = (frames[:, 1:] - frames[:, :-1]).reshape(-1, n_bands)
    dq = torch.quantile(delta, torch.tensor(DELTA_QUANTILES, dtype=delta.dtype, device=delta.device), dim=0).T
    mean_mid = torch.logsumexp(mid_db * (np.log(10) / 10), 0)
    mean_side = torch.logsumexp(side_db * (np.log(10) / 10), 0)
    return {"quantiles": q, "side": (mean_side - mean_mid) * (10 / np.log(10)), "delta": dq}


def style_loss(output: dict[str, torch.Tensor], target: dict[str, torch.Tensor], side_weight: float = 0.5,
               delta_weight: float = 1.0) -> torch.Tensor:
    """Distance between two :func:`style_stats` results (scalar; 1.0 ~ 10 dB average mismatch)."""
    q = (output["quantiles"] - target["quantiles"]).abs().mean()
    side = (output["side"].clamp(min=-60) - target["side"].clamp(min=-60)).abs().mean()
    delta = (output["delta"] - target["delta"]).abs().mean()
    return (q + side_weight * side + delta_weight * delta) / 10.0


class StyleLoss(nn.Module):
    """:func:`style_loss` between ``output`` (batch, channels, samples) and fixed reference statistics
    (computed once from the reference audio (batch, channels, samples) with :func:`style_stats`)."""

    def __init__(self, reference: torch.Tensor, sample_rate: int, n_bands: int = 48, side_weight: float = 0.5,
                 delta_weight: float = 1.0):
        super().__init__()
        self.sample_rate, self.n_bands, self.side_weight = int(sample_rate), int(n_bands), float(side_weight)
        self.delta_weight = float(delta_weight)
        with torch.no_grad():
            self.target = style_stats(reference.float(), self.sample_rate, self.n_bands)

    def forward(self, output: torch.Tensor, _target=None) -> dict[str, torch.Tensor]:
        loss = style_loss(style_stats(output, self.sample_rate, self.n_bands), self.target, self.side_weight,
                          self.delta_weight)
        return {"loss": loss}


def match_reference_loudness(console, raw: torch.Tensor, reference: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """p (1, P) with its output gain moved so that the console's output on all the raw segments
    (n, 1, samples), played one after another, has the integrated loudness (BS.1770) of the reference
    segments (m, 2, samples) played one after another (``VocalConsole.output_gain_to``)."""
    from mst_single.loudness import integrated_loudness

    with torch.no_grad():
        out = console(raw, p.to(raw).expand(raw.shape[0], -1))
    joined = lambda x: x.detach().float().cpu().permute(1, 0, 2).reshape(x.shape[1], -1).numpy()  # noqa: E731
    sr = console.sample_rate
    measured, wanted = integrated_loudness(joined(out), sr), integrated_loudness(joined(reference), sr)
    return console.output_gain_to(p, measured, wanted)[0]


def refine_setting(console, raw: torch.Tensor, reference: torch.Tensor, init: torch.Tensor, steps: int,
                   lr: float = 0.05, crops: int = 4, seed: int = 0, progress: bool = False,
                   match_level: bool = True) -> torch.Tensor:
    """Refine a setting on the reference's style: Adam on the setting's logits, ``steps`` steps of
    :class:`StyleLoss` between ``console(raw crops, p)`` and the whole reference.

    Args:
        console: a ``VocalConsole``.
        raw: (n, 1, samples) loudness-normalised raw segments of the song (as the network saw them).
        reference: (m, 2, samples) reference segments (their statistics are pooled once).
        init: (1, P) starting setting in [0, 1] (the network's prediction).
        steps: optimiser steps (0: return ``init``); crops: raw segments per step (seeded draw).
        match_level: then move the output gain so that the output's integrated loudness is the
            reference's (:func:`match_reference_loudness`). Why: the quantiles weigh every frame alike, loudness
            weighs the loud ones; on e09's fold 0 the statistics alone left a 1.6 LU loudness error.

    Returns:
        (1, P) refined setting in [0, 1], detached.
    """
    from mst_single.experiments.baselines import fit_setting

    if steps <= 0:
        return init.detach().reshape(1, -1)
    loss_fn = StyleLoss(reference, console.sample_rate)
    g = torch.Generator().manual_seed(int(seed))
    k = min(int(crops), raw.shape[0])

    def batches(step):
        idx = torch.randperm(raw.shape[0], generator=g)[:k]
        return raw[idx], None

    # patience > steps: a fixed number of steps, so that its cost is known
    p, _ = fit_setting(console, batches, max_steps=int(steps), lr=float(lr), patience=int(steps) + 1,
                       min_delta=0.0, init=init, loss_fn=loss_fn, desc="refining", progress=progress)
    return match_reference_loudness(console, raw, reference, p) if match_level else p


# ----------------------------------------------------------------------------------- style ridge
# Where refinement starts matters more than its statistics (e09 README, "What limits it"): from the
# true setting they keep 73-86 % of the gap, from the network's prediction 42-57 %. The network reads
# the reference poorly from a few dozen songs; a linear map from the same statistics, fitted on the
# console's own renders of the training raws at random settings, is a better start (e09 ridge-start).
RIDGE_BANDS = 16  # coarser than the refinement's 48: ~750 renders per fold fit 272 features, not 816
RIDGE_RANGE = (0.1, 0.9)  # random settings are drawn here, away from the box edges real settings rarely reach
RIDGE_MAX_SEGMENTS = 16  # per song when `fit` renders it: a 4-min take's ~160 segments would cost 10x the time
RIDGE_FEATURES = (2 * len(QUANTILES) + len(DELTA_QUANTILES) + 1) * RIDGE_BANDS  # style_features' length


def style_features(raw: torch.Tensor, reference: torch.Tensor, sample_rate: int,
                   n_bands: int = RIDGE_BANDS) -> torch.Tensor:
    """What a reference says about its setting, relative to the raw it is applied to.

    Args:
        raw: (n, 1, samples) loudness-normalised raw segments (as the network and the console see them).
        reference: (m, 2, samples) reference segments (mono (m, 1, ...) is read as side = 0).

    Returns:
        ((2 * len(QUANTILES) + len(DELTA_QUANTILES) + 1) * n_bands,) float32 (:data:`RIDGE_FEATURES`
        for the default bands): per band (:func:`style_stats`), the reference's level quantiles and
        level-change quantiles minus the raw's (dB), the reference's side/mid ratio (dB, floored at
        -60) and its own level quantiles (dB).
    """
    a = style_stats(raw.float(), sample_rate, n_bands)
    b = style_stats(reference.float(), sample_rate, n_bands)
    return torch.cat([(b["quantiles"] - a["quantiles"]).reshape(-1), (b["delta"] - a["delta"]).reshape(-1),
                      b["side"].clamp(min=-60).reshape(-1), b["quantiles"].reshape(-1)]).float()


def fit_style_ridge(console, raws, renders: int = 30, seed: int = 0,
                    n_bands: int = RIDGE_BANDS) -> dict[str, torch.Tensor]:
    """A ridge map from :func:`style_features` to the setting, learned from the console alone.

    For each song's raw segments (n, 1, samples) in ``raws`` (any iterable: songs can be read one at a
    time), ``renders`` times: a random setting in
    :data:`RIDGE_RANGE` renders a random half of the segments as the "reference"; the other half is the
    raw it is compared with (as a `song` reference pairs another section of the same take). No mix
    and no true setting is needed, so it can be fitted on any raw vocals. Strength by leave-one-out
    (``descriptors.ridge_logits``).

    Returns:
        {"mean", "std": (D,) feature standardisation, "weight": (D, P), "bias": (P,) with
        logit(setting) = bias + ((features - mean) / std) @ weight, "strength": (), "samples": ()}.
    """
    from mst_single.descriptors import ridge_logits

    g = torch.Generator().manual_seed(int(seed))
    lo, hi = RIDGE_RANGE
    X, Y, songs = [], [], 0
    for raw in raws:
        n, songs = raw.shape[0], songs + 1
        for _ in range(int(renders)):
            perm = torch.randperm(n, generator=g)
            half = max(1, n // 2)
            given, rendered = raw[perm[:half]], (raw[perm[half:]] if n > 1 else raw)
            p = lo + (hi - lo) * torch.rand(1, console.num_params, generator=g)
            with torch.no_grad():
                X.append(style_features(given, console(rendered, p.to(raw).expand(rendered.shape[0], -1)),
                                        console.sample_rate, n_bands).cpu().numpy())
            Y.append(p.reshape(-1).numpy())
    if len(X) < 3:
        raise ValueError(f"fit_style_ridge needs >= 3 renders, got {len(X)} ({songs} songs x {renders})")
    X, Y = np.stack(X).astype(np.float64), np.stack(Y)
    mean, std = X.mean(0), X.std(0) + 1e-6
    W, b, lam = ridge_logits((X - mean) / std, Y)
    t = lambda v: torch.as_tensor(np.asarray(v), dtype=torch.float32)  # noqa: E731
    return {"mean": t(mean), "std": t(std), "weight": t(W), "bias": t(b), "strength": t(lam), "samples": t(len(X))}


def style_ridge_raws(songs, sample_rate: int, target_lufs: float, segment_seconds: float, split_seed: int = 0,
                     silence_threshold_db: float = -50.0, device="cpu"):
    """The raw segments ``fit`` renders for the style ridge: (a generator of (n, 1, samples) per song, read
    one song at a time, loudness-normalised to ``target_lufs`` by the song's gain; the number of songs).
    ``songs``: ``SongInfo`` list (training + validation); the test grid's segments, at most
    :data:`RIDGE_MAX_SEGMENTS` per song spread over the take; a song below the silence threshold has none."""
    from mst_single.data import VocalReferenceDataset
    from mst_single.loudness import normalize_loudness
    from mst_single.progress import progress

    grid = VocalReferenceDataset(split="test", sample_rate=sample_rate, segment_seconds=segment_seconds,
                                 reference_policy="same", split_seed=split_seed,
                                 silence_threshold_db=silence_threshold_db, songs=list(songs))
    per_song: dict[int, list[int]] = {}
    for i, (si, _) in enumerate(grid.grid):
        per_song.setdefault(si, []).append(i)

    def raws():
        for _, items in progress(sorted(per_song.items()), total=len(per_song), desc="style ridge: rendering",
                                 unit="songs", leave=False):
            keep = np.unique(np.linspace(0, len(items) - 1, min(len(items), RIDGE_MAX_SEGMENTS)).round().astype(int))
            batch = [grid[items[k]] for k in keep]
            x, _ = normalize_loudness(torch.stack([b["raw"] for b in batch]).to(device), sample_rate, target_lufs,
                                      lufs=torch.stack([b["raw_lufs"] for b in batch]).to(device))
            yield x

    return raws(), len(per_song)


def style_ridge_setting(ridge: dict[str, torch.Tensor], raw: torch.Tensor, reference: torch.Tensor,
                        sample_rate: int, n_bands: int = RIDGE_BANDS) -> torch.Tensor:
    """The setting (1, P) in [0, 1] that a :func:`fit_style_ridge` map reads from a song's raw segments
    (n, 1, samples) and its reference segments (m, 2, samples)."""
    z = (style_features(raw, reference, sample_rate, n_bands).to(ridge["mean"]) - ridge["mean"]) / ridge["std"]
    return torch.sigmoid(ridge["bias"] + z @ ridge["weight"]).reshape(1, -1).detach()
