"""The raw/mixed vocal data layer: song-level splits, segments, references, Lightning data module.

Pairing, validation and alignment are in `mst_single.audio` (torch-free, re-exported here). Audio
is never held in memory: every item is read from disk with `read_segment` (soundfile seek, soxr
for another rate), so memory does not grow with the number of songs; per song only a `SongInfo`
(a few kB: paths, lag, a 10 Hz power envelope) is kept.

Timeline: all positions (`start`, lengths) are samples at the dataset's `sample_rate` on the
*aligned* timeline of a song, where sample t is raw[t + raw_offset] and mixed[t + mixed_offset].
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch

from mst_single.audio import (AUDIO_SUFFIXES, SongInfo, SongPair, estimate_lag, find_pairs,  # noqa: F401 (API)
                              index_pairs, index_songs, lag_search, load_aligned, load_audio, prepare_song,
                              read_segment, song_descriptors, song_loudness)
from mst_single.errors import DataError

SPLITS = ("train", "val", "test")
POLICIES = ("same", "song", "other")


# ----------------------------------------------------------------------------------------------
# splits

def _unit_hash(name: str, seed: int) -> float:
    """A stable number in [0, 1) from a song name and seed (sha256, not Python's salted hash)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") / 2.0 ** 64


def split_of(name: str, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """"train", "val" or "test" for one song, from the hash of its name: adding songs moves no one."""
    u = _unit_hash(name, seed)
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def read_split_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read `{"train": [NAME, ...], "val": [...], "test": [...]}` (names are file stems)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the split file ({e})", path,
                        'write it as JSON: {"train": ["song1", ...], "val": [...], "test": [...]}') from e
    if not isinstance(obj, dict) or set(obj) - set(SPLITS) or not all(isinstance(v, list) for v in obj.values()):
        raise DataError("the split file must map 'train'/'val'/'test' to lists of song names", path,
                        'write it as JSON: {"train": ["song1", ...], "val": [...], "test": [...]}')
    out = {s: [Path(str(n)).stem if str(n).lower().endswith(AUDIO_SUFFIXES) else str(n) for n in obj.get(s, [])]
           for s in SPLITS}
    seen: dict[str, str] = {}
    for s in SPLITS:
        for n in out[s]:
            if n in seen and seen[n] != s:
                raise DataError(f"the song '{n}' is listed in both '{seen[n]}' and '{s}'", path,
                                "list every song in one split only")
            seen[n] = s
    return out


# Targets come from either command; a hint that names only ablate leaves a user who ran `targets` lost.
MAKE_TARGETS = ("`mst-single targets DATA -o TARGETS.json` (add the options you made them with), or rerun "
                "`mst-single ablate` if they are its per-fold targets")
# how `mst-single fit` (LightningCLI over VocalDataModule) skips songs with only a raw or only a mixed file
FIT_SKIP_HINT = "pass --data.allow_unmatched true (data.allow_unmatched: true in a config) to skip them"


def read_param_targets(path: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray]]:
    """A parameter-targets file -> (parameter names, {song: (P,) float32 in [0, 1]}).

    JSON ``{"names": [P names], "params": {song: [P values in [0, 1]]}}``: each training song's
    oracle setting (``mst-single targets`` fits them for every song of a folder; ``mst-single ablate``
    fits them with the oracle baseline and writes one file per fold holding the fold's training and
    validation songs only, never its test songs).
    """
    try:
        d = json.loads(Path(path).read_text())
        names = [str(n) for n in d["names"]]
        params = {str(k): np.asarray(v, np.float32).reshape(-1) for k, v in d["params"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"cannot read the parameter targets ({type(e).__name__}: {e})", path,
                        'write JSON {"names": [...], "params": {"SONG": [...]}} or unset data.param_targets') from e
    for k, v in params.items():
        if v.shape != (len(names),) or not np.all(np.isfinite(v)) or v.min() < 0 or v.max() > 1:
            raise DataError(f"the target of song '{k}' is not {len(names)} finite values in [0, 1]", path,
                            f"remake them with {MAKE_TARGETS}")
    return names, params


def param_targets_fitted_at(path: str | os.PathLike) -> dict:
    """The settings a targets file records it was fitted at (``mst-single targets`` writes
    ``sample_rate``, ``target_lufs`` and ``prior_weight``; older files and ``ablate``'s hold none): {key: value}."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}  # read_param_targets has already said what is wrong with the file
    return {k: d[k] for k in ("sample_rate", "target_lufs", "prior_weight") if isinstance(d, dict) and k in d}


def split_songs(pairs: list, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1,
                split_file: str | os.PathLike | None = None) -> dict[str, list]:
    """Song-level split of `pairs` (anything with `.name`: SongPair, SongInfo) into train/val/test.

    Each song's split comes from a hash of its name and `seed`, so it never changes when songs are
    added. If a split with a fraction > 0 comes out empty (small data sets), the song with the
    smallest hash in the fullest other split is moved into it, train first, then val, then test
    (a split only empties one of lower priority): 1 song -> train; 2 -> train + val; 3 -> 1/1/1. A `split_file`
    (see `read_split_file`) overrides the hash for the songs it lists; unlisted songs fall back to
    the hash. Lists keep the input order.
    """
    fixed = {n: s for s, names in (read_split_file(split_file) if split_file else {}).items() for n in names}
    if split_file:
        missing = sorted(set(fixed) - {p.name for p in pairs})
        if missing:
            warnings.warn(f"{split_file}: {len(missing)} listed songs are not in the data: {', '.join(missing)}",
                          stacklevel=2)
    where = {p.name: fixed.get(p.name) or split_of(p.name, seed, val_fraction, test_fraction) for p in pairs}
    for split, frac in (("train", 1 - val_fraction - test_fraction), ("val", val_fraction), ("test", test_fraction)):
        counts = {s: sum(w == s for w in where.values()) for s in SPLITS}
        # priority train > val > test: a split may take the last song of a lower-priority split only
        donors = [s for s in SPLITS if s != split and counts[s] > (0 if SPLITS.index(s) > SPLITS.index(split) else 1)]
        if frac <= 0 or counts[split] or not donors:
            continue
        donor = max(donors, key=counts.get)  # the fullest split gives (train on ties)
        movable = sorted((n for n in where if where[n] == donor and n not in fixed), key=lambda n: _unit_hash(n, seed))
        if movable:
            where[movable[0]] = split
    return {s: [p for p in pairs if where[p.name] == s] for s in SPLITS}


# ----------------------------------------------------------------------------------------------
# dataset

class EpochSampler(torch.utils.data.Sampler):
    """Yields `epoch * n + i` for i < n: the dataset turns each index into a random segment, so the
    epoch is carried by the index itself and workers need no shared state. Lightning calls
    `set_epoch` each epoch; without it the epoch advances by one per pass.
    """

    def __init__(self, num_samples: int):
        self.num_samples, self.epoch, self._explicit = int(num_samples), 0, False

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._explicit = int(epoch), True

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        epoch = self.epoch
        if not self._explicit:
            self.epoch += 1
        return iter(range(epoch * self.num_samples, (epoch + 1) * self.num_samples))


class VocalReferenceDataset(torch.utils.data.Dataset):
    """Aligned (raw, mixed, reference) segments of the songs of one split, read from disk per item.

    Item: dict(raw=(1, T) float32 tensor, mixed=(2, T) aligned with raw, reference=(2, T) mixed
    vocal used as reference, raw_lufs=() float32 tensor (integrated loudness of the whole raw song,
    LUFS: the model normalises every segment of a song by the same gain, as `mix` does), song=str,
    start=int (samples, aligned timeline), reference_song=str, reference_start=int), plus with
    `descriptors=True` descriptors=(13,) float32 (the whole raw song's take descriptors,
    `mst_single.descriptors`), T = round(segment_seconds * sample_rate).

    Segments whose raw RMS is below `silence_threshold_db` (dBFS) are never used. Training
    (`split="train"`): each index gives a random song/position (uniform over non-silent positions)
    drawn from a generator seeded by (`seed`, index); `seed=None` takes `torch.initial_seed()`,
    so `seed_everything` makes runs reproducible; use `EpochSampler` for new segments each epoch.
    Val/test: a fixed grid of non-overlapping non-silent segments, the same every time.

    Reference policy: `same` = the target mixed segment; `song` = a segment of the same song's
    mixed vocal not overlapping the target (songs shorter than two segments fall back to `other`,
    with one warning); `other` = a segment of another song of the split (a one-song split falls
    back to `song`). Deterministic for val/test.

    Pass `songs` (list of SongInfo, already split) to skip indexing; otherwise `root` is indexed
    and split with the split arguments.
    """

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", sample_rate: int = 48000,
                 segment_seconds: float = 4.0, reference_policy: str = "same", split_seed: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, split_file: str | None = None,
                 max_lag_seconds: float = 0.5, allow_unmatched: bool = False, segments_per_epoch: int | None = None,
                 cache_dir: str | None = None, silence_threshold_db: float = -50.0, seed: int | None = None,
                 songs: list[SongInfo] | None = None, param_targets: dict[str, np.ndarray] | None = None,
                 descriptors: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if reference_policy not in POLICIES:
            raise ValueError(f"reference_policy must be one of {POLICIES}, got {reference_policy!r}")
        if songs is None:
            if root is None:
                raise ValueError("pass root or songs")
            every = index_songs(root, sample_rate, max_lag_seconds, allow_unmatched, cache_dir,
                                skip_hint="pass allow_unmatched=True to skip them")
            songs = split_songs(every, split_seed, val_fraction, test_fraction, split_file)[split]
        if any(s.sample_rate != int(sample_rate) for s in songs):
            raise ValueError("songs were analysed at another sample_rate; index them with this one")
        self.split, self.sample_rate, self.policy = split, int(sample_rate), reference_policy
        self.segment = int(round(segment_seconds * sample_rate))
        self.train = split == "train"
        self.seed = int(seed) if seed is not None else (torch.initial_seed() if self.train else split_seed)
        self.seed %= 2 ** 63
        self.silence_threshold_db = silence_threshold_db

        # per song: hop indices where a segment may start (non-silent), and the eval grid
        self.songs, self.cands, grid, dropped, self.too_short = [], [], [], [], []
        for s in songs:
            song_loudness(s)  # measured at analysis time; only hand-built SongInfos are measured here
            cands, g = self._positions(s)
            if len(cands) == 0:
                (self.too_short if s.length < self.segment else dropped).append(s.name)
                continue
            self.songs.append(s)
            self.cands.append(cands)
            grid += [(len(self.songs) - 1, int(st)) for st in g]
        if self.too_short:
            warnings.warn(f"{split}: {len(self.too_short)} songs are shorter than one {segment_seconds:g} s segment "
                          f"and are skipped: {', '.join(self.too_short)}", stacklevel=2)
        if dropped:
            warnings.warn(f"{split}: {len(dropped)} songs have no non-silent {segment_seconds:g} s segment "
                          f"(threshold {silence_threshold_db:g} dBFS) and are skipped: {', '.join(dropped)}",
                          stacklevel=2)
        self.grid = grid  # list of (song index, start); val/test items
        self.num_samples = int(segments_per_epoch) if segments_per_epoch else max(len(grid), 1)
        self.weights = np.array([len(c) for c in self.cands], np.float64)
        self.weights /= self.weights.sum() if len(self.weights) else 1.0

        self.fallback = {}  # song index -> policy used instead of self.policy
        if self.policy == "song":
            short = [i for i, s in enumerate(self.songs) if s.length < 2 * self.segment]
            if short:
                alt = "other" if len(self.songs) > 1 else "same"
                self.fallback.update({i: alt for i in short})
                warnings.warn(f"reference_policy='song': {len(short)} {split} songs are shorter than two segments "
                              f"({', '.join(self.songs[i].name for i in short)}); they use '{alt}' instead",
                              stacklevel=2)
        elif self.policy == "other" and len(self.songs) == 1:
            self.fallback[0] = "song" if self.songs[0].length >= 2 * self.segment else "same"
            warnings.warn(f"reference_policy='other': the {split} split has one song; using "
                          f"'{self.fallback[0]}' instead", stacklevel=2)
        if not self.songs:
            warnings.warn(f"the {split} split has no usable songs", stacklevel=2)
        # every song must have a target (VocalDataModule checks that, naming the targets file)
        self.targets = None if param_targets is None else [torch.from_numpy(param_targets[s.name]) for s in self.songs]
        # measured once per song here (not per item, and before loader workers fork)
        self.descriptors = [torch.from_numpy(song_descriptors(s)) for s in self.songs] if descriptors else None

    def _positions(self, s: SongInfo) -> tuple[np.ndarray, list[int]]:
        """(hop indices of non-silent training starts, non-silent eval grid starts in samples)."""
        if s.length < self.segment:
            return np.zeros(0, np.int64), []
        nh = max(1, int(round(self.segment / s.hop)))
        csum = np.concatenate([[0.0], np.cumsum(10 ** (np.asarray(s.env_db, np.float64) / 10))])
        last = (s.length - self.segment) // s.hop  # last hop index whose start fits
        k = np.arange(last + 1)
        seg_db = 10 * np.log10(np.maximum((csum[np.minimum(k + nh, len(csum) - 1)] - csum[k]) / nh, 1e-12))
        cands = k[seg_db >= self.silence_threshold_db]
        grid = [st for st in range(0, s.length - self.segment + 1, self.segment)
                if seg_db[min(st // s.hop, last)] >= self.silence_threshold_db]
        return cands, grid

    def __len__(self) -> int:
        return self.num_samples if self.train else len(self.grid)

    def _random_start(self, rng: np.random.Generator, i: int, exclude: int | None = None) -> int | None:
        """A random non-silent start in song i; with `exclude`, one not overlapping [exclude, +T)."""
        s, c = self.songs[i], self.cands[i] * self.songs[i].hop
        if exclude is not None:
            c = c[np.abs(c - exclude) >= self.segment]
            if len(c) == 0:  # every far-enough position is silent: take any far-enough position
                c = np.array([p for p in (0, s.length - self.segment) if abs(p - exclude) >= self.segment])
            if len(c) == 0:
                return None
            return int(c[rng.integers(len(c))])
        start = int(c[rng.integers(len(c))]) + int(rng.integers(s.hop))
        return min(start, s.length - self.segment)

    def _reference(self, rng: np.random.Generator, i: int, start: int) -> tuple[int, int]:
        policy = self.fallback.get(i, self.policy)
        if policy == "song":
            r = self._random_start(rng, i, exclude=start)
            if r is not None:
                return i, r
            policy = "other" if len(self.songs) > 1 else "same"
        if policy == "other":
            j = int(rng.integers(len(self.songs) - 1))
            j += j >= i  # any song but i
            return j, self._random_start(rng, j)
        return i, start

    def _read(self, i: int, start: int, what: str) -> np.ndarray:
        s = self.songs[i]
        if what == "raw":
            return read_segment(s.raw_path, start + s.raw_offset, self.segment, self.sample_rate, 1, s.raw_info())
        return read_segment(s.mixed_path, start + s.mixed_offset, self.segment, self.sample_rate, 2, s.mixed_info())

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(index)])
        if self.train:
            i = int(rng.choice(len(self.songs), p=self.weights))
            start = self._random_start(rng, i)
        else:
            i, start = self.grid[index]
        ri, rstart = self._reference(rng, i, start)
        mixed = self._read(i, start, "mixed")
        reference = mixed.copy() if (ri, rstart) == (i, start) else self._read(ri, rstart, "mixed")
        item = dict(raw=torch.from_numpy(self._read(i, start, "raw")), mixed=torch.from_numpy(mixed),
                    reference=torch.from_numpy(reference),
                    raw_lufs=torch.tensor(self.songs[i].raw_lufs, dtype=torch.float32),
                    song=self.songs[i].name, start=int(start),
                    reference_song=self.songs[ri].name, reference_start=int(rstart))
        if self.targets is not None:  # the oracle setting of the song whose mix is the target
            item["target_params"] = self.targets[i]
        if self.descriptors is not None:
            item["descriptors"] = self.descriptors[i]
        return item


# ----------------------------------------------------------------------------------------------
# Lightning

class VocalDataModule(pl.LightningDataModule):
    """Train/val/test loaders of aligned vocal segments from `root` (the YAML `data:` section).

    Args:
        root: data folder with raw/ and mixed/.
        sample_rate: rate everything is resampled to (Hz).
        segment_seconds: segment length (s).
        batch_size, num_workers: DataLoader settings.
        reference_policy: reference for training, `same` | `song` | `other`.
        eval_reference_policy: reference for val/test.
        split_seed, val_fraction, test_fraction: hash-based song-level split.
        split_file: JSON {"train": [...], "val": [...], "test": [...]} overriding the hash split.
        max_lag_seconds: alignment search window (+-, s).
        allow_unmatched: skip songs with only a raw or only a mixed file (warning) instead of failing.
        train_segments_per_epoch: training items per epoch (default: one per eval-grid segment).
        cache_dir: folder for the alignment cache (alignment.json); None = in-memory only.
        silence_threshold_db: segments whose raw RMS is below this (dBFS) are skipped.
        param_targets: JSON of each training/validation song's oracle setting (`read_param_targets`);
            items then carry `target_params` for the model's auxiliary loss (`model.param_loss_weight`).
        take_descriptors: items carry the song's take descriptors (`descriptors`); set by the CLI from
            `model.take_descriptors`, not in the YAML.
    """

    def __init__(self, root: str, sample_rate: int = 48000, segment_seconds: float = 4.0, batch_size: int = 4,
                 num_workers: int = 0, reference_policy: Literal["same", "song", "other"] = "same",
                 eval_reference_policy: Literal["same", "song", "other"] = "song", split_seed: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, split_file: str | None = None,
                 max_lag_seconds: float = 0.5, allow_unmatched: bool = False,
                 train_segments_per_epoch: int | None = None, cache_dir: str | None = None,
                 silence_threshold_db: float = -50.0, param_targets: str | None = None,
                 take_descriptors: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.root, self.sample_rate, self.segment_seconds = root, int(sample_rate), segment_seconds
        self.batch_size, self.num_workers = batch_size, num_workers
        self.splits: dict[str, list[SongInfo]] | None = None
        self.datasets: dict[str, VocalReferenceDataset] = {}
        self.param_target_names, self._targets = None, None
        if param_targets:
            self.param_target_names, self._targets = read_param_targets(param_targets)

    def setup(self, stage: str | None = None) -> None:
        """Index, validate and align every song (once), split them and build the datasets."""
        h = self.hparams
        if self.splits is None:
            songs = index_songs(h.root, h.sample_rate, h.max_lag_seconds, h.allow_unmatched, h.cache_dir,
                                skip_hint=FIT_SKIP_HINT)
            for s in songs:
                if s.raw_peak_db is not None and s.raw_peak_db >= -0.01:
                    warnings.warn(f"{s.raw_path}: peak {s.raw_peak_db:+.2f} dBFS: the raw vocal is probably clipped; "
                                  "the model learns from it as it is (check-data lists every clipped file)",
                                  stacklevel=2)
                window = round(h.max_lag_seconds * s.sample_rate)
                if abs(s.lag) >= window - s.sample_rate // 100 or s.lag_score < 1.5:
                    warnings.warn(f"{s.mixed_path}: the lag found ({1000 * s.lag / s.sample_rate:+.1f} ms) is uncertain "
                                  f"or at the edge of the +-{1000 * h.max_lag_seconds:.0f} ms search window: the pair "
                                  "may be misaligned; raise data.max_lag_seconds (see `mst-single check-data DATA "
                                  f"--max-lag-seconds {3 * h.max_lag_seconds:g}`)", stacklevel=2)
            self.splits = split_songs(songs, h.split_seed, h.val_fraction, h.test_fraction, h.split_file)
            if not self.splits["train"]:
                raise DataError("no song is in the training split", h.root,
                                "add songs, lower val_fraction/test_fraction or fix the split file")
        if self._targets is not None:
            for split in ("train", "val"):
                missing = [x.name for x in self.splits[split] if x.name not in self._targets]
                if missing:
                    raise DataError(f"{len(missing)} {split} songs have no parameter target: "
                                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}", h.param_targets,
                                    "the targets were made for another data folder or split: remake them for "
                                    f"this one with `mst-single targets {h.root} -o {h.param_targets}` (add the "
                                    "options you made them with), or rerun `mst-single ablate` if they are its "
                                    "per-fold targets; or unset data.param_targets")
        for split in SPLITS:
            if split not in self.datasets and self.splits[split]:
                ds = self.datasets[split] = VocalReferenceDataset(
                    split=split, sample_rate=h.sample_rate, segment_seconds=h.segment_seconds,
                    reference_policy=h.reference_policy if split == "train" else h.eval_reference_policy,
                    split_seed=h.split_seed, segments_per_epoch=h.train_segments_per_epoch,
                    silence_threshold_db=h.silence_threshold_db, songs=self.splits[split],
                    param_targets=self._targets if split in ("train", "val") else None,
                    descriptors=h.take_descriptors)
                if split == "train" and not ds.songs:  # else the sampler fails deep inside the loader
                    n, longest = len(self.splits[split]), max(x.length / x.sample_rate for x in self.splits[split])
                    why = (f"all {n} are shorter than one segment (the longest is {longest:.1f} s)"
                           if len(ds.too_short) == n else
                           f"{len(ds.too_short)} are shorter than one segment, the others below "
                           f"{h.silence_threshold_db:g} dBFS throughout")
                    raise DataError(f"no training song has a usable {h.segment_seconds:g} s segment: {why}", h.root,
                                    f"lower data.segment_seconds (e.g. --data.segment_seconds {max(longest / 2, 0.5):.1f}), "
                                    "add longer songs, or check the files with `mst-single check-data`")

    def param_targets(self, songs: list[SongInfo]) -> np.ndarray | None:
        """The parameter targets (`data.param_targets`) of `songs`, (songs, P) in [0, 1]; None without targets."""
        if self._targets is None:
            return None
        return np.stack([self._targets[s.name] for s in songs])

    def _loader(self, split: str):
        ds = self.datasets.get(split)
        if ds is None or len(ds) == 0:
            return []
        return torch.utils.data.DataLoader(
            ds, batch_size=self.batch_size, num_workers=self.num_workers,
            sampler=EpochSampler(len(ds)) if split == "train" else None, shuffle=False,
            persistent_workers=False, drop_last=False)

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def songs(self, split: str) -> list[SongInfo]:
        """The analysed songs of a split (`.name`, `.raw_path`, `.mixed_path`, `.lag`, ...)."""
        if self.splits is None:
            self.setup()
        return list(self.splits[split])

    def load_song(self, song: str | SongInfo) -> tuple[np.ndarray, np.ndarray]:
        """Full-length aligned (raw (1, N), mixed (2, N)) float32 of one song, by name or SongInfo."""
        if isinstance(song, str):
            by_name = {s.name: s for split in SPLITS for s in self.songs(split)}
            if song not in by_name:
                raise DataError(f"no song named '{song}'", self.root, "use a file stem from raw/")
            song = by_name[song]
        return load_aligned(song)
