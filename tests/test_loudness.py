"""Loudness: torch meter and streaming meter against pyloudnorm; normalisation hits its target."""
import numpy as np
import pytest
import torch

from mst_single.loudness import (StreamingLoudness, integrated_loudness, k_weighting_coefficients,
                                 loudness_torch, normalize_loudness)


def _vocal_like(sr, seconds, channels=2, seed=0):
    """Noise + a tone with a loud and a quiet half and a silent gap: exercises both gates."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    env = np.where(t < seconds / 2, 1.0, 0.05) * (np.abs(t - seconds * 0.3) > 0.15)
    x = 0.1 * rng.standard_normal((channels, n)) + 0.3 * np.sin(2 * np.pi * 220 * t)
    return (x * env).astype(np.float32)


@pytest.mark.parametrize("sr", [16000, 44100, 48000])
@pytest.mark.parametrize("seconds", [1.0, 2.37])
def test_loudness_torch_matches_pyloudnorm(sr, seconds):
    x = np.stack([_vocal_like(sr, seconds, 2, seed=1), _vocal_like(sr, seconds, 2, seed=2) * 0.1])
    ours = loudness_torch(torch.from_numpy(x), sr)
    assert ours.shape == (2,)
    for i in range(2):
        ref = integrated_loudness(x[i], sr)
        assert -60 < ref < 0
        assert abs(ours[i].item() - ref) < 0.1
    # mono (T,) and (1, T) give the same pyloudnorm value
    assert integrated_loudness(x[0, 0], sr) == pytest.approx(integrated_loudness(x[0, :1], sr))


def test_k_weighting_matches_bs1770_table_at_48k():
    b, a = k_weighting_coefficients(48000)
    # ITU-R BS.1770-4 tabulated 48 kHz coefficients; the cookbook design agrees to ~1e-3
    assert np.allclose(b[0], [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=2e-3)
    assert np.allclose(a[0], [1.0, -1.69065929318241, 0.73248077421585], atol=2e-3)
    assert np.allclose(a[1], [1.0, -1.99004745483398, 0.99007225036621], atol=2e-3)


def test_silence_and_short_audio():
    assert integrated_loudness(np.zeros((2, 48000)), 48000) == -70.0
    assert integrated_loudness(np.full(1000, 0.5), 48000) == -70.0  # shorter than one 400 ms block
    out = loudness_torch(torch.zeros(3, 2, 48000), 48000)
    assert torch.equal(out, torch.full((3,), -70.0))
    short = loudness_torch(torch.full((1, 1, 1000), 0.1), 48000)
    assert torch.isfinite(short).all() and short.item() > -70


@pytest.mark.parametrize("sr", [16000, 48000])
def test_normalize_hits_target_and_is_silence_safe(sr):
    x = torch.from_numpy(np.stack([_vocal_like(sr, 1.5, 1, seed=3) * 0.02, _vocal_like(sr, 1.5, 1, seed=4),
                                   np.zeros((1, int(1.5 * sr)), np.float32)]))
    y, gain_db = normalize_loudness(x, sr, target_lufs=-23.0, max_gain_db=40.0)
    assert y.shape == x.shape and gain_db.shape == (3,)
    for i in range(2):
        assert abs(integrated_loudness(y[i].numpy(), sr) - (-23.0)) < 0.1
    assert gain_db[2].item() == 0.0 and torch.equal(y[2], x[2])  # silence: untouched, no NaN
    assert torch.isfinite(y).all() and torch.isfinite(gain_db).all()
    # clamp: a quiet signal cannot be pushed up by more than max_gain_db
    _, g = normalize_loudness(x[1:2] * 1e-2, sr, target_lufs=-10.0, max_gain_db=12.0)
    assert g.item() == pytest.approx(12.0)


def test_normalize_passes_gradient_through_audio():
    x = torch.from_numpy(_vocal_like(16000, 1.0, 1)[None]).requires_grad_()
    y, gain_db = normalize_loudness(x, 16000, -20.0)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 10 ** (gain_db.item() / 20)))


@pytest.mark.parametrize("sr,chunk", [(44100, 4999), (48000, 12347), (16000, 1)])
def test_streaming_equals_whole_file(sr, chunk):
    x = _vocal_like(sr, 2.13 if chunk > 1 else 0.9, 2, seed=5)
    meter = StreamingLoudness(sr, 2)
    for i in range(0, x.shape[1], chunk):
        meter.update(x[:, i:i + chunk] if i % 2 else torch.from_numpy(x[:, i:i + chunk]))  # numpy or torch
    whole = integrated_loudness(x, sr)
    assert abs(meter.integrated() - whole) < 0.05
    assert abs(meter.integrated() - loudness_torch(torch.from_numpy(x)[None], sr).item()) < 0.05


def test_streaming_edge_cases():
    meter = StreamingLoudness(48000, 1)
    assert meter.integrated() == -70.0
    meter.update(np.zeros((1, 0)))
    meter.update(np.zeros((1, 48000)))
    assert meter.integrated() == -70.0
    with pytest.raises(ValueError, match="shape"):
        meter.update(np.zeros((2, 10)))


def test_match_level_torch_is_invariant_to_the_input_level_and_caps_the_gain():
    from mst_single.loudness import k_weight_torch, match_level_torch

    sr = 16000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, sr, generator=g) * 0.1
    ref = torch.randn(2, 2, sr, generator=g) * torch.tensor([0.03, 0.3]).view(2, 1, 1)
    y = match_level_torch(x, ref, sr)
    e = lambda a: k_weight_torch(a, sr).square().mean((-2, -1))
    assert torch.allclose(e(y), e(ref), rtol=1e-4)  # per item
    assert torch.allclose(match_level_torch(x * 3.0, ref, sr), y, rtol=1e-4, atol=1e-7)  # x's level is gone (within the cap)
    quiet = x * 1e-6  # 120 dB down: the gain stops at +30 dB instead of lifting noise to the target
    assert torch.allclose(match_level_torch(quiet, ref, sr), quiet * 10 ** 1.5, rtol=1e-4)
