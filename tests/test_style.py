"""mst_single.style: alignment-free style statistics, the style loss, and test-time refinement."""
import math

import numpy as np
import pytest
import torch

from mst_single.console import VocalConsole
from mst_single.style import DELTA_QUANTILES, QUANTILES, StyleLoss, refine_setting, style_loss, style_stats

SR = 16000


def sung(seconds: float, seed: int, f0: float = 200.0) -> torch.Tensor:
    """(1, samples) harmonics with syllable gaps and a little noise (a different take per seed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f = f0 * (1 + 0.02 * rng.standard_normal()) * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))
    ph = 2 * np.pi * np.cumsum(f) / SR
    env = np.clip(np.sin(2 * np.pi * (1.3 + 0.2 * rng.random()) * t + rng.random() * 6), 0, None) ** 0.5
    x = 0.1 * env * sum(np.sin(k * ph) / k for k in range(1, 12)) + 1e-3 * rng.standard_normal(t.size)
    return torch.tensor(x, dtype=torch.float32)[None]


def test_stats_shapes_and_what_they_follow():
    x = torch.stack([sung(1.0, s) for s in range(3)])  # (3, 1, T)
    st = style_stats(x, SR, n_bands=16, n_fft=512)
    assert st["quantiles"].shape == (16, len(QUANTILES)) and st["side"].shape == (16,)
    assert st["delta"].shape == (16, len(DELTA_QUANTILES))
    assert (st["quantiles"].diff(dim=1) >= 0).all()  # quantiles are ordered
    louder = style_stats(2 * x, SR, n_bands=16, n_fft=512)
    assert torch.allclose(louder["quantiles"] - st["quantiles"], torch.full_like(st["quantiles"], 20 * math.log10(2)),
                          atol=0.05)
    assert torch.allclose(louder["delta"], st["delta"], atol=1e-3)  # level changes do not depend on the level
    # a slower decay (a longer tail) shows in the falling level changes
    tail = torch.nn.functional.conv1d(x, torch.exp(-torch.arange(4000.0) / 1500)[None, None].flip(-1), padding=3999)
    slow = style_stats(tail[..., :x.shape[-1]], SR, 16, 512)["delta"]
    voiced = st["quantiles"][:, 3] > st["quantiles"][:, 3].max() - 30  # bands holding the harmonics, not the noise
    assert voiced.sum() >= 4 and slow[voiced, 0].mean() > st["delta"][voiced, 0].mean() + 0.3
    # side/mid: identical channels have no side (the loss clamps the ratio at -60 dB)
    assert (style_stats(x.repeat(1, 2, 1), SR, 16, 512)["side"] < -60).all()
    wide = torch.cat([x, 0.5 * x], 1)  # side = x/4, mid = 3x/4: 20 log10(1/3) dB in every band
    assert torch.allclose(style_stats(wide, SR, 16, 512)["side"], torch.full((16,), 20 * math.log10(1 / 3)), atol=0.05)
    with pytest.raises(ValueError, match="expected"):
        style_stats(x[:, 0], SR)


def test_style_loss_ignores_alignment_but_not_style():
    a = sung(6.0, 0)[None]
    shifted = torch.roll(a, 4000, dims=-1)  # the same take, a quarter second later
    ref = StyleLoss(a.repeat(1, 2, 1), SR)
    assert ref(a.repeat(1, 2, 1))["loss"].item() < 1e-6
    louder = ref((2 * a).repeat(1, 2, 1))["loss"].item()  # +6 dB is a different style
    assert louder > 0.4 and ref(shifted.repeat(1, 2, 1))["loss"].item() < 0.25 * louder
    # gradients reach the signal
    y = a.repeat(1, 2, 1).clone().requires_grad_(True)
    style_loss(style_stats(1.5 * y, SR), ref.target).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_refine_moves_a_setting_toward_the_references_style():
    console = VocalConsole(SR)
    names = console.param_names
    start = console.default_params(1)
    true = start.clone()
    true[0, names.index("output_gain_db")] = 0.85  # louder
    true[0, names.index("eq_high_shelf_gain_db")] = 0.9  # brighter
    true[0, names.index("reverb_wet_db")] = 0.7  # wetter
    raw = torch.stack([sung(1.0, s) for s in range(4)])  # the song being mixed
    with torch.no_grad():  # the reference: OTHER sections of the same style (not aligned with raw)
        ref = console(torch.stack([sung(1.0, s) for s in range(10, 14)]), true.expand(4, -1))
    loss = StyleLoss(ref, SR)
    with torch.no_grad():
        before = loss(console(raw, start.expand(4, -1)))["loss"].item()
    p = refine_setting(console, raw, ref, start, steps=40, lr=0.1, crops=2, seed=0)
    with torch.no_grad():
        after = loss(console(raw, p.expand(4, -1)))["loss"].item()
    assert p.shape == start.shape and ((p >= 0) & (p <= 1)).all()
    assert after < 0.5 * before
    for k in ("output_gain_db", "eq_high_shelf_gain_db", "reverb_wet_db"):
        i = names.index(k)
        assert abs(p[0, i] - true[0, i]) < abs(start[0, i] - true[0, i]), k
    # seeded: the same call gives the same setting; 0 steps gives the start back
    assert torch.equal(p, refine_setting(console, raw, ref, start, steps=40, lr=0.1, crops=2, seed=0))
    assert torch.equal(refine_setting(console, raw, ref, start, steps=0), start)


def test_match_reference_loudness_lands_the_output_at_the_references_loudness():
    from mst_single.loudness import integrated_loudness
    from mst_single.style import match_reference_loudness

    console = VocalConsole(SR)
    raw = torch.stack([sung(1.0, s) for s in range(4)])
    p = console.default_params(1)
    loud = p.clone()
    loud[0, console.param_names.index("output_gain_db")] = 0.8
    with torch.no_grad():
        ref = console(torch.stack([sung(1.0, s) for s in range(20, 23)]), loud.expand(3, -1))
    joined = lambda x: x.permute(1, 0, 2).reshape(x.shape[1], -1).numpy()  # noqa: E731
    moved = match_reference_loudness(console, raw, ref, p)
    with torch.no_grad():
        before = integrated_loudness(joined(console(raw, p.expand(4, -1))), SR)
        after = integrated_loudness(joined(console(raw, moved.expand(4, -1))), SR)
    target = integrated_loudness(joined(ref), SR)
    assert abs(before - target) > 3 and abs(after - target) < 0.05
    others = [i for i, k in enumerate(console.param_names) if k != "output_gain_db"]
    assert torch.equal(moved[0, others], p[0, others])  # only the output gain moves


def test_refine_probe_keeps_the_start_whose_refined_setting_matches_the_reference_best():
    """scripts/refine_probe.py (e09 README, "What limits it"): of several starts, the refined setting
    with the lowest style loss on all raw segments is kept, and screened starts are the best-ranked."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "refine_probe.py"
    spec = importlib.util.spec_from_file_location("refine_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    console = VocalConsole(SR)
    names = console.param_names
    true = console.default_params(1)
    true[0, names.index("output_gain_db")] = 0.85
    true[0, names.index("eq_high_shelf_gain_db")] = 0.9
    far = true.clone()
    far[0, names.index("output_gain_db")] = 0.15
    far[0, names.index("eq_high_shelf_gain_db")] = 0.1
    raw = torch.stack([sung(1.0, s) for s in range(4)])
    with torch.no_grad():
        ref = console(torch.stack([sung(1.0, s) for s in range(10, 14)]), true.expand(4, -1))
    best, p, final = probe.refine_from_starts(console, raw, ref, {"far": far, "truth": true}, steps=2, lr=0.05,
                                              crops=2)
    assert best == "truth" and set(final) == {"far", "truth"} and final["truth"] < final["far"]
    assert p.shape == (1, len(names)) and abs(p[0, names.index("output_gain_db")] - 0.85) < 0.1
    screened = probe.screened_starts(console, raw, ref, n=6, top=2, seed=0)
    assert len(screened) == 2 and all(s.shape == (1, len(names)) for s in screened.values())
    loss = StyleLoss(ref, SR)
    g = torch.Generator().manual_seed(777)
    pop = 0.02 + 0.96 * torch.rand(6, len(names), generator=g)
    pick = torch.randperm(4, generator=g)[:4]
    with torch.no_grad():
        ranked = sorted(range(6), key=lambda j: float(loss(console(raw[pick], pop[j].expand(4, -1)))["loss"]))
    assert list(screened) == [f"screen{j}" for j in ranked[:2]]
    with pytest.raises(SystemExit):
        probe.main(["--start", "oracle"])  # only network, mean or truth


def test_style_ridge_reads_the_setting_of_an_unseen_reference_better_than_the_middle_of_the_range():
    """style.fit_style_ridge (e09's `ridge-start`): fitted only on the console's renders of some takes, it
    reads a new take's reference: output gain and reverb level much closer to the truth than the middle of
    the range, on settings and a take it never saw (the EQ needs more renders than a test affords); same
    seed, same map."""
    from mst_single.style import RIDGE_BANDS, RIDGE_RANGE, fit_style_ridge, style_features, style_ridge_setting

    console = VocalConsole(SR)
    names = console.param_names
    takes = [torch.stack([sung(1.0, 100 * k + s, f0=150.0 + 40 * k) for s in range(4)]) for k in range(5)]
    ridge = fit_style_ridge(console, takes, renders=12, seed=3)
    P, D = len(names), 17 * RIDGE_BANDS
    assert ridge["weight"].shape == (D, P) and ridge["bias"].shape == (P,) and ridge["mean"].shape == (D,)
    assert int(ridge["samples"]) == 60 and float(ridge["strength"]) > 0
    again = fit_style_ridge(console, takes, renders=12, seed=3)
    assert all(torch.equal(ridge[k], again[k]) for k in ridge)
    assert not torch.equal(fit_style_ridge(console, takes, renders=12, seed=4)["weight"], ridge["weight"])

    new = torch.stack([sung(1.0, 999 + s, f0=190.0) for s in range(4)])
    g = torch.Generator().manual_seed(0)
    watch = [names.index("output_gain_db"), names.index("reverb_wet_db")]
    err, err_mid = torch.zeros(len(watch)), torch.zeros(len(watch))
    for _ in range(8):
        p = RIDGE_RANGE[0] + (RIDGE_RANGE[1] - RIDGE_RANGE[0]) * torch.rand(1, P, generator=g)
        with torch.no_grad():
            ref = console(new[2:], p.expand(2, -1))
        got = style_ridge_setting(ridge, new[:2], ref, SR)
        assert got.shape == (1, P) and ((got > 0) & (got < 1)).all()
        err += (got - p)[0, watch].abs()
        err_mid += (0.5 - p)[0, watch].abs()
    assert (err < 0.6 * err_mid).all(), (err / 8, err_mid / 8)
    assert style_features(new[:2], ref, SR).shape == (D,)
    with pytest.raises(ValueError, match=">= 3 renders"):
        fit_style_ridge(console, takes[:1], renders=2)
