"""Evaluation metrics: pure functions on (channels, samples) arrays, and ``all_metrics`` for one pair.

Every function takes the output and the target as numpy arrays (or tensors) of shape
(channels, samples) or (samples,) at one sample rate, and returns a float. Lower is better except
for SI-SDR. A mono output compared with a stereo target is duplicated to both channels first
(``match_channels``), so the raw vocal can be scored against the stereo mix.

| key                 | what                                                                 | unit |
| ------------------- | -------------------------------------------------------------------- | ---- |
| ``mrstft``          | the training loss's MR-STFT term, default resolutions (``losses.py``) | -    |
| ``l1``              | mean absolute waveform difference                                    | -    |
| ``si_sdr``          | scale-invariant SDR (Le Roux et al. 2019), channels pooled           | dB   |
| ``lufs_err``        | abs. difference of integrated loudness (BS.1770, pyloudnorm)          | LU   |
| ``centroid_err``    | abs. difference of the long-term spectral centroid                   | Hz   |
| ``dynamics_err``    | distance between the 400 ms block-level distributions (see below)    | dB   |
| ``param_err``       | mean abs. error of the console parameters in normalised [0, 1] units | -    |

The MR-STFT always uses the default ``MRSTFTL1Loss()`` resolutions, never a variant's own loss
weights, so that e.g. an "L1 only" training variant is scored on the same scale as the others.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

# Higher is better only for these; the table writers use it to pick the best variant.
HIGHER_IS_BETTER = frozenset({"si_sdr"})
# Order and units used by every table and plot.
METRIC_UNITS = {
    "mrstft": "", "l1": "", "si_sdr": "dB", "lufs_err": "LU", "centroid_err": "Hz", "dynamics_err": "dB",
    "param_err": "",
}
# The smallest difference of each metric that counts, in the metric's unit: below it two values are a
# tie (``experiments.stats.win_tie_loss``) and the same result (``compare.check_same``, which also has
# a relative tolerance; near-zero metrics such as the identity's lufs_err are thus compared absolutely).
# Scales: ~1 % of a vocal mix's MR-STFT (0.5-1.5) and of its L1 (0.02-0.05); 0.1 dB SI-SDR; 0.1 LU
# (a loudness meter's display step, well below the ~1 LU a listener notices); 5 Hz of centroid; 0.05 dB
# of level distribution; 0.01 of a parameter's [0, 1] range (``param_err`` and ``param_err/<name>``).
ABS_TOL = {"mrstft": 0.01, "l1": 5e-4, "si_sdr": 0.1, "lufs_err": 0.1, "centroid_err": 5.0, "dynamics_err": 0.05,
           "param_err": 0.01}
DYNAMICS_QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.95)
BLOCK_SECONDS, BLOCK_HOP_SECONDS = 0.4, 0.1  # the momentary-loudness block of BS.1770 / EBU R128
BLOCK_GATE_DB = -70.0  # absolute gate: silence between phrases says nothing about dynamics

_LOSS = None


def abs_tolerance(metric: str) -> float:
    """:data:`ABS_TOL` of a metric key (``val/mrstft`` -> ``mrstft``, ``param_err/gain_db`` -> ``param_err``);
    0 for a metric it does not know (compared relatively only)."""
    for prefix in ("val/", "test/"):
        metric = metric.removeprefix(prefix)
    return ABS_TOL.get(metric.split("/")[0], 0.0)


def as_array(x) -> np.ndarray:
    """(channels, samples) float64 numpy array from a numpy array / tensor of shape (C,T) or (T,)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"audio must have shape (channels, samples) or (samples,), got {x.shape}")
    return x


def match_channels(output, target) -> tuple[np.ndarray, np.ndarray]:
    """Both as (C, T) arrays with the same shape; a mono side is duplicated to the other's channels."""
    output, target = as_array(output), as_array(target)
    if output.shape[-1] != target.shape[-1]:
        raise ValueError(f"output has {output.shape[-1]} samples but target has {target.shape[-1]}")
    if output.shape[0] != target.shape[0]:
        if output.shape[0] == 1:
            output = np.repeat(output, target.shape[0], axis=0)
        elif target.shape[0] == 1:
            target = np.repeat(target, output.shape[0], axis=0)
        else:
            raise ValueError(f"cannot compare {output.shape[0]} channels with {target.shape[0]}")
    return output, target


def mrstft(output, target, loss_fn=None) -> float:
    """MR-STFT distance: the ``mrstft`` term of ``mst_single.losses.MRSTFTL1Loss`` (default resolutions)."""
    import torch

    global _LOSS
    if loss_fn is None:
        if _LOSS is None:
            from mst_single.losses import MRSTFTL1Loss

            _LOSS = MRSTFTL1Loss()
        loss_fn = _LOSS
    output, target = match_channels(output, target)
    with torch.no_grad():
        out = loss_fn(torch.from_numpy(output).float()[None], torch.from_numpy(target).float()[None])
    return float(out["mrstft"])


def l1(output, target) -> float:
    """Mean absolute waveform difference."""
    output, target = match_channels(output, target)
    return float(np.mean(np.abs(output - target)))


def si_sdr(output, target, eps: float = 1e-10) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (higher is better).

    Each channel is made zero-mean, then all channels are pooled into one vector (one optimal scale
    for the whole signal, so a wrong stereo balance counts as distortion). ``eps`` keeps a perfect
    (scaled) copy finite: it scores about +100 dB or more.
    """
    output, target = match_channels(output, target)
    s_hat = (output - output.mean(-1, keepdims=True)).ravel()
    s = (target - target.mean(-1, keepdims=True)).ravel()
    alpha = np.dot(s_hat, s) / (np.dot(s, s) + eps)
    projection = alpha * s
    noise = s_hat - projection
    return float(10 * np.log10((np.dot(projection, projection) + eps) / (np.dot(noise, noise) + eps)))


def lufs_error(output, target, sample_rate: int) -> float:
    """|integrated loudness(output) - integrated loudness(target)| in LU (pyloudnorm, BS.1770)."""
    from mst_single.loudness import integrated_loudness

    output, target = match_channels(output, target)
    return abs(float(integrated_loudness(output, sample_rate)) - float(integrated_loudness(target, sample_rate)))


def spectral_centroid(x, sample_rate: int, n_fft: int = 4096) -> float:
    """Long-term spectral centroid in Hz: magnitude-weighted mean frequency of the average spectrum.

    Channels are summed to mono; magnitudes are averaged over hann frames (hop n_fft / 4), so loud
    passages weigh more than quiet ones, as they do for the ear. Silence returns 0.
    """
    x = as_array(x).sum(0)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    hop = n_fft // 4
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    mag = np.abs(np.fft.rfft(frames, axis=-1)).mean(0)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    total = mag.sum()
    return float((freqs * mag).sum() / total) if total > 0 else 0.0


def centroid_error(output, target, sample_rate: int) -> float:
    """|spectral centroid(output) - spectral centroid(target)| in Hz."""
    return abs(spectral_centroid(output, sample_rate) - spectral_centroid(target, sample_rate))


def block_levels(x, sample_rate: int) -> np.ndarray:
    """Levels in dB (RMS over channels, no K-weighting) of 400 ms blocks every 100 ms, gated at -70 dB."""
    x = as_array(x)
    block, hop = int(round(BLOCK_SECONDS * sample_rate)), int(round(BLOCK_HOP_SECONDS * sample_rate))
    if x.shape[-1] < block:
        x = np.pad(x, ((0, 0), (0, block - x.shape[-1])))
    power = np.mean(x**2, axis=0)
    csum = np.concatenate([[0.0], np.cumsum(power)])
    starts = np.arange(0, power.size - block + 1, hop)
    mean_power = (csum[starts + block] - csum[starts]) / block
    levels = 10 * np.log10(np.maximum(mean_power, 1e-20))
    return levels[levels > BLOCK_GATE_DB]


def dynamics_profile(x, sample_rate: int) -> np.ndarray:
    """Quantiles (``DYNAMICS_QUANTILES``) of the block levels minus their mean, in dB: gain-invariant.

    A compressor narrows this profile, an expander widens it; a pure gain change leaves it as is.
    All zeros for a signal whose blocks are all below the gate.
    """
    levels = block_levels(x, sample_rate)
    if levels.size == 0:
        return np.zeros(len(DYNAMICS_QUANTILES))
    return np.quantile(levels, DYNAMICS_QUANTILES) - levels.mean()


def dynamics_error(output, target, sample_rate: int) -> float:
    """Mean absolute difference of the two dynamics profiles, in dB (0 = same level distribution shape)."""
    output, target = match_channels(output, target)
    return float(np.mean(np.abs(dynamics_profile(output, sample_rate) - dynamics_profile(target, sample_rate))))


def param_error(predicted: Mapping[str, float], true: Mapping[str, float], specs) -> dict[str, float]:
    """Per-parameter absolute error in the console's normalised [0, 1] units, plus their mean.

    Args:
        predicted: {console parameter name: value in units} (e.g. ``VocalConsole.denormalize`` output).
        true: the same for the truth (``truth.json`` ``songs[NAME]["params"]``); only the names it
            gives (and the console knows) are scored.
        specs: the console's ``ParamSpec`` list (``VocalConsole.specs``): name, low, high, scale.

    Returns:
        {"param_err/<name>": error, ..., "param_err": mean over the scored names} ({} if none).
    """
    out = {}
    for spec in specs:
        if spec.name in true and spec.name in predicted:
            err = abs(normalize_value(predicted[spec.name], spec) - normalize_value(true[spec.name], spec))
            out[f"param_err/{spec.name}"] = err
    if out:
        out["param_err"] = float(np.mean(list(out.values())))
    return out


def normalize_value(value: float, spec) -> float:
    """Map a value in units onto [0, 1] of ``spec`` (linear or log scale), clipped to the range."""
    value, low, high = float(value), float(spec.low), float(spec.high)
    if str(getattr(spec, "scale", "linear")).startswith("log") and low > 0:
        value = min(max(value, low), high)
        t = (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    else:
        t = (value - low) / (high - low)
    return min(max(t, 0.0), 1.0)


def value_in_units(t: float, spec) -> float:
    """The inverse of :func:`normalize_value`: a [0, 1] value of ``spec``'s range in its units."""
    t, low, high = min(max(float(t), 0.0), 1.0), float(spec.low), float(spec.high)
    if str(getattr(spec, "scale", "linear")).startswith("log") and low > 0:
        return low * (high / low) ** t
    return low + t * (high - low)


def all_metrics(output, target, sample_rate: int) -> dict[str, float]:
    """Every audio metric of ``METRIC_UNITS`` (all but ``param_err``) for one output/target pair."""
    output, target = match_channels(output, target)
    return {
        "mrstft": mrstft(output, target),
        "l1": l1(output, target),
        "si_sdr": si_sdr(output, target),
        "lufs_err": lufs_error(output, target, sample_rate),
        "centroid_err": centroid_error(output, target, sample_rate),
        "dynamics_err": dynamics_error(output, target, sample_rate),
    }
