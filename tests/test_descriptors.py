"""Take descriptors (`mst_single.descriptors`, `model.take_descriptors`): values on signals whose
answer is known, streaming = one shot, the data layer, the model's use of them, fit -> evaluate -> mix."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synth_vocal, tiny_fit_args, write_pair

from mst_single.descriptors import DESCRIPTOR_NAMES, NUM_DESCRIPTORS, DescriptorMeter, take_descriptors

SR = 16000
REPO = Path(__file__).resolve().parent.parent
IDX = {n: i for i, n in enumerate(DESCRIPTOR_NAMES)}


def tone(freq: float, seconds: float = 2.0, sr: int = SR, level: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return level * np.sin(2 * np.pi * freq * t)


def test_names_and_shape():
    assert NUM_DESCRIPTORS == 13 and len(set(DESCRIPTOR_NAMES)) == 13
    d = take_descriptors(synth_vocal(3.0, SR, seed=1), SR)
    assert d.shape == (13,) and np.all(np.isfinite(d))


def test_a_sine_reads_its_band_centroid_and_crest():
    d = take_descriptors(tone(1000.0, sr=48000), 48000)
    assert d[IDX["band_1k"]] > -0.1  # nearly all the energy in the 1 kHz octave
    assert d[IDX["band_4k"]] < -60
    assert d[IDX["centroid_oct"]] == pytest.approx(0.0, abs=0.02)  # log2(1 kHz / 1 kHz)
    assert d[IDX["crest_db"]] == pytest.approx(3.01, abs=0.05)  # a sine's peak / RMS
    assert d[IDX["level_spread_db"]] < 0.1 and d[IDX["pause_fraction"]] == 0.0


def test_a_brighter_take_has_more_high_band_share_and_a_higher_centroid():
    x = synth_vocal(4.0, SR, seed=2)
    bright = x + 0.05 * tone(4000.0, 4.0) * (np.abs(x) > 1e-3)
    a, b = take_descriptors(x, SR), take_descriptors(bright, SR)
    assert b[IDX["band_4k"]] > a[IDX["band_4k"]] + 6
    assert b[IDX["centroid_oct"]] > a[IDX["centroid_oct"]]


def test_pauses_dynamics_and_level_independence():
    x = tone(300.0, 4.0)
    gaps = x * np.repeat([1.0, 0.0], 2 * SR)  # half the take is silence
    dyn = x * np.repeat([1.0, 0.1, 1.0, 0.1], SR)  # 20 dB steps
    d_gap, d_dyn, d_flat = (take_descriptors(v, SR) for v in (gaps, dyn, x))
    assert d_gap[IDX["pause_fraction"]] == pytest.approx(0.5, abs=0.03)
    assert d_dyn[IDX["level_spread_db"]] == pytest.approx(20.0, abs=0.5)
    assert d_flat[IDX["level_spread_db"]] < 0.1
    v = synth_vocal(3.0, SR, seed=3)
    assert np.allclose(take_descriptors(v, SR), take_descriptors(0.01 * v, SR), atol=1e-6)


@pytest.mark.parametrize("block", [1, 777, 4096, 100000])
def test_streaming_gives_the_one_shot_result_for_any_block_size(block):
    x = synth_vocal(2.3, SR, seed=4).astype(np.float64)
    meter = DescriptorMeter(SR)
    for i in range(0, len(x), block):
        meter.update(x[i:i + block])
    assert np.allclose(meter.result(), take_descriptors(x, SR), rtol=0, atol=1e-9)


def test_bad_audio_is_refused():
    with pytest.raises(ValueError, match="no audio"):
        DescriptorMeter(SR).result()
    x = tone(300.0)
    x[5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        take_descriptors(x, SR)


def test_the_data_layer_measures_the_whole_native_raw_once(tmp_path):
    from mst_single.data import VocalReferenceDataset, index_songs, song_descriptors

    raw = synth_vocal(3.0, 22050, seed=5)
    write_pair(tmp_path, "a", raw, np.stack([raw, raw]), 22050)
    song = index_songs(tmp_path, SR)[0]
    d = song_descriptors(song)
    assert d.dtype == np.float32 and np.allclose(d, take_descriptors(raw, 22050), atol=1e-4)
    ds = VocalReferenceDataset(songs=[song], split="val", sample_rate=SR, segment_seconds=1.0, descriptors=True)
    assert torch.equal(ds[0]["descriptors"], torch.from_numpy(d))
    assert "descriptors" not in VocalReferenceDataset(songs=[song], split="val", sample_rate=SR,
                                                      segment_seconds=1.0)[0]


def test_the_controller_starts_as_without_them_then_uses_them():
    from mst_single.models import build_controller

    torch.manual_seed(0)
    kw = dict(encoder={"n_mels": 16, "channels": [4], "embed_dim": 8}, hidden=8, dropout=0.0)
    plain = build_controller("approach2", 5, SR, **kw).eval()
    torch.manual_seed(0)
    with_d = build_controller("approach2", 5, SR, num_descriptors=13, **kw).eval()
    raw = torch.from_numpy(synth_vocal(1.0, SR, seed=6))[None, None]
    d = torch.randn(1, 13)
    assert torch.allclose(plain(raw), with_d(raw, descriptors=d))  # zero-initialised: no change at the start
    p = with_d(raw, descriptors=d)
    p.sum().backward()
    assert with_d.descriptor_head.weight.grad.abs().sum() > 0  # the audio path's loss reaches the map
    with torch.no_grad():
        with_d.descriptor_head.weight.normal_()
    assert not torch.allclose(with_d(raw, descriptors=d), with_d(raw, descriptors=-d), atol=1e-3)
    with pytest.raises(ValueError, match="descriptors must have shape"):
        with_d(raw)
    with pytest.raises(ValueError, match="takes no take descriptors"):
        plain(raw, descriptors=d)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny fit of the real approach2 config with take descriptors."""
    from mst_single.demo import make_demo_data
    from mst_single.train import cli_main

    tmp = tmp_path_factory.mktemp("desc")
    root = make_demo_data(tmp / "demo", songs=5, seconds=3, sample_rate=SR)
    assert cli_main(["fit", "-c", str(REPO / "configs" / "approach2.yaml"), *tiny_fit_args(root, tmp / "runs"),
                     "--model.take_descriptors", "true", "--model.descriptor_lr", "0.05",
                     "--run_name", "d"]) == 0
    return root, tmp / "runs" / "d"


def test_fit_standardises_by_the_training_songs_and_saves_the_statistics(fitted):
    from mst_single.data import VocalDataModule, song_descriptors
    from mst_single.experiments.evaluate import load_model

    root, run = fitted
    model = load_model(run / "checkpoints" / "last.ckpt")
    dm = VocalDataModule(str(root), sample_rate=SR, segment_seconds=1.0, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    d = np.stack([song_descriptors(s) for s in dm.splits["train"]]).astype(np.float64)
    std = d.std(0)
    assert np.allclose(model.descriptor_mean.numpy(), d.mean(0), atol=1e-4)
    assert np.allclose(model.descriptor_std.numpy(), np.where(std > 1e-6, std, 1.0), rtol=1e-4)
    assert model.controller.descriptor_head.weight.abs().sum() > 0  # trained away from its zero start
    assert "take_descriptors: true" in (run / "config.yaml").read_text()
    opt = model.configure_optimizers()["optimizer"]
    assert sorted(g["lr"] for g in opt.param_groups)[-1] == pytest.approx(0.05)


def test_prediction_needs_the_descriptors_and_follows_them(fitted):
    from mst_single.errors import MstError
    from mst_single.experiments.evaluate import load_model

    _, run = fitted
    model = load_model(run / "checkpoints" / "last.ckpt").eval()
    raw = torch.from_numpy(synth_vocal(1.0, SR, seed=7))[None, None]
    with pytest.raises(MstError, match="take descriptors"):
        model.predict_params(raw)
    with torch.no_grad():
        model.controller.descriptor_head.weight.fill_(0.5)
        lo = model.predict_params(raw, descriptors=model.descriptor_mean - model.descriptor_std)
        hi = model.predict_params(raw, descriptors=model.descriptor_mean + model.descriptor_std)
    assert (hi - lo).abs().max() > 0.1


def test_evaluation_and_mix_read_the_same_descriptors_of_the_whole_raw(fitted, tmp_path):
    from mst_single.data import song_descriptors
    from mst_single.experiments.evaluate import TestSet, load_model, predict_settings
    from mst_single.mix import mix_file

    root, run = fitted
    ckpt = run / "checkpoints" / "last.ckpt"
    model = load_model(ckpt)
    ts = TestSet(root, sample_rate=SR, segment_seconds=1.0, val_fraction=0.2, test_fraction=0.2)
    settings = predict_settings(model, ts, "same", progress=False)
    assert set(settings) == set(ts.names) and all(p.shape == (1, model.console.num_params) for p in settings.values())
    song = ts.songs[0]
    report = mix_file(song.raw_path, tmp_path / "out.wav", ckpt)
    got = np.array([report["take_descriptors"][n] for n in DESCRIPTOR_NAMES])
    assert np.allclose(got, song_descriptors(song), atol=1e-4)
    saved = json.loads((tmp_path / "out.wav.params.json").read_text())
    assert list(saved["take_descriptors"]) == list(DESCRIPTOR_NAMES)
    sheet = (tmp_path / "out.wav.mixsheet.md").read_text()
    assert "What the model read of the take" in sheet and "level spread" in sheet


def _write_targets(path, root, sign):
    """Parameter targets of every training and validation song of the tiny split that follow the
    take: logit = sign x (the song's first standardised descriptors); returns the training songs."""
    from mst_single.console import VocalConsole
    from mst_single.data import VocalDataModule, song_descriptors

    dm = VocalDataModule(str(root), sample_rate=SR, segment_seconds=1.0, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    names = VocalConsole(SR).param_names
    songs = dm.splits["train"] + dm.splits["val"]
    d = np.stack([song_descriptors(s) for s in dm.splits["train"]])
    mu, sd = d.mean(0), np.where(d.std(0) > 1e-6, d.std(0), 1.0)
    params = {}
    for s in songs:
        z = np.clip((song_descriptors(s) - mu) / sd, -5, 5)
        params[s.name] = (1 / (1 + np.exp(-sign * np.resize(z[:4], len(names))))).tolist()
    path.write_text(json.dumps({"names": list(names), "params": params}))
    return dm.splits["train"]


def test_descriptor_map_starts_at_the_ridge_fit_of_the_targets_and_a_resumed_run_keeps_its_own(tmp_path):
    from mst_single.data import read_param_targets, song_descriptors
    from mst_single.descriptors import RIDGE_STRENGTHS, ridge_logits
    from mst_single.demo import make_demo_data
    from mst_single.experiments.evaluate import load_model
    from mst_single.train import cli_main

    root = make_demo_data(tmp_path / "demo", songs=7, seconds=3, sample_rate=SR)
    train = _write_targets(tmp_path / "t1.json", root, 1.0)
    # a learning rate of 1e-9 leaves the map where it started (AdamW moves each weight by ~lr per step)
    args = ["fit", "-c", str(REPO / "configs" / "approach2.yaml"), *tiny_fit_args(root, tmp_path / "runs"),
            "--model.take_descriptors", "true", "--model.descriptor_lr", "1e-9", "--model.param_loss_weight", "0.1",
            "--model.descriptor_init", "ridge", "--run_name", "r"]
    assert cli_main([*args, "--data.param_targets", str(tmp_path / "t1.json")]) == 0
    model = load_model(tmp_path / "runs" / "r" / "checkpoints" / "last.ckpt")
    d = torch.from_numpy(np.stack([song_descriptors(s) for s in train]))
    z = ((d - model.descriptor_mean) / model.descriptor_std).clamp(-5, 5).double().numpy()
    _, t1 = read_param_targets(tmp_path / "t1.json")
    W, b, lam = ridge_logits(z, np.stack([t1[s.name] for s in train]))
    head = model.controller.descriptor_head
    assert np.abs(W).max() > 0.2  # targets that follow the descriptors: a map far from zero
    assert np.allclose(head.weight.detach().numpy(), W.T, atol=1e-5)
    assert np.allclose(head.bias.detach().numpy(), b, atol=1e-5)
    assert float(model.descriptor_ridge_strength) == pytest.approx(lam) and lam in RIDGE_STRENGTHS

    # resumed with other targets: the map is the checkpoint's, not a refit (a lost Colab session
    # must not undo what the run learned)
    _write_targets(tmp_path / "t2.json", root, -1.0)
    assert cli_main([*args, "--data.param_targets", str(tmp_path / "t2.json"), "--ckpt_path", "last",
                     "--trainer.max_epochs", "2"]) == 0
    ckpt = tmp_path / "runs" / "r" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 4  # 2 more steps trained
    resumed = load_model(ckpt)
    assert np.allclose(resumed.controller.descriptor_head.weight.detach().numpy(), W.T, atol=1e-5)


def test_descriptor_init_ridge_needs_descriptors_and_targets(tmp_path, capsys):
    from mst_single.demo import make_demo_data
    from mst_single.errors import MstError
    from mst_single.system import VocalMST
    from mst_single.train import cli_main

    with pytest.raises(MstError, match="take_descriptors is off"):
        VocalMST(sample_rate=SR, descriptor_init="ridge")
    with pytest.raises(MstError, match="must be 'zero' or 'ridge'"):
        VocalMST(sample_rate=SR, take_descriptors=True, descriptor_init="pca")
    root = make_demo_data(tmp_path / "demo", songs=5, seconds=2, sample_rate=SR)
    assert cli_main(["fit", "-c", str(REPO / "configs" / "approach2.yaml"), *tiny_fit_args(root, tmp_path / "runs"),
                     "--model.take_descriptors", "true", "--model.descriptor_init", "ridge", "--run_name", "x"]) == 2
    assert "no parameter targets" in capsys.readouterr().err


def test_descriptor_ceiling_ridge_recovers_a_linear_rule_and_shrinks_on_noise():
    """scripts/descriptor_ceiling.py (e10 README, "What limits it"): its logit-space ridge."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("descriptor_ceiling", REPO / "scripts" / "descriptor_ceiling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    Z, Zt = rng.standard_normal((40, 13)), rng.standard_normal((10, 13))
    W = rng.standard_normal((13, 4)) * 0.15
    rule = lambda z: 1 / (1 + np.exp(-(0.3 + z @ W)))  # noqa: E731
    pred, lam = mod.ridge(Z, rule(Z), Zt)
    assert pred.shape == (10, 4) and np.abs(pred - rule(Zt)).max() < 0.01 and lam <= 0.1
    noise = rng.uniform(0.1, 0.9, (40, 4))
    pred, lam = mod.ridge(Z, noise, Zt)
    assert lam >= 10 and pred.std(0).max() < 0.1  # nothing to learn: every prediction near the mean


def test_targets_command_writes_the_prior_fits_that_the_recipe_config_trains_on(tmp_path, monkeypatch, capsys):
    """`mst-single targets` + configs/approach2-ridge-init-slow.yaml: e12's recipe on your own data,
    without `ablate`. The targets are the oracle fits pulled toward their median, cached per song so a
    second call (a lost notebook session) refits nothing."""
    import shutil

    from mst_single.cli import main
    from mst_single.console import VocalConsole
    from mst_single.data import read_param_targets
    from mst_single.demo import make_demo_data
    from mst_single.experiments import baselines as B
    from mst_single.experiments.evaluate import load_model
    from mst_single.train import cli_main

    root = make_demo_data(tmp_path / "demo", songs=6, seconds=3, sample_rate=SR, style="adaptive")
    cmd = ["targets", str(root), "--sample-rate", str(SR), "--max-steps", "6"]
    assert main([*cmd, "-o", str(tmp_path / "plain.json"), "--prior-weight", "0", "--jobs", "2"]) == 0
    assert main([*cmd, "-o", str(tmp_path / "prior.json"), "--prior-weight", "5"]) == 0
    names, plain = read_param_targets(tmp_path / "plain.json")
    names2, prior = read_param_targets(tmp_path / "prior.json")
    assert names == names2 == list(VocalConsole(SR).param_names)
    assert set(plain) == set(prior) == {p.stem for p in (root / "raw").glob("*.wav")}
    assert all(v.shape == (len(names),) and ((v > 0) & (v < 1)).all() for v in prior.values())

    def logit(p):
        return np.log(p / (1 - p))

    # pulled toward the median of the plain fits: the songs' settings spread less around it
    med = np.median(np.stack([logit(v) for v in plain.values()]), axis=0)
    spread = {k: np.mean([np.abs(logit(v) - med).mean() for v in t.values()]) for k, t in (("plain", plain), ("prior", prior))}
    assert spread["prior"] < 0.5 * spread["plain"]
    assert len(list((tmp_path / ".cache" / "oracle").glob("oracle-*.json"))) == 12  # 6 plain + 6 prior fits

    # rerun (a lost session): every fit comes from the cache, the file is the same
    monkeypatch.setattr(B, "fit_setting", lambda *a, **k: pytest.fail("refitted a cached song"))
    assert main([*cmd, "-o", str(tmp_path / "again.json"), "--prior-weight", "5"]) == 0
    assert (tmp_path / "again.json").read_text() == (tmp_path / "prior.json").read_text()
    monkeypatch.undo()

    # the recipe config trains on them: descriptors read, map started at the ridge fit, house loudness kept
    cfg = REPO / "configs" / "approach2-ridge-init-slow.yaml"
    assert cfg.read_text().startswith("# mst-single targets DATA")
    assert cli_main(["fit", "-c", str(cfg), *tiny_fit_args(root, tmp_path / "runs"), "--run_name", "recipe",
                     "--data.param_targets", str(tmp_path / "prior.json")]) == 0
    model = load_model(tmp_path / "runs" / "recipe" / "checkpoints" / "last.ckpt")
    assert model.hparams.take_descriptors and model.hparams.match_loudness and model.hparams.descriptor_lr is None
    assert float(model.descriptor_ridge_strength) > 0  # the map was fitted, not left at zero
    assert model.controller.descriptor_head.weight.abs().max() > 0 and np.isfinite(model.output_lufs)

    # Approach 1's recipe config trains on the plain fits (e13's `approach1`, e09's `network`)
    cfg1 = REPO / "configs" / "approach1-oracle-targets.yaml"
    assert cfg1.read_text().startswith("# mst-single targets DATA -o DATA-oracle.json --prior-weight 0 && ")
    assert cli_main(["fit", "-c", str(cfg1), *tiny_fit_args(root, tmp_path / "runs"), "--run_name", "a1",
                     "--data.param_targets", str(tmp_path / "plain.json")]) == 0
    a1 = load_model(tmp_path / "runs" / "a1" / "checkpoints" / "last.ckpt")
    assert a1.hparams.approach == "approach1" and a1.hparams.param_loss_weight == 1.0
    capsys.readouterr()
    assert cli_main(["fit", "-c", str(cfg1), *tiny_fit_args(root, tmp_path / "runs"), "--run_name", "a1-no-targets"]) == 2
    assert "param_loss_weight" in capsys.readouterr().err  # without --data.param_targets: said, not ignored
    # the file says what it was fitted at; targets of another rate are other settings: refused, with the command
    assert {k: json.loads((tmp_path / "plain.json").read_text())[k] for k in ("sample_rate", "target_lufs", "prior_weight")} \
        == {"sample_rate": SR, "target_lufs": -23.0, "prior_weight": 0.0}
    assert cli_main(["fit", "-c", str(cfg1), *tiny_fit_args(root, tmp_path / "runs"), "--run_name", "a1-22k",
                     "--data.sample_rate", "22050", "--data.param_targets", str(tmp_path / "plain.json")]) == 2
    err = capsys.readouterr().err
    assert f"fitted at sample_rate {SR} (this fit: 22050)" in err and str(tmp_path / "plain.json") in err
    assert "mst-single targets DATA -o" in err and "--sample-rate 22050 --target-lufs -23 --prior-weight 0" in err
    assert not (tmp_path / "runs" / "a1-22k").exists()

    # too few songs for a median prior: the folder named, and the way out
    few = tmp_path / "few"
    for d in ("raw", "mixed"):
        (few / d).mkdir(parents=True)
        for w in sorted((root / d).glob("*.wav"))[:2]:
            shutil.copy(w, few / d / w.name)
    capsys.readouterr()
    assert main([*cmd[:1], str(few), *cmd[2:], "-o", str(tmp_path / "few.json")]) == 2
    err = capsys.readouterr().err
    assert str(few) in err and "needs at least 3" in err and "--prior-weight 0" in err
    assert not (tmp_path / "few.json").exists()
    assert main([*cmd, "-o", str(tmp_path / "none.json"), "--jobs", "0"]) == 2
    assert "--jobs 0" in capsys.readouterr().err and not (tmp_path / "none.json").exists()
