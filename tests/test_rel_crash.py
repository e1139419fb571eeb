"""Reliability (issue 7, part 2): crash-safe outputs and read-only inputs.

- `mst_single.fileio`: a write goes to a hidden temp file beside the target and is renamed into
  place; on an exception (even KeyboardInterrupt) the previous file is intact and no temp file is
  left; unwritable places give an MstError naming the folder.
- Inputs are only read: check-data, fit and mix run on a data folder whose files are chmod 0444
  (which does not stop root, so every `open` is also recorded and checked for write modes) and
  whose sha256 + mtime are the same afterwards.
- `mix` killed with SIGKILL while it writes its output leaves no partial OUT (and an earlier OUT
  untouched); only a hidden `.OUT.*.part` temp file may remain (documented in fileio).
"""
from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import make_vocal_data, synth_vocal, tiny_fit_args
from mst_single import fileio
from mst_single.cli import main
from mst_single.errors import MstError

REPO = Path(__file__).resolve().parent.parent
SR = 16000


def sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".part"))


# ----------------------------------------------------------------------------------------------
# fileio unit tests

def test_write_text_replaces_atomically(tmp_path):
    p = tmp_path / "sub" / "a.json"
    fileio.write_json(p, {"x": 1, "name": "Café_ソング"})
    assert json.loads(p.read_text(encoding="utf-8")) == {"x": 1, "name": "Café_ソング"}
    fileio.write_text(p, "second\n")
    assert p.read_text() == "second\n" and parts(p.parent) == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_inside_atomic_path_keeps_the_old_file(tmp_path, exc):
    p = tmp_path / "result.csv"
    p.write_text("old,complete\n")
    seen = []
    with pytest.raises(type(exc)):
        with fileio.atomic_path(p) as tmp:
            seen.append(tmp)
            tmp.write_text("new,half-writ")
            assert tmp.parent == p.parent and tmp.name.startswith(".result.csv.") and tmp.name.endswith(".csv.part")
            assert p.read_text() == "old,complete\n"  # nothing visible before the rename
            raise exc
    assert p.read_text() == "old,complete\n"
    assert not seen[0].exists() and parts(tmp_path) == []


def test_exception_inside_atomic_path_creates_nothing(tmp_path):
    p = tmp_path / "new.wav"
    with pytest.raises(ValueError):
        with fileio.atomic_path(p) as tmp:
            tmp.write_bytes(b"RIFF")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_write_audio_failure_keeps_the_old_file(tmp_path):
    p = tmp_path / "x.wav"
    fileio.write_audio(p, np.zeros((2, 100), np.float32), SR)
    before = sha(p)
    with pytest.raises(Exception):
        fileio.write_audio(p, np.zeros((2, 100), np.float32), SR, subtype="NOT_A_SUBTYPE")
    assert sha(p) == before and parts(tmp_path) == []
    y, sr = sf.read(p, always_2d=True)
    assert sr == SR and y.shape == (100, 2)


@pytest.mark.parametrize("where", ["under a regular file", "/proc", "target is a folder"])
def test_unwritable_targets_give_a_user_error(tmp_path, where):
    """Root ignores chmod, so unwritable places are made differently: a path under a regular file,
    /proc (no regular files can be created there, even by root), a target that is a folder."""
    if where == "under a regular file":
        (tmp_path / "f").write_text("x")
        target, named = tmp_path / "f" / "out.json", tmp_path / "f"
    elif where == "/proc":
        target, named = Path("/proc") / f"mst_rel_{os.getpid()}.json", Path("/proc")
    else:
        (tmp_path / "dir.json").mkdir()
        target, named = tmp_path / "dir.json", tmp_path / "dir.json"
    with pytest.raises(MstError) as e:
        fileio.write_json(target, {"a": 1})
    assert str(named) in str(e.value) and e.value.fix
    if where == "target is a folder":
        assert parts(tmp_path) == [] and (tmp_path / "dir.json").is_dir()


def test_ensure_dir(tmp_path):
    assert fileio.ensure_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(MstError, match="cannot create the output folder"):
        fileio.ensure_dir(tmp_path / "f" / "sub")


# ----------------------------------------------------------------------------------------------
# inputs are read-only

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT


@contextlib.contextmanager
def record_opens():
    """Record (absolute path, mode) of every open through Python, os.open and soundfile."""
    seen: list[tuple[str, str]] = []
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open
    real_sf_init = sf.SoundFile.__init__

    def _abs(f):
        try:
            return os.path.abspath(os.fspath(f))
        except TypeError:
            return None

    def rec_open(file, mode="r", *a, **k):
        if _abs(file):
            seen.append((_abs(file), mode))
        return real_open(file, mode, *a, **k)

    def rec_io_open(file, mode="r", *a, **k):
        if _abs(file):
            seen.append((_abs(file), mode))
        return real_io_open(file, mode, *a, **k)

    def rec_os_open(path, flags, *a, **k):
        if _abs(path):
            seen.append((_abs(path), "w" if flags & WRITE_FLAGS else "r"))
        return real_os_open(path, flags, *a, **k)

    def rec_sf_init(self, file, mode="r", *a, **k):
        if _abs(file):
            seen.append((_abs(file), mode))
        return real_sf_init(self, file, mode, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "open", rec_open)
        mp.setattr(io, "open", rec_io_open)
        mp.setattr(os, "open", rec_os_open)
        mp.setattr(sf.SoundFile, "__init__", rec_sf_init)
        yield seen


def fingerprint(root: Path) -> dict:
    return {str(p.relative_to(root)): (sha(p), p.stat().st_mtime_ns, oct(p.stat().st_mode))
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def readonly_runs(tmp_path_factory):
    """check-data, fit (approach2) and mix on a data folder whose files are chmod 0444; records every
    open and the data folder's fingerprint before and after."""
    base = tmp_path_factory.mktemp("ro")
    data = make_vocal_data(base / "data", songs=4, seconds=3.0, sample_rate=SR)
    raw = base / "input" / "take.wav"
    raw.parent.mkdir()
    sf.write(raw, synth_vocal(3, SR, seed=21), SR)
    inputs = [p for p in list(data.rglob("*")) + [raw] if p.is_file()]
    for p in inputs:
        p.chmod(0o444)
    before = {**fingerprint(data), "take": (sha(raw), raw.stat().st_mtime_ns)}
    runs = base / "runs"
    codes = {}
    with record_opens() as seen, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        codes["check-data"] = main(["check-data", str(data), "--sample-rate", str(SR)])
        codes["fit"] = main(["fit", "-c", str(REPO / "configs" / "approach2.yaml"), *tiny_fit_args(data, runs),
                             "--data.val_fraction", "0.25", "--data.test_fraction", "0.25",
                             "--model.log_audio_every_n_epochs", "1", "--model.num_log_examples", "1",
                             "--run_name", "ro"])
        ckpt = runs / "ro" / "checkpoints" / "last.ckpt"
        codes["mix"] = main(["mix", str(raw), "-o", str(base / "out" / "take_mix.wav"), "--ckpt", str(ckpt),
                             "--quiet"])
    after = {**fingerprint(data), "take": (sha(raw), raw.stat().st_mtime_ns)}
    return dict(codes=codes, seen=list(seen), before=before, after=after, inputs=[str(p) for p in inputs],
                ckpt=ckpt, base=base, runs=runs)


def test_commands_succeed_on_read_only_inputs(readonly_runs):
    assert readonly_runs["codes"] == {"check-data": 0, "fit": 0, "mix": 0}


def test_inputs_unchanged_after_check_data_fit_mix(readonly_runs):
    r = readonly_runs
    assert r["after"] == r["before"]  # sha256, mtime and mode of every input file


def test_inputs_only_ever_opened_for_reading(readonly_runs):
    inputs = set(readonly_runs["inputs"])
    opened = [(p, m) for p, m in readonly_runs["seen"] if p in inputs]
    assert opened, "the recorder saw no input being opened"
    writes = [(p, m) for p, m in opened if any(c in m for c in "wax+")]
    assert writes == []


def test_every_written_file_went_through_a_temp_file(readonly_runs):
    """Every file check-data/fit/mix left under the run and output folders was created as a hidden
    `.NAME.*.part` temp file beside it (seen by the recorder: `tempfile.mkstemp` goes through
    `os.open`) and renamed; and none was opened for writing under its own name."""
    base = readonly_runs["base"]
    created = [p for p, m in readonly_runs["seen"] if any(c in m for c in "wax+")]
    outputs = sorted(p for p in base.rglob("*") if p.is_file() and "data" not in p.relative_to(base).parts
                     and p.relative_to(base).parts[0] != "input")
    names = {str(p.relative_to(base)) for p in outputs}
    assert {"runs/ro/checkpoints/last.ckpt", "runs/ro/metrics.csv", "runs/ro/config.yaml",
            "out/take_mix.wav", "out/take_mix.wav.params.json", "out/take_mix.wav.mixsheet.md"} <= names, names
    direct = sorted(str(p.relative_to(base)) for p in outputs if str(p) in created)
    assert direct == [], f"written in place (not via fileio.atomic_path): {direct}"
    no_temp = sorted(str(p.relative_to(base)) for p in outputs
                     if not any(os.path.dirname(c) == str(p.parent) and os.path.basename(c).startswith(f".{p.name}.")
                                and c.endswith(".part") for c in created))
    assert no_temp == [], f"not written through a temp file + rename: {no_temp}"
    assert not [p for p in base.rglob("*.part")]


# ----------------------------------------------------------------------------------------------
# SIGKILL during mix

def write_long(path: Path, seconds: int) -> None:
    """A long raw vocal written in 10 s blocks (PCM_16, 16 kHz)."""
    blocks = [synth_vocal(10, SR, seed=i) for i in range(3)]
    with sf.SoundFile(path, "w", SR, 1, "PCM_16") as f:
        for i in range(seconds // 10):
            f.write(blocks[i % 3])


@pytest.mark.slow
def test_mix_killed_mid_write_leaves_no_partial_output(readonly_runs, tmp_path):
    raw = tmp_path / "long.wav"
    write_long(raw, 300)  # 5 minutes
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "long_mix.wav"
    old = np.random.default_rng(0).uniform(-0.1, 0.1, (SR, 2)).astype(np.float32)
    sf.write(out, old, SR)  # an earlier, complete mix at OUT
    old_sha = sha(out)
    exe = str(REPO / ".venv" / "bin" / "mst-single")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.Popen([exe, "mix", str(raw), "-o", str(out), "--ckpt", str(readonly_runs["ckpt"]),
                             "--quiet", "--block-size", "2048"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    part_size = 0
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            wav_parts = [p for p in out_dir.iterdir() if p.name.startswith(".long_mix.wav.") and
                         p.name.endswith(".wav.part")]
            if wav_parts and wav_parts[0].stat().st_size > 64 * 1024:  # audio is being written
                part_size = wav_parts[0].stat().st_size
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    err = proc.stderr.read().decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"mix was not killed mid-write (exit {proc.returncode}):\n{err}"
    assert part_size > 0
    print(f"killed mix with a {part_size / 1e6:.1f} MB temp file; leftovers: {parts(out_dir)}")
    # OUT is the earlier complete file, bit for bit; the side files were never half-written
    assert sha(out) == old_sha
    assert not (out_dir / "long_mix.wav.params.json").exists()
    assert not (out_dir / "long_mix.wav.mixsheet.md").exists()
    leftovers = parts(out_dir)
    # documented (fileio): a SIGKILLed process cannot delete its hidden temp files
    assert all(p.startswith(".long_mix.wav.") for p in leftovers)


def test_written_files_get_normal_permissions(tmp_path):
    """mkstemp makes 0600 files; a written file must get 0666 minus the umask like open() gives
    (others in the group can read results), and a replaced file keeps its mode."""
    umask = os.umask(0o022)
    os.umask(umask)
    p = tmp_path / "new.txt"
    fileio.write_text(p, "x")
    assert oct(p.stat().st_mode & 0o777) == oct(0o666 & ~umask)
    p.chmod(0o640)
    fileio.write_text(p, "y")
    assert oct(p.stat().st_mode & 0o777) == oct(0o640) and p.read_text() == "y"
