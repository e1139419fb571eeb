"""Which songs each run trains, validates and is tested on: the hash split, K folds, training subsets.

Every split of a run is written as a split file (``{"train": [...], "val": [...], "test": [...]}``,
``mst_single.data.read_split_file``) listing every song of its data folder, and the run's
``data.split_file`` points at it, so training and evaluation read exactly that split.

- No folds: today's song-level hash split (``mst_single.data.split_songs`` of the data settings, a
  configured ``data.split_file`` included), fold 0.
- ``K`` folds: a song's fold is ``floor(K * _unit_hash(name, split_seed))`` (hash-assigned: adding
  songs moves no one). Run (fold k): test = fold k; validation = the other songs whose
  ``_unit_hash(name, split_seed + VAL_SEED_OFFSET) < val_fraction`` (at least one when
  ``val_fraction > 0`` and two songs are left); train = the rest. Every song is a test song exactly
  once per seed. A fold that draws no song (tiny data) is skipped: it has nothing to test.
- ``train_fraction`` (e.g. e04): a data folder of symlinks holding the run's val/test songs and the
  first ``fraction`` of its training songs (ordered by a hash of their name, so smaller subsets are
  nested in larger ones), with its own split file.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from mst_single.errors import MstError
from mst_single.fileio import write_json

VAL_SEED_OFFSET = 7919  # validation songs are chosen by another hash than the folds
SUBSET_SEED = 12345  # order of the training songs kept by a training subset


def _unit_hash(name: str, seed: int) -> float:
    from mst_single.data import _unit_hash as h

    return h(name, seed)


def fold_of(name: str, folds: int, split_seed: int = 0) -> int:
    """The fold (0..folds-1) of a song, from the hash of its name."""
    return min(folds - 1, int(folds * _unit_hash(name, split_seed)))


def fold_split(names: list[str], fold: int, folds: int, split_seed: int = 0, val_fraction: float = 0.1) -> dict:
    """{"train", "val", "test": [names]} of one fold (see the module docstring); input order kept."""
    test = [n for n in names if fold_of(n, folds, split_seed) == fold]
    rest = [n for n in names if n not in set(test)]
    val = [n for n in rest if _unit_hash(n, split_seed + VAL_SEED_OFFSET) < val_fraction]
    if not val and val_fraction > 0 and len(rest) >= 2:
        val = [min(rest, key=lambda n: _unit_hash(n, split_seed + VAL_SEED_OFFSET))]
    train = [n for n in rest if n not in set(val)]
    return {"train": train, "val": val, "test": test}


def hash_split(names: list[str], settings: dict) -> dict:
    """{"train", "val", "test": [names]} of the data settings' hash split (or their split file)."""
    from types import SimpleNamespace

    from mst_single.data import split_songs

    from mst_single.experiments.config import split_kwargs

    parts = split_songs([SimpleNamespace(name=n) for n in names], **split_kwargs(settings))
    return {k: [p.name for p in v] for k, v in parts.items()}


def song_names(root: Path, allow_unmatched: bool = False, skip_hint: str | None = None) -> list[str]:
    """The song names (file stems) of a data folder, sorted (``skip_hint``: see ``audio.index_pairs``)."""
    from mst_single.audio import index_pairs

    return sorted(p.name for p in index_pairs(root, allow_unmatched, skip_hint))


def splits(names: list[str], settings: dict, folds: int) -> dict[int, dict]:
    """{fold: split} for every fold that has test songs ({0: hash split} without folds)."""
    if not folds:
        return {0: hash_split(names, settings)}
    if settings.get("split_file"):
        raise MstError("folds and data.split_file exclude each other (the folds make the split files)",
                       settings["split_file"], "drop data.split_file, or run without --folds")
    out = {k: fold_split(names, k, folds, settings["split_seed"], settings["val_fraction"]) for k in range(folds)}
    return {k: s for k, s in out.items() if s["test"]}


def write_split(path: Path, split: dict) -> Path:
    """A split file (``mst_single.data.read_split_file`` format)."""
    return write_json(path, {k: list(split[k]) for k in ("train", "val", "test")})


def train_subset(data_root: Path, split: dict, fraction: float, out: Path) -> tuple[Path, dict]:
    """(subset folder, its split): symlinks to every val/test song and the first ``fraction`` of the
    training songs of ``split`` (see the module docstring). The folder is rebuilt every time."""
    from mst_single.audio import find_pairs

    train = sorted(split["train"], key=lambda n: _unit_hash(n, SUBSET_SEED))
    keep_train = train[:max(1, math.ceil(fraction * len(train)))]
    sub = {"train": [n for n in split["train"] if n in set(keep_train)], "val": list(split["val"]),
           "test": list(split["test"])}
    keep = set(sub["train"]) | set(sub["val"]) | set(sub["test"])
    if out.exists():
        shutil.rmtree(out)
    for d in ("raw", "mixed"):
        (out / d).mkdir(parents=True)
    for pair in find_pairs(data_root)[0]:
        if pair.name in keep:
            for d, src in (("raw", pair.raw_path), ("mixed", pair.mixed_path)):
                os.symlink(Path(src).resolve(), out / d / Path(src).name)
    if (data_root / "truth.json").exists():
        os.symlink((data_root / "truth.json").resolve(), out / "truth.json")
    return out, sub
