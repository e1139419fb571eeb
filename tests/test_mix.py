"""`mst-single mix`: round trips with real (tiny) checkpoints, any rate/length/channels, errors, atomicity."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mst_single import cli
from mst_single.errors import MstError
from mst_single.mix import choose_segments, load_model, mix_file

REPO = Path(__file__).resolve().parent.parent
SR = 16000


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """approach -> last.ckpt of a one-epoch fit of the real config on tiny demo data (approach1-ridge:
    approach1 with model.style_ridge; approach1-house: also model.house_preset; "data": the demo data folder)."""
    from mst_single.demo import make_demo_data
    from mst_single.train import cli_main

    tmp = tmp_path_factory.mktemp("mix")
    root = make_demo_data(tmp / "demo", songs=4, seconds=3, sample_rate=SR)
    out = {}
    for approach, extra in (("approach1", []), ("approach2", []), ("approach1-ridge", ["--model.style_ridge", "true"]),
                            ("approach1-house", ["--model.style_ridge", "true", "--model.house_preset", "true"])):
        rc = cli_main(["fit", "-c", str(REPO / "configs" / f"{approach.split('-')[0]}.yaml"), "--data.root", str(root),
                       "--data.sample_rate", str(SR), "--data.segment_seconds", "1", "--data.batch_size", "2",
                       "--data.train_segments_per_epoch", "2", "--data.val_fraction", "0.25",
                       "--data.test_fraction", "0.25",
                       "--model.encoder", '{"n_mels": 32, "channels": [8, 16], "embed_dim": 16}',
                       "--model.hidden", "16", "--model.log_audio_every_n_epochs", "0",
                       "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--wandb", "false",
                       "--runs_dir", str(tmp / "runs"), "--run_name", approach, *extra])
        assert rc == 0
        out[approach] = tmp / "runs" / approach / "checkpoints" / "last.ckpt"
    out["data"] = root  # the demo pairs they trained on
    return out


def vocal(seconds: float, sr: int, channels: int = 1, seed: int = 0, level: float = 0.1) -> np.ndarray:
    """A sung-like test signal (samples, channels): harmonics with vibrato and syllable gaps."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    f0 = 220 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t) ** 2)
    x = level * (x + 0.01 * rng.standard_normal(n))
    out = np.stack([x * (1 - 0.2 * c) for c in range(channels)], 1)
    return out.astype(np.float32)


def write(path: Path, x: np.ndarray, sr: int) -> Path:
    sf.write(path, x, sr, subtype="FLOAT")
    return path


def outputs(out: Path) -> list[Path]:
    return [out, out.with_name(out.name + ".params.json"), out.with_name(out.name + ".mixsheet.md")]


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 2])
def test_mix_round_trip_odd_length_44k(ckpts, tmp_path, capsys, channels):
    n = 44100 * 2 + 7
    raw = write(tmp_path / "raw.wav", vocal(n / 44100, 44100, channels), 44100)
    out = tmp_path / "mixes" / "song.wav"
    rc = cli.main(["mix", str(raw), "-o", str(out), "--ckpt", str(ckpts["approach2"]), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    y, sr = sf.read(out, always_2d=True)
    assert sr == 44100 and y.shape == (n, 2) and np.isfinite(y).all() and np.abs(y).max() > 1e-3
    report = json.loads((tmp_path / "mixes" / "song.wav.params.json").read_text())
    model, _ = load_model(ckpts["approach2"])
    assert report["approach"] == "approach2" and report["samples"] == n and report["sample_rate"] == 44100
    assert list(report["params"]) == model.console.param_names
    for s in model.console.specs:
        assert s.low - 1e-3 <= report["params"][s.name] <= s.high + 1e-3
    assert report["units"]["comp_attack_ms"] == "ms" and report["input_channels"] == channels
    assert "median" in report["combine"] and len(report["segments"]["raw"]) == 2  # 2 s of 1 s segments
    assert report["provenance"]["commit"] and report["checkpoint"] == str(ckpts["approach2"])
    assert report["normalization_gain_db"] == pytest.approx(-23.0 - report["input_lufs"], abs=1e-6)
    sheet = (tmp_path / "mixes" / "song.wav.mixsheet.md").read_text()
    for line in ("Input gain: ", "EQ: low shelf ", "Comp: ", ":1, ", "Reverb: ", "predelay", "Output gain: ",
                 "median of 2 segment(s)", "44.1 kHz"):
        assert line in sheet
    assert not list((tmp_path / "mixes").glob("*.part"))


@pytest.mark.slow
def test_mix_approach1_with_reference(ckpts, tmp_path):
    raw = write(tmp_path / "raw.wav", vocal(2.5, 44100, 1), 44100)
    ref = write(tmp_path / "ref.wav", vocal(3.3, 48000, 2, seed=1, level=0.3), 48000)
    report = mix_file(raw, tmp_path / "o.wav", ckpts["approach1"], reference=ref)
    assert report["approach"] == "approach1" and report["reference"] == str(ref)
    assert len(report["segments"]["reference"]) >= 1
    y, sr = sf.read(tmp_path / "o.wav", always_2d=True)
    assert sr == 44100 and y.shape == (int(round(2.5 * 44100)), 2) and np.isfinite(y).all()


@pytest.mark.slow
def test_mix_refine_steps_refines_approach1_on_the_reference_and_says_so(ckpts, tmp_path, capsys):
    raw = write(tmp_path / "raw.wav", vocal(2.5, SR, 1), SR)
    ref = write(tmp_path / "ref.wav", vocal(3.0, SR, 2, seed=1, level=0.4), SR)
    plain = mix_file(raw, tmp_path / "plain.wav", ckpts["approach1"], reference=ref)
    out = tmp_path / "refined.wav"
    rc = cli.main(["mix", str(raw), "-o", str(out), "--ckpt", str(ckpts["approach1"]), "--reference", str(ref),
                   "--refine-steps", "5", "--refine-lr", "0.1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(out.with_name("refined.wav.params.json").read_text())
    assert plain["refine"] is None
    assert report["refine"]["steps"] == 5 and report["refine"]["lr"] == 0.1 and report["refine"]["crops"] == 4
    # the network's setting is the same as without refinement; the refined one moved away from it
    assert report["refine"]["network_params_normalized"] == pytest.approx(plain["params_normalized"], abs=1e-6)
    moved = [abs(report["params_normalized"][k] - plain["params_normalized"][k]) for k in plain["params_normalized"]]
    assert max(moved) > 1e-3
    assert "--refine-steps" in report["provenance"]["command"]
    assert "refined on the reference's style for 5 steps (`--refine-steps`) and its output level set to the reference's" in out.with_name("refined.wav.mixsheet.md").read_text()
    y, sr = sf.read(out, always_2d=True)
    assert sr == SR and y.shape == (int(2.5 * SR), 2) and np.isfinite(y).all()
    # approach2 has no reference to refine on: refused, nothing written
    rc = cli.main(["mix", str(raw), "-o", str(tmp_path / "a2.wav"), "--ckpt", str(ckpts["approach2"]),
                   "--refine-steps", "5", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--refine-steps needs a reference mix" in err and str(ckpts["approach2"]) in err
    assert not (tmp_path / "a2.wav").exists()


def test_mix_refine_says_when_the_reference_is_not_a_mix_of_this_vocal(ckpts, tmp_path, capsys):
    """Refinement copies the reference's sound, so another song's mix is the wrong target for it
    (experiments/e13-shared-style). `mix --refine-steps` aligns the reference with the raw as check-data
    does: a mix of this vocal aligns (a clear GCC-PHAT peak), another song's does not; the latter gets a
    warning naming the file and what to do, and params.json records both."""
    from mst_single.mix import SAME_VOCAL_SCORE

    raw, mixed = ckpts["data"] / "raw", ckpts["data"] / "mixed"
    song, other = sorted(p.name for p in raw.iterdir())[:2]
    got = {}
    for name, ref in (("own", mixed / song), ("other", mixed / other)):
        out = tmp_path / f"{name}.wav"
        assert cli.main(["mix", str(raw / song), "-o", str(out), "--ckpt", str(ckpts["approach1"]), "--reference",
                         str(ref), "--refine-steps", "1", "--quiet"]) == 0
        got[name] = (json.loads(Path(f"{out}.params.json").read_text())["refine"]["reference_alignment"],
                     capsys.readouterr().err)
    (own, own_err), (oth, oth_err) = got["own"], got["other"]
    assert own["same_vocal"] and own["score"] >= SAME_VOCAL_SCORE and abs(own["lag_s"]) < 0.1
    assert "warning" not in own_err
    assert not oth["same_vocal"] and oth["score"] < SAME_VOCAL_SCORE
    assert f"warning: {mixed / other}: not a mix of {song}" in oth_err and "drop it" in oth_err
    # without refinement the reference is only read by the network: nothing to check, nothing said
    assert cli.main(["mix", str(raw / song), "-o", str(tmp_path / "plain.wav"), "--ckpt", str(ckpts["approach1"]),
                     "--reference", str(mixed / other), "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_mix_warns_when_the_output_peaks_above_full_scale(ckpts, tmp_path, capsys, monkeypatch):
    """A quiet tone with a 5-sample click is normalised up by the +30 dB cap, so the click lands far
    above full scale. The 24-bit FLAC clips it and the float WAV keeps it: either way a warning names
    the file, the peak and what happened, counted while writing (not read back)."""
    model, _ = load_model(ckpts["approach2"])  # the cached instance mix_file gets
    # a fixed mid-range setting: how hot the mix is does not hang on what the tiny network learnt
    monkeypatch.setattr(model, "predict_params",
                        lambda raw, *a, **k: torch.full((raw.shape[0], model.console.num_params), 0.5))
    x = 0.001 * np.sin(2 * np.pi * 220 * np.arange(3 * SR) / SR)
    x[SR:SR + 5] = 0.9
    raw = write(tmp_path / "raw.wav", x[:, None].astype(np.float32), SR)
    got = {}
    for name in ("hot.flac", "hot.wav"):
        out = tmp_path / name
        assert cli.main(["mix", str(raw), "-o", str(out), "--ckpt", str(ckpts["approach2"]), "--quiet"]) == 0
        report = json.loads(Path(f"{out}.params.json").read_text())
        warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
        assert len(warnings) == 1, warnings
        got[name] = report["output_peak_dbfs"], warnings[0]
    peak_db, flac_warning = got["hot.flac"]
    assert peak_db > 6  # the case is hot
    y = sf.read(tmp_path / "hot.flac", dtype="int32")[0]
    at_rail = int(np.count_nonzero((y == np.iinfo(np.int32).min) | (y == 0x7FFFFF00)))  # 24-bit full scale
    assert 0 < at_rail < y.size
    assert flac_warning == (f"warning: {tmp_path / 'hot.flac'}: the mix peaks at {peak_db:+.2f} dBFS, above full scale: "
                            f"{at_rail} samples (both channels counted) were clipped to full scale in the 24-bit "
                            f"FLAC; fix: mix to a float WAV (-o {tmp_path / 'hot.wav'}), which keeps them, and turn "
                            f"it down by at least {peak_db:.1f} dB before converting it")
    wav_peak_db, wav_warning = got["hot.wav"]
    kept = np.abs(sf.read(tmp_path / "hot.wav", dtype="float32")[0]).max()
    assert wav_peak_db == pytest.approx(peak_db, abs=1e-6) and 20 * math.log10(kept) == pytest.approx(peak_db, abs=1e-4)
    assert wav_warning.startswith(f"warning: {tmp_path / 'hot.wav'}: the mix peaks at {peak_db:+.2f} dBFS, above full "
                                  "scale: the float WAV keeps the samples above full scale, but they may clip on "
                                  "playback")
    assert f"fix: turn it down by at least {peak_db:.1f} dB" in wav_warning
    # the same setting on an ordinary vocal stays below full scale: nothing to say
    ok = write(tmp_path / "ok.wav", vocal(3.0, SR), SR)
    assert cli.main(["mix", str(ok), "-o", str(tmp_path / "ok.flac"), "--ckpt", str(ckpts["approach2"]), "--quiet"]) == 0
    assert json.loads((tmp_path / "ok.flac.params.json").read_text())["output_peak_dbfs"] < 0
    assert "warning" not in capsys.readouterr().err


def test_mix_progress_counts_each_pass_and_says_so(ckpts, tmp_path, capsys, monkeypatch):
    """mix reads RAW once per pass: the total is passes x duration (plus the reference), and the unit and
    the description say so, instead of a 3 s file showing "6/6 s audio". Off a terminal (as here)
    progress prints whole lines; `every_seconds=0` makes it print one per block."""
    import functools

    import mst_single.progress as progress_mod

    raw = write(tmp_path / "raw.wav", vocal(3.0, SR), SR)
    ref = write(tmp_path / "ref.wav", vocal(2.5, SR, 2, seed=1), SR)
    mix_file(raw, tmp_path / "plain.wav", ckpts["approach2"], progress=True)
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "mix raw.wav, pass 2/2 (writing plain.wav): 6/6 s audio read in 2 passes x 3 s (100%), ")

    monkeypatch.setattr(progress_mod, "progress", functools.partial(progress_mod.progress, every_seconds=0))
    mix_file(raw, tmp_path / "o.wav", ckpts["approach1"], reference=ref, progress=True, block_size=SR)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("mix raw.wav")]
    unit = "s audio read in 2 passes x 3 s + reference 2.5 s"
    # one line per 1 s block, each naming the pass it was read in; the last when the bar closes
    heads = [ln.split(f" {unit} ")[0] for ln in lines]
    pass1, reference, pass2 = ("mix raw.wav, " + s for s in ("pass 1/2 (loudness, segments)", "reference ref.wav",
                                                             "pass 2/2 (writing o.wav)"))
    assert heads == [f"{pass1}: 1/8.5", f"{pass1}: 2/8.5", f"{pass1}: 3/8.5", f"{reference}: 4/8.5",
                     f"{reference}: 5/8.5", f"{reference}: 5.5/8.5", f"{pass2}: 6.5/8.5", f"{pass2}: 7.5/8.5",
                     f"{pass2}: 8.5/8.5"], lines
    assert f"8.5/8.5 {unit} (100%)" in lines[-1]


@pytest.mark.slow
def test_mix_refine_start_ridge_starts_from_the_checkpoints_style_ridge(ckpts, tmp_path, capsys):
    """model.style_ridge (e09 `ridge-start`): fitted when `fit` starts, kept in the checkpoint, the network
    trained exactly as without it; `mix --refine-start ridge` starts the refinement there."""
    from mst_single.style import style_ridge_setting

    plain, ridged = load_model(ckpts["approach1"])[0], load_model(ckpts["approach1-ridge"])[0]
    assert not hasattr(plain, "style_ridge_weight") and torch.isfinite(ridged.style_ridge_weight).all()
    assert int(ridged.style_ridge_samples) == 30 * 3  # 30 renders of each of the 3 training + validation songs
    a, b = plain.state_dict(), ridged.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same network, bit for bit
    raw = write(tmp_path / "raw.wav", vocal(2.5, SR, 1), SR)
    ref = write(tmp_path / "ref.wav", vocal(3.0, SR, 2, seed=1, level=0.4), SR)
    reports = {}
    for start in ("network", "ridge"):
        out = tmp_path / f"{start}.wav"
        rc = cli.main(["mix", str(raw), "-o", str(out), "--ckpt", str(ckpts["approach1-ridge"]), "--reference",
                       str(ref), "--refine-steps", "1", "--refine-lr", "1e-6", "--refine-start", start, "--quiet"])
        assert rc == 0, capsys.readouterr().err
        reports[start] = json.loads(out.with_name(f"{start}.wav.params.json").read_text())
    assert reports["ridge"]["refine"]["start"] == "ridge" and "--refine-start" in reports["ridge"]["provenance"]["command"]
    assert "from the checkpoint's style ridge" in (tmp_path / "ridge.wav.mixsheet.md").read_text()
    net, rid = (reports[k]["params_normalized"] for k in ("network", "ridge"))
    # with a step of 1e-6, each refined setting is where it started (the network's, or the ridge's), but
    # for the output gain, which then matches the reference's loudness
    start = reports["network"]["refine"]["network_params_normalized"]
    assert all(abs(net[k] - start[k]) < 1e-4 for k in net if k != "output_gain_db")
    assert max(abs(net[k] - rid[k]) for k in net if k != "output_gain_db") > 1e-2
    names = ridged.console.param_names
    ridge = {k: getattr(ridged, f"style_ridge_{k}") for k in ("mean", "std", "weight", "bias")}
    assert style_ridge_setting(ridge, torch.zeros(1, 1, SR), torch.zeros(1, 2, SR), SR).shape == (1, len(names))
    # the evaluation's refinement (`refine: {start: ridge}`) starts there too
    from mst_single.experiments import evaluate as E

    testset = E.TestSet(ckpts["approach1"].parents[3] / "demo", sample_rate=SR, segment_seconds=1.0,
                        val_fraction=0.25, test_fraction=0.25)
    dataset, name = testset.segments("song"), testset.names[0]
    x, r = E.song_segments(dataset, name, SR, ridged.target_lufs)
    got = E.predict_settings(ridged, testset, "song", progress=False,
                             refine={"steps": 1, "lr": 1e-6, "crops": 1, "match_level": False, "start": "ridge"})
    assert torch.allclose(got[name], ridged.style_ridge_start(x, r), atol=1e-5)
    assert not torch.allclose(got[name], E.predict_song_params(ridged, dataset, name), atol=1e-2)
    # a checkpoint without a style ridge, or no refinement to start: refused, nothing written
    for ckpt, args, needle in ((ckpts["approach1"], ["--refine-steps", "3"], "has no style ridge"),
                               (ckpts["approach1-ridge"], [], "--refine-steps is 0")):
        rc = cli.main(["mix", str(raw), "-o", str(tmp_path / "no.wav"), "--ckpt", str(ckpt), "--reference", str(ref),
                       "--refine-start", "ridge", "--quiet", *args])
        assert rc == 2 and needle in capsys.readouterr().err
        assert not (tmp_path / "no.wav").exists()


def test_house_preset_is_fitted_when_fit_starts_and_another_vocals_mix_gets_it(ckpts, tmp_path, capsys):
    """model.house_preset (e17): one setting fitted over the training songs when `fit` starts, kept in the
    checkpoint, the network trained bit for bit as without it. With refinement, a reference that is not a mix
    of the raw gets that preset (`mix --other-vocal house`, the default when the checkpoint has one;
    `refine: {other_vocal: house}` in the evaluation); a mix of this vocal is refined on as before."""
    from mst_single.experiments import evaluate as E
    from mst_single.losses import MRSTFTL1Loss

    ridged, housed = load_model(ckpts["approach1-ridge"])[0], load_model(ckpts["approach1-house"])[0]
    house = housed.house_start()
    assert house.shape == (1, housed.console.num_params) and ((house >= 0) & (house <= 1)).all()
    assert not hasattr(ridged, "house_setting")
    a, b = ridged.state_dict(), housed.state_dict()
    assert set(b) - set(a) == {"house_setting"} and all(torch.equal(a[k], b[k]) for k in a)
    # it is a fitted preset: on the training songs' segments it beats the console's neutral setting
    train = E.TestSet(ckpts["data"], sample_rate=SR, segment_seconds=1.0, val_fraction=0.25, test_fraction=0.25)
    train.songs = train.splits["train"]  # the fit's split: score the preset on the songs it was fitted on
    seg = train.segments("same")
    items = [seg[i] for i in range(len(seg))]
    x = torch.stack([it["raw"] for it in items])
    from mst_single.loudness import normalize_loudness

    x, _ = normalize_loudness(x, SR, housed.target_lufs, lufs=torch.stack([it["raw_lufs"] for it in items]))
    y, loss = torch.stack([it["mixed"] for it in items]), MRSTFTL1Loss()
    with torch.no_grad():
        scores = [float(loss(housed.console(x, q.expand(len(x), -1)), y)["loss"])
                  for q in (house, housed.console.default_params(1))]
    assert scores[0] < scores[1]

    raw, mixed = ckpts["data"] / "raw", ckpts["data"] / "mixed"
    song, other = sorted(p.name for p in raw.iterdir())[:2]
    runs = {}
    for name, ref, args in (("own", mixed / song, []), ("other", mixed / other, []),
                            ("anyway", mixed / other, ["--other-vocal", "refine"])):
        out = tmp_path / f"{name}.wav"
        assert cli.main(["mix", str(raw / song), "-o", str(out), "--ckpt", str(ckpts["approach1-house"]), "--reference",
                         str(ref), "--refine-steps", "2", "--refine-start", "ridge", "--quiet", *args]) == 0
        runs[name] = (json.loads(Path(f"{out}.params.json").read_text()), capsys.readouterr().err,
                      Path(f"{out}.mixsheet.md").read_text())
    (own, own_err, _), (oth, oth_err, oth_sheet), (anyway, any_err, _) = runs["own"], runs["other"], runs["anyway"]
    names = housed.console.param_names
    assert oth["refine"]["house_preset"] and oth["refine"]["other_vocal"] == "house"
    assert [oth["params_normalized"][k] for k in names] == pytest.approx(house[0].tolist(), abs=1e-6)
    assert f"{mixed / other}: not a mix of {song}" in oth_err and "house preset instead" in oth_err
    assert "warning" not in oth_err and "Settings: the checkpoint's house preset" in oth_sheet
    assert "median of" not in oth_sheet and "refined on the reference" not in oth_sheet
    for r in (own, anyway):  # a mix of this vocal, or --other-vocal refine: refined, not the preset
        assert not r["refine"]["house_preset"]
        assert max(abs(r["params_normalized"][k] - oth["params_normalized"][k]) for k in names) > 1e-3
    assert "warning" not in own_err and f"warning: {mixed / other}: not a mix of {song}" in any_err
    assert anyway["refine"]["other_vocal"] == "refine" and "--other-vocal" in anyway["provenance"]["command"]
    # the evaluation does the same per song: `other` references get the preset, `song` references are
    # refined on exactly as without the gate
    testset = E.TestSet(ckpts["data"], sample_rate=SR, segment_seconds=1.0, val_fraction=0.25, test_fraction=0.25)
    testset.songs = [s for k in ("train", "val", "test") for s in testset.splits[k]]  # `other`: 3 others each
    refine = {"steps": 1, "lr": 0.05, "crops": 1, "match_level": False, "start": "ridge"}
    gated = dict(refine, other_vocal="house")
    for policy in ("other", "song"):
        got, plain = (E.predict_settings(housed, testset, policy, progress=False, refine=r) for r in (gated, refine))
        for n in testset.names:
            if policy == "other":
                assert torch.equal(got[n], house)
            else:
                assert torch.equal(got[n], plain[n]) and not torch.equal(got[n], house)
    # a checkpoint without a house preset cannot be asked for one; nothing is written
    rc = cli.main(["mix", str(raw / song), "-o", str(tmp_path / "no.wav"), "--ckpt", str(ckpts["approach1-ridge"]),
                   "--reference", str(mixed / other), "--refine-steps", "2", "--other-vocal", "house", "--quiet"])
    assert rc == 2 and "has no house preset" in capsys.readouterr().err and not (tmp_path / "no.wav").exists()
    rc = cli.main(["mix", str(raw / song), "-o", str(tmp_path / "no.wav"), "--ckpt", str(ckpts["approach1-house"]),
                   "--reference", str(mixed / other), "--other-vocal", "house", "--quiet"])  # no refinement to gate
    assert rc == 2 and "--refine-steps is 0" in capsys.readouterr().err and not (tmp_path / "no.wav").exists()
    with pytest.raises(MstError, match="has no house preset"):
        E.predict_settings(ridged, testset, "other", progress=False, refine=gated)


def test_style_ridge_reads_one_song_at_a_time_and_at_most_its_cap_of_segments(tmp_path, monkeypatch):
    """A few hundred long takes must not all sit in memory, nor every segment of a 4-min take be rendered."""
    import types

    from mst_single import style
    from mst_single.data import VocalDataModule
    from mst_single.demo import make_demo_data
    from mst_single.system import VocalMST

    root = make_demo_data(tmp_path / "demo", songs=5, seconds=4, sample_rate=SR)
    dm = VocalDataModule(str(root), sample_rate=SR, segment_seconds=1.0, val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    seen, fit = [], style.fit_style_ridge

    def spy(console, raws, *a, **kw):
        def each():
            for x in raws:  # a generator: each song is read when the fit gets to it
                seen.append(tuple(x.shape))
                yield x
        assert not isinstance(raws, (list, tuple))
        return fit(console, each(), *a, **kw)

    monkeypatch.setattr(style, "fit_style_ridge", spy)
    monkeypatch.setattr(style, "RIDGE_MAX_SEGMENTS", 2)
    model = VocalMST(approach="approach1", sample_rate=SR, style_ridge=True, style_ridge_renders=2)
    model._trainer = types.SimpleNamespace(datamodule=dm)
    model._fit_style_ridge()
    assert len(seen) == len(dm.splits["train"]) + len(dm.splits["val"]) == 4
    assert all(shape == (2, 1, SR) for shape in seen)  # 4 s takes: 4 segments each, capped at 2
    assert int(model.style_ridge_samples) == 8 and torch.isfinite(model.style_ridge_weight).all()
    seen.clear()
    monkeypatch.setattr(style, "RIDGE_MAX_SEGMENTS", 100)
    model._fit_style_ridge()
    assert max(shape[0] for shape in seen) > 2  # so the cap above did cut


def test_style_ridge_is_for_approach1_only():
    from mst_single.system import VocalMST

    with pytest.raises(MstError, match="style_ridge reads a reference"):
        VocalMST(approach="approach2", sample_rate=SR, style_ridge=True)
    with pytest.raises(MstError, match="style_ridge_renders must be >= 1"):
        VocalMST(approach="approach1", sample_rate=SR, style_ridge=True, style_ridge_renders=0)


@pytest.mark.slow
@pytest.mark.parametrize("approach,with_ref,needle", [
    ("approach1", False, "pass --reference"),
    ("approach2", True, "drop --reference"),
])
def test_mix_reference_rules(ckpts, tmp_path, capsys, approach, with_ref, needle):
    raw = write(tmp_path / "raw.wav", vocal(1.5, SR), SR)
    ref = write(tmp_path / "ref.wav", vocal(1.5, SR, 2), SR)
    out = tmp_path / "o.wav"
    argv = ["mix", str(raw), "-o", str(out), "--ckpt", str(ckpts[approach]), "--quiet"]
    rc = cli.main(argv + (["--reference", str(ref)] if with_ref else []))
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and approach in err and str(ckpts[approach]) in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.wav", "ref.wav"]  # nothing written


@pytest.mark.slow
def test_chunked_equals_whole_file_and_console(ckpts, tmp_path):
    """Streaming in small blocks = one block = VocalConsole.forward on the whole normalised file."""
    from mst_single.console import VocalConsole
    from mst_single.loudness import integrated_loudness

    x = vocal(3.0, 22050, 1)[:, 0]
    x[22050:30000] = 0.0  # a silent gap inside a block
    raw = write(tmp_path / "raw.wav", x[:, None], 22050)
    small = mix_file(raw, tmp_path / "small.wav", ckpts["approach2"], block_size=1024)
    whole = mix_file(raw, tmp_path / "whole.wav", ckpts["approach2"], block_size=len(x) + 1)
    assert small["params"] == whole["params"]
    a, _ = sf.read(tmp_path / "small.wav", always_2d=True)
    b, _ = sf.read(tmp_path / "whole.wav", always_2d=True)
    assert np.abs(a - b).max() < 1e-4
    console = VocalConsole(22050, whole["stages"])
    p = console.normalize(whole["params"])
    gain = 10 ** ((-23.0 - integrated_loudness(x, 22050)) / 20)
    with torch.no_grad():
        ref = console(torch.from_numpy(x * gain).float()[None, None], p)[0].numpy().T
    assert np.abs(b - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())


def test_tail_lets_the_reverb_ring_out_past_the_raws_end(ckpts, tmp_path, capsys):
    """--tail S: the raw plus S s of silence through the chain; the first samples are the plain output's."""
    from mst_single.console import VocalConsole
    from mst_single.loudness import integrated_loudness

    x = vocal(2.0, 22050, 1)[:, 0]
    raw = write(tmp_path / "raw.wav", x[:, None], 22050)
    plain = mix_file(raw, tmp_path / "plain.wav", ckpts["approach2"], block_size=4096)
    tailed = mix_file(raw, tmp_path / "tail.wav", ckpts["approach2"], block_size=4096, tail_seconds=1.0)
    a, _ = sf.read(tmp_path / "plain.wav", always_2d=True)
    b, _ = sf.read(tmp_path / "tail.wav", always_2d=True)
    assert len(a) == len(x) and len(b) == len(x) + 22050
    assert tailed["samples"] == len(x) and tailed["tail_samples"] == 22050 and plain["tail_samples"] == 0
    assert tailed["params"] == plain["params"]
    np.testing.assert_array_equal(b[:len(x)], a)
    # the tail is the reverb ringing out, as the whole chain gives it on the raw padded with silence
    assert np.abs(b[len(x):]).max() > 1e-4
    console = VocalConsole(22050, tailed["stages"])
    gain = 10 ** ((-23.0 - integrated_loudness(x, 22050)) / 20)
    padded = np.concatenate([x * gain, np.zeros(22050)])
    with torch.no_grad():
        ref = console(torch.from_numpy(padded).float()[None, None], console.normalize(tailed["params"]))[0].numpy().T
    assert np.abs(b - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())
    # the CLI: a negative or absurd tail is refused before any work
    for bad in ("-1", "60"):
        assert cli.main(["mix", str(raw), "-o", str(tmp_path / "bad.wav"), "--ckpt", str(ckpts["approach2"]),
                     "--tail", bad, "--quiet"]) == 2
        assert "--tail must be between 0 and 30 s" in capsys.readouterr().err
    assert not (tmp_path / "bad.wav").exists()


@pytest.mark.slow
def test_bad_checkpoints_and_inputs(ckpts, tmp_path, capsys):
    raw = write(tmp_path / "raw.wav", vocal(1.5, SR), SR)
    out = tmp_path / "out" / "o.wav"
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(ckpts["approach2"].read_bytes()[:5000])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1.0}}, foreign)
    silent = write(tmp_path / "silent.wav", np.zeros((SR * 2, 1), np.float32), SR)
    cases = [
        (["--ckpt", str(tmp_path / "missing.ckpt")], "checkpoint not found"),
        (["--ckpt", str(corrupt)], "corrupt"),
        (["--ckpt", str(foreign)], "not a vocal-mst checkpoint"),
        (["--ckpt", str(ckpts["approach2"]), "--segment-seconds", "0"], "must be positive"),
    ]
    for extra, needle in cases:
        rc = cli.main(["mix", str(raw), "-o", str(out), "--quiet", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err, err
    rc = cli.main(["mix", str(silent), "-o", str(out), "--quiet", "--ckpt", str(ckpts["approach2"])])
    err = capsys.readouterr().err
    assert rc == 2 and "silent" in err and "silent.wav" in err
    # the output may not replace the input
    rc = cli.main(["mix", str(raw), "-o", str(raw), "--quiet", "--ckpt", str(ckpts["approach2"])])
    assert rc == 2 and "overwrite an input" in capsys.readouterr().err
    assert not any(p.exists() for p in outputs(out)) and not list(tmp_path.rglob("*.part"))


@pytest.mark.slow
def test_no_partial_output_when_mixing_fails(ckpts, tmp_path, monkeypatch):
    import mst_single.console as console_mod

    raw = write(tmp_path / "raw.wav", vocal(2.0, SR), SR)
    out = tmp_path / "o.wav"
    for p in outputs(out)[1:]:  # an earlier mix's side files stay untouched too
        p.write_text("old")
    calls = {"n": 0}
    real = console_mod.ConsoleStreamer.process

    def failing(self, chunk):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full (simulated)")
        return real(self, chunk)

    monkeypatch.setattr(console_mod.ConsoleStreamer, "process", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        mix_file(raw, out, ckpts["approach2"], block_size=4096)
    assert calls["n"] == 3 and not out.exists()
    assert [p.read_text() for p in outputs(out)[1:]] == ["old", "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["raw.wav", "o.wav.params.json", "o.wav.mixsheet.md"])


def test_choose_segments_even_non_overlapping_and_skips_silence(tmp_path):
    hop = 100
    env = np.full(1000, -20.0)
    env[:200] = -120.0  # silent intro
    env[600:700] = -90.0  # silent gap
    starts = choose_segments(env, hop, 1000 * hop, 50 * hop, 4, tmp_path / "x.wav")
    assert len(starts) == 4 and starts == sorted(starts)
    assert all(b - a >= 50 * hop for a, b in zip(starts, starts[1:]))
    for s in starts:
        window = env[s // hop: s // hop + 50]
        assert 10 * math.log10(np.mean(10 ** (window / 10))) > -70
    assert starts[0] >= 200 * hop - 50 * hop and starts[-1] >= 800 * hop
    assert choose_segments(env, hop, 30 * hop, 50 * hop, 4, "x") == [0]  # shorter than a segment
    with pytest.raises(MstError, match="silent"):
        choose_segments(np.full(100, -150.0), hop, 100 * hop, 10 * hop, 4, "x")


def test_one_loudness_normalisation_for_training_mix_and_evaluation(ckpts, tmp_path):
    """A quiet verse then a loud chorus (+20 dB): the training segments of either part, `mix` and the
    evaluation all scale the raw by the same whole-song gain; per-segment normalisation (the old
    training behaviour) would have given the verse ~20 dB more gain than the chorus."""
    from conftest import process_mix, synth_vocal

    from mst_single.data import VocalReferenceDataset, index_songs
    from mst_single.experiments.evaluate import TestSet, load_model as eval_load_model, mix_song
    from mst_single.loudness import loudness_torch, song_gain_db

    root = tmp_path / "data"
    verse, chorus = synth_vocal(4.0, SR, seed=1, level=0.02), synth_vocal(4.0, SR, seed=2, level=0.2)
    raw = np.concatenate([verse, chorus])
    raw_path, _ = write_pair_(root, "song", raw, process_mix(raw, SR, 0.01))
    (info,) = index_songs(root, SR)
    model = eval_load_model(ckpts["approach2"])
    gain = song_gain_db(info.raw_lufs, model.target_lufs)

    # training: every segment of the song carries the song's loudness, so both get `gain`
    ds = VocalReferenceDataset(split="test", sample_rate=SR, segment_seconds=1.0, songs=[info])
    items = [ds[k] for k in range(len(ds))]
    verse_item = next(it for it in items if it["start"] < 3 * SR)
    chorus_item = next(it for it in items if it["start"] >= 5 * SR)
    for it in (verse_item, chorus_item):
        assert float(it["raw_lufs"]) == pytest.approx(info.raw_lufs)
        x = model.normalize_input(it["raw"][None], it["raw_lufs"][None])
        assert torch.allclose(x, it["raw"][None] * 10 ** (gain / 20), rtol=1e-5, atol=1e-8)
    own = [float(loudness_torch(it["raw"][None], SR)) for it in (verse_item, chorus_item)]
    assert own[1] - own[0] > 15  # what per-segment normalisation would have equalised

    # mix: the whole file's gain, measured the same way
    report = mix_file(raw_path, tmp_path / "out.wav", ckpts["approach2"])
    assert report["normalization_gain_db"] == pytest.approx(gain, abs=1e-3)

    # evaluation: the test set's song gain, and mix_song scales the raw by exactly that
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"test": ["song"]}))
    testset = TestSet(root, sample_rate=SR, split_file=str(split))
    assert song_gain_db(testset.raw_lufs("song"), model.target_lufs) == pytest.approx(gain, abs=1e-6)
    from mst_single.console import VocalConsole

    dry = VocalConsole(SR, {k: k == "gain" for k in model.console.stages})  # input gain at its 0 dB default
    out = mix_song(dry, model.target_lufs, raw[None], dry.default_params(1), testset.raw_lufs("song"))
    assert out[0] == pytest.approx(raw * 10 ** (gain / 20), rel=1e-4, abs=1e-6)


def write_pair_(root: Path, name: str, raw: np.ndarray, mixed: np.ndarray):
    from conftest import write_pair

    return write_pair(root, name, raw, mixed, SR)


def test_match_loudness_model_lands_every_mix_at_the_house_loudness(tmp_path):
    """model.match_loudness: `fit` measures the training mixes' median loudness into the checkpoint;
    the training loss ignores level (no gradient to the output gain); `mix` and the evaluation move the
    output gain so the whole song lands at that loudness, whatever the network predicted."""
    from conftest import synth_vocal

    from mst_single.audio import load_audio
    from mst_single.data import VocalDataModule
    from mst_single.demo import make_demo_data
    from mst_single.experiments.evaluate import TestSet, load_model as eval_load_model, mix_song, mix_song_at
    from mst_single.loudness import integrated_loudness
    from mst_single.train import cli_main

    root = make_demo_data(tmp_path / "demo", songs=4, seconds=3, sample_rate=SR)
    rc = cli_main(["fit", "-c", str(REPO / "configs" / "approach2.yaml"), "--data.root", str(root),
                   "--data.sample_rate", str(SR), "--data.segment_seconds", "1", "--data.batch_size", "2",
                   "--data.train_segments_per_epoch", "2", "--data.val_fraction", "0.25", "--data.test_fraction", "0.25",
                   "--model.encoder", '{"n_mels": 32, "channels": [8, 16], "embed_dim": 16}', "--model.hidden", "16",
                   "--model.log_audio_every_n_epochs", "0", "--model.match_loudness", "true",
                   "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--wandb", "false",
                   "--runs_dir", str(tmp_path / "runs"), "--run_name", "m"])
    assert rc == 0
    ckpt = tmp_path / "runs" / "m" / "checkpoints" / "last.ckpt"
    model = eval_load_model(ckpt)
    dm = VocalDataModule(str(root), sample_rate=SR, segment_seconds=1.0, val_fraction=0.25, test_fraction=0.25)
    dm.setup()
    train_lufs = [integrated_loudness(load_audio(s.mixed_path)[0], SR) for s in dm.splits["train"]]
    assert model.output_lufs == pytest.approx(float(np.median(train_lufs)), abs=1e-4)

    # training: the output is scaled to the target's K-weighted energy; the output gain gets no gradient
    raw = torch.from_numpy(synth_vocal(1.0, SR, seed=3, level=0.1))[None, None].float()
    mixed = torch.randn(1, 2, SR) * 0.01
    model.train()
    out = model._step({"raw": raw, "mixed": mixed, "song": ["x"], "start": torch.zeros(1)}, "val")
    from mst_single.loudness import k_weight_torch

    def energy(y):
        return float(k_weight_torch(y.detach(), SR).square().mean())

    assert energy(out["output"]) == pytest.approx(energy(mixed), rel=1e-4)
    p = torch.full((1, model.console.num_params), 0.5, requires_grad=True)
    from mst_single.loudness import match_level_torch

    loss = model.loss_fn(match_level_torch(model.console(model.normalize_input(raw), p), mixed, SR), mixed)["loss"]
    loss.backward()
    i = model.console.param_names.index("output_gain_db")
    assert p.grad[0, i].abs() < 1e-4 * p.grad.abs().max() and p.grad.abs().max() > 0  # float32 rounding only

    # evaluation and mix: the whole song lands at the house loudness, through the output gain
    song = dm.splits["test"][0].name
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"test": [song]}))
    testset = TestSet(root, sample_rate=SR, split_file=str(split))
    rawsong, _ = testset.audio(song)
    setting = torch.full((1, model.console.num_params), 0.5)
    plain = mix_song(model.console, model.target_lufs, rawsong, setting, testset.raw_lufs(song))
    at, setting2 = mix_song_at(model.console, model.target_lufs, rawsong, setting, testset.raw_lufs(song), model.output_lufs)
    assert integrated_loudness(at, SR) == pytest.approx(model.output_lufs, abs=0.05)
    assert abs(integrated_loudness(plain, SR) - model.output_lufs) > 0.5  # it did have to move
    again = mix_song(model.console, model.target_lufs, rawsong, setting2, testset.raw_lufs(song))
    assert again == pytest.approx(at, rel=1e-3, abs=1e-6)  # the reported setting makes that audio
    raw_path = Path(dm.splits["test"][0].raw_path)
    report = mix_file(raw_path, tmp_path / "out.wav", ckpt)
    y, _ = load_audio(tmp_path / "out.wav")
    assert report["output_lufs"] == pytest.approx(model.output_lufs)
    spec = next(s for s in model.console.specs if s.name == "output_gain_db")  # params and [0, 1] agree
    assert float(spec.to_units(torch.tensor(report["params_normalized"]["output_gain_db"]))) == pytest.approx(
        report["params"]["output_gain_db"], abs=1e-3)
    assert integrated_loudness(y, SR) == pytest.approx(model.output_lufs, abs=0.1)
    assert "house loudness" in (tmp_path / "out.wav.mixsheet.md").read_text()


def test_house_loudness_is_the_median_of_the_audible_mixes_and_an_all_silent_set_names_the_folder(tmp_path):
    """Both users of the house loudness (model.match_loudness and the descriptor-ridge baseline) get one
    clear error when no mix is audible, instead of a None that fails later as a TypeError."""
    from conftest import synth_vocal

    from mst_single.audio import house_loudness, index_songs
    from mst_single.errors import DataError
    from mst_single.loudness import integrated_loudness

    raw = synth_vocal(2.0, SR, seed=1)
    for i, level in enumerate([0.05, 0.2, 0.5]):
        write_pair_(tmp_path / "d", f"s{i}", raw, raw * level / 0.3)
    click = np.zeros_like(raw)
    click[len(raw) // 2] = 10 ** (-55 / 20)  # loud enough for the data checks, below the loudness gate
    write_pair_(tmp_path / "d", "silent", raw, click)
    songs = index_songs(tmp_path / "d", sample_rate=SR)
    want = integrated_loudness(raw * 0.2 / 0.3, SR)  # the middle of the three audible mixes
    assert house_loudness(songs) == pytest.approx(want, abs=1e-3)

    silent = [s for s in songs if s.name == "silent"]
    with pytest.raises(DataError, match="every training mix is silent") as e:
        house_loudness(silent)
    assert str(tmp_path / "d" / "mixed") in str(e.value) and "check-data" in str(e.value)
