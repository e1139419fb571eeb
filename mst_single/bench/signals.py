"""Deterministic vocal-like test signals for the benchmark (any length, chunk by chunk)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def vocal_like(start: int, n: int, sample_rate: int, seed: int = 0) -> np.ndarray:
    """A deterministic sung-vowel-like test signal (samples,) float32 in [-1, 1].

    Notes of 0.4 s with vibrato, 8 harmonics, a syllable envelope and breath noise; depends only on
    absolute sample positions, so chunks generated one after another concatenate to the same signal
    (a 1-hour file is written without ever holding it in memory).
    """
    t = (start + np.arange(n, dtype=np.float64)) / sample_rate
    note = np.floor(t / 0.4).astype(np.int64)
    scale = np.array([0, 2, 4, 5, 7, 9, 7, 4, 2, -3, 0, 5])
    f0 = 196.0 * 2.0 ** (scale[(note * 7 + seed) % len(scale)] / 12.0)
    frac = t / 0.4 - note
    phase = 2 * np.pi * f0 * t + 0.3 * np.sin(2 * np.pi * 5.5 * t)
    y = np.zeros(n)
    for k in range(1, 9):
        y += np.sin(k * phase) / k**1.3
    env = np.sin(np.pi * frac) ** 2 * (0.3 + 0.7 * (0.5 + 0.5 * np.sin(2 * np.pi * 0.13 * t + seed)))
    breath = 0.035 * _hash_noise(start + np.arange(n, dtype=np.uint64), seed)
    return (0.25 * env * y + breath).astype(np.float32)


def _hash_noise(i: np.ndarray, seed: int) -> np.ndarray:
    """Uniform noise in [-1, 1) that depends only on the sample index (counter-based hash)."""
    with np.errstate(over="ignore"):
        h = (i + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) * (2.0 / 2**53) - 1.0


def batch_audio(batch: int, channels: int, seconds: float, sample_rate: int, seed: int = 0):
    """(batch, channels, samples) float32 tensor of distinct vocal-like items."""
    import torch

    n = int(round(seconds * sample_rate))
    x = np.stack([np.stack([vocal_like(0, n, sample_rate, seed=seed + 17 * b + 5 * c) for c in range(channels)])
                  for b in range(batch)])
    return torch.from_numpy(x)


def write_long_wav(path, seconds: float, sample_rate: int, channels: int = 1, subtype: str = "PCM_16",
                   chunk_seconds: float = 20.0, seed: int = 0) -> Path:
    """Write a long vocal-like file chunk by chunk (bounded memory), atomically."""
    import soundfile as sf

    from mst_single.fileio import atomic_path

    total, chunk = int(round(seconds * sample_rate)), int(chunk_seconds * sample_rate)
    with atomic_path(path) as tmp:
        with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=channels, subtype=subtype, format="WAV") as f:
            for start in range(0, total, chunk):
                n = min(chunk, total - start)
                y = np.stack([vocal_like(start, n, sample_rate, seed=seed + c) for c in range(channels)], axis=1)
                f.write(y)
    return Path(path)

def _training_batch(cfg, batch: int | None = None, seconds: float | None = None) -> dict:
    B, sec = batch or cfg.train_batch, seconds or cfg.seconds
    return {"raw": batch_audio(B, 1, sec, cfg.sample_rate, seed=1).to(cfg.device),
            "mixed": batch_audio(B, 2, sec, cfg.sample_rate, seed=2).to(cfg.device),
            "reference": batch_audio(B, 2, sec, cfg.sample_rate, seed=3).to(cfg.device),
            "song": [f"bench{i}" for i in range(B)], "start": [0] * B}
