"""The demo data: a singing synthesiser that sounds like a voice, and pedalboard-mixed pairs with truth."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import linalg, signal

from mst_single import demo, synth
from mst_single.errors import MstError

SR = 24000
SONGS = 3
SECONDS = 3.0
CONSOLE_NAMES = {
    "gain_db",
    *(f"eq_{band}_{u}" for band in ("low_shelf", "band1", "band2", "band3", "band4", "high_shelf")
      for u in ("gain_db", "freq_hz", "q")),
    "comp_threshold_db", "comp_ratio", "comp_attack_ms", "comp_release_ms", "comp_knee_db", "comp_makeup_db",
    "reverb_decay_s", "reverb_predelay_ms", "reverb_tone", "reverb_wet_db", "output_gain_db",
}


@pytest.fixture(scope="module")
def demo_dirs(tmp_path_factory):
    """The same data twice (seed 0) and once with seed 1."""
    root = tmp_path_factory.mktemp("demo")
    dirs = {}
    for key, seed in (("a", 0), ("b", 0), ("other", 1)):
        dirs[key] = demo.make_demo_data(root / key, songs=SONGS, seconds=SECONDS, seed=seed, sample_rate=SR)
    return dirs


def _files(root: Path):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_layout_and_formats(demo_dirs):
    root = demo_dirs["a"]
    names = ["song000_bass", "song001_baritone", "song002_tenor"]
    assert _files(root) == sorted([f"raw/{n}.wav" for n in names] + [f"mixed/{n}.wav" for n in names]
                                  + ["truth.json", "manifest.json"])
    truth = json.loads((root / "truth.json").read_text())
    for n in names:
        raw, mixed = sf.info(root / "raw" / f"{n}.wav"), sf.info(root / "mixed" / f"{n}.wav")
        assert (raw.channels, raw.samplerate, raw.subtype) == (1, SR, "PCM_24")
        assert (mixed.channels, mixed.samplerate, mixed.subtype) == (2, SR, "PCM_24")
        assert raw.frames == int(SECONDS * SR)
        lat = truth["songs"][n]["latency_samples"]
        assert mixed.frames == lat + raw.frames + int(demo.TAIL_SECONDS * SR)


def test_truth_json(demo_dirs):
    truth = json.loads((demo_dirs["a"] / "truth.json").read_text())
    assert truth["sample_rate"] == SR and truth["seed"] == 0
    assert set(truth["songs"]) == {p.stem for p in (demo_dirs["a"] / "raw").glob("*.wav")}
    hs = truth["house_style"]
    assert {"highpass", "limiter", "reverb"} <= set(hs["no_counterpart"])
    ranges = {c["role"]: c["ranges"] for c in hs["chain"]}
    for name, song in truth["songs"].items():
        assert song["voice"] in synth.VOICES and name.endswith(song["voice"])
        assert isinstance(song["latency_samples"], int)
        assert 0 <= song["latency_samples"] <= 0.040 * SR
        params, pb = song["params"], song["pedalboard"]
        assert set(params) <= CONSOLE_NAMES
        assert {"gain_db", "eq_band1_freq_hz", "eq_band4_q", "comp_attack_ms", "comp_release_ms",
                "output_gain_db"} <= set(params)
        # params are the pedalboard settings under the console's names
        assert params["eq_band2_gain_db"] == pb["band2"]["gain_db"]
        assert params["comp_threshold_db"] == pb["compressor"]["threshold_db"]
        assert params["comp_makeup_db"] == pb["makeup_gain"]["gain_db"]
        assert params["output_gain_db"] == pb["output_gain"]["gain_db"]
        # peak bands are ordered low -> high so names map 1:1
        freqs = [params[f"eq_band{k}_freq_hz"] for k in (1, 2, 3, 4)]
        assert freqs == sorted(freqs)
        for role, settings in pb.items():
            for key, value in settings.items():
                if key == "plugin" or role == "output_gain":
                    continue
                lo, hi = ranges[role][key]
                assert lo - 1e-3 <= value <= hi + 1e-3, (role, key, value)
        # realistic mixed loudness, different from the raw level
        assert -16.5 <= song["mixed_lufs"] <= -10.5
        assert song["mixed_lufs"] - song["raw_lufs"] > 3.0


def test_same_seed_is_byte_identical_other_seed_differs(demo_dirs):
    a, b, other = demo_dirs["a"], demo_dirs["b"], demo_dirs["other"]
    assert _files(a) == _files(b) == _files(other)
    for rel in _files(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for rel in _files(a):
        assert (a / rel).read_bytes() != (other / rel).read_bytes(), rel


def test_mixed_is_the_lagged_pedalboard_render(demo_dirs):
    root = demo_dirs["a"]
    truth = json.loads((root / "truth.json").read_text())
    for name, song in truth["songs"].items():
        raw, _ = sf.read(root / "raw" / f"{name}.wav", dtype="float32")
        mixed, _ = sf.read(root / "mixed" / f"{name}.wav", dtype="float32", always_2d=True)
        mixed = mixed.T
        lat = song["latency_samples"]
        assert not mixed[:, :lat].any()
        # re-render from truth.json alone, without latency: equal up to 24-bit quantisation
        again = demo.render_mixed(raw, SR, song["pedalboard"], latency_samples=0)
        assert again.shape == (2, mixed.shape[1] - lat)
        np.testing.assert_allclose(mixed[:, lat:], again, atol=2.0 ** -22)
        assert np.abs(mixed[0] - mixed[1]).max() > 1e-3  # the reverb makes it really stereo
        # and an aligner finds the recorded latency (within 1 ms) by cross-correlation
        c = signal.correlate(mixed.mean(0), raw, mode="full", method="fft")
        lag = int(np.argmax(np.abs(c))) - (len(raw) - 1)
        assert abs(lag - lat) <= 0.001 * SR, (name, lag, lat)


def test_mixed_loudness_matches_truth(demo_dirs):
    import pyloudnorm

    root = demo_dirs["a"]
    truth = json.loads((root / "truth.json").read_text())
    for name, song in truth["songs"].items():
        mixed, _ = sf.read(root / "mixed" / f"{name}.wav")
        raw, _ = sf.read(root / "raw" / f"{name}.wav")
        meter = pyloudnorm.Meter(SR)
        assert meter.integrated_loudness(mixed) == pytest.approx(song["mixed_lufs"], abs=0.1)
        assert meter.integrated_loudness(raw) == pytest.approx(song["raw_lufs"], abs=0.1)
        assert np.abs(mixed).max() < 1.0


def test_importing_demo_does_not_import_pedalboard():
    code = ("import sys, mst_single.demo, mst_single.synth, mst_single.cli; "
            "assert 'pedalboard' not in sys.modules, 'pedalboard imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_pedalboard_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pedalboard", None)  # makes `import pedalboard` fail
    with pytest.raises(MstError, match=r"pip install -e \.\[demo\]"):
        demo.make_demo_data(tmp_path / "out", songs=1, seconds=2.0, sample_rate=16000)
    assert not (tmp_path / "out" / "raw").exists()


def test_cli(tmp_path, capsys):
    from mst_single.cli import main

    assert main(["demo-data", str(tmp_path / "d"), "--songs", "1", "--seconds", "2", "--seed", "3",
                 "--sample-rate", "16000"]) == 0
    truth = json.loads((tmp_path / "d" / "truth.json").read_text())
    assert truth["seed"] == 3 and truth["sample_rate"] == 16000 and list(truth["songs"]) == ["song000_bass"]
    assert main(["demo-data", str(tmp_path / "e"), "--songs", "0"]) == 2
    assert "--songs" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# an existing OUT: only this command's own earlier output is rewritten

TINY = ["--seconds", "2", "--sample-rate", "16000"]


def _demo(out, *args):
    from mst_single.cli import main

    return main(["demo-data", str(out), *TINY, *map(str, args)])


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_own_files_are_refused_and_untouched_even_with_force(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "raw").mkdir(parents=True)
    sf.write(out / "raw" / "song000_bass.wav", np.full(16000, 0.1, np.float32), 16000)  # the user's own take
    (out / "notes.txt").write_text("my session notes")
    before = _snapshot(out)
    assert _demo(out, "--songs", 1) == 2
    err = capsys.readouterr().err
    assert f"{out}: holds 1 file that demo-data would overwrite but did not write" in err
    assert "raw/song000_bass.wav" in err and "fix: pass another folder" in err and "not even with --force" in err
    assert _demo(out, "--songs", 1, "--force") == 2
    assert _snapshot(out) == before
    assert not (out / "mixed").exists() and not (out / "manifest.json").exists()


def test_other_files_are_refused_without_force_and_left_with_it(tmp_path, capsys):
    out = tmp_path / "d"
    (out / "raw").mkdir(parents=True)
    (out / "raw" / "mysong.wav").write_bytes(b"RIFF my own take")
    (out / ".DS_Store").write_bytes(b"finder")  # hidden: the data layer skips it, so does demo-data
    assert _demo(out, "--songs", 1) == 2
    err = capsys.readouterr().err
    assert f"{out}: holds 1 file that demo-data did not write: raw/mysong.wav" in err and "--force" in err
    assert _files(out) == [".DS_Store", "raw/mysong.wav"]
    assert _demo(out, "--songs", 1, "--force") == 0
    assert "left 1 file that demo-data did not write" in capsys.readouterr().err
    assert (out / "raw" / "mysong.wav").read_bytes() == b"RIFF my own take"
    assert (out / ".DS_Store").read_bytes() == b"finder"
    assert (out / "mixed" / "song000_bass.wav").is_file()


def test_rerunning_the_same_command_is_accepted_and_identical(tmp_path):
    out = tmp_path / "d"
    assert _demo(out, "--songs", 2, "--style", "per-song") == 0
    first = _snapshot(out)
    (out / ".mixed.wav.part").write_bytes(b"")  # what a killed write leaves: hidden, ignored
    assert _demo(out, "--songs", 2, "--style", "per-song") == 0
    assert {k: v for k, v in _snapshot(out).items() if not k.startswith(".")} == first


def test_other_arguments_are_refused_without_force(tmp_path, capsys):
    out = tmp_path / "d"
    assert _demo(out, "--songs", 3) == 0
    before = _snapshot(out)
    for args in (["--songs", 2], ["--songs", 3, "--seed", 1], ["--songs", 3, "--style", "adaptive"]):
        assert _demo(out, *args) == 2
        err = capsys.readouterr().err
        assert f"{out}: holds demo data made with" in err and "fix: pass another folder as OUT, or --force" in err
    assert "made with --songs 3, not --songs 2" in _demo_err(out, capsys, "--songs", 2)
    assert _snapshot(out) == before


def _demo_err(out, capsys, *args):
    assert _demo(out, *args) == 2
    return capsys.readouterr().err


def test_force_replaces_an_earlier_demo_run_and_deletes_its_other_songs(tmp_path, capsys):
    out = tmp_path / "d"
    assert _demo(out, "--songs", 3) == 0
    changed = out / "mixed" / "song002_tenor.wav"
    changed.write_bytes(changed.read_bytes()[:-3] + b"abc")  # edited since: never deleted
    assert _demo(out, "--songs", 1, "--force") == 0
    err = capsys.readouterr().err
    assert "deleted 3 files of the earlier demo run" in err and "left 1 file" in err and "song002_tenor" in err
    assert _files(out) == ["manifest.json", "mixed/song000_bass.wav", "mixed/song002_tenor.wav",
                           "raw/song000_bass.wav", "truth.json"]
    assert list(_truth(out)["songs"]) == ["song000_bass"]
    assert json.loads((out / "manifest.json").read_text())["generator"]["songs"] == 1


def test_a_run_cut_off_midway_is_completed_by_the_same_command(tmp_path, monkeypatch, capsys):
    out = tmp_path / "d"
    real, calls = demo._actual_settings, []

    def interrupted(settings):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(settings)

    monkeypatch.setattr(demo, "_actual_settings", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo.make_demo_data(out, songs=2, seconds=2.0, sample_rate=16000)
    monkeypatch.setattr(demo, "_actual_settings", real)
    assert (out / "raw" / "song001_baritone.wav").exists() and not (out / "truth.json").exists()
    assert "made with --songs 2, not --songs 1" in _demo_err(out, capsys, "--songs", 1)
    assert _demo(out, "--songs", 2) == 0
    assert list(_truth(out)["songs"]) == ["song000_bass", "song001_baritone"]


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert "the output folder exists as a file" in _demo_err(tmp_path / "f", capsys, "--songs", 1)
    assert (tmp_path / "f").read_text() == "x"


# ---------------------------------------------------------------------------------------------
# the synthesiser sounds like a voice: measurable properties

FS = 16000
FRAME = int(0.04 * FS)  # 40 ms analysis frames


def _frames(y, hop=FRAME // 2):
    n = 1 + (len(y) - FRAME) // hop
    return np.stack([y[i * hop:i * hop + FRAME] for i in range(n)])


def _analyse(y):
    """Per frame: RMS (dB re the loudest frame), zero-crossing rate, autocorrelation pitch and its strength."""
    fr = _frames(y)
    rms = 20 * np.log10(np.sqrt(np.mean(fr ** 2, 1)) + 1e-12)
    rms -= rms.max()
    zcr = np.mean(np.abs(np.diff(np.sign(fr), axis=1)) > 0, axis=1)
    w = fr * np.hanning(FRAME)
    spec = np.fft.rfft(w, 2 * FRAME)
    ac = np.fft.irfft(np.abs(spec) ** 2)[:, :FRAME]
    ac /= ac[:, :1] + 1e-12
    lo, hi = int(FS / 1000), int(FS / 60)  # 60 .. 1000 Hz
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    strength = ac[np.arange(len(ac)), lag]
    return rms, zcr, FS / lag, strength


def _voice(name, seed=0, seconds=8.0):
    return synth.sing(seconds, FS, synth.VOICES[name], np.random.default_rng(seed))


def test_sing_output_and_determinism():
    y = _voice("tenor")
    assert y.dtype == np.float32 and y.shape == (8 * FS,)
    assert 20 * np.log10(np.abs(y).max()) == pytest.approx(-6.0, abs=0.1)
    assert np.array_equal(y, _voice("tenor"))
    assert not np.array_equal(y, _voice("tenor", seed=1))


def test_voices_are_distinct():
    assert len(synth.VOICES) >= 4
    voices = list(synth.VOICES.values())
    assert len({(v.f0_low_hz, v.f0_high_hz) for v in voices}) == len(voices)
    # higher voices have higher formants
    by_pitch = sorted(voices, key=lambda v: v.f0_low_hz)
    assert [v.formant_scale for v in by_pitch] == sorted(v.formant_scale for v in voices)
    for v in voices:
        assert 4.5 <= v.vibrato_rate_hz <= 6.5 and v.f0_low_hz < v.f0_high_hz


@pytest.mark.parametrize("name", ["bass", "tenor", "soprano"])
def test_pitch_is_harmonic_in_range_and_melodic(name):
    v = synth.VOICES[name]
    rms, zcr, f0, strength = _analyse(_voice(name))
    voiced = (rms > -25) & (strength > 0.6)
    assert voiced.mean() > 0.3  # mostly sung, clearly periodic
    inside = (f0[voiced] > 0.85 * v.f0_low_hz) & (f0[voiced] < 1.15 * v.f0_high_hz)
    assert inside.mean() > 0.9, np.percentile(f0[voiced], [5, 50, 95])
    # several distinct notes, each held for a while (not a constant tone, not noise)
    semis = np.round(12 * np.log2(f0[voiced] / 440.0))
    held = [s for s in np.unique(semis) if np.sum(semis == s) >= 3]
    assert len(held) >= 3, held


def test_soprano_sings_higher_than_bass():
    med = {}
    for name in ("bass", "soprano"):
        rms, _, f0, strength = _analyse(_voice(name))
        med[name] = np.median(f0[(rms > -25) & (strength > 0.6)])
    assert med["soprano"] > 2 * med["bass"]


def _lpc_peaks(frame, order=18):
    """Frequencies (Hz) of the spectral-envelope maxima of one frame (autocorrelation LPC)."""
    x = np.append(frame[0], frame[1:] - 0.9 * frame[:-1]) * np.hamming(len(frame))  # pre-emphasis
    r = np.correlate(x, x, "full")[len(x) - 1:len(x) + order]
    r[0] *= 1.0001
    a = linalg.solve_toeplitz(r[:-1], -r[1:])
    w, h = signal.freqz([1.0], np.concatenate([[1.0], a]), worN=1024, fs=FS)
    env = 20 * np.log10(np.abs(h))
    peaks, _ = signal.find_peaks(env, prominence=3)
    return w[peaks]


def test_formants_exist_and_move():
    y = _voice("baritone", seed=2)
    rms, zcr, _, strength = _analyse(y)
    fr = _frames(y)
    voiced = np.flatnonzero((rms > -20) & (strength > 0.6))
    f2 = []
    for i in voiced:
        peaks = _lpc_peaks(fr[i])
        peaks = peaks[(peaks > 200) & (peaks < 4000)]
        if len(peaks) >= 2:
            f2.append(peaks[1])
    assert len(f2) > 0.7 * len(voiced)  # at least two formant peaks below 4 kHz in most voiced frames
    # vowels change: the second formant spans several hundred Hz over the song
    assert np.percentile(f2, 90) - np.percentile(f2, 10) > 400, np.percentile(f2, [10, 50, 90])


def test_phrases_silences_and_consonants():
    y = _voice("alto", seed=3, seconds=10.0)
    rms, zcr, _, strength = _analyse(y)
    hop_s = FRAME / 2 / FS
    silent = rms < -50
    # silent gaps between phrases: runs of at least 200 ms
    runs, n = [], 0
    for s in silent:
        n = n + 1 if s else 0
        runs.append(n)
    assert max(runs) * hop_s >= 0.2
    assert np.sum(np.diff(silent.astype(int)) == 1) >= 2  # at least two separate gaps
    # noisy (unvoiced) consonant frames: audible, high zero-crossing rate, aperiodic
    noisy = (rms > -40) & (zcr > 0.3) & (strength < 0.5)
    assert noisy.sum() >= 3
    # sung frames are low-ZCR
    sung = (rms > -20) & (strength > 0.6)
    assert np.median(zcr[sung]) < 0.15
    # natural dynamics: loud frames span several dB
    loud = rms[rms > -30]
    assert np.percentile(loud, 90) - np.percentile(loud, 10) > 6


# ---------------------------------------------------------------------------------------------
# adaptive and per-song styles: the console-like chain, rules, fixed loudness, manifest

STYLED_SONGS, STYLED_SECONDS = 3, 6.0
MANIFEST = Path(__file__).parent / "data" / "demo-manifest.json"


@pytest.fixture(scope="module")
def styled(tmp_path_factory):
    """Every style, 3 songs x 6 s at 24 kHz, seed 0 (what tests/data/demo-manifest.json records)."""
    root = tmp_path_factory.mktemp("styled")
    return {style: demo.make_demo_data(root / style, songs=STYLED_SONGS, seconds=STYLED_SECONDS, seed=0,
                                       sample_rate=SR, style=style)
            for style in demo.STYLES}


def _truth(root):
    return json.loads((root / "truth.json").read_text())


def _mix_rng_after_latency(seed, i):
    rng = np.random.default_rng([seed, i, 1])
    rng.uniform(*demo.LATENCY_MS)  # the latency is drawn first
    return rng


@pytest.mark.parametrize("style", ["adaptive", "per-song"])
def test_console_style_truth_json(styled, style):
    root = styled[style]
    truth = _truth(root)
    assert truth["style"] == style and truth["sample_rate"] == SR and truth["seed"] == 0
    chain = truth["chain"]
    assert [c["role"] for c in chain["chain"]] == [r for r, _ in demo.CONSOLE_CHAIN]
    assert chain["target_lufs"] == demo.FIXED_TARGET_LUFS and chain["input_lufs"] == demo.INPUT_LUFS
    assert "Limiter" not in {c["plugin"] for c in chain["chain"]}
    assert "HighpassFilter" not in {c["plugin"] for c in chain["chain"]}
    if style == "adaptive":
        assert {r["param"] for r in chain["rules"]} == set(demo._CONSOLE_PARAM_MAP) - {"output_gain_db"}
        assert all(r["formula"] for r in chain["rules"])
        assert {r["feature"] for r in chain["rules"]} - {None} <= set(chain["features"])
    else:
        assert set(chain["ranges"]) == set(demo._CONSOLE_PARAM_MAP) - {"output_gain_db"}
    assert len(truth["songs"]) == STYLED_SONGS
    for i, (name, song) in enumerate(truth["songs"].items()):
        params, pb = song["params"], song["pedalboard"]
        assert set(params) == set(demo._CONSOLE_PARAM_MAP) | {"comp_knee_db", "comp_makeup_db"}
        assert set(params) <= CONSOLE_NAMES
        for p, (role, key) in demo._CONSOLE_PARAM_MAP.items():
            if p in ("comp_attack_ms", "comp_release_ms"):  # JUCE times are 2 pi x the console's
                assert pb[role][key] == pytest.approx(2 * np.pi * params[p], rel=1e-4), p
            elif p != "gain_db":
                assert params[p] == pb[role][key], p
        # the input gain plugin applies the -23 LUFS normalisation and then gain_db
        assert pb["input_gain"]["gain_db"] == pytest.approx(song["normalisation_gain_db"] + params["gain_db"], abs=1e-3)
        assert song["normalisation_gain_db"] == pytest.approx(demo.INPUT_LUFS - song["raw_lufs"], abs=1e-3)
        assert set(song["features"]) == set(demo.FEATURES)
        # the settings are exactly what the documented rule / range gives for this song
        raw, _ = sf.read(root / "raw" / f"{name}.wav", dtype="float32")
        rng = _mix_rng_after_latency(0, i)
        if style == "adaptive":
            expect = demo.adaptive_params(demo.measure_take(raw, SR), rng, SR)
        else:
            expect = demo.per_song_params(rng, SR)
            for p, (lo, hi, _) in demo.PER_SONG_RANGES.items():
                assert lo - 1e-3 <= params[p] <= min(hi, 0.45 * SR) + 1e-3, p
        for p, v in expect.items():
            assert params[p] == pytest.approx(v, rel=1e-5, abs=1e-4), p


@pytest.mark.parametrize("style", ["adaptive", "per-song"])
def test_console_style_loudness_render_and_latency(styled, style):
    import pyloudnorm

    root = styled[style]
    for name, song in _truth(root)["songs"].items():
        raw, _ = sf.read(root / "raw" / f"{name}.wav", dtype="float32")
        mixed, _ = sf.read(root / "mixed" / f"{name}.wav", dtype="float32", always_2d=True)
        mixed = mixed.T
        # fixed loudness, measured by an independent meter on the written file
        assert song["target_lufs"] == demo.FIXED_TARGET_LUFS
        assert pyloudnorm.Meter(SR).integrated_loudness(mixed.T.astype(np.float64)) == pytest.approx(
            demo.FIXED_TARGET_LUFS, abs=0.5)
        assert abs(song["mixed_lufs"] - demo.FIXED_TARGET_LUFS) < 0.01
        assert np.abs(mixed).max() <= 10 ** (demo.PEAK_CEILING_DBFS / 20) + 2.0 ** -22
        assert song["ceiling_reduction_db"] >= 0.0
        lat = song["latency_samples"]
        assert mixed.shape[1] == lat + raw.size + int(demo.TAIL_SECONDS * SR) and not mixed[:, :lat].any()
        again = demo.render_mixed(raw, SR, song["pedalboard"], latency_samples=lat)
        np.testing.assert_allclose(mixed, again, atol=2.0 ** -22)
        assert np.abs(mixed[0] - mixed[1]).max() > 1e-3  # the reverb send is stereo


def _feature_change(take_a, take_b, voice="tenor", seconds=6.0, seed=4):
    """measure_take of the same song sung with two takes."""
    out = []
    for take in (take_a, take_b):
        out.append(demo.measure_take(synth.sing(seconds, SR, voice, np.random.default_rng(seed), take), SR))
    return out


def _rule(param):
    return next(r for r in demo.ADAPTIVE_RULES if r.param == param)


def _setting(param, features):
    r = _rule(param)
    return demo.Rule(r.param, r.feature, r.feature_low, r.feature_high, r.at_low, r.at_high, r.scale,
                     0.0).apply(features, np.random.default_rng(0))


def test_rules_are_monotonic_clipped_functions_with_noise():
    for r in demo.ADAPTIVE_RULES:
        exact = demo.Rule(r.param, r.feature, r.feature_low, r.feature_high, r.at_low, r.at_high, r.scale, 0.0)
        name = r.feature or "unused"
        grid = np.linspace(r.feature_low - 5, r.feature_high + 5, 41)
        vals = np.array([exact.apply({name: f}, np.random.default_rng(0)) for f in grid])
        assert vals[0] == pytest.approx(r.at_low) and vals[-1] == pytest.approx(r.at_high)
        steps = np.diff(vals) * np.sign(r.at_high - r.at_low)
        assert (steps >= -1e-9).all(), r.param
        if r.feature is not None:
            assert abs(r.at_high - r.at_low) > 0 and np.ptp(vals) == pytest.approx(abs(r.at_high - r.at_low))
        # the noise is small next to the rule's range
        noisy = [r.apply({name: r.feature_low}, np.random.default_rng(k)) for k in range(200)]
        spread = np.std(np.log(noisy)) if r.scale == "log" else np.std(noisy)
        assert spread == pytest.approx(r.noise, rel=0.25, abs=1e-9), r.param


def test_brighter_take_gets_less_presence_and_air():
    dull, bright = _feature_change(synth.Take(tilt_db_per_octave=-3.0), synth.Take(tilt_db_per_octave=1.5))
    assert bright["presence_db"] > dull["presence_db"] + 3 and bright["air_db"] > dull["air_db"] + 3
    assert _setting("eq_band3_gain_db", bright) < _setting("eq_band3_gain_db", dull)
    assert _setting("eq_high_shelf_gain_db", bright) < _setting("eq_high_shelf_gain_db", dull)
    assert _setting("reverb_tone", bright) < _setting("reverb_tone", dull)


def test_boomier_take_gets_a_deeper_low_mid_cut():
    plain, boomy = _feature_change(synth.Take(chest_db=0.0, chest_hz=250.0), synth.Take(chest_db=12.0, chest_hz=250.0))
    assert boomy["boom_db"] > plain["boom_db"] + 2
    assert _setting("eq_band1_gain_db", boomy) < _setting("eq_band1_gain_db", plain) - 0.5


def test_sparser_and_more_dynamic_takes():
    dense, sparse = _feature_change(synth.Take(density=1.0), synth.Take(density=0.0), seconds=12.0)
    assert sparse["pause_fraction"] > dense["pause_fraction"] + 0.1
    assert _setting("reverb_wet_db", sparse) > _setting("reverb_wet_db", dense)
    assert _setting("reverb_decay_s", sparse) > _setting("reverb_decay_s", dense)
    even, dynamic = _feature_change(synth.Take(dynamics=0.0), synth.Take(dynamics=1.0, arc_db=8.0), seconds=12.0)
    assert dynamic["dynamics_db"] > even["dynamics_db"] + 2
    assert _setting("comp_ratio", dynamic) > _setting("comp_ratio", even)
    assert _setting("comp_threshold_db", dynamic) < _setting("comp_threshold_db", even)


def test_features_do_not_depend_on_level():
    y = synth.sing(6.0, SR, "alto", np.random.default_rng(1), synth.Take())
    a, b = demo.measure_take(y, SR), demo.measure_take(0.1 * y, SR)
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-6), k


def test_per_song_settings_do_not_depend_on_the_take(styled):
    """per-song: the same mix rng gives the same settings whatever the raw vocal; adaptive does not."""
    truth = _truth(styled["per-song"])
    names = list(truth["songs"])
    params = [truth["songs"][n]["params"] for n in names]
    for i, p in enumerate(params):
        again = demo.per_song_params(_mix_rng_after_latency(0, i), SR)
        assert all(p[k] == pytest.approx(v, rel=1e-5, abs=1e-4) for k, v in again.items())
    # the same rng state with two different takes: identical per-song settings, different adaptive ones
    takes = [synth.sing(4.0, SR, v, np.random.default_rng(0), synth.Take(tilt_db_per_octave=t, density=d))
             for v, t, d in (("bass", -3.0, 0.0), ("soprano", 1.5, 1.0))]
    per = [demo.per_song_params(np.random.default_rng(7), SR) for _ in takes]
    ada = [demo.adaptive_params(demo.measure_take(x, SR), np.random.default_rng(7), SR) for x in takes]
    assert per[0] == per[1]
    assert sum(abs(ada[0][k] - ada[1][k]) > 1.0 for k in ada[0]) >= 3


def test_song_i_does_not_depend_on_song_count(styled, tmp_path):
    for style in ("adaptive", "per-song"):
        two = demo.make_demo_data(tmp_path / style, songs=2, seconds=STYLED_SECONDS, seed=0, sample_rate=SR,
                                  style=style)
        three = styled[style]
        assert _truth(two)["songs"] == {k: v for k, v in list(_truth(three)["songs"].items())[:2]}
        for rel in _files(two):
            if rel.endswith(".wav"):
                assert (two / rel).read_bytes() == (three / rel).read_bytes(), rel


def test_manifest_lists_every_file(styled):
    import hashlib

    for style, root in styled.items():
        m = json.loads((root / "manifest.json").read_text())
        assert m["algorithm"] == "sha256" and m["generator"]["style"] == style
        assert set(m["files"]) == set(_files(root)) - {"manifest.json"}
        for rel, digest in m["files"].items():
            assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest
        assert m["versions"]["pedalboard"] and m["versions"]["numpy"]


def test_generation_matches_committed_manifest(styled):
    """The same demo data as when tests/data/demo-manifest.json was written: byte for byte, or, where
    this CPU rounds differently (numpy picks SIMD kernels per CPU; 24-bit samples then differ in the
    last bit), every WAV within the fingerprint tolerance and every other file byte for byte. A
    failure means the generator drifted (code, numpy/scipy/pedalboard/torch version). Refresh it
    deliberately with MST_WRITE_DEMO_MANIFEST=1 after checking why."""
    got = {}
    for style, root in styled.items():
        m = json.loads((root / "manifest.json").read_text())
        got[style] = {k: m[k] for k in ("generator", "versions", "platform", "files", "fingerprints")}
    if os.environ.get("MST_WRITE_DEMO_MANIFEST"):
        MANIFEST.parent.mkdir(exist_ok=True)
        MANIFEST.write_text(json.dumps(got, indent=2) + "\n")
    committed = json.loads(MANIFEST.read_text())
    rounding = []
    for style in demo.STYLES:
        want, have = committed[style], got[style]
        assert want["generator"] == have["generator"]
        assert set(want["files"]) == set(have["files"]), style
        drift = []
        for f in sorted(want["files"]):
            if want["files"][f] == have["files"][f]:
                continue
            if f.endswith(".wav") and demo.same_audio(want["fingerprints"][f], have["fingerprints"][f]):
                rounding.append(f"{style}/{f}")
            else:
                drift.append(f)
        assert not drift, (f"{style}: {len(drift)} file(s) differ from {MANIFEST.name}: {drift[:4]}; committed "
                           f"with {want['versions']} on {want['platform']}, now {have['versions']} on {have['platform']}")
    if rounding:
        warnings.warn(f"{len(rounding)} demo WAVs differ from {MANIFEST.name} only in rounding (this CPU: "
                      f"{got['house']['platform']}; manifest: {committed['house']['platform']})")


def test_fingerprint_tolerates_last_bit_noise_and_catches_a_change(tmp_path):
    from mst_single.fileio import write_audio

    x = 0.3 * np.sin(2 * np.pi * 220 * np.arange(3 * SR) / SR)[None]
    write_audio(tmp_path / "a.wav", x, SR, subtype="PCM_24")
    write_audio(tmp_path / "b.wav", x + 2.0 ** -23 * np.sign(np.sin(np.arange(3 * SR)))[None], SR, subtype="PCM_24")
    write_audio(tmp_path / "c.wav", x * 10 ** (0.05 / 20), SR, subtype="PCM_24")  # +0.05 dB
    write_audio(tmp_path / "d.wav", np.roll(x, 5, axis=-1), SR, subtype="PCM_24")  # 5 samples later
    a, b, c, d = (demo.audio_fingerprint(tmp_path / f"{n}.wav") for n in "abcd")
    assert a["frames"] == 3 * SR and a["channels"] == 1 and len(a["rms_db"]) == 3
    assert a["rms_db"][0] == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=1e-3)
    assert (tmp_path / "a.wav").read_bytes() != (tmp_path / "b.wav").read_bytes()
    assert demo.same_audio(a, b) and not demo.same_audio(a, c) and not demo.same_audio(a, d)
    assert not demo.same_audio(a, dict(a, frames=a["frames"] + 1))


def test_cli_styles(tmp_path, capsys):
    from mst_single.cli import main

    assert main(["demo-data", str(tmp_path / "p"), "--style", "per-song", "--songs", "1", "--seconds", "2",
                 "--sample-rate", "16000"]) == 0
    truth = json.loads((tmp_path / "p" / "truth.json").read_text())
    assert truth["style"] == "per-song" and list(truth["songs"]) == ["song000_bass"]
    assert (tmp_path / "p" / "manifest.json").exists()
    with pytest.raises(SystemExit):
        main(["demo-data", str(tmp_path / "q"), "--style", "fancy"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(MstError, match="--style"):
        demo.make_demo_data(tmp_path / "r", songs=1, seconds=2.0, sample_rate=16000, style="fancy")


def test_describe_reports_spread_and_segment_learnability(styled, capsys):
    from mst_single.cli import main

    assert main(["demo-data", str(styled["adaptive"]), "--describe", "--segment-seconds", "2"]) == 0
    text = capsys.readouterr().out
    truth = _truth(styled["adaptive"])
    for p, v in truth["songs"]["song000_bass"]["params"].items():
        assert f"| `{p}` |" in text
    rows = [line for line in text.splitlines() if " <- " in line]
    assert len(rows) == sum(r.feature is not None for r in demo.ADAPTIVE_RULES)
    for line in rows:
        seg, whole = (float(c) for c in line.strip("| ").split("|")[1:3])
        assert -1.0 <= seg <= 1.0 and -1.0 <= whole <= 1.0
    # with 3 songs the whole-song feature decides the setting almost alone (noise is small)
    row = next(line for line in rows if line.startswith("| `eq_band3_gain_db`"))
    assert float(row.strip("| ").split("|")[2]) < -0.9
    assert main(["demo-data", str(styled["house"] / "raw"), "--describe"]) == 2


def test_peak_ceiling_is_idle_below_and_local_above():
    rng = np.random.default_rng(0)
    x = (0.05 * rng.standard_normal((2, SR))).astype(np.float32)
    s = {"ceiling_db": -1.0, "lookahead_ms": 2.5}
    assert demo._peak_ceiling(x, SR, s) is x  # nothing near the ceiling: untouched, bit for bit
    x[:, 5000], x[1, 5003] = 1.5, -1.2
    y = demo._peak_ceiling(x, SR, s)
    assert np.abs(y).max() <= 10 ** (-1.0 / 20) + 1e-7
    touched = np.flatnonzero((y != x).any(0))
    assert touched.min() >= 5000 - 3 * 0.0025 * SR and touched.max() <= 5003 + 3 * 0.0025 * SR
    assert (np.abs(y) <= np.abs(x) + 1e-9).all()


@pytest.mark.parametrize("style", ["adaptive", "per-song"])
def test_console_reproduces_the_mix_from_truth_params(styled, style):
    """The oracle is meaningful: our console with truth.json's params is far closer to the mix than
    with another song's params (EQ, reverb and loudness exact; only the compressors differ)."""
    import torch

    from mst_single.console import VocalConsole
    from mst_single.losses import MRSTFTL1Loss

    root = styled[style]
    songs = _truth(root)["songs"]
    names = list(songs)
    console, loss = VocalConsole(SR), MRSTFTL1Loss()
    for i, name in enumerate(names):
        song = songs[name]
        raw, _ = sf.read(root / "raw" / f"{name}.wav", dtype="float32")
        mixed, _ = sf.read(root / "mixed" / f"{name}.wav", dtype="float32", always_2d=True)
        lat = song["latency_samples"]
        target = torch.from_numpy(np.ascontiguousarray(mixed.T[:, lat:lat + raw.size]))[None]

        # the raw normalised to -23 LUFS as a whole, as in evaluation and in the chain
        x = torch.from_numpy(raw * np.float32(10 ** (song["normalisation_gain_db"] / 20)))[None, None]

        def dist(params):
            with torch.no_grad():
                out = console(x, console.normalize(params))
            return float(loss(out, target)["mrstft"])

        own = dist(song["params"])
        other = dist(songs[names[(i + 1) % len(names)]]["params"])
        assert own < 0.2 and own < 0.5 * other, (name, own, other)
