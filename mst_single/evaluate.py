"""Evaluation on the test split, whole songs: a checkpoint, or a fixed parameter setting (baselines).

Protocol (the same for every variant and baseline of an ablation):

1. Songs: the test split of the data settings (song-level hash split, ``mst_single.data.split_songs``),
   aligned raw and mixed at the model's sample rate (``load_aligned``).
2. One parameter setting per song. A model predicts parameters for each segment of the test grid
   (``VocalReferenceDataset(split="test")``: non-overlapping, non-silent segments of
   ``segment_seconds``; for Approach 1 each segment's reference is chosen by the evaluation
   reference policy, deterministically), and the song's setting is the per-parameter median of
   those predictions in the console's [0, 1] space (as ``mix`` combines its segments). A baseline
   gives its own setting.
3. The raw song is loudness-normalised to ``target_lufs`` as a whole (the gain of
   ``loudness.song_gain_db`` from the song's ``raw_lufs``: the same gain its segments got in step 2,
   in training, and in ``mix``) and run through the console in one go (chunked through the
   console's streamer beyond ``STREAM_SECONDS``).
4. The whole output is scored against the whole aligned mixed song with ``metrics.all_metrics``,
   plus the parameter error against ``truth.json`` where the data has one.

Results: one :class:`SongResult` per song with its metrics, the setting in units, and the output
audio (kept for the report).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mst_single import metrics as M

STREAM_SECONDS = 120.0  # longer songs go through VocalConsole.streamer in 10 s chunks (bounded memory)


@dataclass
class SongResult:
    """Evaluation of one test song: ``metrics`` {name: value}, ``params`` {name: units}, ``output`` (2, N)."""

    song: str
    metrics: dict
    params: dict = field(default_factory=dict)
    output: np.ndarray | None = field(default=None, repr=False)


class TestSet:
    """The test songs of a data folder under given data settings (the YAML ``data:`` keys).

    Args:
        root: data folder (raw/, mixed/, optional truth.json).
        sample_rate, segment_seconds, split_seed, val_fraction, test_fraction, split_file,
        max_lag_seconds, allow_unmatched, cache_dir, silence_threshold_db: as in ``VocalDataModule``.
    Other keys of a ``data:`` section (batch_size, reference_policy, ...) are accepted and ignored.
    """

    def __init__(self, root, sample_rate: int = 48000, segment_seconds: float = 4.0, split_seed: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, split_file: str | None = None,
                 max_lag_seconds: float = 0.5, allow_unmatched: bool = False, cache_dir: str | None = None,
                 silence_threshold_db: float = -50.0, **_ignored):
        from mst_single.data import index_songs, split_songs

        self.root, self.sample_rate, self.segment_seconds = Path(root), int(sample_rate), float(segment_seconds)
        self.silence_threshold_db, self.split_seed = silence_threshold_db, split_seed
        every = index_songs(root, self.sample_rate, max_lag_seconds, allow_unmatched, cache_dir)
        self.splits = split_songs(every, split_seed, val_fraction, test_fraction, split_file)
        self.songs = self.splits["test"]
        self._audio: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.truth = read_truth(self.root)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.songs]

    def audio(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Aligned whole-song (raw (1, N), mixed (2, N)) float32 (kept in memory: test songs only)."""
        from mst_single.data import load_aligned

        if name not in self._audio:
            self._audio[name] = load_aligned(next(s for s in self.songs if s.name == name))
        return self._audio[name]

    def segments(self, policy: str):
        """The deterministic test-grid dataset with references chosen by ``policy``."""
        import warnings

        from mst_single.data import VocalReferenceDataset

        with warnings.catch_warnings():  # policy fallbacks on tiny splits are warned once by training
            warnings.simplefilter("ignore")
            return VocalReferenceDataset(split="test", sample_rate=self.sample_rate,
                                         segment_seconds=self.segment_seconds, reference_policy=policy,
                                         split_seed=self.split_seed, silence_threshold_db=self.silence_threshold_db,
                                         songs=self.songs)

    def raw_lufs(self, name: str) -> float:
        """The song's whole-raw loudness (LUFS) that sets its normalisation gain."""
        from mst_single.data import song_loudness

        return song_loudness(next(s for s in self.songs if s.name == name))

    def truth_params(self, name: str) -> dict:
        return (self.truth.get("songs", {}).get(name) or {}).get("params") or {}


def read_truth(root: Path) -> dict:
    """``root/truth.json`` (demo data: the true settings per song) or {} when absent."""
    path = Path(root) / "truth.json"
    return json.loads(path.read_text()) if path.exists() else {}


# ----------------------------------------------------------------------------------------------- mixing
def mix_song(console, target_lufs: float, raw: np.ndarray, p: torch.Tensor, raw_lufs: float) -> np.ndarray:
    """Whole raw song (1, N) -> console output (2, N) float32 with setting p (1, P) in [0, 1].

    The raw song is scaled by ``song_gain_db(raw_lufs, target_lufs)`` (its whole-song normalisation,
    as the model saw its segments in training and as ``mix`` applies it).
    """
    from mst_single.loudness import song_gain_db

    gain = 10.0 ** (song_gain_db(raw_lufs, target_lufs) / 20.0)
    x = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))[None] * gain
    with torch.no_grad():
        p = p.detach().float().reshape(1, -1)
        if x.shape[-1] <= STREAM_SECONDS * console.sample_rate:
            return console(x, p)[0].numpy()
        streamer, hop = console.streamer(p), int(10 * console.sample_rate)
        return np.concatenate([streamer.process(x[0, :, i:i + hop]) for i in range(0, x.shape[-1], hop)], axis=1)


def identity_output(raw: np.ndarray, target: np.ndarray, sample_rate: int) -> np.ndarray:
    """The ``identity`` baseline: raw (1, N) on both channels, scaled to the target's integrated loudness."""
    from mst_single.loudness import SILENCE_LUFS, integrated_loudness

    out = np.repeat(np.asarray(raw, dtype=np.float32), 2, axis=0)
    lo, lt = integrated_loudness(out, sample_rate), integrated_loudness(target, sample_rate)
    if lo <= SILENCE_LUFS or lt <= SILENCE_LUFS:
        return out
    return (out * 10 ** ((lt - lo) / 20)).astype(np.float32)


@torch.no_grad()
def predict_song_params(model, dataset, name: str, batch_size: int = 8) -> torch.Tensor:
    """Per-parameter median over the song's test-grid segments of ``model.predict_params`` -> (1, P)."""
    idx = [i for i, (si, _) in enumerate(dataset.grid) if dataset.songs[si].name == name]
    if not idx:
        raise ValueError(f"song {name} has no test segment")
    preds = []
    for k in range(0, len(idx), batch_size):
        items = [dataset[i] for i in idx[k:k + batch_size]]
        raw = torch.stack([it["raw"] for it in items])
        ref = torch.stack([it["reference"] for it in items]) if model.needs_reference else None
        preds.append(model.predict_params(raw, ref, torch.stack([it["raw_lufs"] for it in items])).float())
    return torch.cat(preds).median(0, keepdim=True).values


# ----------------------------------------------------------------------------------------------- scoring
def score(output: np.ndarray, target: np.ndarray, sample_rate: int, params: dict | None = None,
          truth_params: dict | None = None, specs=None) -> dict:
    """``metrics.all_metrics`` plus ``param_err`` (and per parameter) when truth and a setting exist."""
    out = M.all_metrics(output, target, sample_rate)
    if params and truth_params and specs is not None:
        out.update(M.param_error(params, truth_params, specs))
    return out


def _units(console, p: torch.Tensor) -> dict:
    return {k: float(v[0]) for k, v in console.denormalize(p.detach().float().reshape(1, -1)).items()}


def evaluate_model(model, testset: TestSet, policy: str, keep_audio: bool = True, progress: bool = True) -> list[SongResult]:
    """Evaluate a trained ``VocalMST`` on every test song (see the module docstring)."""
    from tqdm import tqdm

    if model.sample_rate != testset.sample_rate:
        raise ValueError(f"model runs at {model.sample_rate} Hz but the test set at {testset.sample_rate} Hz")
    model.eval()
    dataset = testset.segments(policy)
    names = {dataset.songs[si].name for si, _ in dataset.grid}
    results = []
    for name in tqdm(testset.names, desc=f"evaluating ({policy} refs)", unit="song", disable=not progress, leave=False):
        raw, target = testset.audio(name)
        if name in names:
            p = predict_song_params(model, dataset, name)
        else:  # every segment is below the silence threshold: neutral setting, still scored
            p = model.console.default_params(1)
        results.append(_result(model.console, model.target_lufs, testset, name, p, raw, target, keep_audio))
    return results


def evaluate_setting(console, target_lufs: float, testset: TestSet, settings: dict[str, torch.Tensor] | torch.Tensor,
                     keep_audio: bool = True) -> list[SongResult]:
    """Evaluate fixed settings: one (1, P) tensor for every song, or {song: (1, P)} (e.g. the oracle)."""
    results = []
    for name in testset.names:
        p = settings[name] if isinstance(settings, dict) else settings
        raw, target = testset.audio(name)
        results.append(_result(console, target_lufs, testset, name, p, raw, target, keep_audio))
    return results


def evaluate_identity(testset: TestSet, keep_audio: bool = True) -> list[SongResult]:
    """The ``identity`` baseline on every test song (no parameters, so no parameter error)."""
    results = []
    for name in testset.names:
        raw, target = testset.audio(name)
        out = identity_output(raw, target, testset.sample_rate)
        results.append(SongResult(name, score(out, target, testset.sample_rate), {}, out if keep_audio else None))
    return results


def _result(console, target_lufs, testset, name, p, raw, target, keep_audio) -> SongResult:
    out = mix_song(console, target_lufs, raw, p, testset.raw_lufs(name))
    units = _units(console, p)
    m = score(out, target, testset.sample_rate, units, testset.truth_params(name), console.specs)
    return SongResult(name, m, units, out if keep_audio else None)


def song_means(results: list[SongResult]) -> dict:
    """Mean over songs of each metric (NaN/inf values included as they are: they must show)."""
    keys = sorted({k for r in results for k in r.metrics})
    out = {}
    for k in keys:
        vals = [r.metrics[k] for r in results if k in r.metrics]
        out[k] = float(np.mean(vals)) if vals else math.nan
    return out


def load_model(ckpt: str | Path):
    """A ``VocalMST`` from a Lightning checkpoint, on CPU, in eval mode (``mix.load_model``'s checks)."""
    from mst_single.mix import load_model as _load

    return _load(ckpt)[0]
