"""Data layer: pairing, loading errors, alignment, splits, segments, references, memory, data module."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import make_vocal_data, process_mix, synth_vocal, write_pair
from mst_single import audio
from mst_single.audio import (estimate_lag, index_pairs, index_songs, load_aligned, load_audio, prepare_song,
                              read_segment)
from mst_single.data import (EpochSampler, SongPair, VocalDataModule, VocalReferenceDataset, split_of,
                             split_songs)
from mst_single.errors import DataError

SR = 16000


def _ms(samples, sr):
    return 1000 * samples / sr


def _pair(root, name="a"):
    return SongPair(name, str(next((root / "raw").glob(f"{name}.*"))), str(next((root / "mixed").glob(f"{name}.*"))))


# ---------------------------------------------------------------------------------------------
# alignment

@pytest.mark.parametrize("lag_s", [0.3, -0.3, 0.0, 0.45])
def test_lag_recovered_from_processed_copy(lag_s):
    """EQ + compression + stereo reverb + delay: the lag comes back within 1 ms (at 48 kHz)."""
    sr = 48000
    raw = synth_vocal(5.0, sr, seed=3)
    mixed = process_mix(raw, sr, lag_seconds=lag_s, seed=3)
    lag = estimate_lag(raw, mixed.mean(0), sr, max_lag_seconds=0.5)
    assert abs(_ms(lag, sr) - 1000 * lag_s) <= 1.0


def test_lag_search_is_bounded():
    """A 0.3 s offset cannot be found in a +-0.1 s window: the answer stays inside the window."""
    raw = synth_vocal(4.0, SR, seed=1)
    lag = estimate_lag(raw, process_mix(raw, SR, 0.3).mean(0), SR, max_lag_seconds=0.1)
    assert abs(lag) <= round(0.1 * SR)


def test_prepare_song_aligns_files_at_different_rates(tmp_path):
    """raw 48 kHz mono, mixed 44.1 kHz stereo delayed 0.3 s; aligned at 44.1 kHz and at 48 kHz."""
    raw = synth_vocal(4.0, 48000, seed=5)
    mixed = process_mix(raw, 48000, lag_seconds=0.3, seed=5)
    mixed_441 = audio.resample(mixed, 48000, 44100)
    write_pair(tmp_path, "a", raw, mixed_441, 48000, 44100)
    for sr in (44100, 48000):
        info = prepare_song(_pair(tmp_path), sr)
        assert (info.raw_sr, info.mixed_sr, info.mixed_channels) == (48000, 44100, 2)
        assert abs(_ms(info.lag, sr) - 300) <= 1.0
        assert (info.raw_offset, info.mixed_offset) == (0, info.lag)
        r, m = load_aligned(info)
        assert r.shape == (1, info.length) and m.shape == (2, info.length)
        assert abs(_ms(estimate_lag(r[0], m.mean(0), sr, 0.05), sr)) <= 1.0  # aligned: no lag left
        # the reverb tail makes mixed longer than raw: the overlap is the whole raw
        assert info.length == pytest.approx(4.0 * sr, abs=2)


def test_dataset_items_are_aligned(make_data):
    root = make_data(songs=3, seconds=6, lags=[0.25, -0.2, 0.1])
    songs = index_songs(root, SR)
    assert [round(_ms(s.lag, SR)) for s in songs] == [250, -200, 100]
    ds = VocalReferenceDataset(split="val", sample_rate=SR, segment_seconds=2.0, songs=songs)
    for i in range(len(ds)):
        item = ds[i]
        lag = estimate_lag(item["raw"][0].numpy(), item["mixed"].mean(0).numpy(), SR, 0.1)
        assert abs(_ms(lag, SR)) <= 1.0


# ---------------------------------------------------------------------------------------------
# loading and reading

def test_read_segment_matches_whole_file_resampling(tmp_path):
    """A seeked + resampled chunk equals the same samples of the whole file resampled."""
    x = np.stack([synth_vocal(3.0, 44100, seed=1), synth_vocal(3.0, 44100, seed=2)])
    p = tmp_path / "x.wav"
    sf.write(p, x.T, 44100, subtype="FLOAT")
    whole, sr = load_audio(p, 48000)
    assert sr == 44100 and whole.shape == (2, round(3.0 * 48000))
    for start in (0, 12345, 100000, whole.shape[1] - 1000):
        seg = read_segment(p, start, 4000, 48000)
        n = min(4000, whole.shape[1] - start)
        np.testing.assert_allclose(seg[:, :n], whole[:, start:start + n], atol=2e-4)
        assert np.all(seg[:, n:] == 0)  # past the end reads as zeros
    mono = read_segment(p, 5000, 100, 48000, channels=1)
    np.testing.assert_allclose(mono[0], whole[:, 5000:5100].mean(0), atol=2e-4)
    same = read_segment(p, -10, 30, None)  # native rate, before the start: zeros then the file
    assert np.all(same[:, :10] == 0) and np.array_equal(same[:, 10:], x[:, :20])


def test_stereo_raw_downmixed_and_mono_mixed_duplicated(tmp_path):
    raw = synth_vocal(5.0, SR, seed=2)
    stereo_raw = np.stack([raw, 0.5 * raw])
    mixed = process_mix(raw, SR, 0.0, channels=1)
    write_pair(tmp_path, "a", stereo_raw, mixed, SR)
    info = prepare_song(_pair(tmp_path), SR)
    assert (info.raw_channels, info.mixed_channels) == (2, 1)
    ds = VocalReferenceDataset(split="val", sample_rate=SR, segment_seconds=2.0, songs=[info])
    item = ds[0]
    assert item["raw"].shape == (1, 2 * SR) and item["mixed"].shape == (2, 2 * SR)
    s = item["start"]
    np.testing.assert_allclose(item["raw"][0].numpy(), 0.75 * raw[s:s + 2 * SR], atol=1e-6)
    assert torch.equal(item["mixed"][0], item["mixed"][1])


def test_mixed_shorter_than_raw_is_trimmed(tmp_path):
    raw = synth_vocal(6.0, SR, seed=4)
    mixed = process_mix(raw, SR, 0.1, tail_seconds=0.0)[:, :int(4.0 * SR)]  # mixed stops 2.1 s early
    write_pair(tmp_path, "a", raw, mixed, SR, ext=".flac")
    info = prepare_song(_pair(tmp_path), SR)
    assert info.mixed_offset == round(0.1 * SR)
    assert info.length == int(4.0 * SR) - info.mixed_offset  # the overlap only
    ds = VocalReferenceDataset(split="val", sample_rate=SR, segment_seconds=1.0, songs=[info])
    assert all(start + SR <= info.length for _, start in ds.grid)


def test_different_sample_rates_handled_in_dataset(tmp_path):
    raw = synth_vocal(5.0, 22050, seed=7)
    mixed = audio.resample(process_mix(raw, 22050, 0.2, seed=7), 22050, 32000)
    write_pair(tmp_path, "a", raw, mixed, 22050, 32000)
    info = prepare_song(_pair(tmp_path), 24000)
    assert abs(_ms(info.lag, 24000) - 200) <= 1.0
    ds = VocalReferenceDataset(split="val", sample_rate=24000, segment_seconds=1.5, songs=[info])
    item = ds[0]
    assert item["raw"].shape == (1, 36000) and item["mixed"].shape == (2, 36000)
    assert item["raw"].abs().max() > 0.01 and item["mixed"].abs().max() > 0.01


# ---------------------------------------------------------------------------------------------
# bad inputs: each named in the error

def _bad_song(tmp_path, which, content):
    """Write two good songs plus song 'bad' whose `which` file is replaced by `content` (bytes or array)."""
    make_vocal_data(tmp_path, songs=2, seconds=3, names=["good1", "good2"])
    raw = synth_vocal(3.0, SR, seed=9)
    raw_p, mixed_p = write_pair(tmp_path, "bad", raw, process_mix(raw, SR), SR)
    p = raw_p if which == "raw" else mixed_p
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif callable(content):
        p.write_bytes(content(p.read_bytes()))
    else:
        sf.write(p, content, SR, subtype="FLOAT")
    return p


@pytest.mark.parametrize("which,content,words", [
    ("raw", b"", "zero-length"),
    ("mixed", np.zeros((0, 2), np.float32), "zero length"),
    ("raw", np.zeros(3 * SR, np.float32), "silent"),
    ("raw", np.where(np.arange(3 * SR) == 500, np.nan, 0.1).astype(np.float32), "NaN/Inf"),
    ("mixed", np.where(np.arange(3 * SR) == 7, np.inf, 0.1).astype(np.float32), "NaN/Inf"),
    ("raw", b"this is a text file, not audio\n" * 20, "not an audio file"),
    ("mixed", lambda b: b[:30], "corrupt or truncated"),
    ("mixed", np.zeros((SR, 6), np.float32) + 0.1, "6 channels"),
])
def test_bad_file_is_named_with_problem_and_fix(tmp_path, which, content, words):
    bad = _bad_song(tmp_path, which, content)
    with pytest.raises(DataError) as e:
        index_songs(tmp_path, SR)
    msg = str(e.value)
    assert str(bad) in msg and words in msg and "fix:" in msg
    assert "good1" not in msg


def test_data_errors_surface_at_setup_and_list_every_bad_song(tmp_path):
    make_vocal_data(tmp_path, songs=3, seconds=3)
    (tmp_path / "raw" / "song00.wav").write_bytes(b"")
    sf.write(tmp_path / "mixed" / "song02.wav", np.full((SR, 2), np.nan, np.float32), SR, subtype="FLOAT")
    dm = VocalDataModule(str(tmp_path), sample_rate=SR)  # constructing reads nothing
    with pytest.raises(DataError) as e:
        dm.setup("fit")
    msg = str(e.value)
    assert "2 of 3 songs are unusable" in msg
    assert os.path.join("raw", "song00.wav") in msg and os.path.join("mixed", "song02.wav") in msg
    assert "song01" not in msg


def test_unmatched_names_all_listed(tmp_path):
    make_vocal_data(tmp_path, songs=2, seconds=3)
    raw = synth_vocal(3.0, SR)
    sf.write(tmp_path / "raw" / "only_raw1.wav", raw, SR)
    sf.write(tmp_path / "raw" / "only_raw2.flac", raw, SR)
    sf.write(tmp_path / "mixed" / "only_mixed.wav", raw, SR)
    with pytest.raises(DataError) as e:
        index_pairs(tmp_path)
    msg = str(e.value)
    assert "3 song names have no partner" in msg
    assert "raw/only_raw1.wav: no mixed/only_raw1" in msg and "raw/only_raw2.flac: no mixed/only_raw2" in msg
    assert "mixed/only_mixed.wav: no raw/only_mixed" in msg
    # no command's flag is named unless the caller says how it skips them
    assert "fix: rename the files so each raw/NAME has a mixed/NAME, or remove those without a partner" in msg
    assert "allow" not in msg
    with pytest.raises(DataError, match=r"without a partner; or pass --skip-them to skip them$"):
        index_pairs(tmp_path, skip_hint="pass --skip-them to skip them")
    with pytest.warns(UserWarning, match="only_raw1"):
        pairs = index_pairs(tmp_path, allow_unmatched=True)
    assert [p.name for p in pairs] == ["song00", "song01"]


def test_fit_data_module_names_its_own_unmatched_flag(tmp_path):
    from mst_single.data import VocalDataModule

    make_vocal_data(tmp_path, songs=2, seconds=3)
    sf.write(tmp_path / "raw" / "lonely.wav", synth_vocal(3.0, SR), SR)
    with pytest.raises(DataError) as e:
        VocalDataModule(str(tmp_path), sample_rate=SR).setup()
    msg = str(e.value)
    assert str(tmp_path) in msg and "raw/lonely.wav" in msg
    assert "pass --data.allow_unmatched true (data.allow_unmatched: true in a config) to skip them" in msg
    assert "--allow-unmatched" not in msg


def test_ignored_files_are_named_when_songs_are_indexed(tmp_path):
    make_vocal_data(tmp_path, songs=2, seconds=3)
    (tmp_path / "raw" / "take.ogg").write_bytes(b"OggS")
    (tmp_path / "mixed" / "take.aiff").write_bytes(b"FORM")
    with pytest.warns(UserWarning, match="2 entries of raw/ and mixed/ are ignored") as w:
        pairs = index_pairs(tmp_path)
    assert [p.name for p in pairs] == ["song00", "song01"]
    msg = str(w[0].message)
    assert f"{tmp_path / 'raw' / 'take.ogg'}: not a .wav or .flac file" in msg and "take.aiff" in msg
    assert "only WAV and FLAC are read" in msg


@pytest.mark.parametrize("layout,words", [("missing", "no 'raw/' sub-folder"),
                                          ("empty", "no .wav or .flac files in raw/")])
def test_bad_folder(tmp_path, layout, words):
    (tmp_path / "mixed").mkdir()
    if layout == "empty":
        (tmp_path / "raw").mkdir()
        (tmp_path / "raw" / "notes.txt").write_text("not audio")
    with pytest.raises(DataError, match=words) as e:
        index_pairs(tmp_path)
    assert str(tmp_path) in str(e.value)


# ---------------------------------------------------------------------------------------------
# splits

def _names(n, prefix="take"):
    return [SongPair(f"{prefix}{i:03d}", "", "") for i in range(n)]


def test_split_stable_when_songs_are_added_and_disjoint():
    before = split_songs(_names(60), seed=0, val_fraction=0.15, test_fraction=0.15)
    after = split_songs(_names(60) + _names(40, "new"), seed=0, val_fraction=0.15, test_fraction=0.15)
    where = {p.name: s for s, ps in after.items() for p in ps}
    for s, ps in before.items():
        assert all(where[p.name] == s for p in ps)
    names = [p.name for ps in after.values() for p in ps]
    assert len(names) == len(set(names)) == 100
    assert 5 <= len(after["val"]) <= 30 and 5 <= len(after["test"]) <= 30
    assert all(split_of(n) == split_of(n) for n in names)
    other_seed = split_songs(_names(60), seed=1, val_fraction=0.15, test_fraction=0.15)
    assert other_seed != before


@pytest.mark.parametrize("n", [3, 4, 6])
def test_tiny_data_set_still_has_val_and_test(n):
    s = split_songs(_names(n), seed=0, val_fraction=0.1, test_fraction=0.1)
    assert len(s["val"]) >= 1 and len(s["test"]) >= 1 and len(s["train"]) >= 1
    assert sum(map(len, s.values())) == n
    assert split_songs(_names(n), seed=0, val_fraction=0.0, test_fraction=0.0)["train"] == _names(n)


@pytest.mark.parametrize("seed", range(6))
def test_one_and_two_songs_train_first_then_val(seed):
    one = split_songs(_names(1), seed=seed, val_fraction=0.4, test_fraction=0.4)
    assert [len(one[s]) for s in ("train", "val", "test")] == [1, 0, 0]
    two = split_songs(_names(2), seed=seed, val_fraction=0.4, test_fraction=0.4)
    assert [len(two[s]) for s in ("train", "val", "test")] == [1, 1, 0]


def test_split_file_overrides_hash(tmp_path):
    pairs = _names(10)
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"train": ["take000.wav", "take001"], "val": ["take002"], "test": ["take003"]}))
    s = split_songs(pairs, split_file=f)
    assert [p.name for p in s["val"]][:1] == ["take002"] and pairs[2] in s["val"]
    assert pairs[3] in s["test"] and pairs[0] in s["train"] and pairs[1] in s["train"]
    unlisted = [p for p in pairs[4:]]
    for p in unlisted:  # not in the file: hash decides, as without a file
        assert any(p in ps for ps in s.values())
    f.write_text(json.dumps({"train": ["take000"], "val": ["take000"]}))
    with pytest.raises(DataError, match="both 'train' and 'val'"):
        split_songs(pairs, split_file=f)
    f.write_text("{not json")
    with pytest.raises(DataError, match="split file"):
        split_songs(pairs, split_file=f)


# ---------------------------------------------------------------------------------------------
# segments and references

@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    root = make_vocal_data(tmp_path_factory.mktemp("songs"), songs=4, seconds=8, lags=[0.0, 0.1, -0.05, 0.2])
    return index_songs(root, SR)


def _ds(songs, split="val", policy="same", **kw):
    return VocalReferenceDataset(split=split, sample_rate=SR, segment_seconds=2.0, reference_policy=policy,
                                 songs=songs, **kw)


def test_reference_same_is_the_target(songs):
    ds = _ds(songs, "train", "same", seed=0, segments_per_epoch=6)
    for i in range(6):
        item = ds[i]
        assert torch.equal(item["reference"], item["mixed"]) and item["reference_song"] == item["song"]
        assert item["raw"].dtype == torch.float32 and item["raw"].shape == (1, 2 * SR)


@pytest.mark.parametrize("split", ["train", "val"])
def test_reference_song_does_not_overlap(songs, split):
    ds = _ds(songs, split, "song", seed=0, segments_per_epoch=12)
    T = ds.segment
    for i in range(len(ds)):
        item = ds[i]
        assert item["reference_song"] == item["song"]
        assert abs(item["reference_start"] - item["start"]) >= T  # no overlap
        s = next(x for x in songs if x.name == item["song"])
        expect = read_segment(s.mixed_path, item["reference_start"] + s.mixed_offset, T, SR, 2, s.mixed_info())
        np.testing.assert_array_equal(item["reference"].numpy(), expect)


def test_reference_other_is_another_song_of_the_split(songs):
    split = songs[:3]
    ds = _ds(split, "train", "other", seed=1, segments_per_epoch=12)
    for i in range(12):
        item = ds[i]
        assert item["reference_song"] != item["song"]
        assert item["reference_song"] in {s.name for s in split}


def test_reference_song_falls_back_for_short_songs(songs):
    short = dataclasses.replace(songs[0], name="short", length=3 * SR)  # < two 2 s segments
    with pytest.warns(UserWarning, match="shorter than two segments"):
        ds = _ds([short] + songs[1:], "val", "song")
    items = [ds[i] for i in range(len(ds))]
    assert any(it["song"] == "short" for it in items)
    for it in items:
        assert (it["reference_song"] != it["song"]) == (it["song"] == "short")


def test_eval_segments_deterministic_and_non_silent(songs):
    a, b = _ds(songs, "test", "other"), _ds(songs, "test", "other")
    key = lambda ds: [(it["song"], it["start"], it["reference_song"], it["reference_start"]) for it in ds]
    ka = key(a)
    assert len(ka) >= 8 and ka == key(b) and ka == key(a)  # two datasets, two passes
    assert all(start % a.segment == 0 for _, start, _, _ in ka)  # a fixed grid
    assert torch.equal(a[3]["raw"], b[3]["raw"]) and torch.equal(a[3]["reference"], b[3]["reference"])


def test_silent_segments_skipped(tmp_path):
    raw = synth_vocal(10.0, SR, seed=2)
    raw[int(2 * SR):int(8 * SR)] = 1e-6 * np.random.default_rng(0).normal(size=6 * SR)  # -120 dBFS noise
    write_pair(tmp_path, "a", raw, process_mix(raw, SR), SR)
    info = prepare_song(_pair(tmp_path), SR)
    ev = VocalReferenceDataset(split="val", sample_rate=SR, segment_seconds=1.0, songs=[info])
    assert [start for _, start in ev.grid] == [0, SR, 8 * SR, 9 * SR]
    tr = VocalReferenceDataset(split="train", sample_rate=SR, segment_seconds=1.0, songs=[info], seed=0,
                               segments_per_epoch=40)
    for i in range(40):
        x = tr[i]["raw"].numpy()
        assert 10 * np.log10(np.mean(x ** 2)) >= -50.0


def test_training_randomness_reproducible_under_seed(songs):
    def first(seed_everything, epoch=0, workers=0):
        torch.manual_seed(seed_everything)
        ds = _ds(songs, "train", "song", segments_per_epoch=8)
        sampler = EpochSampler(len(ds))
        sampler.set_epoch(epoch)
        dl = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers)
        return [(s, int(t)) for b in dl for s, t in zip(b["song"], b["start"])]

    a = first(42)
    assert a == first(42) == first(42, workers=2)  # same seed: same segments, whatever the workers
    assert a != first(43) and a != first(42, epoch=1)  # another seed or epoch: other segments
    assert len(set(a)) >= 6  # random positions, not a grid
    auto = EpochSampler(3)
    assert list(auto) == [0, 1, 2] and list(auto) == [3, 4, 5]  # advances without set_epoch


# ---------------------------------------------------------------------------------------------
# memory

def test_memory_bounded_reads(make_data):
    """Indexing holds one song at a time; iterating holds one item; nothing grows with the data."""
    root = make_data(songs=12, seconds=5)
    total = sum(sf.info(str(p)).frames * sf.info(str(p)).channels * 4 for p in root.rglob("*.wav"))
    tracemalloc.start()
    songs = index_songs(root, SR, progress=False)
    _, peak_index = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak_index < 0.4 * total  # ~ one song + its FFT buffers, not the data set

    ds = VocalReferenceDataset(split="val", sample_rate=SR, segment_seconds=1.0, reference_policy="other", songs=songs)
    item_bytes = 5 * SR * 4  # raw + mixed + reference, float32
    tracemalloc.start()
    for i in range(len(ds)):
        ds[i]
    _, peak_iter = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(ds) >= 40 and peak_iter < 4 * item_bytes
    assert len(pickle.dumps(ds)) < 0.05 * total  # the dataset object holds no audio


def test_memory_222_songs_of_3_minutes_at_48k(tmp_path, songs):
    """The user's scale: 222 songs x 3 min at 48 kHz (~23 GB as float32 audio) stay far below 4 GiB."""
    sr, n = 48000, 180 * 48000
    rng = np.random.default_rng(0)
    x = (0.1 * rng.normal(size=n) * (np.sin(np.arange(n) / sr * 2) > -0.5)).astype(np.float32)
    raw_p, mixed_p = write_pair(tmp_path, "long", x, np.stack([x, x]), sr, subtype="PCM_16")
    hop = sr // 10
    power = np.add.reduceat(x.astype(np.float64) ** 2, np.arange(0, n, hop)) / hop
    env = (10 * np.log10(np.maximum(power, 1e-12))).round(2).tolist()
    base = audio.SongInfo("long", str(raw_p), str(mixed_p), sr, sr, sr, 1, 2, n, n, 0, 10.0, 0, 0, n, hop, env)
    many = [dataclasses.replace(base, name=f"song{i:03d}") for i in range(222)]
    tracemalloc.start()
    ds = VocalReferenceDataset(split="train", sample_rate=sr, segment_seconds=4.0, reference_policy="other",
                               songs=many, seed=0, segments_per_epoch=1000)
    for i in range(8):
        item = ds[i]
        assert item["raw"].shape == (1, 4 * sr) and item["reference"].shape == (2, 4 * sr)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 256 * 2 ** 20  # metadata for 222 songs + one item, vs 4 GiB allowed
    assert len(pickle.dumps(ds)) < 64 * 2 ** 20


# ---------------------------------------------------------------------------------------------
# cache and data module

def test_alignment_cached_once_and_outside_the_data(make_data, tmp_path, monkeypatch):
    root = make_data(songs=3, seconds=3)
    cache = tmp_path / "cache"
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    first = index_songs(root, SR, cache_dir=cache)
    assert (cache / "alignment.json").exists()
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written into the data

    calls = []
    monkeypatch.setattr(audio, "prepare_song", lambda *a, **k: calls.append(a) or pytest.fail("re-analysed"))
    monkeypatch.setattr(audio, "_MEMO", {})  # a new process: only the JSON cache is left
    assert index_songs(root, SR, cache_dir=cache) == first and not calls

    monkeypatch.undo()
    p = root / "mixed" / "song01.wav"
    x, _ = sf.read(p)
    sf.write(p, np.concatenate([np.zeros((int(0.1 * SR), 2)), x]), SR, subtype="FLOAT")  # the file changed
    again = index_songs(root, SR, cache_dir=cache)
    assert again[1].lag == first[1].lag + int(0.1 * SR)


def test_datamodule_loaders_and_song_helpers(make_data):
    root = make_data(songs=5, seconds=6)
    dm = VocalDataModule(str(root), sample_rate=SR, segment_seconds=2.0, batch_size=2,
                         eval_reference_policy="song", train_segments_per_epoch=4)
    dm.setup("fit")
    names = {split: [s.name for s in dm.songs(split)] for split in ("train", "val", "test")}
    assert all(names.values()) and sorted(sum(names.values(), [])) == [f"song{i:02d}" for i in range(5)]
    batch = next(iter(dm.train_dataloader()))
    assert batch["raw"].shape == (2, 1, 2 * SR) and batch["mixed"].shape == (2, 2, 2 * SR)
    assert batch["reference"].shape == (2, 2, 2 * SR) and batch["start"].dtype == torch.int64
    assert len(dm.train_dataloader().dataset) == 4
    val = [b for b in dm.val_dataloader()]
    assert val and all(s in names["val"] for b in val for s in b["song"])
    song = dm.songs("test")[0]
    assert os.path.exists(song.raw_path) and os.path.exists(song.mixed_path)
    raw, mixed = dm.load_song(song.name)
    assert raw.shape == (1, song.length) and mixed.shape == (2, song.length)
    item = dm.datasets["test"][0]
    np.testing.assert_array_equal(item["raw"].numpy(), raw[:, item["start"]:item["start"] + 2 * SR])


def test_datamodule_from_yaml_data_section(make_data):
    """LightningCLI builds the data module from a YAML `data:` section (typed __init__ arguments)."""
    from jsonargparse import ArgumentParser

    root = make_data(songs=3, seconds=3)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(VocalDataModule, "data")
    cfg = parser.parse_string(f"data:\n  root: {root}\n  sample_rate: 44100\n  reference_policy: other\n"
                              "  split_file: null\n  train_segments_per_epoch: 16\n")
    dm = VocalDataModule(**cfg.data.as_dict())
    assert dm.hparams.sample_rate == 44100 and dm.hparams.reference_policy == "other"
    with pytest.raises(Exception, match="reference_policy"):
        parser.parse_string(f"data:\n  root: {root}\n  reference_policy: nonsense\n")
