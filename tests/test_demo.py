"""The demo data: a singing synthesiser that sounds like a voice, and pedalboard-mixed pairs with truth."""
import json
import subprocess
import sys
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
    assert _files(root) == sorted([f"raw/{n}.wav" for n in names] + [f"mixed/{n}.wav" for n in names] + ["truth.json"])
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
