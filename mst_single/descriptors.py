"""Take descriptors: a few level-independent numbers that describe a whole raw vocal (issue 10).

What a producer's decisions react to is a property of the *take* (its spectral balance, how dynamic
it is, how sparse its phrasing), measured over the whole song rather than over a 1.5-4 s segment.
The network's mel-CNN does not discover these from a few dozen training songs (experiments/e08,
e10), so they are computed once per song and given to the controller beside its embedding
(``model.take_descriptors``). All are relative measures, so the recording level does not change them.

13 values (:data:`DESCRIPTOR_NAMES`), from the mono downmix at the file's own rate:

- ``band_63`` .. ``band_16k`` (dB): per octave band (centres 63 Hz .. 16 kHz, edges centre / sqrt 2 ..
  centre x sqrt 2), the median over active STFT frames of the band's share of the frame's energy.
  Frames: Hann, ~43 ms (``models.default_stft_sizes``), hop half a frame, not centred; a frame is
  active when its energy is within 30 dB of the 95th percentile of all frames' energies.
- ``centroid_oct``: median over active frames of log2(spectral centroid / 1 kHz).
- ``level_spread_db``: p90 - p10 of the 100 ms RMS level (hop 50 ms) over windows within 30 dB of
  the 95th percentile window: how dynamic the singing is.
- ``pause_fraction``: the share of 100 ms windows more than 40 dB below that 95th percentile.
- ``crest_db``: median over active 100 ms windows of peak / RMS (dB).

:class:`DescriptorMeter` computes them block by block (memory: a frame plus a few numbers per
frame), and gives exactly what :func:`take_descriptors` gives on the whole signal, whatever the
block size, so training (``audio.song_descriptors``, native file) and ``mix`` (its streaming pass)
read the same numbers.
"""
from __future__ import annotations

import math

import numpy as np

BAND_CENTRES_HZ = (63.0, 125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0)
DESCRIPTOR_NAMES = tuple([f"band_{int(c)}" if c < 1000 else f"band_{int(c // 1000)}k" for c in BAND_CENTRES_HZ]
                         + ["centroid_oct", "level_spread_db", "pause_fraction", "crest_db"])
NUM_DESCRIPTORS = len(DESCRIPTOR_NAMES)
ACTIVE_DB = 30.0   # frames / windows within this of the 95th percentile count as singing
PAUSE_DB = 40.0    # windows further than this below it count as pauses
_TINY = 1e-20


def frame_sizes(sample_rate: int) -> tuple[int, int]:
    """(n_fft, hop) of the spectral descriptors: the encoder's ~43 ms power-of-two frame, hop n_fft / 2."""
    n_fft = 2 ** int(round(math.log2(0.0427 * sample_rate)))
    return n_fft, n_fft // 2


class DescriptorMeter:
    """Streaming take descriptors of a mono signal: ``update(block)`` (samples,) or (1, samples),
    then ``result()`` -> (13,) float64 in the order of :data:`DESCRIPTOR_NAMES`.

    Args:
        sample_rate: rate of the blocks (Hz).
    """

    def __init__(self, sample_rate: int):
        self.sample_rate = int(sample_rate)
        self.n_fft, self.hop = frame_sizes(self.sample_rate)
        freqs = np.fft.rfftfreq(self.n_fft, 1.0 / self.sample_rate)
        self.band_masks = np.stack([(freqs >= c / math.sqrt(2)) & (freqs < c * math.sqrt(2))
                                    for c in BAND_CENTRES_HZ]).astype(np.float64)  # (9, bins)
        self.freqs = freqs
        self.window = np.hanning(self.n_fft + 1)[:-1]  # periodic Hann
        self.block = max(1, int(round(0.05 * self.sample_rate)))  # 50 ms level blocks, paired into 100 ms windows
        self._buf = np.zeros(0, np.float64)
        self._lbuf = np.zeros(0, np.float64)
        self._frames: list[np.ndarray] = []  # per frame: [total energy, centroid numerator, 9 band energies]
        self._levels: list[np.ndarray] = []  # per 50 ms block: [energy sum, samples, peak]
        self.samples = 0

    def _spectral(self, frames: np.ndarray) -> np.ndarray:
        """(n, n_fft) frames -> (n, 11): [total energy, centroid numerator, 9 band energies]."""
        power = np.abs(np.fft.rfft(frames * self.window, axis=1)) ** 2
        return np.column_stack([power.sum(1), power @ self.freqs, power @ self.band_masks.T])

    def _level(self, blocks: np.ndarray) -> None:
        self._levels.append(np.column_stack([np.square(blocks).sum(1), np.full(len(blocks), blocks.shape[1]),
                                             np.abs(blocks).max(1)]))

    def update(self, x) -> None:
        x = np.asarray(x, np.float64).reshape(-1)
        if not np.all(np.isfinite(x)):
            raise ValueError("the audio holds NaN/Inf samples")
        self.samples += len(x)
        self._buf = np.concatenate([self._buf, x])
        if len(self._buf) >= self.n_fft:
            n = (len(self._buf) - self.n_fft) // self.hop + 1
            frames = np.lib.stride_tricks.sliding_window_view(self._buf, self.n_fft)[::self.hop][:n]
            self._frames.append(self._spectral(frames))
            self._buf = self._buf[n * self.hop:]
        self._lbuf = np.concatenate([self._lbuf, x])
        n = len(self._lbuf) // self.block
        if n:
            self._level(self._lbuf[: n * self.block].reshape(n, self.block))
            self._lbuf = self._lbuf[n * self.block:]

    def result(self) -> np.ndarray:
        """The 13 descriptors of everything passed to ``update`` (the meter can go on after it)."""
        if self.samples == 0:
            raise ValueError("no audio was given")
        spec, levels = list(self._frames), list(self._levels)
        # the tail: frames starting before the end, zero-padded (so the result does not depend on blocks)
        tail = self._buf
        while len(tail):
            spec.append(self._spectral(np.pad(tail[: self.n_fft], (0, max(0, self.n_fft - len(tail))))[None]))
            tail = tail[self.hop:]
        if len(self._lbuf):
            b = self._lbuf
            levels.append(np.array([[np.square(b).sum(), len(b), np.abs(b).max()]]))
        return descriptors_from_stats(np.concatenate(spec), np.concatenate(levels))


def descriptors_from_stats(frames: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Per-frame spectral sums (frames, 11) and per-50 ms level sums (blocks, 3) -> (13,)."""
    total = frames[:, 0]
    e_db = 10 * np.log10(total + _TINY)
    active = e_db >= np.percentile(e_db, 95) - ACTIVE_DB
    fa = frames[active]
    share_db = 10 * np.log10(fa[:, 2:] / (fa[:, :1] + _TINY) + 1e-12)
    bands = np.median(share_db, axis=0)
    centroid = np.median(np.log2(np.maximum(fa[:, 1] / (fa[:, 0] + _TINY), 1.0) / 1000.0))

    # 100 ms windows = pairs of neighbouring 50 ms blocks (a lone block for a signal under 100 ms)
    esum, count, peak = levels[:, 0], levels[:, 1], levels[:, 2]
    if len(levels) > 1:
        esum, count, peak = esum[:-1] + esum[1:], count[:-1] + count[1:], np.maximum(peak[:-1], peak[1:])
    level = 10 * np.log10(esum / count + _TINY)
    top = np.percentile(level, 95)
    loud = level >= top - ACTIVE_DB
    spread = np.percentile(level[loud], 90) - np.percentile(level[loud], 10)
    pauses = float(np.mean(level < top - PAUSE_DB))
    crest = np.median(20 * np.log10(peak[loud] + 1e-10) - level[loud])
    return np.concatenate([bands, [centroid, spread, pauses, crest]]).astype(np.float64)


def take_descriptors(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Take descriptors of a whole vocal: x (samples,) or (channels, samples) (mean downmix) -> (13,)
    in the order of :data:`DESCRIPTOR_NAMES` (dB, octaves, fraction; see the module docstring)."""
    x = np.asarray(x, np.float64)
    meter = DescriptorMeter(sample_rate)
    meter.update(x.mean(axis=0) if x.ndim == 2 else x)
    return meter.result()


DESCRIPTOR_CLIP = 5.0  # standardised descriptors are clipped to +- this many training-song std


def descriptor_stats(D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (songs, 13) -> (13,), (13,) of the training songs' descriptors; a descriptor that
    is the same for every song (e.g. the 16 kHz band at 16 kHz) gets std 1: it carries nothing."""
    D = np.asarray(D, np.float64)
    std = D.std(0)
    return D.mean(0), np.where(std > 1e-6, std, 1.0)


def standardise(D: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(..., 13) descriptors -> standardised by the training songs' statistics, clipped to +-5: a take
    far outside the training songs would otherwise be extrapolated linearly."""
    return np.clip((np.asarray(D, np.float64) - mean) / std, -DESCRIPTOR_CLIP, DESCRIPTOR_CLIP)


RIDGE_STRENGTHS = tuple(10.0 ** (k / 2) for k in range(-4, 7))  # 0.01 ... 1000
RIDGE_MARGIN = 0.02  # settings clamped to [0.02, 0.98] before the logit: a setting at a range end has none


def ridge_logits(Z: np.ndarray, Y: np.ndarray,
                 strengths=RIDGE_STRENGTHS) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge regression of settings' logits on standardised descriptors, the strength chosen by
    leave-one-out error (closed form: residual / (1 - leverage)).

    Z (songs, D) standardised take descriptors; Y (songs, P) normalised settings in [0, 1].
    Returns (W (D, P), b (P,), strength) with logit(setting) ~ b + Z @ W; the intercept is not
    penalised. A few dozen songs and 13 descriptors: the closed form is exact and instant, where the
    network's audio loss needs hundreds of steps to move the same map (experiments/e12).
    """
    Z, Y = np.asarray(Z, np.float64), np.asarray(Y, np.float64)
    if Z.ndim != 2 or Y.ndim != 2 or len(Z) != len(Y) or len(Z) < 3:
        raise ValueError(f"ridge_logits needs Z (songs, D) and Y (songs, P) with >= 3 songs, got {Z.shape}, {Y.shape}")
    Yc = np.clip(Y, RIDGE_MARGIN, 1 - RIDGE_MARGIN)
    L = np.log(Yc / (1 - Yc))
    zm, lm = Z.mean(0), L.mean(0)
    X, Lc, n = Z - zm, L - lm, len(Z)
    best = None
    for lam in strengths:
        inv = np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T)  # (D, songs)
        W = inv @ Lc
        leverage = (X * inv.T).sum(1) + 1.0 / n  # + 1/n: the intercept's own share
        err = float((((Lc - X @ W) / (1 - leverage)[:, None]) ** 2).mean())
        if best is None or err < best[0]:
            best = (err, lam, W)
    _, lam, W = best
    return W, lm - zm @ W, float(lam)
