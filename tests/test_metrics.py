"""Metric values on signals whose answer is known in closed form."""
from types import SimpleNamespace

import numpy as np
import pytest

from mst_single import metrics

SR = 16000


def tone(freq, seconds=2.0, amp=0.3, sr=SR, phase=0.0):
    t = np.arange(int(seconds * sr)) / sr
    return amp * np.sin(2 * np.pi * freq * t + phase)


def noise(seconds=2.0, seed=0, sr=SR):
    return np.random.default_rng(seed).standard_normal(int(seconds * sr)) * 0.1


def test_si_sdr_scaled_copy_is_very_high_and_noise_gives_its_snr():
    s = np.stack([tone(220), tone(330)])
    assert metrics.si_sdr(0.5 * s, s) > 90
    rng = np.random.default_rng(1)
    for snr_db in (0.0, 10.0, 20.0):
        n = rng.standard_normal(s.shape)
        n -= n.mean(-1, keepdims=True)
        n *= np.sqrt(np.sum(s**2) / np.sum(n**2) / 10 ** (snr_db / 10))
        # noise is (nearly) orthogonal to the signal, so SI-SDR ~ SNR
        assert metrics.si_sdr(s + n, s) == pytest.approx(snr_db, abs=0.2)


def test_si_sdr_is_scale_invariant_and_penalises_wrong_signal():
    s, o = tone(220), tone(220) + 0.1 * noise()
    assert metrics.si_sdr(3 * o, s) == pytest.approx(metrics.si_sdr(o, s), abs=1e-6)
    assert metrics.si_sdr(noise(seed=5), s) < -20


def test_l1_and_channel_matching():
    s = np.stack([np.ones(100), -np.ones(100)])
    assert metrics.l1(s + 0.25, s) == pytest.approx(0.25)
    # mono output duplicated to both channels: |1-1| and |1-(-1)| -> mean 1
    assert metrics.l1(np.ones(100), s) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="samples"):
        metrics.l1(np.ones(99), s)
    with pytest.raises(ValueError, match="channels"):
        metrics.l1(np.ones((3, 100)), s)


def test_spectral_centroid_of_a_sine_is_its_frequency():
    for f in (440.0, 1000.0, 3150.0):
        assert metrics.spectral_centroid(tone(f), SR) == pytest.approx(f, rel=0.01)
    # two equal-amplitude sines: centroid halfway
    assert metrics.spectral_centroid(tone(1000) + tone(3000), SR) == pytest.approx(2000, rel=0.01)
    assert metrics.centroid_error(tone(1000), tone(2000), SR) == pytest.approx(1000, rel=0.02)
    assert metrics.spectral_centroid(np.zeros(SR), SR) == 0.0


def test_dynamics_error_is_gain_invariant_and_measures_level_spread():
    steady = tone(500, seconds=10)
    # alternating 2.5 s at -10 dB and 2.5 s at -30 dB: blocks split 50/50 between the two levels
    env = np.repeat([10 ** (-10 / 20), 10 ** (-30 / 20)] * 2, int(2.5 * SR))
    bumpy = np.sin(2 * np.pi * 500 * np.arange(10 * SR) / SR) * env
    assert metrics.dynamics_error(2 * steady, steady, SR) == pytest.approx(0.0, abs=1e-6)
    assert metrics.dynamics_error(4 * bumpy, bumpy, SR) == pytest.approx(0.0, abs=1e-6)
    # the level spread is +-10 dB around the mean (transition blocks shift the quantiles by < 1 dB)
    spread = metrics.dynamics_error(bumpy, steady, SR)
    assert 8.0 < spread < 10.5
    # a 2:1 "compressed" copy (-15 / -25 dB) halves the spread
    env_c = np.repeat([10 ** (-15 / 20), 10 ** (-25 / 20)] * 2, int(2.5 * SR))
    squashed = np.sin(2 * np.pi * 500 * np.arange(10 * SR) / SR) * env_c
    assert metrics.dynamics_error(bumpy, squashed, SR) == pytest.approx(spread / 2, rel=0.1)
    # silence has no blocks above the gate: a flat profile, not a crash
    assert metrics.dynamics_error(np.zeros(SR), steady[:SR], SR) == pytest.approx(0.0, abs=1e-6)


def test_lufs_error_of_a_6_db_louder_copy_is_6():
    s = np.stack([noise(3, seed=2), noise(3, seed=3)])
    assert metrics.lufs_error(s * 10 ** (6 / 20), s, SR) == pytest.approx(6.0, abs=0.05)
    assert metrics.lufs_error(s, s, SR) == pytest.approx(0.0, abs=1e-9)


def test_mrstft_is_the_loss_term_and_zero_for_identical_signals():
    import torch

    from mst_single.losses import MRSTFTL1Loss

    s = np.stack([tone(300), noise(seed=4)])
    o = s + 0.05 * np.stack([noise(seed=6), noise(seed=7)])
    assert metrics.mrstft(s, s) == pytest.approx(0.0, abs=1e-4)
    expected = MRSTFTL1Loss()(torch.tensor(o[None]).float(), torch.tensor(s[None]).float())["mrstft"]
    assert metrics.mrstft(o, s) == pytest.approx(float(expected), rel=1e-5)
    assert metrics.mrstft(o, s) > 0.05


def test_all_metrics_keys_and_a_perfect_output():
    s = np.stack([tone(300, 3), tone(450, 3)])
    m = metrics.all_metrics(s, s, SR)
    assert set(m) == set(metrics.METRIC_UNITS) - {"param_err"}
    assert m["l1"] == 0 and m["si_sdr"] > 90 and m["lufs_err"] < 1e-9
    assert m["centroid_err"] == 0 and m["dynamics_err"] == 0 and m["mrstft"] < 1e-4
    worse = metrics.all_metrics(s + 0.1 * np.stack([noise(3), noise(3, 9)]), s, SR)
    assert all(worse[k] > m[k] for k in ("mrstft", "l1", "centroid_err")) and worse["si_sdr"] < m["si_sdr"]


def test_param_error_normalised_units_only_for_given_names():
    specs = [SimpleNamespace(name="gain_db", low=-24.0, high=24.0, scale="linear"),
             SimpleNamespace(name="comp_attack_ms", low=1.0, high=100.0, scale="log"),
             SimpleNamespace(name="reverb_mix", low=0.0, high=1.0, scale="linear")]
    pred = {"gain_db": 0.0, "comp_attack_ms": 10.0, "reverb_mix": 0.9}
    true = {"gain_db": 12.0, "comp_attack_ms": 100.0, "unknown_knob": 3.0}
    err = metrics.param_error(pred, true, specs)
    assert err["param_err/gain_db"] == pytest.approx(0.25)
    assert err["param_err/comp_attack_ms"] == pytest.approx(0.5)  # one decade of two, log scale
    assert "param_err/reverb_mix" not in err  # truth does not give it
    assert err["param_err"] == pytest.approx(0.375)
    assert metrics.param_error(pred, {}, specs) == {}
    # out-of-range truth is clipped to the console's box, not extrapolated
    assert metrics.param_error({"gain_db": 24.0}, {"gain_db": 40.0}, specs)["param_err"] == 0.0


def test_abs_tolerance_and_value_in_units():
    from mst_single.console import specs_for

    M = metrics
    assert M.abs_tolerance("mrstft") == 0.01 and M.abs_tolerance("val/mrstft") == 0.01
    assert M.abs_tolerance("param_err/gain_db") == M.ABS_TOL["param_err"] and M.abs_tolerance("val/loss") == 0.0
    for spec in specs_for(48000):  # the inverse of normalize_value, linear and log ranges alike
        for t in (0.0, 0.3, 1.0):
            assert M.normalize_value(M.value_in_units(t, spec), spec) == pytest.approx(t, abs=1e-9)
