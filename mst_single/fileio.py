"""Crash-safe writes: every file we write goes to a temporary file beside it and is renamed into place.

A reader therefore sees either the old file, or the complete new one, never a half-written one.
The temporary file is hidden and named `.NAME.XXXXXXXX.SUFFIX.part`, in the same folder (so the
rename is atomic). On an exception it is deleted; a process killed with SIGKILL (or a power cut)
cannot clean up, so such a `.part` file may remain: it never has the target's name and can be
deleted.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path

from mst_single.errors import MstError


_FIX_DIR = "choose an output path in a folder you can write to"
# mkstemp creates 0600 files; a written file gets the mode a plain open() would give it (0666 minus
# the umask), or keeps the mode of the file it replaces. Read once: os.umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def ensure_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and its parents) for writing; MstError naming it when that is impossible
    (a parent is a regular file, a read-only or full file system, no permission)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        problem = (f"cannot create the output folder: {blocker} is a file, not a folder" if blocker is not None
                   else f"cannot create the output folder ({e.strerror})")
        raise MstError(problem, folder, _FIX_DIR) from e
    if not os.access(folder, os.W_OK):
        raise MstError("the output folder is not writable", folder, _FIX_DIR)
    return folder


_check_writable_dir = ensure_dir  # the old private name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it.

    ``suffix`` defaults to ``path``'s own suffix so that libraries that pick a format by extension
    (soundfile, matplotlib) still do.
    """
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.",
                                   suffix=(suffix if suffix is not None else path.suffix) + ".part", dir=path.parent)
    except OSError as e:  # e.g. /proc, a read-only mount: os.access can say yes to root and still fail
        raise MstError(f"cannot create a file in the output folder ({e.strerror})", path.parent, _FIX_DIR) from e
    os.close(fd)
    try:
        yield Path(tmp)
        try:
            with open(tmp, "rb+") as f:  # the data must be on disk before the rename makes it visible
                os.fsync(f.fileno())
            try:
                mode = stat.S_IMODE(os.stat(path).st_mode)
            except FileNotFoundError:
                mode = 0o666 & ~_UMASK
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except OSError as e:
            raise MstError(f"cannot write the file ({e.strerror})", path,
                           "check free disk space and that the path is not a folder") from e
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
