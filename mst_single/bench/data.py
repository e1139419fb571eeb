"""Section `data`: the training DataLoader alone (no model), segments per second with 0, 2 and 4
workers at the training step's batch and segment length, next to the step time.

The data are synthesised pairs written like a user's folder (raw mono PCM_24, mixed stereo with a
latency offset) and read through `VocalDataModule` exactly as `fit` reads them: per item a seek
into each file (soundfile), a silence check, no resampling (the files are at the model's rate).
Each timed run is one training epoch of `data_batches` batches, worker start-up included (`fit`
starts its workers at every epoch); `first_batch_s` is that start-up plus one batch.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path

import numpy as np

from mst_single.bench.core import Config, _err, _log, summarize
from mst_single.bench.signals import write_long_wav


def _write_pairs(root: Path, cfg: Config, songs: int, seconds: float) -> Path:
    import soundfile as sf

    from mst_single.fileio import atomic_path

    (root / "raw").mkdir(parents=True, exist_ok=True)
    for i in range(songs):
        write_long_wav(root / "raw" / f"song{i:02d}.wav", seconds, cfg.sample_rate, 1, "PCM_24", seed=10 * i)
        raw, _ = sf.read(root / "raw" / f"song{i:02d}.wav", dtype="float32")
        lag = int(0.012 * cfg.sample_rate)  # a plugin-latency offset, as real mixes have
        mixed = np.stack([np.r_[np.zeros(lag, np.float32), raw * 0.7], np.r_[np.zeros(lag, np.float32), raw * 0.6]], 1)
        (root / "mixed").mkdir(parents=True, exist_ok=True)
        with atomic_path(root / "mixed" / f"song{i:02d}.wav") as tmp:
            sf.write(tmp, mixed, cfg.sample_rate, subtype="PCM_24", format="WAV")
    return root


def loader_epoch(loader) -> tuple[float, float, int]:
    """Iterate one epoch: (wall seconds, seconds to the first batch, segments delivered)."""
    t0 = time.perf_counter()
    first, n = None, 0
    for batch in loader:
        n += batch["raw"].shape[0]
        if first is None:
            first = time.perf_counter() - t0
    return time.perf_counter() - t0, first or 0.0, n


def bench_data(cfg: Config, tmp: Path) -> dict:
    from mst_single.data import VocalDataModule

    batch, seconds = cfg.train_batch, cfg.seconds
    songs, song_seconds = (3, 4 * seconds + 2) if cfg.quick else (8, 30.0)
    out = {"input": {"batch": batch, "seconds": seconds, "sample_rate": cfg.sample_rate, "songs": songs,
                     "song_seconds": song_seconds, "batches_per_epoch": cfg.data_batches,
                     "reference_policy": "song", "file": "raw mono PCM_24 + mixed stereo PCM_24 WAV, same rate"}}
    root = _write_pairs(tmp / "data", cfg, songs, song_seconds)
    for workers in cfg.data_workers:
        _log(f"data: DataLoader with {workers} worker(s)")
        try:
            dm = VocalDataModule(str(root), sample_rate=cfg.sample_rate, segment_seconds=seconds, batch_size=batch,
                                 num_workers=workers, reference_policy="song", val_fraction=0.0, test_fraction=0.0,
                                 train_segments_per_epoch=batch * cfg.data_batches, cache_dir=str(tmp / "cache"))
            dm.setup("fit")
            loader = dm.train_dataloader()
            loader_epoch(loader)  # warm-up: page cache, imports in the workers
            runs = [loader_epoch(loader) for _ in range(max(1, cfg.repeats))]
            res = summarize([r[0] for r in runs])
            res["segments_per_s"] = float(np.median([r[2] / r[0] for r in runs]))
            res["first_batch_s"] = float(np.median([r[1] for r in runs]))
            res["segments"] = runs[0][2]
            out[f"workers_{workers}"] = res
        except Exception as e:
            out[f"workers_{workers}"] = {"error": _err(e)}
            cfg.errors.append(f"data.workers_{workers}: {_err(e)}")
            traceback.print_exc()
    return out


def complete_data(results: dict) -> None:
    """Put the loader next to the step: segments per second the training step consumes (batch /
    step time, the slower approach) and, per worker count, whether the loader keeps up. With 0
    workers loading is not overlapped with the step, so the step waits batch / rate every time."""
    d, ts = results.get("data"), results.get("train_step", {})
    if not d:
        return
    steps = [ts.get(a, {}).get("ours", {}).get("median_s") for a in ("approach1", "approach2")]
    steps = [s for s in steps if s]
    if not steps:
        return
    step_s, batch = max(steps), d["input"]["batch"]
    need = ts.get("input", {}).get("batch", batch) / step_s
    d["step"] = {"median_s": step_s, "segments_per_s_consumed": need,
                 "note": "the slower approach's full training step (train_step section)"}
    for k, v in d.items():
        if k.startswith("workers_") and "segments_per_s" in v:
            v["keeps_up"] = v["segments_per_s"] >= need
            v["headroom"] = v["segments_per_s"] / need
            if k == "workers_0":  # serial: every step also waits for its batch
                v["step_s_with_loading"] = step_s + batch / v["segments_per_s"]
