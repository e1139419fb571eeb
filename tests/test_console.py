"""VocalConsole: parameter table, mapping, gradients over the [0, 1] box, latency, streaming."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mst_single import functional as F
from mst_single.console import PARAMS, STAGES, VocalConsole, specs_for
from mst_single.errors import MstError

EXPECTED_NAMES = (
    ["gain_db"]
    + [f"eq_{b}_{k}" for b in ("low_shelf", "band1", "band2", "band3", "band4", "high_shelf")
       for k in ("gain_db", "freq_hz", "q")]
    + ["comp_threshold_db", "comp_ratio", "comp_attack_ms", "comp_release_ms", "comp_knee_db", "comp_makeup_db",
       "reverb_decay_s", "reverb_predelay_ms", "reverb_tone", "reverb_wet_db", "output_gain_db"]
)


@pytest.fixture(scope="module")
def console():
    return VocalConsole(48000)


def _box_patterns(num_params: int, n_random: int = 2) -> torch.Tensor:
    """All-0, all-1, alternating 0/1 (both phases) and random points of the [0, 1] box."""
    alt = torch.arange(num_params) % 2
    rnd = torch.rand(n_random, num_params, generator=torch.Generator().manual_seed(0))
    return torch.cat([torch.zeros(1, num_params), torch.ones(1, num_params), alt[None].float(),
                      1 - alt[None].float(), rnd])


def test_parameter_table_names_units_and_order(console):
    assert console.param_names == EXPECTED_NAMES
    assert console.num_params == len(EXPECTED_NAMES) == 30
    assert STAGES == ("gain", "eq", "compressor", "reverb", "output_gain")
    for s in PARAMS:
        assert s.low < s.high and s.low <= s.default <= s.high and s.scale in ("linear", "log")
        assert s.name.startswith({"gain": "gain_", "eq": "eq_", "compressor": "comp_", "reverb": "reverb_",
                                  "output_gain": "output_gain_"}[s.stage])
        if s.scale == "log":
            assert s.low > 0
    lows = [console.specs[console.param_names.index(f"eq_{b}_freq_hz")].low for b in ("band1", "band2", "band3", "band4")]
    assert lows == sorted(lows)  # peaking bands ordered low to high


def test_denormalize_normalize_round_trip_and_log_scale(console):
    p = torch.rand(5, console.num_params, generator=torch.Generator().manual_seed(3))
    u = console.denormalize(p)
    assert set(u) == set(EXPECTED_NAMES) and all(v.shape == (5,) for v in u.values())
    assert torch.allclose(console.normalize(u), p, atol=1e-5)
    mid = console.denormalize(torch.full((1, console.num_params), 0.5))
    assert mid["comp_ratio"].item() == pytest.approx(math.sqrt(1.0 * 20.0), rel=1e-5)  # geometric mean
    assert mid["gain_db"].item() == pytest.approx(0.0, abs=1e-6)
    for name, spec in zip(console.param_names, console.specs):
        assert console.denormalize(torch.zeros(1, 30))[name].item() == pytest.approx(spec.low, rel=1e-5)
        assert console.denormalize(torch.ones(1, 30))[name].item() == pytest.approx(spec.high, rel=1e-5)
    d = console.denormalize(console.default_params(2))
    for spec in console.specs:
        assert torch.allclose(d[spec.name], torch.tensor(spec.default), rtol=1e-5, atol=1e-5)
    with pytest.raises(MstError, match="unknown console parameter"):
        console.normalize({"eq_band5_gain_db": 1.0})


def test_stages_switch_off_and_frequencies_stay_below_nyquist():
    c = VocalConsole(48000, stages={"reverb": False})
    assert not any(n.startswith("reverb_") for n in c.param_names) and c.num_params == 26
    c2 = VocalConsole(48000, stages={"eq": False, "compressor": False})
    assert c2.param_names == ["gain_db", "reverb_decay_s", "reverb_predelay_ms", "reverb_tone", "reverb_wet_db",
                              "output_gain_db"]
    with pytest.raises(MstError, match="unknown console stage"):
        VocalConsole(48000, stages={"limiter": True})
    for sr in (16000, 44100, 48000):
        for s in specs_for(sr):
            if s.unit == "Hz":
                assert s.high <= 0.45 * sr and s.low < s.high
    assert specs_for(44100) == specs_for(48000) == PARAMS  # same mapping at 44.1 and 48 kHz


@pytest.mark.parametrize("sr", [16000, 44100, 48000])
def test_forward_shapes_and_neutral_default(sr):
    c = VocalConsole(sr, stages={"reverb": False})
    x = torch.randn(2, 1, sr // 2 + 7) * 0.3
    y = c(x, c.default_params(2))
    assert y.shape == (2, 2, x.shape[-1])
    assert torch.allclose(y, x.expand(-1, 2, -1), atol=1e-5)  # neutral = dry to both sides
    full = VocalConsole(sr)
    yr = full(x, full.default_params(2))  # reverb at its -60 dB default
    assert torch.allclose(yr, x.expand(-1, 2, -1), atol=5e-3)
    assert torch.isfinite(full(x, torch.rand(2, 30, generator=torch.Generator().manual_seed(sr)))).all()


def test_gradients_finite_over_the_whole_box():
    """Every stage on; p at all-0, all-1, alternating and random; silence, full-scale noise and a
    loud sine. Output and all gradients finite."""
    c = VocalConsole(16000)
    n = 4000
    g = torch.Generator().manual_seed(1)
    sigs = torch.stack([torch.zeros(1, n), torch.rand(1, n, generator=g) * 2 - 1,
                        torch.sin(torch.arange(n) * 2 * math.pi * 440 / 16000)[None]])
    for p in _box_patterns(c.num_params):
        pp = p[None].expand(3, -1).clone().requires_grad_()
        x = sigs.clone().requires_grad_()
        y = c(x, pp)
        (y * torch.randn(y.shape, generator=g)).sum().backward()
        assert torch.isfinite(y).all()
        assert torch.isfinite(pp.grad).all(), p
        assert torch.isfinite(x.grad).all()


def test_every_parameter_gets_a_nonzero_gradient(console):
    """Mid-range settings with the compressor working: every parameter, release included."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 24000, generator=g) * torch.linspace(0.05, 0.8, 24000)
    p = 0.3 + 0.4 * torch.rand(2, console.num_params, generator=g)
    units = console.denormalize(p)
    units["comp_threshold_db"] = torch.tensor([-35.0, -30.0])
    units["comp_ratio"] = torch.tensor([4.0, 6.0])
    units["reverb_wet_db"] = torch.tensor([-10.0, -6.0])
    p = console.normalize(units).requires_grad_()
    y = console(x, p)
    (y * torch.randn(y.shape, generator=g)).sum().backward()
    zero = [n for n, gcol in zip(console.param_names, p.grad.abs().sum(0)) if not gcol > 0]
    assert zero == []


def test_a_mix_under_inference_mode_does_not_break_later_training():
    """`validate` (inference mode) before `fit` in one process: the constant tensors the chain and
    the loudness meter cache (EQ grid, reverb noise, K-weighting) are filled by the first call and
    must still be usable for backward afterwards."""
    from mst_single import loudness

    sr = 22050  # a rate no other test uses: the caches are filled here, under inference mode
    c = VocalConsole(sr)
    x = torch.randn(2, 1, sr // 2, generator=torch.Generator().manual_seed(3)) * 0.3
    with torch.inference_mode():
        c(x, torch.full((2, c.num_params), 0.5))
        loudness.loudness_torch(x, sr)
    p = torch.full((2, c.num_params), 0.5, requires_grad=True)
    y = c(x, p)
    (loudness.loudness_torch(y, sr).sum() + y.square().mean()).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_zero_latency_impulse_and_alignment():
    c = VocalConsole(48000, stages={"reverb": False})
    x = torch.zeros(1, 1, 9600)
    x[..., 0] = 0.5
    units = {n: s.default for n, s in zip(c.param_names, c.specs)}
    units.update(gain_db=6.0, comp_threshold_db=-20.0, comp_ratio=4.0, output_gain_db=-3.0)
    y = c(x, c.normalize(units))
    assert int(y[0, 0].abs().argmax()) == 0 and int(y[0, 1].abs().argmax()) == 0
    # with strong EQ the output stays causal (nothing before the input) and aligned (its
    # cross-correlation with the input peaks at lag 0)
    p = torch.rand(1, c.num_params, generator=torch.Generator().manual_seed(5))
    xd = torch.zeros(1, 1, 9600)
    xd[..., 1000] = 0.5
    yd = c(xd, p)
    assert yd[..., :1000].abs().max() < 1e-6 * yd.abs().max() and yd[..., 1000].abs().max() > 0.1 * yd.abs().max()
    noise = torch.randn(1, 1, 48000, generator=torch.Generator().manual_seed(6)) * 0.1
    units.update(eq_band2_gain_db=6.0, eq_high_shelf_gain_db=4.0)
    yn = c(noise, c.normalize(units))[0, 0].numpy()
    xc = np.correlate(yn[100:-100], noise[0, 0, 100:-100].numpy(), "full")
    assert int(np.argmax(np.abs(xc))) - (len(xc) // 2) == 0


def test_console_is_the_composition_of_the_stages(console):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 1, 16000, generator=g) * 0.2
    p = torch.rand(2, console.num_params, generator=g)
    u = console.denormalize(p)
    z = F.gain(x, u["gain_db"])
    z = F.parametric_eq(z, 48000, *console._eq_args(u))
    z = F.compressor(z, 48000, *console._comp_args(u))
    ref = z + F.reverb(z, 48000, u["reverb_decay_s"], u["reverb_predelay_ms"], u["reverb_tone"], u["reverb_wet_db"])
    ref = F.gain(ref, u["output_gain_db"])
    assert torch.allclose(console(x, p), ref, atol=1e-5)


@pytest.mark.parametrize("stages", [None, {"reverb": False}, {"eq": False, "compressor": False}])
def test_streamer_equals_forward(stages):
    """Chunks of sizes that do not divide the length (numpy and torch in); tolerance 2e-5 abs
    (float32, signal peak ~1)."""
    c = VocalConsole(16000, stages=stages)
    g = torch.Generator().manual_seed(8)
    n = 3 * 16000 + 123
    x = torch.randn(1, 1, n, generator=g) * torch.linspace(0.02, 0.5, n)
    p = torch.rand(1, c.num_params, generator=g)
    y = c(x, p)[0].numpy()
    for sizes in ([4097], [1000, 333, 7919, 1, 0, 12000]):
        s = c.streamer(p)
        out, i, k = [], 0, 0
        while i < n:
            m = sizes[k % len(sizes)]
            chunk = x[0, :, i : i + m]
            out.append(s.process(chunk.numpy() if k % 2 else chunk))
            out[-1] = np.asarray(out[-1])
            i, k = i + m, k + 1
        ys = np.concatenate(out, -1)
        assert ys.shape == y.shape and ys.dtype == np.float32
        assert np.abs(ys - y).max() < 2e-5


def test_streamer_equals_forward_long_chunks_cut_into_pieces():
    """Chunks much longer than the filters: the overlap-add cuts each into several FFT pieces
    (`_ola_fft_size`); the result equals forward run in float64 to 5e-6 abs (peak ~1.6; the
    float32 forward itself is off by ~2.5e-5 here, from its one 200k-point FFT)."""
    from mst_single.console import _ola_fft_size

    c = VocalConsole(16000)
    g = torch.Generator().manual_seed(9)
    n = 12 * 16000 + 77
    x = torch.randn(1, 1, n, generator=g) * torch.linspace(0.02, 0.5, n)
    units = c.denormalize(torch.rand(1, c.num_params, generator=g))
    units.update(reverb_decay_s=torch.tensor([0.3]), reverb_wet_db=torch.tensor([-6.0]),
                 comp_threshold_db=torch.tensor([-30.0]), comp_ratio=torch.tensor([4.0]))
    p = c.normalize(units)
    y = c(x.double(), p.double())[0].numpy()
    s = c.streamer(p)
    chunk = 1 << 16
    assert _ola_fft_size(s.eq.taps, chunk) < chunk // 2  # the EQ: several small FFTs per chunk
    ys = np.concatenate([s.process(x[0, :, i : i + chunk].numpy()) for i in range(0, n, chunk)], -1)
    assert s.eq._pieces.shape[0] > 2
    assert ys.shape == y.shape and np.abs(ys - y).max() < 5e-6


def test_nan_parameters_never_raise_and_stay_in_their_row():
    """A diverged controller (NaN in any one parameter) must not crash the console (issue 7):
    forward, backward and the streamer return; the other batch row is unaffected."""
    c = VocalConsole(16000)
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 1, 4000, generator=g) * 0.2
    p = torch.rand(2, c.num_params, generator=g)
    clean = c(x[1:], p[1:])
    for i in range(c.num_params):
        q = p.clone()
        q[0, i] = float("nan")
        q.requires_grad_()
        y = c(x, q)
        assert y.shape == (2, 2, 4000)
        y[1].sum().backward()
        assert torch.allclose(y[1], clean[0], atol=1e-6), c.param_names[i]
        assert torch.isfinite(q.grad[1]).all()
        ys = c.streamer(q[:1].detach()).process(x[0].numpy())
        assert ys.shape == (2, 4000)
    for v in (float("nan"), float("inf")):
        assert F.eq_fir_length(16000, torch.full((1, 6), v), torch.full((1, 6), 100.0), torch.ones(1, 6)) >= 1024
        assert F.reverb_ir_length(16000, torch.tensor([v]), torch.tensor([0.0])) == int(2.5 * 16000)


def test_output_gain_to_moves_only_the_output_gain_within_its_range():
    from mst_single.console import VocalConsole

    c = VocalConsole(16000)
    p = c.normalize({"output_gain_db": 2.0, "gain_db": 3.0})
    p2, db = c.output_gain_to(p, measured_lufs=-20.0, output_lufs=-14.0)  # 6 dB up
    u = c.denormalize(p2)
    assert db == pytest.approx(6.0, abs=1e-4) and float(u["output_gain_db"]) == pytest.approx(8.0, abs=1e-4)
    i = c.param_names.index("output_gain_db")
    assert torch.equal(torch.cat([p2[:, :i], p2[:, i + 1:]], 1), torch.cat([p[:, :i], p[:, i + 1:]], 1))
    p3, db3 = c.output_gain_to(p, measured_lufs=-60.0, output_lufs=-14.0)  # 46 dB wanted, 22 allowed
    assert db3 == pytest.approx(22.0, abs=1e-3) and float(c.denormalize(p3)["output_gain_db"]) == pytest.approx(24.0, abs=1e-3)
    assert c.output_gain_to(p, measured_lufs=-70.0, output_lufs=-14.0) == (p, 0.0)  # silence: untouched
    off = VocalConsole(16000, {"output_gain": False})
    q = off.default_params(1)
    assert off.output_gain_to(q, -20.0, -14.0) == (q, 0.0)
    # known_setting keeps this console's names and ignores the rest
    assert torch.equal(c.known_setting({"gain_db": 3.0, "limiter_db": -1.0}), c.normalize({"gain_db": 3.0}))
