"""Crash-safe writes: every file we write goes to a temporary file beside it and is renamed into place.

A reader therefore sees either the old file, or the complete new one, never a half-written one.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from mst_single.errors import MstError


def _check_writable_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MstError(f"cannot create the output folder ({e.strerror})", folder,
                       "choose an output path in a folder you can write to") from e
    if not os.access(folder, os.W_OK):
        raise MstError("the output folder is not writable", folder,
                       "choose an output path in a folder you can write to")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it.

    ``suffix`` defaults to ``path``'s own suffix so that libraries that pick a format by extension
    (soundfile, matplotlib) still do.
    """
    path = Path(path)
    _check_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=(suffix if suffix is not None else path.suffix) + ".part",
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # the data must be on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=False, ensure_ascii=False, default=_jsonable) + "\n")


def write_audio(path: str | os.PathLike, audio, sample_rate: int, subtype: str = "FLOAT") -> Path:
    """Write ``audio`` of shape (channels, samples) or (samples,) as WAV/FLAC, atomically."""
    import numpy as np
    import soundfile as sf

    audio = np.asarray(audio)
    data = audio.T if audio.ndim == 2 else audio
    fmt = "FLAC" if Path(path).suffix.lower() == ".flac" else "WAV"
    if fmt == "FLAC" and subtype == "FLOAT":
        subtype = "PCM_24"
    with atomic_path(path) as tmp:
        sf.write(tmp, data, int(sample_rate), subtype=subtype, format=fmt)
    return Path(path)


def _jsonable(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):  # torch tensors
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
