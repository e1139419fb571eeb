"""`mst-single check-data`: table, problems with the file named, exit codes."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import soundfile as sf

from conftest import make_vocal_data, process_mix, synth_vocal, write_pair
from mst_single.cli import main

SR = 16000


def _check(capsys, *args):
    code = main(["check-data", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_good_data_prints_table_and_exits_0(tmp_path, capsys):
    root = make_vocal_data(tmp_path, songs=3, seconds=5, lags=[0.0, 0.12, -0.03])
    code, out, _ = _check(capsys, root, "--sample-rate", SR)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["song", "dur", "s"] and "raw LUFS" in lines[0] and "mix pk dBFS" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert set(rows) == {"song00", "song01", "song02"}
    assert rows["song01"][1] == "5.0" and rows["song01"][2:6] == ["16000", "16000", "1", "2"]
    assert [rows[s][6] for s in ("song00", "song01", "song02")] == ["+0.0", "+120.0", "-30.0"]  # lag ms
    assert -40 < float(rows["song00"][7]) < -10 and -40 < float(rows["song00"][8]) < -10  # LUFS
    assert float(rows["song00"][10]) == -6.0  # process_mix normalises the mixed peak to 0.5
    assert "problems" not in out and "3 pairs, 3 usable, 0 unusable" in out


def test_bad_pairs_are_named_and_the_rest_still_listed(tmp_path, capsys):
    root = make_vocal_data(tmp_path, songs=3, seconds=5)
    sf.write(root / "mixed" / "song01.wav", np.full((SR, 2), np.nan, np.float32), SR, subtype="FLOAT")
    (root / "raw" / "song02.wav").write_text("not audio at all")
    sf.write(root / "raw" / "lonely.wav", synth_vocal(2.0, SR), SR)
    code, out, _ = _check(capsys, root, "--sample-rate", SR)
    assert code == 1
    assert out.splitlines()[1].split()[0] == "song00" and "UNUSABLE" not in out.splitlines()[1]
    assert "song01" in out and "song02" in out and out.count("UNUSABLE") == 2
    problems = out[out.index("problems"):]
    assert f"ERROR   {root / 'mixed' / 'song01.wav'}: contains" in problems and "NaN/Inf" in problems
    assert f"ERROR   {root / 'raw' / 'song02.wav'}: not an audio file" in problems
    assert f"ERROR   {root / 'raw' / 'lonely.wav'}: no mixed/lonely.wav" in problems
    assert "3 pairs, 1 usable, 2 unusable, 1 unmatched" in out


def test_unmatched_allowed_is_a_warning(tmp_path, capsys):
    root = make_vocal_data(tmp_path, songs=2, seconds=5)
    sf.write(root / "mixed" / "extra.flac", synth_vocal(2.0, SR), SR)
    code, out, _ = _check(capsys, root, "--sample-rate", SR)
    assert code == 1 and "extra.flac" in out
    code, out, _ = _check(capsys, root, "--sample-rate", SR, "--allow-unmatched")
    assert code == 0 and f"WARNING {root / 'mixed' / 'extra.flac'}: no raw/extra.wav" in out


def test_warnings_clipping_lag_edge_short_mixed(tmp_path, capsys):
    raw = synth_vocal(6.0, SR, seed=1)
    clipped = np.clip(raw * 10, -1, 1)
    write_pair(tmp_path, "clipped", clipped, process_mix(clipped, SR), SR, subtype="PCM_16")
    write_pair(tmp_path, "late", raw, process_mix(raw, SR, lag_seconds=0.3), SR)
    write_pair(tmp_path, "short", raw, process_mix(raw, SR, tail_seconds=0)[:, :int(3.5 * SR)], SR)
    _, cut = write_pair(tmp_path, "cut", raw, process_mix(raw, SR), SR, subtype="PCM_16")
    cut.write_bytes(cut.read_bytes()[:44 + 4 * int(5.0 * SR)])  # an interrupted copy: 5 s of 6.6 s left
    code, out, _ = _check(capsys, tmp_path, "--sample-rate", SR, "--max-lag-seconds", 0.2)
    assert code == 0  # warnings only
    assert f"WARNING {tmp_path / 'raw' / 'clipped.wav'}: peak" in out and "clipped" in out
    assert f"WARNING {tmp_path / 'mixed' / 'late.wav'}: lag +19" in out and "ms is at the edge of the +-200 ms" in out
    assert f"WARNING {tmp_path / 'mixed' / 'short.wav'}: mixed is 2.5 s shorter than raw" in out
    assert "--max-lag-seconds" in out
    assert f"WARNING {cut}: the file is truncated: its header declares 6.60 s but only 5.00 s" in out


def test_band_limited_files_are_named(tmp_path, capsys):
    # the console's top EQ bands reach 16 kHz: an 8 kHz file has nothing above 4 kHz, and a raw narrower than
    # its mix leaves a band that no setting can make
    raw8, raw32 = synth_vocal(6.0, 8000, seed=1), synth_vocal(6.0, 32000, seed=1)
    narrow_raw, _ = write_pair(tmp_path, "narrow_raw", raw8, process_mix(raw32, 32000), 8000, 32000)
    _, narrow_mix = write_pair(tmp_path, "narrow_mix", raw32, process_mix(raw8, 8000), 32000, 8000)
    both, _ = write_pair(tmp_path, "both_narrow", raw8, process_mix(raw8, 8000), 8000)
    write_pair(tmp_path, "full", raw32, process_mix(raw32, 32000), 32000)
    code, out, _ = _check(capsys, tmp_path, "--sample-rate", 32000)
    assert code == 0
    assert f"WARNING {narrow_raw}: raw is 8000 Hz, mixed 32000 Hz: the mix has content from 4 to 16 kHz" in out
    assert f"WARNING {narrow_mix}: mixed at 8000 Hz: nothing above 4 kHz" in out
    assert f"WARNING {both}: both files at 8000 Hz: nothing above 4 kHz" in out and "--data.sample_rate 8000" in out
    assert "full.wav:" not in out  # 32 kHz files reach 16 kHz: no warning
    # at an 8 kHz analysis rate the same files are full band for that rate
    code, out, _ = _check(capsys, tmp_path, "--sample-rate", 8000)
    assert "nothing above" not in out and "that the raw lacks" not in out


def test_missing_folder_exit_2(tmp_path, capsys):
    code, out, err = _check(capsys, tmp_path / "nope")
    assert code == 2 and f"{tmp_path / 'nope'}: the data folder does not exist" in err
    assert "fix: check the path" in err and "sub-folder" not in err
    (tmp_path / "data.wav").write_bytes(b"RIFF")
    code, out, err = _check(capsys, tmp_path / "data.wav")
    assert code == 2 and f"{tmp_path / 'data.wav'}: this is a file, not a data folder" in err and "fix:" in err
    (tmp_path / "mixed").mkdir()
    code, out, err = _check(capsys, tmp_path)
    assert code == 2 and f"{tmp_path}: the data folder has no 'raw/' sub-folder" in err


def test_unsupported_formats_and_sub_folders_are_reported_as_ignored(tmp_path, capsys):
    root = make_vocal_data(tmp_path, songs=2, seconds=5)
    (root / "raw" / "take3.ogg").write_bytes(b"OggS vorbis")
    (root / "mixed" / "take3.MP3").write_bytes(b"ID3 mp3")
    (root / "raw" / "old takes").mkdir()
    (root / "raw" / ".DS_Store").write_bytes(b"")  # hidden: skipped without a word, as before
    code, out, _ = _check(capsys, root, "--sample-rate", SR)
    assert code == 0  # warnings only: the two pairs are usable
    for p in (root / "raw" / "take3.ogg", root / "mixed" / "take3.MP3"):
        assert f"WARNING {p}: not a .wav or .flac file: ignored (only WAV and FLAC are read" in out
    assert f"WARNING {root / 'raw' / 'old takes'}: a folder inside raw/: ignored" in out
    assert ".DS_Store" not in out
    assert "2 pairs, 2 usable, 0 unusable, 0 unmatched files, 3 ignored" in out


def test_only_unsupported_formats_names_them(tmp_path, capsys):
    for sub in ("raw", "mixed"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "song.mp3").write_bytes(b"ID3")
    code, _, err = _check(capsys, tmp_path)
    assert code == 2
    assert f"{tmp_path / 'raw'}: no .wav or .flac files in raw/ (other formats are not read: song.mp3)" in err


def test_console_entry_point(tmp_path):
    root = make_vocal_data(tmp_path, songs=2, seconds=3)
    (root / "raw" / "song01.wav").write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "mst_single.cli", "check-data", str(root), "--sample-rate", "16000"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "song00" in r.stdout and f"{root / 'raw' / 'song01.wav'}: the file is empty" in r.stdout
