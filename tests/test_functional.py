"""mst_single.functional against independent, non-differentiable references (scipy, numpy loops).

Tolerances are stated in each test. Signals are short and synthetic.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from mst_single import functional as F

SR = 48000


def t(*v, dtype=torch.float64):
    return torch.tensor(v, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# gain


def test_gain_is_exact():
    x = torch.randn(2, 3, 100)
    y = F.gain(x, torch.tensor([6.0, -20.0]))
    assert torch.allclose(y[0], x[0] * 10 ** (6 / 20), rtol=1e-6)
    assert torch.allclose(y[1], x[1] * 0.1, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# EQ

EQ_CASES = [
    # gains (dB), freqs (Hz), qs: low shelf, 4 peaking, high shelf
    ([6.0, -4.0, 3.0, -6.0, 9.0, -3.0], [120.0, 250.0, 900.0, 3000.0, 9000.0, 8000.0], [0.7, 1.0, 2.0, 0.8, 4.0, 0.7]),
    ([12.0, 12.0, -12.0, 12.0, -12.0, 12.0], [30.0, 60.0, 200.0, 800.0, 2500.0, 16000.0], [3.0, 6.0, 6.0, 6.0, 6.0, 3.0]),
    ([-12.0, -12.0, 12.0, -12.0, 12.0, -12.0], [1000.0, 600.0, 2500.0, 8000.0, 16000.0, 2000.0], [0.3, 0.3, 0.3, 0.3, 0.3, 0.3]),
]


def _sos(sr, gains, freqs, qs):
    b, a = F.eq_coeffs(sr, t(*gains)[None], t(*freqs)[None], t(*qs)[None])
    return np.concatenate([b[0].numpy(), a[0].numpy()], axis=1)  # (6, 6) second-order sections


def test_rbj_coefficients_have_cookbook_gains():
    """Independent checks of the formulas: peaking gain at f0, shelf gains at DC / Nyquist."""
    for g in (-9.0, 0.0, 6.0):
        b, a = F.peaking_coeffs(t(g), t(1000.0), t(2.0), SR)
        _, h = scipy.signal.freqz(b[0].numpy(), a[0].numpy(), worN=[1000.0], fs=SR)
        assert 20 * np.log10(abs(h[0])) == pytest.approx(g, abs=1e-9)
        b, a = F.low_shelf_coeffs(t(g), t(200.0), t(0.707), SR)
        _, h = scipy.signal.freqz(b[0].numpy(), a[0].numpy(), worN=[0.0, SR / 2], fs=SR)
        assert 20 * np.log10(abs(h)) == pytest.approx([g, 0.0], abs=1e-6)
        b, a = F.high_shelf_coeffs(t(g), t(5000.0), t(0.707), SR)
        _, h = scipy.signal.freqz(b[0].numpy(), a[0].numpy(), worN=[0.0, SR / 2], fs=SR)
        assert 20 * np.log10(abs(h)) == pytest.approx([0.0, g], abs=1e-6)


@pytest.mark.parametrize("case", EQ_CASES)
def test_eq_response_matches_sosfreqz(case):
    """Our frequency-sampled response equals scipy's sosfreqz of the same biquads (|H| to 1e-9)."""
    sos = _sos(SR, *case)
    n_fft = 4096
    H = F.eq_response(SR, t(*case[0])[None], t(*case[1])[None], t(*case[2])[None], n_fft)[0].numpy()
    w = np.arange(n_fft // 2 + 1) * 2 * np.pi / n_fft
    _, h_ref = scipy.signal.sosfreqz(sos, worN=w)
    assert np.max(np.abs(H - h_ref)) < 1e-9


@pytest.mark.parametrize("sr", [48000, 16000])
@pytest.mark.parametrize("case", EQ_CASES)
def test_eq_matches_sosfilt(case, sr):
    """FIR-by-frequency-sampling EQ vs the IIR biquads run by scipy.signal.sosfilt.
    Tolerance: max abs error < 1e-4 on noise of peak ~0.5 (SNR > 70 dB), float32 path."""
    gains, freqs, qs = case
    freqs = [min(f, 0.45 * sr) for f in freqs]
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(int(1.5 * sr))).astype(np.float32)
    y_ref = scipy.signal.sosfilt(_sos(sr, gains, freqs, qs), x.astype(np.float64))
    y = F.parametric_eq(torch.from_numpy(x)[None, None], sr, t(*gains, dtype=torch.float32)[None],
                        t(*freqs, dtype=torch.float32)[None], t(*qs, dtype=torch.float32)[None])[0, 0].numpy()
    err = np.abs(y - y_ref)
    assert err.max() < 1e-4
    snr = 10 * np.log10(np.sum(y_ref**2) / np.sum(err**2))
    assert snr > 70


def test_eq_is_causal_and_identity_when_flat():
    x = torch.zeros(1, 1, 4800)
    x[..., 100] = 1.0
    z = torch.zeros(1, 6)
    y = F.parametric_eq(x, SR, z, torch.tensor([[100.0, 200, 800, 2500, 8000, 8000]]), torch.ones(1, 6))
    assert torch.allclose(y, x, atol=1e-6)
    y = F.parametric_eq(x, SR, torch.full((1, 6), 9.0), torch.tensor([[100.0, 200, 800, 2500, 8000, 8000]]),
                        torch.full((1, 6), 4.0))
    assert y[..., :100].abs().max() < 1e-6  # nothing before the impulse: causal, zero latency
    assert y[..., 100].abs() > 0.1


# ---------------------------------------------------------------------------------------------
# compressor


def _gain_reduction_ref(level, thr, ratio, knee):
    """The textbook soft-knee curve (Giannoulis, Massberg & Reiss 2012), as gain reduction (dB)."""
    d = level - thr
    if knee > 0 and abs(d) <= knee / 2:
        return (1 - 1 / ratio) * (d + knee / 2) ** 2 / (2 * knee)
    return (1 - 1 / ratio) * d if d > knee / 2 else 0.0


def _compressor_ref(x, sr, thr, ratio, att_ms, rel_ms, knee, makeup):
    """Plain numpy loop of the same ballistics: level (dB) -> curve -> attack/release smoothing."""
    aa, ar = math.exp(-1000 / (att_ms * sr)), math.exp(-1000 / (rel_ms * sr))
    y, s = np.empty_like(x), 0.0
    for i, v in enumerate(x):
        r = _gain_reduction_ref(10 * math.log10(v * v + 1e-10), thr, ratio, knee)
        a = aa if r > s else ar
        s = a * s + (1 - a) * r
        y[i] = v * 10 ** ((makeup - s) / 20)
    return y


def test_fused_compressor_gradients_equal_the_torch_composition():
    """The numba adjoint vs autograd through gain_computer_db + smooth_gain_reduction (float64)."""
    g = torch.Generator().manual_seed(4)
    env = torch.repeat_interleave(10 ** (torch.rand(20, generator=g, dtype=torch.float64) * -3), 500)
    x = (env * torch.randn(env.numel(), generator=g, dtype=torch.float64)).reshape(1, 1, -1)
    for vals in [(-30.0, 4.0, 2.0, 150.0, 6.0, 3.0), (-40.0, 20.0, 0.1, 1000.0, 0.0, 0.0)]:
        ps = [t(v).requires_grad_() for v in vals]
        xx = x.clone().requires_grad_()
        w = torch.randn(x.shape, generator=g, dtype=torch.float64)
        (F.compressor(xx, SR, *ps) * w).sum().backward()
        got = [xx.grad] + [p.grad for p in ps]
        ps2 = [t(v).requires_grad_() for v in vals]
        xx2 = x.clone().requires_grad_()
        r = F.gain_computer_db(F.level_db(xx2), ps2[0], ps2[1], ps2[4])
        s = F.smooth_gain_reduction(r.reshape(1, -1), F.time_constant_coeff(ps2[2], SR).reshape(1),
                                    F.time_constant_coeff(ps2[3], SR).reshape(1)).reshape(x.shape)
        ((xx2 * F.db_to_amp(ps2[5] - s)) * w).sum().backward()
        ref = [xx2.grad] + [p.grad for p in ps2]
        for a, b in zip(got, ref):
            assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)


def _vocal_rows(rows: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """(rows, 1, samples) float32: harmonic notes with syllable envelopes, breath noise and gaps."""
    from mst_single.bench import vocal_like

    n = int(seconds * SR)
    return torch.from_numpy(np.stack([vocal_like(0, n, SR, seed=seed + 11 * b) for b in range(rows)]))[:, None]


# threshold dB, ratio, attack ms, release ms, knee dB, makeup dB: typical, box corners, attack > release
TORCH_VS_NUMBA = [
    ([-24.0, -40.0], [4.0, 20.0], [5.0, 0.1], [120.0, 1000.0], [6.0, 0.0], [3.0, 10.0]),
    ([-60.0, 0.0], [1.0, 20.0], [100.0, 0.1], [10.0, 10.0], [12.0, 12.0], [0.0, 24.0]),
    ([-18.0, -30.0], [2.5, 8.0], [80.0, 30.0], [15.0, 40.0], [3.0, 9.0], [1.0, 2.0]),
]


@pytest.mark.parametrize("case", TORCH_VS_NUMBA)
def test_torch_compressor_equals_numba_in_values_and_gradients(case):
    """The device path (torch: scan + fixed point) against the CPU fast path (numba), same inputs:
    0.5 s of vocal-like audio at 48 kHz, float32 like training. Outputs to 1e-6 of full scale,
    gradients of x and of every parameter (release included) to 1e-4 relative, final state 1e-4 dB."""
    x = _vocal_rows(2, 0.5, seed=len(case[0]))
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    out = {}
    for backend in ("numba", "torch"):
        xx = x.clone().requires_grad_()
        ps = [torch.tensor(v, requires_grad=True) for v in case]
        y, last = F.compressor(xx, SR, *ps, return_state=True, backend=backend)
        (y * w).sum().backward()
        out[backend] = (y.detach(), last, [xx.grad] + [p.grad for p in ps])
    (y1, l1, g1), (y2, l2, g2) = out["numba"], out["torch"]
    assert (y1 - y2).abs().max() < 1e-6
    assert (l1 - l2).abs().max() < 1e-4
    for a, b in zip(g1, g2):
        assert torch.isfinite(b).all()
        assert (a - b).abs().max() <= 1e-4 * a.abs().max() + 1e-6


def test_torch_compressor_carries_state_like_numba():
    """Two chunks with the state carried equal one pass, on both paths (streaming)."""
    x = _vocal_rows(1, 0.2, seed=3)
    ps = [torch.tensor([v]) for v in (-30.0, 6.0, 2.0, 300.0, 6.0, 0.0)]
    whole = F.compressor(x, SR, *ps, backend="numba")
    for backend in ("numba", "torch"):
        a, state = F.compressor(x[..., :3000], SR, *ps, return_state=True, backend=backend)
        b = F.compressor(x[..., 3000:], SR, *ps, initial_db=state, backend=backend)
        assert (torch.cat([a, b], -1) - whole).abs().max() < 1e-6


def test_compress_inference_equals_compressor():
    x = _vocal_rows(1, 0.3, seed=5)
    args = (-28.0, 5.0, 3.0, 150.0, 6.0, 4.0)
    ref, state = F.compressor(x, SR, *[torch.tensor([a]) for a in args], return_state=True)
    y, s = F.compress_inference(x[0, 0].numpy(), SR, *args)
    assert y.dtype == np.float32 and np.abs(y - ref[0, 0].numpy()).max() < 1e-6
    assert s == pytest.approx(float(state[0]), abs=1e-4)


def test_torch_smoothing_is_the_sequential_recursion():
    """`smooth_gain_reduction` (scan + fixed point) against a plain Python loop, float64: equal to
    1e-10 dB (rounding of a different summation order) on a reduction that jumps between 0 and 40 dB (many attack/release switches)."""
    g = torch.Generator().manual_seed(2)
    r = (torch.rand(3, 3000, generator=g, dtype=torch.float64) > 0.7) * 40.0 * torch.rand(3, 3000, generator=g, dtype=torch.float64)
    aa, ar, s0 = t(0.3, 0.9, 0.99), t(0.999, 0.5, 0.9999), t(0.0, 10.0, 50.0)
    s = F.smooth_gain_reduction(r, aa, ar, s0)
    for b in range(3):
        prev, ref = float(s0[b]), []
        for v in r[b].tolist():
            a = float(aa[b]) if v > prev else float(ar[b])
            prev = a * prev + (1 - a) * v
            ref.append(prev)
        assert np.abs(s[b].numpy() - np.array(ref)).max() < 1e-10


def test_torch_compressor_runs_without_data_on_meta():
    """On a device without data (meta) the device path runs end to end, backward included: no
    step of it reads values on the host (a read would raise here)."""
    x = torch.empty(2, 1, 4800, device="meta", requires_grad=True)
    ps = [torch.empty(2, device="meta", requires_grad=True) for _ in range(6)]
    y = F.compressor(x, SR, *ps)
    assert y.device.type == "meta" and y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape and all(p.grad.shape == (2,) for p in ps)
    with pytest.raises(ValueError, match="CPU tensors only"):
        F.compressor(x, SR, *ps, backend="numba")


@pytest.mark.parametrize("knee", [0.0, 6.0, 12.0])
def test_gain_computer_matches_analytic_curve(knee):
    levels = np.linspace(-80, 6, 431)
    for thr, ratio in [(-30.0, 4.0), (-10.0, 20.0), (0.0, 1.0), (-60.0, 2.0)]:
        got = F.gain_computer_db(torch.from_numpy(levels), t(thr), t(ratio), t(knee)).numpy()
        ref = [_gain_reduction_ref(v, thr, ratio, knee) for v in levels]
        assert np.max(np.abs(got - ref)) < 1e-9


def test_compressor_matches_numpy_loop_exactly():
    rng = np.random.default_rng(1)
    env = np.repeat(10 ** (rng.uniform(-50, 0, 40) / 20), 200)
    x = env * rng.standard_normal(env.size) * 0.5
    args = (-24.0, 5.0, 3.0, 80.0, 6.0, 4.0)
    y = F.compressor(torch.from_numpy(x)[None, None], SR, *[t(a) for a in args])[0, 0].numpy()
    y_ref = _compressor_ref(x, SR, *args)
    assert np.max(np.abs(y - y_ref)) < 1e-10


@pytest.mark.parametrize("knee", [0.0, 8.0])
def test_compressor_static_curve_on_steady_levels(knee):
    """Steady output level = input level - analytic reduction + makeup: a constant-magnitude
    signal (square wave) to 1e-6 dB, a 1 kHz sine (peak level) to 0.5 dB with a slow release."""
    thr, ratio, makeup = -30.0, 4.0, 3.0
    for level in (-50.0, -33.0, -30.0, -26.0, -10.0, 0.0):
        a = 10 ** (level / 20)
        n = np.arange(SR // 2)
        sq = a * np.sign(np.sin(2 * np.pi * 100.5 * n / SR) + 1e-9)
        y = F.compressor(torch.from_numpy(sq)[None, None], SR, t(thr), t(ratio), t(1.0), t(50.0),
                         t(knee), t(makeup))[0, 0].numpy()
        out_db = 20 * np.log10(np.abs(y[-1000:]).mean())
        assert out_db == pytest.approx(level - _gain_reduction_ref(level, thr, ratio, knee) + makeup, abs=1e-6)
        sine = a * np.sin(2 * np.pi * 1000 * n / SR)
        y = F.compressor(torch.from_numpy(sine)[None, None], SR, t(thr), t(ratio), t(0.1), t(1000.0),
                         t(knee), t(makeup))[0, 0].numpy()
        out_peak_db = 20 * np.log10(np.abs(y[-4800:]).max())
        assert out_peak_db == pytest.approx(level - _gain_reduction_ref(level, thr, ratio, knee) + makeup, abs=0.5)


@pytest.mark.parametrize("attack_ms,release_ms", [(5.0, 200.0), (30.0, 50.0), (0.5, 800.0)])
def test_attack_and_release_time_constants(attack_ms, release_ms):
    """A level step up (-40 -> -10 dB) and back: the smoothed gain reduction reaches 63 % of its
    change after attack_ms, and falls by 63 % after release_ms (within 10 %)."""
    n1, n2 = int(1.0 * SR), int(4.0 * SR)
    x = np.full(n1 + n2, 10 ** (-40 / 20))
    x[n1 // 4 : n1] = 10 ** (-10 / 20)
    y = F.compressor(torch.from_numpy(x)[None, None], SR, t(-30.0), t(10.0), t(attack_ms), t(release_ms),
                     t(0.0), t(0.0))[0, 0].numpy()
    red = 20 * np.log10(x / y)  # smoothed reduction, dB
    target = (1 - 1 / 10) * 20.0
    up = np.argmax(red[n1 // 4 :] >= 0.632 * target) / SR * 1000
    assert up == pytest.approx(attack_ms, rel=0.1, abs=0.05)
    down = np.argmax(red[n1:] <= (1 - 0.632) * red[n1 - 1]) / SR * 1000
    assert down == pytest.approx(release_ms, rel=0.1)


def test_smoothing_gradcheck_attack_and_release():
    """Numba adjoint vs finite differences (float64) for r, both coefficients and the state."""
    torch.manual_seed(0)
    r = (torch.rand(3, 40, dtype=torch.float64) * 10).requires_grad_()
    aa = torch.tensor([0.5, 0.8, 0.3], dtype=torch.float64, requires_grad=True)
    ar = torch.tensor([0.9, 0.95, 0.7], dtype=torch.float64, requires_grad=True)
    s0 = torch.tensor([0.0, 3.0, 1.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(F.smooth_gain_reduction, (r, aa, ar, s0), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("knee", [6.0, 0.0])
def test_compressor_gradcheck_all_parameters(knee):
    torch.manual_seed(1)
    env = torch.repeat_interleave(10 ** (torch.rand(8, dtype=torch.float64) * -2), 12)
    x = (env * torch.randn(96, dtype=torch.float64)).reshape(1, 1, -1).requires_grad_()
    params = [t(v).requires_grad_() for v in (-20.0, 4.0, 0.3, 1.0, knee, 2.0)]
    fn = lambda x, *p: F.compressor(x, 8000, *p)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)
    y = fn(x, *params)
    grads = torch.autograd.grad(y.sum(), params)
    assert all(g.abs() > 0 for i, g in enumerate(grads) if not (knee == 0 and i == 4))  # release too


def test_compressor_gradients_finite_at_knee_zero_and_box_edges():
    rng = torch.Generator().manual_seed(0)
    sigs = [torch.zeros(1, 1, 2000), torch.rand(1, 1, 2000, generator=rng) * 2 - 1]
    for x in sigs:
        for thr in (-60.0, 0.0):
            for knee in (0.0, 12.0):
                for ratio, att, rel in [(1.0, 0.1, 10.0), (20.0, 100.0, 1000.0)]:
                    ps = [torch.tensor([v], requires_grad=True) for v in (thr, ratio, att, rel, knee, 0.0)]
                    xx = x.clone().requires_grad_()
                    y = F.compressor(xx, SR, *ps)
                    y.pow(2).sum().backward()
                    assert torch.isfinite(y).all() and torch.isfinite(xx.grad).all()
                    assert all(torch.isfinite(p.grad).all() for p in ps)
    # exactly at a knee edge (level = threshold +- knee/2) the curve is C1: finite gradient
    lv = torch.tensor([-33.0, -27.0, -30.0], dtype=torch.float64, requires_grad=True)
    kn = torch.tensor([6.0, 6.0, 0.0], dtype=torch.float64, requires_grad=True)
    F.gain_computer_db(lv, t(-30.0), t(4.0), kn).sum().backward()
    assert torch.isfinite(lv.grad).all() and torch.isfinite(kn.grad).all()


# ---------------------------------------------------------------------------------------------
# reverb


def _rt60_schroeder(h, sr):
    """RT60 from the Schroeder backward-integrated energy decay, T20 fit (-5..-25 dB) x 3."""
    edc = np.cumsum((h**2)[::-1])[::-1]
    edc_db = 10 * np.log10(edc / edc[0] + 1e-300)
    i0, i1 = np.argmax(edc_db <= -5), np.argmax(edc_db <= -25)
    slope = np.polyfit(np.arange(i0, i1) / sr, edc_db[i0:i1], 1)[0]
    return -60.0 / slope


def _band(h, sr, lo, hi):
    sos = scipy.signal.butter(4, [lo, hi], btype="bandpass", fs=sr, output="sos")
    return scipy.signal.sosfilt(sos, h)


@pytest.mark.parametrize("decay", [0.3, 1.0, 2.0])
def test_reverb_rt60_by_schroeder_integration(decay):
    h = F.reverb_ir(SR, t(decay), t(0.0), t(1.0), t(0.0), dtype=torch.float64)[0].numpy()
    for ch in h:
        assert _rt60_schroeder(ch, SR) == pytest.approx(decay, rel=0.15)


def test_reverb_tone_damps_high_frequencies():
    h = F.reverb_ir(SR, t(2.0), t(0.0), t(0.0), t(0.0), dtype=torch.float64)[0, 0].numpy()
    low = _rt60_schroeder(_band(h, SR, 50, 300), SR)
    high = _rt60_schroeder(_band(h, SR, 9000, 16000), SR)
    assert low == pytest.approx(2.0, rel=0.15)
    assert high < 0.2 * low
    bright = F.reverb_ir(SR, t(2.0), t(0.0), t(1.0), t(0.0), dtype=torch.float64)[0, 0].numpy()
    assert _rt60_schroeder(_band(bright, SR, 9000, 16000), SR) == pytest.approx(2.0, rel=0.15)


def test_reverb_ir_predelay_energy_and_decorrelation():
    h = F.reverb_ir(SR, t(1.0, 1.0), t(0.0, 50.0), t(0.5, 0.5), t(-6.0, -6.0), dtype=torch.float64).numpy()
    assert h.shape == (2, 2, int(1.5 * SR))  # 50 ms + 1 ms + 1 s * 80/60, rounded up to 1/8 s
    assert F.reverb_ir(SR, t(4.0), t(0.0), t(1.0), t(0.0)).shape[-1] == int(2.5 * SR)  # the cap
    np.testing.assert_allclose((h**2).sum(-1), 10 ** (-6 / 10), rtol=1e-9)  # unit energy x wet
    assert np.abs(h[1, :, : int(0.050 * SR)]).max() == 0.0  # silent before the 50 ms predelay
    assert np.abs(h[1, :, int(0.0515 * SR) : int(0.06 * SR)]).max() > 1e-3
    corr = np.corrcoef(h[0, 0], h[0, 1])[0, 1]
    assert abs(corr) < 0.05  # L and R from independent noise


def test_reverb_equals_scipy_fftconvolve():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 1, 12000)) * 0.1
    args = (t(0.8, 2.5), t(10.0, 40.0), t(0.2, 0.9), t(-12.0, -3.0))
    y = F.reverb(torch.from_numpy(x), 16000, *args).numpy()
    h = F.reverb_ir(16000, *args, dtype=torch.float64).numpy()
    for b in range(2):
        for c in range(2):
            ref = scipy.signal.fftconvolve(x[b, 0], h[b, c])[: x.shape[-1]]
            assert np.max(np.abs(y[b, c] - ref)) < 1e-10


def test_fft_convolve_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 12, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(F.fft_convolve, (x, h), fast_mode=True)
    x2 = torch.randn(1, 2, 10, dtype=torch.float64, requires_grad=True)
    h2 = torch.randn(1, 1, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(F.fft_convolve, (x2, h2), fast_mode=True)


def test_reverb_gradients_all_parameters_finite_and_nonzero():
    x = torch.randn(1, 1, 8000, dtype=torch.float64)
    for vals in [(0.1, 0.0, 0.0, -60.0), (4.0, 100.0, 1.0, 0.0), (1.0, 20.0, 0.5, -20.0)]:
        ps = [torch.tensor([v], dtype=torch.float64, requires_grad=True) for v in vals]
        y = F.reverb(x, 16000, *ps)
        (y * torch.linspace(-1, 1, y.shape[-1], dtype=torch.float64)).sum().backward()
        assert all(torch.isfinite(p.grad).all() and p.grad.abs() > 0 for p in ps)


def test_compressor_static_curve_matches_pedalboard():
    """Steady 1 kHz sines through pedalboard's (JUCE) hard-knee Compressor and ours (knee 0,
    fast attack, slow release): output peak levels agree within 0.1 dB."""
    import pedalboard  # a pinned dependency: no skip

    n = np.arange(SR)
    for level in (-40.0, -25.0, -15.0, -6.0, 0.0):
        x = (10 ** (level / 20) * np.sin(2 * np.pi * 1000 * n / SR)).astype(np.float32)
        ref = pedalboard.Compressor(threshold_db=-30, ratio=4, attack_ms=1, release_ms=1000)(x[None], SR)[0]
        y = F.compressor(torch.from_numpy(x.astype(np.float64))[None, None], SR,
                         *[t(v) for v in (-30.0, 4.0, 1.0, 1000.0, 0.0, 0.0)])[0, 0].numpy()
        peak = lambda v: 20 * np.log10(np.abs(v[-4800:]).max())  # noqa: E731
        assert peak(y) == pytest.approx(peak(ref), abs=0.1)
