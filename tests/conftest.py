"""Shared test helpers: tiny synthetic vocal-like audio and raw/mixed data folders.

`synth_vocal` makes a phrase-structured harmonic signal (notes with vibrato, noise consonants,
silences); `process_mix` turns it into a "mixed" vocal (high-pass + peaking EQ, compression-like
gain, stereo reverb with a tail, a delay); `write_pair` / the `make_data` fixture write DATA/raw
and DATA/mixed folders.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")


def synth_vocal(seconds: float, sample_rate: int, seed: int = 0, level: float = 0.3) -> np.ndarray:
    """(samples,) float32: notes (150-400 Hz, 8 harmonics, vibrato) and noise bursts separated by gaps."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    out = np.zeros(n)
    pos = int(rng.uniform(0.02, 0.15) * sample_rate)
    while pos < n:
        dur = min(int(rng.uniform(0.15, 0.6) * sample_rate), n - pos)
        t = np.arange(dur) / sample_rate
        f0 = rng.uniform(150, 400) * (1 + 0.015 * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        tone = sum(np.sin(k * phase + rng.uniform(0, 6.3)) / k for k in range(1, 9) if k * 400 < sample_rate / 2.2)
        env = np.minimum(1, np.minimum(t / 0.03, (dur / sample_rate - t) / 0.05))
        note = tone * env * rng.uniform(0.3, 1.0)
        if rng.random() < 0.4:  # a consonant: short high-passed noise burst at the note start
            b = min(int(0.05 * sample_rate), dur)
            burst = scipy.signal.lfilter([1, -0.9], [1], rng.normal(size=b)) * np.hanning(b)
            note[:b] += 0.5 * burst
        out[pos:pos + dur] += note
        pos += dur + int(rng.uniform(0.03, 0.35) * sample_rate)
    out += 1e-4 * rng.normal(size=n)  # microphone noise floor (-80 dBFS)
    return (level * out / np.abs(out).max()).astype(np.float32)


def process_mix(raw: np.ndarray, sample_rate: int, lag_seconds: float = 0.0, seed: int = 0,
                tail_seconds: float = 0.6, channels: int = 2) -> np.ndarray:
    """Mixed version (channels, samples) of `raw` (samples,): EQ, compression-like gain, stereo reverb
    (direct path + tail, `tail_seconds` longer), then delayed by `lag_seconds` (negative = early)."""
    rng = np.random.default_rng(seed + 1000)
    x = raw.astype(np.float64)
    b, a = scipy.signal.butter(2, 120 / (sample_rate / 2), "high")
    x = scipy.signal.lfilter(b, a, x)
    w0 = 2 * np.pi * 3000 / sample_rate  # +6 dB peaking at 3 kHz (RBJ)
    A, alpha = 10 ** (6 / 40), np.sin(w0) / (2 * 1.0)
    x = scipy.signal.lfilter([1 + alpha * A, -2 * np.cos(w0), 1 - alpha * A],
                             [1 + alpha / A, -2 * np.cos(w0), 1 - alpha / A], x)
    env = scipy.signal.lfilter([0.01], [1, -0.99], np.abs(x))  # crude compressor: gain from the envelope
    x = x / (1 + 2 * env)
    n_ir = int(0.4 * sample_rate)
    out = []
    for c in range(channels):
        ir = rng.normal(size=n_ir) * np.exp(-np.arange(n_ir) / (0.08 * sample_rate)) * 0.02
        ir[0] = 1.0
        out.append(scipy.signal.fftconvolve(np.append(x, np.zeros(int(tail_seconds * sample_rate))), ir)[
                   :len(x) + int(tail_seconds * sample_rate)])
    y = np.stack(out)
    lag = int(round(lag_seconds * sample_rate))
    y = np.concatenate([np.zeros((channels, lag)), y], axis=1) if lag >= 0 else y[:, -lag:]
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def write_pair(root: Path, name: str, raw: np.ndarray, mixed: np.ndarray, raw_sr: int, mixed_sr: int | None = None,
               ext: str = ".wav", subtype: str = "FLOAT") -> tuple[Path, Path]:
    """Write root/raw/NAME and root/mixed/NAME from (C, T) or (T,) arrays."""
    paths = []
    for sub, x, sr in (("raw", raw, raw_sr), ("mixed", mixed, mixed_sr or raw_sr)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        p = root / sub / f"{name}{ext}"
        sf.write(p, x.T if x.ndim == 2 else x, sr, subtype=subtype if ext == ".wav" else "PCM_24")
        paths.append(p)
    return paths[0], paths[1]


def make_vocal_data(root: Path, songs: int = 4, seconds: float = 6.0, sample_rate: int = 16000, seed: int = 0,
                    lags: list[float] | None = None, names: list[str] | None = None) -> Path:
    """Write `songs` raw/mixed pairs (song00, song01, ...) with lags (s) cycling through `lags`."""
    lags = lags if lags is not None else [0.0, 0.05, -0.02, 0.12]
    names = names or [f"song{i:02d}" for i in range(songs)]
    for i, name in enumerate(names):
        raw = synth_vocal(seconds, sample_rate, seed=seed * 1000 + i)
        write_pair(root, name, raw, process_mix(raw, sample_rate, lags[i % len(lags)], seed=i), sample_rate)
    return root


@pytest.fixture
def make_data(tmp_path):
    """Factory: make_data(songs=4, seconds=6, sample_rate=16000, ...) -> a fresh data folder."""
    count = [0]

    def make(**kw) -> Path:
        count[0] += 1
        return make_vocal_data(tmp_path / f"data{count[0]}", **kw)

    return make


def tiny_fit_args(root, runs, epochs=1, sample_rate=16000) -> list[str]:
    """Overrides of the real configs (configs/*.yaml) that make a CPU fit take seconds: 2 steps per
    epoch, a tiny encoder and loss, no W&B. Later arguments on the same command line override these."""
    return [
        "--data.root", str(root), "--data.sample_rate", str(sample_rate), "--data.segment_seconds", "1",
        "--data.batch_size", "2", "--data.num_workers", "0", "--data.train_segments_per_epoch", "4",
        "--data.val_fraction", "0.2", "--data.test_fraction", "0.2",
        "--model.encoder", '{"n_mels": 32, "channels": [8, 16], "embed_dim": 16}', "--model.hidden", "16",
        "--model.loss", '{"fft_sizes": [1024, 256], "hop_sizes": [256, 64], "win_lengths": [1024, 256]}',
        "--model.log_audio_every_n_epochs", "0", "--trainer.max_epochs", str(epochs),
        "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.num_sanity_val_steps", "0", "--wandb", "false", "--runs_dir", str(runs),
    ]
