"""Evaluation on the test split, whole songs: a checkpoint, or a fixed parameter setting (baselines).

Protocol (the same for every variant and baseline of an ablation):

1. Songs: the test split of the data settings (``experiments.config.data_settings``: the song-level
   hash split, or the run's split file, e.g. one fold), aligned raw and mixed at the model's sample
   rate (``load_aligned``).
2. One parameter setting per song. A model predicts parameters for each segment of the test grid
   (``VocalReferenceDataset(split="test")``: non-overlapping, non-silent segments of
   ``segment_seconds``; for Approach 1 each segment's reference is chosen by the evaluation
   reference policy, deterministically, see :data:`EVAL_POLICIES`), and the song's setting is the
   per-parameter median of those predictions in the console's [0, 1] space (as ``mix`` combines
   its segments). A baseline gives its own setting. A variant with ``refine:`` (Approach 1) then
   refines each song's setting on the references its segments were given (``style.refine_setting``:
   a few optimiser steps toward the references' style statistics; no alignment, no test target).
3. The raw song is loudness-normalised to ``target_lufs`` as a whole (the gain of
   ``loudness.song_gain_db`` from the song's ``raw_lufs``: the same gain its segments got in step 2,
   in training, and in ``mix``) and run through the console in one go (chunked through the
   console's streamer beyond ``STREAM_SECONDS``).
4. The whole output is scored against the whole aligned mixed song with ``metrics.all_metrics``,
   plus the parameter error against ``truth.json`` where the data has one.

Evaluation reference policies of Approach 1 (:data:`EVAL_POLICIES`, :data:`PREDICTION_POLICIES`):

- ``other``: each segment's reference is a segment of another test song's mix (a new vocal has no
  mix of its own): the headline.
- ``song``: another section of the song's own mix: an upper bound (the answer's style is given).
- ``shuffled``: the control. Each test song gets ONE other test song's mix, by a fixed derangement
  of the test songs (Sattolo's algorithm, seeded by ``split_seed``); a model that reads the
  reference does worse here than with ``song``, one that ignores it does the same.
- ``song-alt`` (predictions only): like ``song`` but a second, different section of the song's own
  mix, so the change between ``song`` and ``song-alt`` measures the within-song noise floor of
  reference sensitivity.

Results: one :class:`SongResult` per song with its metrics, the setting in units and in [0, 1], and
the output audio (kept for the report).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mst_single import metrics as M
from mst_single.data import VocalReferenceDataset

EVAL_POLICIES = ("other", "song", "shuffled")
PREDICTION_POLICIES = EVAL_POLICIES + ("song-alt",)
STREAM_SECONDS = 120.0  # longer songs go through VocalConsole.streamer in 10 s chunks (bounded memory)


@dataclass
class SongResult:
    """Evaluation of one test song: ``metrics`` {name: value}, ``params`` {name: units}, ``setting``
    {name: value in [0, 1]} (empty for ``identity``), ``output`` (2, N)."""

    song: str
    metrics: dict
    params: dict = field(default_factory=dict)
    output: np.ndarray | None = field(default=None, repr=False)
    setting: dict = field(default_factory=dict)


class TestSet:
    """The test songs of a data folder under given data settings.

    Args:
        root: data folder (raw/, mixed/, optional truth.json).
        **data: the rest of a ``data:`` section; the data settings (``experiments.config.DATA_KEYS``:
            sample_rate, segment_seconds, split_seed, val_fraction, test_fraction, split_file, ...)
            are used, with ``VocalDataModule``'s defaults; other keys (batch_size, ...) are ignored.
    """

    def __init__(self, root, **data):
        from mst_single.data import index_songs, split_songs
        from mst_single.experiments.config import data_settings, index_kwargs, split_kwargs

        s = self.settings = data_settings(dict(data, root=str(root)))
        self.root, self.sample_rate, self.segment_seconds = Path(root), int(s["sample_rate"]), float(s["segment_seconds"])
        self.silence_threshold_db, self.split_seed = s["silence_threshold_db"], s["split_seed"]
        every = index_songs(root, **index_kwargs(s), progress=False)
        self.splits = split_songs(every, **split_kwargs(s))
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
        """The deterministic test-grid dataset with references chosen by ``policy`` (``same`` for a
        model without reference, or one of :data:`PREDICTION_POLICIES`)."""
        import warnings

        with warnings.catch_warnings():  # policy fallbacks on tiny splits are warned once by training
            warnings.simplefilter("ignore")
            kw = dict(split="test", sample_rate=self.sample_rate, segment_seconds=self.segment_seconds,
                      split_seed=self.split_seed, silence_threshold_db=self.silence_threshold_db, songs=self.songs)
            if policy in ("shuffled", "song-alt"):
                return EvalReferenceDataset(policy, **kw)
            return VocalReferenceDataset(reference_policy=policy, **kw)

    def raw_lufs(self, name: str) -> float:
        """The song's whole-raw loudness (LUFS) that sets its normalisation gain."""
        from mst_single.data import song_loudness

        return song_loudness(next(s for s in self.songs if s.name == name))

    def truth_params(self, name: str) -> dict:
        return (self.truth.get("songs", {}).get(name) or {}).get("params") or {}


class EvalReferenceDataset(VocalReferenceDataset):
    """The test grid with the ``shuffled`` or ``song-alt`` references (see the module docstring)."""

    def __init__(self, eval_policy: str, **kw):
        if eval_policy not in ("shuffled", "song-alt"):
            raise ValueError(f"eval_policy must be 'shuffled' or 'song-alt', got {eval_policy!r}")
        super().__init__(reference_policy="other" if eval_policy == "shuffled" else "song", **kw)
        self.eval_policy = eval_policy
        self.partner = derangement(len(self.songs), self.seed)

    def _reference(self, rng: np.random.Generator, i: int, start: int) -> tuple[int, int]:
        if self.eval_policy == "shuffled":
            j = self.partner[i]
            return (j, self._random_start(rng, j)) if j != i else super()._reference(rng, i, start)  # one song
        first = super()._reference(rng, i, start)  # exactly the `song` policy's draw for this segment
        if first[0] != i:  # a song too short for a section of its own: as `song` does
            return first
        c = self.cands[i] * self.songs[i].hop
        far = c[(np.abs(c - start) >= self.segment) & (np.abs(c - first[1]) >= self.segment)]
        return (i, int(far[rng.integers(len(far))])) if len(far) else first


def derangement(n: int, seed: int) -> list[int]:
    """A permutation of range(n) without fixed points (one cycle, Sattolo's algorithm); [0] for n = 1."""
    rng = np.random.default_rng([int(seed), 1729])
    perm = list(range(n))
    for k in range(n - 1, 0, -1):
        j = int(rng.integers(k))
        perm[k], perm[j] = perm[j], perm[k]
    return perm


def read_truth(root: Path) -> dict:
    """``root/truth.json`` (demo data: the true settings per song) or {} when absent."""
    path = Path(root) / "truth.json"
    return json.loads(path.read_text()) if path.exists() else {}


# ----------------------------------------------------------------------------------------------- mixing
def mix_song(console, target_lufs: float, raw: np.ndarray, p: torch.Tensor, raw_lufs: float,
             device: str | torch.device = "cpu") -> np.ndarray:
    """Whole raw song (1, N) -> console output (2, N) float32 with setting p (1, P) in [0, 1], the
    console running on ``device``.

    The raw song is scaled by ``song_gain_db(raw_lufs, target_lufs)`` (its whole-song normalisation,
    as the model saw its segments in training and as ``mix`` applies it).
    """
    from mst_single.loudness import song_gain_db

    gain = 10.0 ** (song_gain_db(raw_lufs, target_lufs) / 20.0)
    x = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))[None].to(device) * gain
    with torch.no_grad():
        p = p.detach().float().reshape(1, -1).to(device)
        if x.shape[-1] <= STREAM_SECONDS * console.sample_rate:
            return console(x, p)[0].cpu().numpy()
        # the streamer runs on the host (numba kernels, bounded memory): beyond 2 min the GPU waits
        x, p = x.cpu(), p.cpu()
        streamer, hop = console.streamer(p), int(10 * console.sample_rate)
        return np.concatenate([streamer.process(x[0, :, i:i + hop]) for i in range(0, x.shape[-1], hop)], axis=1)


def mix_song_at(console, target_lufs: float, raw: np.ndarray, p: torch.Tensor, raw_lufs: float,
                output_lufs: float | None, device: str | torch.device = "cpu") -> tuple[np.ndarray, torch.Tensor]:
    """:func:`mix_song`, then (``output_lufs`` not None) the output gain moved so that the whole song
    lands at ``output_lufs`` (``VocalConsole.output_gain_to``) -> (output (2, N), the setting used (1, P))."""
    out = mix_song(console, target_lufs, raw, p, raw_lufs, device)
    if output_lufs is None:
        return out, p
    from mst_single.loudness import integrated_loudness

    p2, db = console.output_gain_to(p, integrated_loudness(out, console.sample_rate), output_lufs)
    return (out * np.float32(10.0 ** (db / 20.0))).astype(np.float32), p2


def identity_output(raw: np.ndarray, raw_lufs: float, target_lufs: float) -> np.ndarray:
    """The ``identity`` baseline: raw (1, N) on both channels with the models' input normalisation
    (the whole-song gain ``song_gain_db(raw_lufs, target_lufs)``) and nothing else: what the console
    gets before it does anything. Not matched to the target's loudness."""
    from mst_single.loudness import song_gain_db

    gain = 10.0 ** (song_gain_db(raw_lufs, target_lufs) / 20.0)
    return (np.repeat(np.asarray(raw, dtype=np.float32), 2, axis=0) * gain).astype(np.float32)


def level_matched_output(raw: np.ndarray, target: np.ndarray, sample_rate: int) -> np.ndarray:
    """The ``identity-level-matched`` baseline: raw (1, N) on both channels scaled to the target's
    integrated loudness (it is given the answer's loudness: label it so)."""
    from mst_single.loudness import SILENCE_LUFS, integrated_loudness

    out = np.repeat(np.asarray(raw, dtype=np.float32), 2, axis=0)
    lo, lt = integrated_loudness(out, sample_rate), integrated_loudness(target, sample_rate)
    if lo <= SILENCE_LUFS or lt <= SILENCE_LUFS:
        return out
    return (out * 10 ** ((lt - lo) / 20)).astype(np.float32)


def _device(module: torch.nn.Module) -> torch.device:
    """Where a model lives (its first parameter or buffer; CPU if it has none)."""
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict_song_params(model, dataset, name: str, batch_size: int = 8) -> torch.Tensor:
    """Per-parameter median over the song's test-grid segments of ``model.predict_params`` -> (1, P),
    computed on the model's device, returned on the CPU."""
    idx = [i for i, (si, _) in enumerate(dataset.grid) if dataset.songs[si].name == name]
    if not idx:
        raise ValueError(f"song {name} has no test segment")
    device, preds = _device(model), []
    desc = None
    if getattr(model, "take_descriptors", False):  # the whole raw song's, as in training and `mix`
        from mst_single.audio import song_descriptors

        desc = torch.from_numpy(song_descriptors(dataset.songs[dataset.grid[idx[0]][0]])).to(device)
    for k in range(0, len(idx), batch_size):
        items = [dataset[i] for i in idx[k:k + batch_size]]
        raw = torch.stack([it["raw"] for it in items]).to(device)
        ref = torch.stack([it["reference"] for it in items]).to(device) if model.needs_reference else None
        lufs = torch.stack([it["raw_lufs"] for it in items]).to(device)
        preds.append(model.predict_params(raw, ref, lufs, desc).float().cpu())
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


def song_segments(dataset, name: str, sample_rate: int, target_lufs: float,
                  device: str | torch.device = "cpu", reference_songs: bool = False):
    """A song's test-grid segments: raw (n, 1, samples) loudness-normalised as the network saw them,
    and the references (n, 2, samples) they were given (what test-time refinement works on); with
    ``reference_songs``, also the name of the song each reference was cut from (n,)."""
    from mst_single.loudness import normalize_loudness

    items = [dataset[i] for i, (si, _) in enumerate(dataset.grid) if dataset.songs[si].name == name]
    raw, _ = normalize_loudness(torch.stack([it["raw"] for it in items]).to(device), sample_rate, target_lufs,
                                lufs=torch.stack([it["raw_lufs"] for it in items]).to(device))
    out = raw, torch.stack([it["reference"] for it in items]).to(device)
    return (*out, [it["reference_song"] for it in items]) if reference_songs else out


_SAME_VOCAL: dict[tuple[str, str], bool] = {}  # (raw path, mixed path) -> aligned, once per process


def same_vocal(dataset, name: str, reference_song: str) -> bool:
    """Is ``reference_song``'s mix a mix of ``name``'s raw vocal, as `mix` tells it (``mix.reference_alignment``:
    the files aligned, not the names compared)?"""
    from mst_single.mix import reference_alignment

    song, ref = (next(s for s in dataset.songs if s.name == n) for n in (name, reference_song))
    key = (str(song.raw_path), str(ref.mixed_path))
    if key not in _SAME_VOCAL:
        _SAME_VOCAL[key] = reference_alignment(song.raw_info(), ref.mixed_info())["same_vocal"]
    return _SAME_VOCAL[key]


def refine_song_params(model, dataset, name: str, p: torch.Tensor, refine: dict, seed: int = 0) -> torch.Tensor:
    """``style.refine_setting`` of the song's predicted setting p (1, P) on the references its
    test-grid segments were given (:func:`song_segments`) -> (1, P) on the CPU. ``refine["start"]``
    "ridge": start from the model's style ridge (``VocalMST.style_ridge_start``) instead of p.
    ``refine["other_vocal"]`` "house": only the references that are mixes of this vocal (:func:`same_vocal`)
    are refined on; with none, the song gets the model's house preset (``VocalMST.house_start``), as
    ``mix --other-vocal house`` does."""
    from mst_single.style import refine_setting

    device = _device(model)
    raw, ref, ref_songs = song_segments(dataset, name, model.sample_rate, model.target_lufs, device, reference_songs=True)
    if refine.get("other_vocal", "refine") == "house":
        keep = [same_vocal(dataset, name, r) for r in ref_songs]
        if not any(keep):
            return model.house_start().cpu()
        ref = ref[torch.tensor(keep, device=ref.device)]
    kw = {k: v for k, v in refine.items() if k not in ("start", "other_vocal")}
    start = model.style_ridge_start(raw, ref) if refine.get("start") == "ridge" else p.to(device)
    with torch.enable_grad():
        return refine_setting(model.console, raw, ref, start, seed=seed, **kw).cpu()


def predict_settings(model, testset: TestSet, policy: str, progress: bool = True,
                     refine: dict | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """{song: setting (1, P) in [0, 1]} of a trained ``VocalMST`` for every test song, references by
    ``policy`` (``same`` for Approach 2, which ignores them). A song whose every segment is below the
    silence threshold gets the neutral setting. ``refine`` ({steps, lr, crops, match_level, start};
    Approach 1): each song's setting is then refined on its references' style (:func:`refine_song_params`)."""
    from mst_single.progress import progress as progress_bar

    if model.sample_rate != testset.sample_rate:
        raise ValueError(f"model runs at {model.sample_rate} Hz but the test set at {testset.sample_rate} Hz")
    if refine and not model.needs_reference:
        raise ValueError("refining a setting needs a reference: only Approach 1 models can be refined")
    model.eval()
    dataset = testset.segments(policy)
    names = {dataset.songs[si].name for si, _ in dataset.grid}
    out = {}
    what = "predicting + refining" if refine else "predicting"
    for name in progress_bar(testset.names, desc=f"{what} ({policy} refs)", unit="songs", enabled=progress,
                             leave=False):
        if name not in names:
            out[name] = model.console.default_params(1)
            continue
        out[name] = predict_song_params(model, dataset, name)
        if refine:
            out[name] = refine_song_params(model, dataset, name, out[name], refine, seed)
    return out


def evaluate_model(model, testset: TestSet, policy: str, keep_audio: bool = True, progress: bool = True,
                   refine: dict | None = None, seed: int = 0) -> list[SongResult]:
    """Evaluate a trained ``VocalMST`` on every test song (see the module docstring); ``refine``:
    see :func:`predict_settings`."""
    settings = predict_settings(model, testset, policy, progress, refine, seed)
    return evaluate_setting(model.console, model.target_lufs, testset, settings, keep_audio, progress,
                            desc=f"scoring ({policy} refs)", device=_device(model),
                            output_lufs=getattr(model, "output_lufs", None))


def evaluate_setting(console, target_lufs: float, testset: TestSet, settings: dict[str, torch.Tensor] | torch.Tensor,
                     keep_audio: bool = True, progress: bool = True, desc: str = "scoring",
                     device: str | torch.device = "cpu", output_lufs: float | None = None) -> list[SongResult]:
    """Evaluate fixed settings: one (1, P) tensor for every song, or {song: (1, P)} (e.g. the oracle),
    the console running on ``device``; ``output_lufs``: see :func:`mix_song_at`."""
    from mst_single.progress import progress as progress_bar

    results = []
    for name in progress_bar(testset.names, desc=desc, unit="songs", enabled=progress, leave=False):
        p = settings[name] if isinstance(settings, dict) else settings
        raw, target = testset.audio(name)
        results.append(_result(console, target_lufs, testset, name, p, raw, target, keep_audio, device, output_lufs))
    return results


def evaluate_identity(testset: TestSet, target_lufs: float, level_matched: bool = False,
                      keep_audio: bool = True) -> list[SongResult]:
    """The ``identity`` (or ``identity-level-matched``) baseline on every test song (no parameters,
    so no parameter error)."""
    results = []
    for name in testset.names:
        raw, target = testset.audio(name)
        out = (level_matched_output(raw, target, testset.sample_rate) if level_matched
               else identity_output(raw, testset.raw_lufs(name), target_lufs))
        results.append(SongResult(name, score(out, target, testset.sample_rate), {}, out if keep_audio else None))
    return results


def _result(console, target_lufs, testset, name, p, raw, target, keep_audio, device="cpu", output_lufs=None) -> SongResult:
    out, p = mix_song_at(console, target_lufs, raw, p, testset.raw_lufs(name), output_lufs, device)
    units = _units(console, p)
    m = score(out, target, testset.sample_rate, units, testset.truth_params(name), console.specs)
    setting = dict(zip(console.param_names, (float(v) for v in p.detach().float().reshape(-1))))
    return SongResult(name, m, units, out if keep_audio else None, setting)


def song_means(results: list[SongResult]) -> dict:
    """Mean over songs of each metric (NaN/inf values included as they are: they must show)."""
    keys = sorted({k for r in results for k in r.metrics})
    out = {}
    for k in keys:
        vals = [r.metrics[k] for r in results if k in r.metrics]
        out[k] = float(np.mean(vals)) if vals else math.nan
    return out


def eval_device(accelerator: str | None = "auto") -> torch.device:
    """The device evaluation and the baselines run on: CUDA when there is one and the training
    config does not ask for the CPU (``trainer.accelerator``), else the CPU."""
    if str(accelerator or "auto").lower() in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def load_model(ckpt: str | Path, device: str | torch.device = "cpu"):
    """A ``VocalMST`` from a Lightning checkpoint, on ``device``, in eval mode (``mix.load_model``'s checks)."""
    from mst_single.mix import load_model as _load

    return _load(ckpt)[0].to(device)
