"""Controllers: shapes, [0, 1] range, reference rules, size, gradients, and that they can learn."""
import pytest
import torch

from mst_single.errors import MstError
from mst_single.models import (AudioEncoder, DirectController, ReferenceController, build_controller,
                               count_parameters, mel_filterbank)

P = 12


def _batch(sr, seconds, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * sr)
    return 0.1 * torch.randn(batch, 1, n, generator=g), 0.1 * torch.randn(batch, 2, n + 7, generator=g)


@pytest.mark.parametrize("approach", ["approach1", "approach2"])
@pytest.mark.parametrize("sr,seconds", [(16000, 0.5013), (48000, 0.7777), (44100, 0.01)])
def test_shapes_and_range(approach, sr, seconds):
    torch.manual_seed(0)
    model = build_controller(approach, P, sr, encoder=dict(channels=(8, 16), embed_dim=32), hidden=32)
    raw, ref = _batch(sr, seconds)
    p = model(raw, ref if model.needs_reference else None)
    assert p.shape == (2, P)
    assert torch.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    assert model.approach == approach and model.num_params == P


def test_encoder_accepts_mono_and_stereo_and_silence():
    enc = AudioEncoder(16000, channels=(8,), embed_dim=16).eval()
    z1 = enc(torch.zeros(3, 1, 8000))
    z2 = enc(torch.zeros(3, 2, 8001))
    assert z1.shape == z2.shape == (3, 16) and torch.isfinite(z1).all() and torch.isfinite(z2).all()
    # a centred stereo signal (side = 0) embeds like its mono version
    x = 0.1 * torch.randn(1, 1, 8000)
    assert torch.allclose(enc(x), enc(x.expand(1, 2, 8000)), atol=1e-5)
    with pytest.raises(ValueError, match="1 or 2"):
        enc(torch.zeros(1, 3, 8000))


def test_encoder_sees_level():
    """GroupNorm alone would hide the overall level; the statistics path must keep it."""
    enc = AudioEncoder(16000, channels=(8,), embed_dim=16).eval()
    x = 0.1 * torch.randn(1, 1, 8000)
    assert not torch.allclose(enc(x), enc(0.1 * x), atol=1e-4)


@pytest.mark.parametrize("sr", [16000, 44100, 48000])
def test_mel_filterbank_has_no_empty_band(sr):
    enc = AudioEncoder(sr)
    fb = mel_filterbank(sr, enc.n_fft, 64)
    assert fb.shape == (64, enc.n_fft // 2 + 1)
    assert (fb.sum(1) > 0).all() and (fb >= 0).all()
    assert 0.03 <= enc.n_fft / sr < 0.05  # 32-46 ms window (nearest power of two to 43 ms)


def test_reference_required_and_refused_with_clear_messages():
    raw, ref = _batch(16000, 0.3)
    a1 = build_controller("approach1", P, 16000, encoder=dict(channels=(8,), embed_dim=16), hidden=16)
    a2 = build_controller("approach2", P, 16000, encoder=dict(channels=(8,), embed_dim=16), hidden=16)
    assert isinstance(a1, ReferenceController) and a1.needs_reference
    assert isinstance(a2, DirectController) and not a2.needs_reference
    with pytest.raises(ValueError, match="approach1.*needs a reference") as e1:
        a1(raw)
    with pytest.raises(ValueError, match="approach2.*takes no reference") as e2:
        a2(raw, ref)
    assert isinstance(e1.value, MstError) and "--reference" in str(e1.value)
    assert isinstance(e2.value, MstError) and "--reference" in str(e2.value)
    with pytest.raises(ValueError, match="batch"):
        a1(raw, ref[:1])
    with pytest.raises(ValueError, match="unknown approach"):
        build_controller("approach3", P, 16000)


@pytest.mark.parametrize("approach", ["approach1", "approach2"])
def test_default_size_is_in_band(approach):
    model = build_controller(approach, 30, 48000)
    n = count_parameters(model)
    assert 300_000 <= n <= 2_000_000
    assert 300_000 <= count_parameters(model.encoder) <= n


@pytest.mark.parametrize("approach", ["approach1", "approach2"])
def test_gradients_reach_every_parameter(approach):
    torch.manual_seed(0)
    model = build_controller(approach, P, 16000, encoder=dict(channels=(8, 16, 16), embed_dim=32), hidden=32)
    raw, ref = _batch(16000, 0.5, batch=3)
    p = model(raw, ref if model.needs_reference else None)
    ((p - 0.3) ** 2).sum().backward()
    for name, w in model.named_parameters():
        assert w.grad is not None and torch.isfinite(w.grad).all(), name
        assert w.grad.abs().sum() > 0, name


def test_initial_params_follow_init_vector():
    # with a small output layer the first predictions sit at init_params (the bias) whatever the audio
    init = torch.linspace(0.05, 0.95, P)
    model = DirectController(P, 16000, encoder=dict(channels=(8,), embed_dim=16), hidden=16,
                             init_params=init.tolist(), head_init_scale=0.01).eval()
    p = model(_batch(16000, 0.5)[0])
    assert torch.allclose(p, init.expand(2, P), atol=0.02)
    plain = ReferenceController(P, 16000, encoder=dict(channels=(8,), embed_dim=16), hidden=16,
                                head_init_scale=0.01).eval()
    raw, ref = _batch(16000, 0.5)
    assert torch.allclose(plain(raw, ref), torch.full((2, P), 0.5), atol=0.02)
    with pytest.raises(ValueError, match="init_params"):
        DirectController(P, 16000, init_params=[0.5] * (P + 1))


@pytest.mark.parametrize("approach", ["approach1", "approach2"])
def test_a_few_steps_fit_a_fixed_target(approach):
    torch.manual_seed(0)
    model = build_controller(approach, P, 16000, encoder=dict(channels=(8, 16), embed_dim=32), hidden=64,
                             dropout=0.0)
    raw, ref = _batch(16000, 0.25, batch=2)
    ref = ref[..., :raw.shape[-1]]  # equal lengths, as in training: the single-pass path
    # two clearly different items (noise vs a quiet tone) with different targets: the bias alone
    # cannot fit both, the network has to use the audio
    raw[1, 0] = 0.01 * torch.sin(2 * torch.pi * 440 * torch.arange(raw.shape[-1]) / 16000)
    ref = ref if model.needs_reference else None
    target = torch.rand(2, P, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = ((model(raw, ref) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.4 * losses[0]


def test_reference_controller_single_pass_equals_separate_encoding():
    model = ReferenceController(P, 16000, encoder=dict(channels=(8, 16), embed_dim=16), hidden=16).eval()
    raw, ref = _batch(16000, 0.3)
    ref = ref[..., :raw.shape[-1]]
    z_raw, z_ref = model.encoder(raw), model.encoder(ref)
    expected = torch.sigmoid(model.head(torch.cat([z_raw, z_ref, z_ref - z_raw], dim=1)))
    assert torch.allclose(model(raw, ref), expected, atol=1e-5)


@pytest.mark.parametrize("approach", ["approach1", "approach2"])
def test_head_init_scale_and_feature_norm_set_how_much_first_predictions_depend_on_the_audio(approach):
    # 0.01 without feature_norm (the recipe before e05) starts every song at the same setting and
    # scales the gradient reaching the encoder by 0.01; the defaults start with predictions that
    # differ per input
    raw, ref = _batch(16000, 0.5, batch=4)
    raw = raw * torch.tensor([0.01, 0.1, 0.3, 1.0]).view(4, 1, 1)  # different levels and content
    raw[1] = torch.sin(2 * torch.pi * 200 * torch.arange(raw.shape[-1]) / 16000) * 0.2
    spread, grad = {}, {}
    for scale in (0.01, 1.0):
        torch.manual_seed(0)
        m = build_controller(approach, P, 16000, encoder=dict(channels=(8, 16), embed_dim=32, feature_norm=scale == 1.0),
                             hidden=64, dropout=0.0, head_init_scale=scale)
        p = m(raw, ref[..., :raw.shape[-1]] + raw.expand(-1, 2, -1) if m.needs_reference else None)
        spread[scale] = p.std(0).mean().item()
        p.sum().backward()
        grad[scale] = m.encoder.proj[0].weight.grad.norm().item()
    assert spread[0.01] < 1e-4 and spread[1.0] > 50 * spread[0.01]  # measured: ~200x
    assert grad[1.0] > 10 * grad[0.01]  # measured: ~18x


def test_feature_norm_trains_on_a_batch_of_one_and_infers_with_running_statistics():
    m = build_controller("approach2", P, 16000, encoder=dict(channels=(8,), embed_dim=16), hidden=16, dropout=0.0)
    raw = _batch(16000, 0.3, batch=3)[0]
    m.train()
    m(raw).sum().backward()  # batch statistics; running ones move toward them
    assert not torch.equal(m.encoder.norm.running_mean, torch.zeros_like(m.encoder.norm.running_mean))
    p1 = m(raw[:1])  # a last batch of one: no batch statistics, no error
    m.eval()
    assert torch.allclose(p1, m(raw[:1]), atol=1e-5) and torch.isfinite(p1).all()
