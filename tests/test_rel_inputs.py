"""Reliability (issue 7, part 1): the bad-input matrix, through the real CLI (`mst_single.cli.main`).

For `check-data`, `fit` and `mix`, each odd input either fails with exit code 2 (1 for check-data's
"a pair is unusable") and a message that names the file and says what to do, writing nothing, or is
handled (documented behaviour, exit 0). The 1-hour file runs `check-data` in a subprocess and
measures its peak RSS (`os.wait4`).

Data: tiny synthetic vocals from tests/conftest.py at 16 kHz; the `fit` runs use the real configs
with command-line overrides that make them take seconds. All runs happen with the working directory
set to an empty folder so that "nothing written" can be checked as "the folder is still empty".
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import make_vocal_data, process_mix, synth_vocal, tiny_fit_args, write_pair
from mst_single.cli import main

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
SR = 16000
NON_ASCII = "Café_ソング"


# ----------------------------------------------------------------------------------------------
# helpers

def cli(*argv) -> tuple[int, str]:
    """Run `mst-single ARGV` in-process; (exit code, stdout + stderr + warnings as one text)."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        code = main([str(a) for a in argv])
    text = out.getvalue() + err.getvalue() + "".join(f"\nwarning: {w.message}" for w in caught)
    return code, text


def snapshot(root: Path) -> dict:
    """relative path -> (sha256, mtime_ns, mode) of every file under root (and the folder set)."""
    snap = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_file():
            snap[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns, p.stat().st_mode)
        else:
            snap[rel] = "dir"
    return snap


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def fit(approach: str, root, runs, *extra, epochs=1) -> tuple[int, str]:
    return cli("fit", "-c", CONFIGS / f"{approach}.yaml", *tiny_fit_args(root, runs, epochs), *extra)


def good_data(root: Path, songs: int = 3, seconds: float = 3.0) -> Path:
    return make_vocal_data(root, songs=songs, seconds=seconds, sample_rate=SR)


def assert_names_file_and_fix(text: str, path: Path, *fix_words: str) -> None:
    assert str(path) in text or path.name in text, f"the message does not name {path}:\n{text}"
    low = text.lower()
    assert "fix" in low or any(w.lower() in low for w in fix_words), f"no fix in the message:\n{text}"
    for w in fix_words:
        assert w.lower() in low, f"expected {w!r} in the message:\n{text}"


# -- the bad files (each replaces song01 of a good 3-song folder) -------------------------------

def _unmatched(d):
    sf.write(d / "raw" / "lonely.wav", synth_vocal(2, SR, seed=9), SR)
    return d / "raw" / "lonely.wav"


def _zero_length(d):
    (d / "raw" / "song01.wav").write_bytes(b"")
    return d / "raw" / "song01.wav"


def _zero_frames(d):  # a valid header with no samples
    sf.write(d / "raw" / "song01.wav", np.zeros(0, np.float32), SR)
    return d / "raw" / "song01.wav"


def _silent(d):
    sf.write(d / "raw" / "song01.wav", np.zeros(3 * SR, np.float32), SR)
    return d / "raw" / "song01.wav"


def _nan(d):
    x = synth_vocal(3, SR, seed=1)
    x[SR] = np.nan
    sf.write(d / "raw" / "song01.wav", x, SR, subtype="FLOAT")
    return d / "raw" / "song01.wav"


def _inf(d):
    x, sr = sf.read(d / "mixed" / "song01.wav", dtype="float32")
    x[100, 0] = np.inf
    sf.write(d / "mixed" / "song01.wav", x, sr, subtype="FLOAT")
    return d / "mixed" / "song01.wav"


def _corrupt_header(d):
    p = d / "raw" / "song01.wav"
    b = bytearray(p.read_bytes())
    b[12:36] = b"\xff" * 24  # RIFF....WAVE kept, the fmt chunk destroyed
    p.write_bytes(bytes(b))
    return p


def _not_audio(d):
    p = d / "mixed" / "song01.wav"
    p.write_text("these are my lyrics, not audio\n" * 20)
    return p


BAD_DATA = {  # case -> (make it, words the message must hold)
    "unmatched names": (_unmatched, ["no mixed/lonely", "--allow-unmatched"]),
    "zero-length file": (_zero_length, ["empty", "re-export"]),
    "header but no samples": (_zero_frames, ["no audio samples", "re-export"]),
    "all-silent raw": (_silent, ["silent"]),
    "NaN samples": (_nan, ["NaN/Inf", "re-"]),
    "Inf samples": (_inf, ["NaN/Inf", "re-"]),
    "corrupt header": (_corrupt_header, ["corrupt", "re-export"]),
    "non-audio .wav": (_not_audio, ["not an audio file", "re-export"]),
}


# ----------------------------------------------------------------------------------------------
# check-data

@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty current directory: anything a command writes by accident shows up here."""
    w = tmp_path / "work"
    w.mkdir()
    monkeypatch.chdir(w)
    return w


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_check_data_bad_file(case, tmp_path, workdir):
    d = good_data(tmp_path / "d")
    make, words = BAD_DATA[case]
    bad = make(d)
    before = snapshot(d)
    code, text = cli("check-data", d, "--sample-rate", SR)
    assert code == 1, text
    # the ERROR line names the bad file, what is wrong and the fix
    lines = "\n".join(ln for ln in text.splitlines() if ln.strip().startswith("ERROR") and str(bad) in ln)
    assert lines, f"no ERROR line names {bad}:\n{text}"
    assert_names_file_and_fix(lines, bad, *words)
    if case != "unmatched names":  # the other songs are still checked
        assert "3 pairs, 2 usable, 1 unusable" in text, text
    assert snapshot(d) == before and files_under(workdir) == []


def test_check_data_unmatched_allowed_is_a_warning(tmp_path, workdir):
    d = good_data(tmp_path / "d")
    _unmatched(d)
    code, text = cli("check-data", d, "--sample-rate", SR, "--allow-unmatched")
    assert code == 0, text
    assert "WARNING" in text and "lonely.wav" in text


def test_check_data_empty_raw_folder(tmp_path, workdir):
    d = good_data(tmp_path / "d")
    for p in (d / "raw").iterdir():
        p.unlink()
    code, text = cli("check-data", d, "--sample-rate", SR)
    assert code == 2, text
    assert_names_file_and_fix(text, d / "raw", "no .wav or .flac files in raw/", "fix")
    assert "Traceback" not in text and files_under(workdir) == []


def test_check_data_missing_folder(tmp_path, workdir):
    code, text = cli("check-data", tmp_path / "nope", "--sample-rate", SR)
    assert code == 2 and "nope" in text and "raw/" in text and "Traceback" not in text


# -- the "odd but valid" folder: every song is usable and must be handled ----------------------

def make_odd_data(root: Path) -> Path:
    """Six usable but unusual songs (3-4 s, 16 kHz unless said):
    non-ASCII name; mixed at 22.05 kHz; stereo raw + mono mixed; hard-clipped raw; full-scale noise;
    a raw vocal that is digital silence for its first 2.5 s."""
    v = [synth_vocal(3, SR, seed=i) for i in range(6)]
    write_pair(root, NON_ASCII, v[0], process_mix(v[0], SR, 0.02, seed=0), SR)
    mixed = process_mix(v[1], SR, 0.1, seed=1)
    write_pair(root, "rates", v[1], soxr.resample(mixed.T, SR, 22050).T.copy(), SR, 22050)
    stereo = np.stack([v[2], 0.7 * v[2] + 0.01 * np.random.default_rng(2).normal(size=len(v[2])).astype(np.float32)])
    write_pair(root, "stereo_raw", stereo, process_mix(v[2], SR, 0.03, seed=2, channels=1)[0], SR)
    clipped = np.clip(v[3] * 8, -1, 1).astype(np.float32)
    write_pair(root, "clipped", clipped, process_mix(clipped, SR, 0.0, seed=3), SR, subtype="PCM_16")
    noise = np.random.default_rng(4).uniform(-1, 1, 3 * SR).astype(np.float32)
    mixed = process_mix(noise, SR, 0.0, seed=4)
    write_pair(root, "noise", noise, mixed / np.abs(mixed).max(), SR)
    sparse = np.concatenate([np.zeros(int(2.5 * SR), np.float32), v[5][: int(1.5 * SR)]])
    write_pair(root, "sparse", sparse, process_mix(sparse, SR, 0.0, seed=5), SR)
    return root


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    return make_odd_data(tmp_path_factory.mktemp("odd") / "data")


def table_row(text: str, song: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith(song + " "):
            return line.split()
    raise AssertionError(f"no table row for {song}:\n{text}")


def test_check_data_handles_odd_but_valid_songs(odd_data, workdir):
    before = snapshot(odd_data)
    code, text = cli("check-data", odd_data, "--sample-rate", SR)
    assert code == 0, text
    assert "6 pairs, 6 usable, 0 unusable" in text
    # non-ASCII name printed as is; different rates and channel counts shown, not refused
    assert table_row(text, NON_ASCII)[1] == "3.0"
    rates = table_row(text, "rates")
    assert rates[2:4] == ["16000", "22050"] and abs(float(rates[6]) - 100.0) <= 1.0  # lag found within 1 ms
    assert table_row(text, "stereo_raw")[4:6] == ["2", "1"]
    # clipping is warned about, naming the file
    assert re.search(r"WARNING\s+\S*clipped\.wav: peak [+-]0\.00 dBFS: the raw file is probably clipped", text), text
    assert snapshot(odd_data) == before and files_under(workdir) == []


def _offset_data(root: Path) -> Path:
    good_data(root, songs=2, seconds=4.0)
    raw = synth_vocal(6, SR, seed=7)
    write_pair(root, "late", raw, process_mix(raw, SR, lag_seconds=1.0, seed=7), SR)
    return root


def test_check_data_offset_beyond_search_window(tmp_path, workdir):
    """Mixed 1 s late, default window +-0.5 s: the lag cannot be found; check-data must say so and
    name the option; with --max-lag-seconds 1.5 the lag is found to within 1 ms."""
    d = _offset_data(tmp_path / "d")
    code, text = cli("check-data", d, "--sample-rate", SR)
    problems = text.split("problems", 1)[1] if "problems" in text else ""
    assert "late.wav" in problems and "--max-lag-seconds" in problems, text
    code, text = cli("check-data", d, "--sample-rate", SR, "--max-lag-seconds", "1.5")
    assert code == 0, text
    assert abs(float(table_row(text, "late")[6]) - 1000.0) <= 1.0, text
    assert "late.wav" not in text.split("problems", 1)[-1] if "problems" in text else True


# ----------------------------------------------------------------------------------------------
# fit

@pytest.mark.parametrize("case", ["unmatched names", "zero-length file", "all-silent raw", "NaN samples",
                                  "corrupt header", "non-audio .wav"])
def test_fit_bad_file(case, tmp_path, workdir):
    d = good_data(tmp_path / "d")
    make, words = BAD_DATA[case]
    bad = make(d)
    before = snapshot(d)
    runs = workdir / "runs"
    code, text = fit("approach2", d, runs, "--run_name", "bad")
    assert code == 2, text
    assert_names_file_and_fix(text, bad, *[w for w in words if w != "--allow-unmatched"])
    if case == "unmatched names":
        assert "--allow-unmatched" in text or "allow_unmatched" in text
    assert "Traceback" not in text
    assert snapshot(d) == before
    assert files_under(workdir) == [], "fit wrote files although the data is unusable"


def test_fit_failure_leaves_no_run_folder(tmp_path, workdir):
    """A fit that fails on its data leaves no (empty) run folder that looks like a run."""
    d = good_data(tmp_path / "d")
    _zero_length(d)
    code, text = fit("approach2", d, workdir / "runs", "--run_name", "bad")
    assert code == 2, text
    assert not (workdir / "runs" / "bad").exists(), "fit left an empty run folder behind"


def test_fit_empty_raw_folder(tmp_path, workdir):
    d = good_data(tmp_path / "d")
    for p in (d / "raw").iterdir():
        p.unlink()
    code, text = fit("approach2", d, workdir / "runs", "--run_name", "empty")
    assert code == 2 and "no .wav or .flac files in raw/" in text and "Traceback" not in text
    assert files_under(workdir) == []


def test_fit_runs_dir_not_writable(tmp_path, workdir):
    """Tests run as root, for whom chmod does not block writing: the runs folder is put under a
    regular FILE instead, which no user can create folders in."""
    d = good_data(tmp_path / "d")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, text = fit("approach2", d, blocker / "runs", "--run_name", "x")
    assert code == 2, text
    assert "a_file" in text and "Traceback" not in text and "fix" in text.lower(), text


def test_fit_offset_beyond_search_window_is_reported(tmp_path, workdir):
    """A song whose mixed file is 1 s late cannot be aligned with the default +-0.5 s window: fit
    must say so (naming the file and data.max_lag_seconds) rather than train on misaligned pairs."""
    d = _offset_data(tmp_path / "d")
    code, text = fit("approach2", d, workdir / "runs", "--run_name", "off", "--trainer.max_steps", "1")
    assert "late.wav" in text and "max_lag_seconds" in text, text


@pytest.fixture(scope="module")
def odd_runs(odd_data, tmp_path_factory):
    """One real fit per approach on the odd-but-valid folder (2 epochs approach2, 1 approach1)."""
    runs = tmp_path_factory.mktemp("odd_runs")
    out = {}
    for approach, epochs in (("approach2", 2), ("approach1", 1)):
        code, text = fit(approach, odd_data, runs, "--run_name", approach, epochs=epochs)
        out[approach] = (code, text, runs / approach)
    return out


def test_fit_handles_odd_but_valid_songs(odd_runs, odd_data):
    code, text, run = odd_runs["approach2"]
    assert code == 0, text
    assert (run / "checkpoints" / "last.ckpt").is_file()
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r[k]) for r in rows for k in r if k.endswith("loss") and r[k] not in ("", None)]
    assert losses and all(math.isfinite(v) for v in losses)
    assert any(r.get("val/loss") for r in rows)


def test_fit_warns_about_clipped_songs(odd_runs):
    code, text, _ = odd_runs["approach2"]
    assert code == 0
    assert re.search(r"clipped\.wav.*clipped|clipped.*clipped\.wav", text), \
        "fit trains on a clipped raw vocal without a warning"


# ----------------------------------------------------------------------------------------------
# mix

@pytest.fixture(scope="module")
def ckpts(odd_runs, tmp_path_factory):
    """approach1/approach2 checkpoints from real fits, plus broken ones."""
    for approach, (code, text, _) in odd_runs.items():
        assert code == 0, text
    d = tmp_path_factory.mktemp("ckpts")
    a2 = odd_runs["approach2"][2] / "checkpoints" / "last.ckpt"
    a1 = odd_runs["approach1"][2] / "checkpoints" / "last.ckpt"
    rnd = d / "random.ckpt"
    rnd.write_bytes(np.random.default_rng(0).bytes(4096))
    trunc = d / "truncated.ckpt"
    trunc.write_bytes(a2.read_bytes()[: a2.stat().st_size // 2])
    empty = d / "empty.ckpt"
    empty.write_bytes(b"")
    import torch

    foreign = d / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 0}, foreign)
    return dict(approach1=a1, approach2=a2, random=rnd, truncated=trunc, empty=empty, foreign=foreign)


@pytest.fixture(scope="module")
def mix_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixin")
    raw = d / "raw.wav"
    sf.write(raw, synth_vocal(3, SR, seed=11), SR)
    ref = d / "ref.wav"
    sf.write(ref, process_mix(synth_vocal(3, SR, seed=12), SR).T, SR)
    return raw, ref


def assert_no_mix_output(out: Path) -> None:
    folder = out.parent
    if folder.is_dir():
        left = [p.name for p in folder.iterdir() if p.name.startswith(out.name) or p.name.startswith("." + out.name)]
        assert left == [], f"mix left files behind: {left}"


def _mix_raw(d: Path, case: str) -> Path:
    """A bad raw file for `mix` in folder d."""
    p = d / "r.wav"
    spike = np.where(np.arange(3 * SR) == 5000, 1.0, 0.1).astype(np.float32)
    if case == "zero-length":
        p.write_bytes(b"")
    elif case == "all-silent":
        sf.write(p, np.zeros(3 * SR, np.float32), SR)
    elif case == "NaN":
        sf.write(p, np.where(spike == 1.0, np.nan, spike).astype(np.float32), SR, subtype="FLOAT")
    elif case == "Inf":
        sf.write(p, np.where(spike == 1.0, np.inf, spike).astype(np.float32), SR, subtype="FLOAT")
    elif case == "corrupt header":
        p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\xff" * 40)
    elif case == "non-audio":
        p.write_text("hello\n" * 50)
    elif case == "missing":
        p = d / "does_not_exist.wav"
    elif case == "a folder (empty raw/)":
        p = d / "raw"
        p.mkdir()
    return p


MIX_BAD_RAW = {"zero-length": ["empty"], "all-silent": ["silent"], "NaN": ["NaN/Inf"], "Inf": ["NaN/Inf"],
               "corrupt header": ["corrupt"], "non-audio": ["not an audio file"], "missing": ["cannot open"],
               "a folder (empty raw/)": ["fix"]}


@pytest.mark.parametrize("case", list(MIX_BAD_RAW))
def test_mix_bad_raw(case, ckpts, tmp_path, workdir):
    words = MIX_BAD_RAW[case]
    raw = _mix_raw(tmp_path, case)
    before = snapshot(tmp_path)
    out = workdir / "out" / "mixed.wav"
    code, text = cli("mix", raw, "-o", out, "--ckpt", ckpts["approach2"], "--quiet")
    assert code == 2, text
    assert "Traceback" not in text
    assert_names_file_and_fix(text, raw, *words)
    # mix has one file, not a data folder's song: the data layer's "remove the song" does not apply
    assert "raw/ and mixed/" not in text, text
    if case in ("zero-length", "corrupt header", "non-audio"):
        assert "pass a WAV or FLAC file" in text and "convert it" in text, text
    assert snapshot(tmp_path) == before
    assert files_under(workdir) == [], "mix wrote output although its input is unusable"


@pytest.mark.parametrize("case", ["approach1 without --reference", "approach2 with --reference", "random",
                                  "truncated", "empty", "foreign", "missing", "folder"])
def test_mix_bad_checkpoint(case, ckpts, mix_inputs, tmp_path, workdir):
    raw, ref = mix_inputs
    extra = []
    if case == "approach1 without --reference":
        ckpt, words = ckpts["approach1"], ["--reference"]
    elif case == "approach2 with --reference":
        ckpt, words, extra = ckpts["approach2"], ["drop --reference"], ["--reference", ref]
    elif case == "missing":
        ckpt, words = tmp_path / "nope.ckpt", ["not found"]
    elif case == "folder":
        ckpt, words = tmp_path, ["folder"]
    else:
        ckpt, words = ckpts[case], ["mst-single fit"]
    out = workdir / "mixed.wav"
    code, text = cli("mix", raw, "-o", out, "--ckpt", ckpt, "--quiet", *extra)
    assert code == 2, text
    assert "Traceback" not in text
    assert_names_file_and_fix(text, Path(ckpt), *words)
    if case in ("random", "truncated", "empty"):
        assert "cannot be read" in text
    if case == "foreign":
        assert "not a vocal-mst checkpoint" in text
    assert files_under(workdir) == []


def test_mix_bad_reference(ckpts, mix_inputs, tmp_path, workdir):
    raw, _ = mix_inputs
    ref = tmp_path / "ref.wav"
    x = process_mix(synth_vocal(3, SR, seed=3), SR)
    x[1, 200] = np.nan
    sf.write(ref, x.T, SR, subtype="FLOAT")
    out = workdir / "mixed.wav"
    code, text = cli("mix", raw, "-o", out, "--ckpt", ckpts["approach1"], "--reference", ref, "--quiet")
    assert code == 2 and "ref.wav" in text and "NaN/Inf" in text, text
    assert files_under(workdir) == []


def test_mix_refuses_inputs_too_short_to_measure_their_loudness(ckpts, mix_inputs, tmp_path, workdir):
    """Shorter than one 0.4 s BS.1770 block, a file has no integrated loudness (the meters read
    -70 LUFS): mix used to report "input -70.0 LUFS, normalised to -23.0 LUFS (0.0 dB)" for 2 ms."""
    import json

    raw, ref = mix_inputs
    tone = (0.1 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR)).astype(np.float32)
    block = int(0.4 * SR)
    cases = [("raw", 100, "0.006 s (100 samples at 16000 Hz)"), ("raw", block - 1, "0.400 s (6399 samples"),
             ("reference", 100, "0.006 s (100 samples at 16000 Hz)")]
    for which, n, duration in cases:
        short = tmp_path / f"short_{which}_{n}.wav"
        sf.write(short, tone[:n], SR, subtype="FLOAT")
        before = snapshot(tmp_path)
        args = [short, "--ckpt", ckpts["approach2"]] if which == "raw" else \
            [raw, "--ckpt", ckpts["approach1"], "--reference", short]
        code, text = cli("mix", args[0], "-o", workdir / "out.wav", *args[1:], "--quiet")
        assert code == 2 and "Traceback" not in text, text
        assert_names_file_and_fix(text, short, "too short to measure its loudness", duration,
                                  "needs at least 0.4 s", "at least 0.4 s")
        assert snapshot(tmp_path) == before and files_under(workdir) == []
    # one block exactly is enough: measured, not the -70 LUFS of an unmeasurable file
    exact = tmp_path / "exact.wav"
    sf.write(exact, tone[:block], SR, subtype="FLOAT")
    code, text = cli("mix", exact, "-o", workdir / "out.wav", "--ckpt", ckpts["approach2"], "--quiet")
    assert code == 0, text
    from mst_single.loudness import integrated_loudness

    lufs = json.loads((workdir / "out.wav.params.json").read_text())["input_lufs"]
    assert lufs == pytest.approx(integrated_loudness(tone[:block], SR), abs=0.01) and lufs > -40, lufs


def test_mix_unreadable_reference_says_what_to_do_with_that_file(ckpts, mix_inputs, tmp_path, workdir):
    raw, _ = mix_inputs
    ref = tmp_path / "ref.wav"
    ref.write_text("these are my lyrics, not audio\n" * 20)
    before = snapshot(tmp_path)
    code, text = cli("mix", raw, "-o", workdir / "mixed.wav", "--ckpt", ckpts["approach1"], "--reference", ref,
                     "--quiet")
    assert code == 2 and "Traceback" not in text, text
    assert_names_file_and_fix(text, ref, "not an audio file", "pass a WAV or FLAC file", "convert it")
    assert "raw/ and mixed/" not in text, text
    assert snapshot(tmp_path) == before and files_under(workdir) == []


@pytest.mark.parametrize("where", ["under a regular file", "/proc"])
def test_mix_output_folder_not_writable(where, ckpts, mix_inputs, tmp_path, workdir):
    """As root, chmod does not stop writes: the output goes under a regular FILE (no folder can be
    created there) or into /proc (a read-only kernel file system), both unwritable for root too."""
    raw, _ = mix_inputs
    if where == "/proc":
        out = Path("/proc") / f"mst_rel_{os.getpid()}.wav"
    else:
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "mixed.wav"
    code, text = cli("mix", raw, "-o", out, "--ckpt", ckpts["approach2"], "--quiet")
    assert code == 2, text
    assert "Traceback" not in text and str(out.parent) in text and "fix" in text.lower(), text
    assert not out.exists()


@pytest.mark.parametrize("case", ["mp3", "no extension", "existing folder"])
def test_mix_refuses_an_output_it_cannot_write_before_any_work(case, mix_inputs, tmp_path, workdir, monkeypatch):
    """-o is checked before the checkpoint or the audio is read: a .mp3 used to get a float WAV under
    that name, and a folder failed only at the rename, after the whole mix."""
    import mst_single.mix as mix

    def too_late(*a, **k):
        raise AssertionError("mix loaded the checkpoint before refusing -o")

    monkeypatch.setattr(mix, "load_model", too_late)
    raw, _ = mix_inputs
    if case == "mp3":
        out, words = workdir / "out" / "x.mp3", ["'.mp3'", ".wav (float32)", str(workdir / "out" / "x.wav")]
    elif case == "no extension":
        out, words = workdir / "out" / "x", ["no extension", str(workdir / "out" / "x.flac")]
    else:
        out, words = workdir / "mixes", ["existing folder", str(workdir / "mixes" / "mix.wav")]
        out.mkdir()
        (out / "old.wav").write_bytes(b"an earlier mix")
    before = snapshot(workdir)
    code, text = cli("mix", raw, "-o", out, "--ckpt", tmp_path / "never_read.ckpt", "--quiet")
    assert code == 2, text
    assert "Traceback" not in text and text.startswith(f"error: {out}: "), text
    assert_names_file_and_fix(text, out, *words)
    assert snapshot(workdir) == before


def test_mix_output_extension_is_case_insensitive_and_side_files_need_room(tmp_path):
    from mst_single.errors import MstError
    from mst_single.mix import check_output

    for name in ("a.wav", "a.WAV", "a.Flac"):
        check_output(tmp_path / name)  # accepted: no error
    (tmp_path / "a.wav.params.json").mkdir()
    with pytest.raises(MstError, match="a folder is in the way of the output's .params.json file") as e:
        check_output(tmp_path / "a.wav")
    assert str(tmp_path / "a.wav.params.json") in str(e.value)


def test_mix_refuses_to_overwrite_its_input(ckpts, mix_inputs, tmp_path, workdir):
    raw = tmp_path / "raw.wav"
    shutil.copy(mix_inputs[0], raw)
    before = snapshot(tmp_path)
    code, text = cli("mix", raw, "-o", raw, "--ckpt", ckpts["approach2"], "--quiet")
    assert code == 2 and "overwrite an input" in text, text
    assert snapshot(tmp_path) == before


def test_mix_handles_odd_but_valid_inputs(ckpts, odd_data, tmp_path, workdir):
    """Non-ASCII names, a stereo raw at 44.1 kHz (the model runs at 16 kHz), a clipped raw:
    mixed, stereo, at the input's rate and length; the inputs are untouched."""
    raw_dir = tmp_path / "in"
    raw_dir.mkdir()
    shutil.copy(odd_data / "raw" / f"{NON_ASCII}.wav", raw_dir / f"{NON_ASCII}.wav")
    v = synth_vocal(2.5, 44100, seed=5)
    sf.write(raw_dir / "stereo44k.wav", np.stack([v, 0.5 * v]).T, 44100, subtype="PCM_24")
    shutil.copy(odd_data / "raw" / "clipped.wav", raw_dir / "clipped.wav")
    before = snapshot(raw_dir)
    for name in (NON_ASCII, "stereo44k", "clipped"):
        raw = raw_dir / f"{name}.wav"
        out = workdir / "out" / f"{name}_mix.wav"
        code, text = cli("mix", raw, "-o", out, "--ckpt", ckpts["approach2"], "--quiet")
        assert code == 0, text
        y, sr = sf.read(out, dtype="float32", always_2d=True)
        info = sf.info(str(raw))
        assert sr == info.samplerate and y.shape == (info.frames, 2) and np.isfinite(y).all()
        assert (out.parent / f"{name}_mix.wav.params.json").is_file()
        assert (out.parent / f"{name}_mix.wav.mixsheet.md").is_file()
        if name == "clipped":
            assert re.search(r"clipped\.wav.*clipp|clipp.*clipped\.wav", text), "mix does not warn about a clipped input"
    assert snapshot(raw_dir) == before
    assert not [p for p in (workdir / "out").iterdir() if p.name.endswith(".part")]


# ----------------------------------------------------------------------------------------------
# a 1-hour raw file: check-data in bounded memory

# A child forked from this (large) pytest process counts the parent's resident pages until it
# execs, so its own ru_maxrss would be at least pytest's RSS. The command is therefore started from
# a small Python wrapper, and the wrapper reports the peak RSS of its child.
_RSS_WRAPPER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                "print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
                "sys.exit(r.returncode)")


def _peak_rss_mib(argv, cwd) -> tuple[int, float, str]:
    """Run argv; (exit code, peak RSS of the command in MiB, its output)."""
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *argv], cwd=cwd, env=env, capture_output=True, text=True)
    out = p.stdout + p.stderr
    kib = int(re.findall(r"MAXRSS_KIB (\d+)", p.stderr)[-1])
    return p.returncode, kib / 1024, out


def write_long_pair(root: Path, seconds: int, sample_rate: int, lag: int) -> None:
    """raw (mono) and mixed (stereo, `lag` samples late) PCM_16 files of `seconds`, written in 10 s
    blocks so that the test itself never holds the song in memory."""
    (root / "raw").mkdir(parents=True)
    (root / "mixed").mkdir()
    blocks = [synth_vocal(10, sample_rate, seed=i) for i in range(6)]
    rng = np.random.default_rng(0)
    carry = np.zeros(lag, np.float32)
    with sf.SoundFile(root / "raw" / "long.wav", "w", sample_rate, 1, "PCM_16") as fr, \
            sf.SoundFile(root / "mixed" / "long.wav", "w", sample_rate, 2, "PCM_16") as fm:
        for i in range(seconds // 10):
            x = blocks[i % 6] * np.float32(rng.uniform(0.5, 1.0))
            fr.write(x)
            delayed = np.concatenate([carry, x])
            y, carry = delayed[: len(x)], delayed[len(x):]
            fm.write(np.stack([0.8 * y, 0.6 * y], 1))


@pytest.mark.slow
def test_check_data_one_hour_file_bounded_memory(tmp_path):
    """1 hour at 16 kHz (raw mono + mixed stereo PCM_16: 346 MB on disk; 0.69 GB as float32).
    Bounded memory means the peak RSS does not grow with the length: it must stay within 256 MiB of
    check-data's peak on a 3-song, 3-second folder."""
    exe = str(REPO / ".venv" / "bin" / "mst-single")
    small = good_data(tmp_path / "small")
    code, base_mib, out = _peak_rss_mib([exe, "check-data", str(small), "--sample-rate", str(SR)], tmp_path)
    assert code == 0, out
    long = tmp_path / "long"
    try:
        write_long_pair(long, 3600, SR, lag=800)
        code, peak_mib, out = _peak_rss_mib([exe, "check-data", str(long), "--sample-rate", str(SR)], tmp_path)
        print(f"check-data peak RSS: 3 x 3 s: {base_mib:.0f} MiB; 1 h: {peak_mib:.0f} MiB")
        assert code == 0, out
        row = table_row(out, "long")
        assert float(row[1]) == pytest.approx(3600, abs=1) and float(row[6]) == pytest.approx(50.0, abs=1.0)
        assert peak_mib < base_mib + 256, f"check-data on a 1-hour file peaked at {peak_mib:.0f} MiB " \
                                          f"(small folder: {base_mib:.0f} MiB): memory grows with the length"
    finally:
        shutil.rmtree(long, ignore_errors=True)


@pytest.mark.slow
def test_mix_long_file_bounded_memory(ckpts, mix_inputs, tmp_path):
    """mix streams: its peak RSS on a 10-minute raw file stays within 128 MiB of its peak on a 3 s
    file (measured by hand on 1 hour at 16 kHz: 565 MiB vs 547 MiB for 3 s, 115 s CPU)."""
    exe = str(REPO / ".venv" / "bin" / "mst-single")
    code, base_mib, out = _peak_rss_mib([exe, "mix", str(mix_inputs[0]), "-o", str(tmp_path / "short_mix.wav"),
                                         "--ckpt", str(ckpts["approach2"]), "--quiet"], tmp_path)
    assert code == 0, out
    long = tmp_path / "long"
    try:
        write_long_pair(long, 600, SR, lag=0)
        out_wav = tmp_path / "long_mix.wav"
        code, peak_mib, out = _peak_rss_mib([exe, "mix", str(long / "raw" / "long.wav"), "-o", str(out_wav),
                                             "--ckpt", str(ckpts["approach2"]), "--quiet"], tmp_path)
        print(f"mix peak RSS: 3 s: {base_mib:.0f} MiB; 10 min: {peak_mib:.0f} MiB")
        assert code == 0, out
        assert sf.info(str(out_wav)).frames == 600 * SR
        assert peak_mib < base_mib + 128, f"mix on 10 minutes peaked at {peak_mib:.0f} MiB (3 s: {base_mib:.0f} MiB)"
    finally:
        shutil.rmtree(long, ignore_errors=True)
