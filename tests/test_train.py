"""Training through the real CLI and configs: `fit`/`validate`/`test` on tiny demo data.

Each approach is trained once (module fixture) from `configs/approachN.yaml` with command-line
overrides for tiny sizes (16 kHz, 1 s segments, batch 2, a small encoder); the tests then check
what the run folder holds, that the validation loss dropped, and the other subcommands.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mst_single.errors import MstError
from mst_single.train import cli_main, expand_argv

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
SR = 16000


def tiny_args(root, runs, epochs=3) -> list[str]:
    """Overrides that make the real configs run in seconds on 2 CPU cores."""
    return [
        "--data.root", str(root), "--data.sample_rate", str(SR), "--data.segment_seconds", "1",
        "--data.batch_size", "2", "--data.train_segments_per_epoch", "4",
        "--data.val_fraction", "0.2", "--data.test_fraction", "0.2",
        "--model.encoder", '{"n_mels": 32, "channels": [8, 16, 32], "embed_dim": 32}', "--model.hidden", "32",
        "--model.loss", '{"fft_sizes": [1024, 256], "hop_sizes": [256, 64], "win_lengths": [1024, 256]}',
        "--model.lr", "0.01", "--model.dropout", "0.0",
        "--model.log_audio_every_n_epochs", "2", "--model.num_log_examples", "2",
        "--trainer.max_epochs", str(epochs), "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--runs_dir", str(runs),
    ]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from mst_single.demo import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo"), songs=6, seconds=3, sample_rate=SR)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def fit_once(demo_root, runs):
    """approach -> its run folder, trained once per module through `cli_main`."""
    done = {}

    def get(approach: str) -> Path:
        if approach not in done:
            # W&B (offline) on for approach1, off for approach2: both logger set-ups are exercised
            wandb = "true" if approach == "approach1" else "false"
            # the untrained network (same seed, so the fit's starting point) validated first, in
            # the same process: the baseline of test_fit_validation_loss_drops
            assert cli_main(["validate", "-c", str(CONFIGS / f"{approach}.yaml"), *tiny_args(demo_root, runs),
                             "--run_name", f"init-{approach}", "--wandb", "false"]) == 0
            rc = cli_main(["fit", "-c", str(CONFIGS / f"{approach}.yaml"), *tiny_args(demo_root, runs),
                           "--run_name", f"fit-{approach}", "--wandb", wandb])
            assert rc == 0
            done[approach] = runs / f"fit-{approach}"
        return done[approach]

    return get


@pytest.fixture(params=["approach1", "approach2"])
def fitted(request, fit_once):
    return request.param, fit_once(request.param)


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(rows, key) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


@pytest.mark.slow
def test_fit_run_folder(fitted):
    approach, run = fitted
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["approach"] == approach
    assert cfg["seed_everything"] == 0 and cfg["data"]["sample_rate"] == SR  # model.sample_rate is linked to it
    assert cfg["data"]["reference_policy"] == ("song" if approach == "approach1" else "same")
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["seed"] == 0 and prov["commit"] and prov["patch_series_sha256"] and prov["packages"]["torch"]
    assert "fit" in prov["command"]
    rows = read_metrics(run / "metrics.csv")
    assert {"train/loss", "train/mrstft", "train/l1", "train/lr", "val/loss", "val/mrstft", "val/l1",
            "val/params/comp_ratio", "epoch", "step"} <= set(rows[0])
    assert len(column(rows, "train/loss")) == 3 * 2  # 3 epochs x 2 steps, log_every_n_steps=1
    ckpts = run / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and not (ckpts / "last.ckpt").is_symlink()
    # last.ckpt is the final state even when the last epoch did not improve val/loss
    assert torch.load(ckpts / "last.ckpt", weights_only=True, map_location="cpu")["global_step"] == 6
    best = list(ckpts.glob("best-*.ckpt"))
    assert len(best) == 1 and best[0].is_file()
    assert not list(run.rglob("*.part"))  # no temp file left behind
    for epoch in (0, 2):  # log_audio_every_n_epochs=2 over epochs 0..2
        ex = run / "examples" / f"epoch_{epoch:03d}"
        assert len(list(ex.glob("*_raw.wav"))) == 2 and len(list(ex.glob("*_spectrogram.png"))) == 2
        assert len(list(ex.glob("*_output.wav"))) == 2 and len(list(ex.glob("*_target.wav"))) == 2
        table = (ex / "params.md").read_text()
        assert "| comp_ratio |" in table and ":1" in table and " dB" in table
    assert not (run / "examples" / "epoch_001").exists()
    if approach == "approach1":
        assert list((run / "wandb").glob("offline-run-*")), "W&B offline run folder missing"
    else:
        assert not (run / "wandb").exists()


@pytest.mark.slow
def test_fit_validation_loss_drops(fitted):
    """Six steps take the validation loss well below the untrained network's. Measured against the
    start, not epoch 0: on one validation song the first epochs move by a few % either way
    (e.g. 0.827, 0.828, 0.811 for approach2 on one host), while the drop from the start is ~30 %."""
    _, run = fitted
    val = column(read_metrics(run / "metrics.csv"), "val/loss")
    assert len(val) == 3 and all(math.isfinite(v) for v in val)
    start = column(read_metrics(run.parent / f"init-{run.name.removeprefix('fit-')}" / "validate" / "metrics.csv"),
                   "val/loss")
    assert len(start) == 1 and val[-1] < 0.85 * start[0], f"validation loss did not drop from {start}: {val}"


@pytest.mark.slow
def test_validate_and_test_on_checkpoint(fit_once, demo_root):
    run = fit_once("approach2")
    last = run / "checkpoints" / "last.ckpt"
    for sub, key in (("validate", "val/loss"), ("test", "test/loss")):
        # the config says 48 kHz and another encoder: the checkpoint's settings must win
        rc = cli_main([sub, "-c", str(CONFIGS / "approach2.yaml"), "--data.root", str(demo_root),
                       "--data.segment_seconds", "1", "--data.val_fraction", "0.2", "--data.test_fraction", "0.2",
                       "--data.batch_size", "2", "--trainer.enable_progress_bar", "false", "--wandb", "false", "--ckpt_path", str(last)])
        assert rc == 0
        rows = read_metrics(run / sub / "metrics.csv")
        assert math.isfinite(column(rows, key)[0])
        assert yaml.safe_load((run / sub / "config.yaml").read_text())["data"]["sample_rate"] == SR
    # validating last.ckpt reproduces the last validation of the fit
    fit_val = column(read_metrics(run / "metrics.csv"), "val/loss")[-1]
    assert column(read_metrics(run / "validate" / "metrics.csv"), "val/loss")[0] == pytest.approx(fit_val, rel=1e-4)


@pytest.mark.slow
def test_last_checkpoint_and_resume(demo_root, tmp_path, capsys):
    # lr 0: val/loss never improves after epoch 0, so the best checkpoint stays at step 2 while
    # last.ckpt must still move on to the final step (Lightning 2.6 alone would leave it at step 2)
    args = ["-c", str(CONFIGS / "approach2.yaml"), *tiny_args(demo_root, tmp_path, epochs=2), "--run_name", "r",
            "--wandb", "false", "--model.log_audio_every_n_epochs", "0", "--model.lr", "0"]
    assert cli_main(["fit", *args]) == 0
    ckpts = tmp_path / "r" / "checkpoints"
    assert [p.name for p in ckpts.glob("best-*.ckpt")] == [next(ckpts.glob("best-*.ckpt")).name]
    assert "step000002" in next(ckpts.glob("best-*.ckpt")).name
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 4
    # a second fit into the same run without --ckpt_path would mix two runs: refused
    assert cli_main(["fit", *args]) == 2
    assert cli_main(["fit", *args, "--trainer.max_epochs", "3", "--ckpt_path", "last"]) == 0
    rows = read_metrics(tmp_path / "r" / "metrics.csv")
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert steps == [0, 1, 2, 3, 4, 5]  # epochs 0-1 kept from the first run, epoch 2 added, nothing twice
    assert len(column(rows, "val/loss")) == 3
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 6

    # resuming with another approach or sample rate would train something else under this run's name
    # (another approach used to fail on the weights after config.yaml had been rewritten): refused
    # before any file of the run changes
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    for other, key in ((["-c", str(CONFIGS / "approach1.yaml")], "model.approach 'approach1' (the run: 'approach2')"),
                       (["--data.sample_rate", "22050"], "data.sample_rate 22050 (the run: 16000)")):
        assert cli_main(["fit", *args, *other, "--trainer.max_epochs", "4", "--ckpt_path", "last"]) == 2
        err = capsys.readouterr().err
        assert "resuming would change what this run trains" in err and key in err
        assert str(tmp_path / "r" / "config.yaml") in err and "another --run_name" in err
    assert {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == before
    # where the data is read from may change (a notebook's new local disk), and so may the epochs
    moved = tmp_path / "moved"
    shutil.copytree(demo_root, moved)
    assert cli_main(["fit", *args, "--data.root", str(moved), "--trainer.max_epochs", "4", "--ckpt_path", "last"]) == 0
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 8


def test_fit_without_validation_songs_says_so_once_and_keeps_last_only(demo_root, tmp_path, capsys):
    args = ["-c", str(CONFIGS / "approach2.yaml"), *tiny_args(demo_root, tmp_path, epochs=2), "--run_name", "nv",
            "--data.val_fraction", "0"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli_main(["fit", *args]) == 0
    out = capsys.readouterr().out
    assert out.count("fit: no validation songs") == 1 and "checkpoints/last.ckpt is the model" in out
    # Lightning's "could not find the monitored key" and empty-loader warnings are not repeated at the user
    assert not [w for w in caught if "val/loss" in str(w.message) or "across ranks is zero" in str(w.message)]
    ckpts = tmp_path / "nv" / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["last.ckpt"]
    # the run folder says which songs each split got (compare reads "no validation songs" from it)
    songs = json.loads((tmp_path / "nv" / "provenance.json").read_text())["songs"]
    assert songs["val"] == [] and songs["train"] and not set(songs["train"]) & set(songs["test"])
    assert sorted(songs["train"] + songs["test"]) == sorted(p.stem for p in (demo_root / "raw").glob("*.wav"))
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 4


def test_songs_shorter_than_a_segment_are_a_clear_error_and_leave_no_run_folder(demo_root, tmp_path, capsys):
    # every demo song is 3 s: a 5 s segment fits none; the loader's sampler used to fail on an empty split
    args = ["-c", str(CONFIGS / "approach2.yaml"), *tiny_args(demo_root, tmp_path), "--run_name", "long",
            "--data.segment_seconds", "5"]
    assert cli_main(["fit", *args]) == 2
    err = capsys.readouterr().err
    assert "no training song has a usable 5 s segment: all 4 are shorter than one segment (the longest is" in err
    assert str(demo_root) in err and "--data.segment_seconds 1.5" in err
    assert not (tmp_path / "long").exists()


def test_config_inheritance_expands_base(tmp_path):
    argv = expand_argv(["fit", "-c", str(CONFIGS / "approach1.yaml"), "--model.lr", "0.1"])
    assert argv[:3] == ["fit", "-c", str((CONFIGS / "base.yaml").resolve())]
    assert argv[3] == "-c" and yaml.safe_load(argv[4]) == {
        "model": {"approach": "approach1"}, "data": {"reference_policy": "song", "eval_reference_policy": "song"}}
    assert argv[5:] == ["--model.lr", "0.1"]
    # the approach files state only what differs and start with the command that runs them
    for name in ("approach1", "approach2"):
        text = (CONFIGS / f"{name}.yaml").read_text()
        assert text.startswith(f"# mst-single fit -c configs/{name}.yaml")
        assert yaml.safe_load(text)["__base__"] == "base.yaml"
    base = yaml.safe_load((CONFIGS / "base.yaml").read_text())
    assert {"seed_everything", "model", "data", "trainer", "run_name", "wandb"} <= set(base)
    assert base["data"]["root"] == "data/demo" and base["seed_everything"] == 0
    # chained bases, each included once, relative to the including file
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("trainer: {max_epochs: 1}\n")
    (tmp_path / "sub" / "b.yaml").write_text("__base__: ../a.yaml\nmodel: {lr: 0.5}\n")
    (tmp_path / "c.yaml").write_text("__base__: sub/b.yaml\nmodel: {hidden: 8}\n")
    out = expand_argv(["-c", str(tmp_path / "c.yaml"), "--config", str(tmp_path / "sub" / "b.yaml")])
    assert out[1] == str((tmp_path / "a.yaml").resolve())
    # an explicit -c is applied where it stands; its already-included base a.yaml is not repeated
    assert [yaml.safe_load(x) for x in out[3::2]] == [{"model": {"lr": 0.5}}, {"model": {"hidden": 8}},
                                                      {"model": {"lr": 0.5}}]
    assert out[::2] == ["-c"] * 4
    with pytest.raises(MstError, match="not found"):
        expand_argv(["-c", str(tmp_path / "missing.yaml")])


def test_cli_errors_exit_2(tmp_path, capsys):
    assert cli_main(["fit", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    # --ckpt_path last with no earlier run: a clear error, not a silent fresh start
    assert cli_main(["fit", "-c", str(CONFIGS / "approach2.yaml"), "--runs_dir", str(tmp_path),
                     "--ckpt_path", "last", "--wandb", "false"]) == 2
    assert "no approach2 run with checkpoints/last.ckpt" in capsys.readouterr().err
    assert cli_main(["fit", "-c", str(CONFIGS / "approach2.yaml"), "--model.approach", "approach3"]) == 2


def test_non_finite_loss_names_the_songs():
    from mst_single.system import VocalMST

    model = VocalMST("approach2", sample_rate=SR, encoder={"n_mels": 16, "channels": [4], "embed_dim": 8}, hidden=8)

    def batch():
        return {"raw": torch.randn(2, 1, SR) * 0.1, "mixed": torch.randn(2, 2, SR) * 0.1,
                "reference": torch.zeros(2, 2, SR), "song": ["good_song", "bad_song"], "start": torch.tensor([0, 0])}

    b = batch()
    b["mixed"][1, 0, 100] = float("inf")  # a NaN/Inf that reaches the loss
    with pytest.raises(MstError, match="bad_song") as e:
        model.training_step(b, 0)
    assert "mixed audio holds NaN/Inf" in str(e.value) and "--ckpt_path last" in str(e.value)
    b = batch()
    b["raw"][0, 0, 5] = float("nan")
    with pytest.raises(MstError, match="good_song"):
        model.validation_step(b, 0)
    # and the loss itself is checked: a target that overflows the float32 STFT gives Inf
    b = batch()
    b["mixed"] = b["mixed"] * 1e38
    with pytest.raises(MstError, match="train loss is (nan|inf)"):
        model.training_step(b, 0)


def test_predict_params_and_forward_shapes():
    from mst_single.system import VocalMST

    torch.manual_seed(0)
    enc = {"n_mels": 16, "channels": [4], "embed_dim": 8}
    m1 = VocalMST("approach1", sample_rate=SR, encoder=enc, hidden=8).eval()
    m2 = VocalMST("approach2", sample_rate=SR, encoder=enc, hidden=8).eval()
    raw, ref = torch.randn(3, 1, SR) * 0.05, torch.randn(3, 2, SR) * 0.05
    p = m1.predict_params(raw, ref)
    assert p.shape == (3, m1.console.num_params) and bool(((p >= 0) & (p <= 1)).all())
    out, p2 = m2(raw)
    assert out.shape == (3, 2, SR) and torch.isfinite(out).all() and p2.shape == p.shape
    with pytest.raises(MstError, match="reference"):
        m1.predict_params(raw)
    # the raw input's level does not change the prediction (loudness-normalised inside)
    with torch.no_grad():
        assert torch.allclose(m2.predict_params(raw), m2.predict_params(raw * 0.1), atol=1e-4)


def test_wandb_histogram_survives_saturated_parameters():
    """A parameter pinned at its range limit gives (near-)identical values, on which wandb's own
    binning raises; training must never die on a plot."""
    from mst_single.system import histogram

    for values in (np.full(30, 7200.0), np.r_[np.full(29, 7199.9995), 7200.0], np.array([np.nan, 1.0]), np.zeros(0)):
        h = histogram(values)
        assert sum(h.histogram) == max(int(np.isfinite(values).sum()), 1) and len(h.bins) == len(h.histogram) + 1
        assert all(b > a for a, b in zip(h.bins, h.bins[1:]))


def test_each_fit_closes_its_wandb_run_and_workers_get_their_own_service(make_data, tmp_path, monkeypatch):
    """Two fits in one process (a notebook, a test) each get their own offline W&B run: the first is
    finished when `fit` returns. Subprocesses `ablate` starts do not inherit this process's W&B
    service (a resumed run on a shared service fails with "run ID is in use")."""
    import wandb

    from conftest import tiny_fit_args
    from mst_single.experiments.runner import worker_env

    root = make_data(songs=4, seconds=3.0)
    repo = Path(__file__).resolve().parent.parent
    ids = []
    for name in ("one", "two"):
        args = tiny_fit_args(root, tmp_path / "runs")
        args[args.index("--wandb") + 1] = "true"
        assert cli_main(["fit", "-c", str(repo / "configs" / "approach2.yaml"), *args, "--run_name", name]) == 0
        assert wandb.run is None
        ids.append((tmp_path / "runs" / name / ".wandb_id").read_text().strip())
    assert ids[0] != ids[1] and all(list((tmp_path / "runs" / n / "wandb").glob("offline-run-*")) for n in ("one", "two"))

    class Unit:
        run_id = "abc"

    monkeypatch.setenv("WANDB_SERVICE", "2-123-unix-/tmp/socket")
    env = worker_env(Unit())
    assert "WANDB_SERVICE" not in env and env["WANDB_RUN_ID"] == "abc"


def test_param_targets_add_an_l1_term_toward_each_songs_oracle_setting(demo_root, tmp_path):
    from mst_single.data import VocalDataModule
    from mst_single.system import VocalMST

    enc = {"n_mels": 16, "channels": [4], "embed_dim": 8}
    torch.manual_seed(0)
    plain = VocalMST("approach2", sample_rate=SR, encoder=enc, hidden=8, dropout=0.0)
    aux = VocalMST("approach2", sample_rate=SR, encoder=enc, hidden=8, dropout=0.0, param_loss_weight=2.0)
    aux.load_state_dict(plain.state_dict())
    P = plain.console.num_params
    # targets written as `ablate` writes them; the data module hands each item its song's target
    songs = sorted(p.stem for p in (demo_root / "raw").iterdir())
    target = {s: [0.1 + 0.1 * i] * P for i, s in enumerate(songs)}
    f = tmp_path / "targets.json"
    f.write_text(json.dumps({"names": plain.param_names, "params": target}))
    dm = VocalDataModule(str(demo_root), sample_rate=SR, segment_seconds=1.0, batch_size=3, val_fraction=0.2,
                         test_fraction=0.2, train_segments_per_epoch=3, param_targets=str(f))
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    want = torch.tensor([target[s] for s in batch["song"]])
    assert torch.allclose(batch["target_params"], want)
    assert "target_params" not in dm.datasets["test"][0]  # test songs never carry a target

    torch.manual_seed(1)
    a = plain._step(batch, "val")
    torch.manual_seed(1)
    b = aux._step(batch, "val")
    assert "param" not in a
    assert torch.allclose(b["param"], (b["params"] - want).abs().mean())
    assert torch.allclose(b["loss"], a["loss"] + 2.0 * b["param"])
    b["loss"].backward()  # the term reaches the encoder
    assert aux.controller.encoder.proj[0].weight.grad.abs().sum() > 0


def test_param_targets_errors_name_the_file(demo_root, tmp_path, capsys):
    from mst_single.data import VocalDataModule, read_param_targets
    from mst_single.errors import DataError

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        read_param_targets(bad)
    bad.write_text(json.dumps({"names": ["a", "b"], "params": {"s": [0.5, 1.5]}}))
    with pytest.raises(DataError, match="song 's' is not 2 finite values in") as e:
        read_param_targets(bad)
    assert "remake them with `mst-single targets DATA -o TARGETS.json`" in str(e.value)
    assert "or rerun `mst-single ablate` if they are its per-fold targets" in str(e.value)
    few = tmp_path / "few.json"
    few.write_text(json.dumps({"names": ["a"], "params": {"nobody": [0.5]}}))
    dm = VocalDataModule(str(demo_root), sample_rate=SR, segment_seconds=1.0, val_fraction=0.2, test_fraction=0.2,
                         param_targets=str(few))
    with pytest.raises(DataError, match="few.json") as e:
        dm.setup()
    # made by `mst-single targets` for another folder, or by ablate for a fold: both commands are named
    msg = str(e.value)
    assert "have no parameter target" in msg and "made for another data folder or split" in msg
    assert f"`mst-single targets {demo_root} -o {few}`" in msg and "rerun `mst-single ablate`" in msg
    # a run asking for the auxiliary loss with no targets, or targets of another console, stops with the fix
    args = ["fit", "-c", str(CONFIGS / "approach2.yaml"), *tiny_args(demo_root, tmp_path / "runs", epochs=1),
            "--wandb", "false", "--model.param_loss_weight", "1.0"]
    capsys.readouterr()
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "has no parameter targets" in err and "`mst-single targets DATA -o TARGETS.json` makes them" in err
    songs = sorted(p.stem for p in (demo_root / "raw").iterdir())
    few.write_text(json.dumps({"names": ["a"], "params": {s: [0.5] for s in songs}}))
    assert cli_main(args + ["--data.param_targets", str(few)]) == 2
    err = capsys.readouterr().err
    assert "fitted for another console" in err and "`mst-single targets DATA -o TARGETS.json --sample-rate" in err
    assert "rerun `mst-single ablate`" in err


def test_synthetic_references_replace_target_reference_and_setting_for_approach1_training_only():
    from mst_single.system import VocalMST

    enc = {"n_mels": 16, "channels": [4], "embed_dim": 8}
    torch.manual_seed(0)
    m = VocalMST("approach1", sample_rate=SR, encoder=enc, hidden=8, dropout=0.0, param_loss_weight=1.0,
                 synthetic_reference_prob=1.0)
    raw = torch.randn(3, 1, SR) * 0.05

    def step(mixed_scale, stage="train"):
        batch = {"raw": raw, "mixed": torch.randn(3, 2, SR) * mixed_scale, "reference": torch.randn(3, 2, SR) * mixed_scale,
                 "song": ["a", "b", "c"], "start": torch.zeros(3)}
        torch.manual_seed(5)
        return m._step(batch, stage)

    a, b = step(0.01), step(0.5)  # every item synthetic: the batch's own mixes and references are unused
    assert torch.allclose(a["loss"], b["loss"]) and "param" in a and float(a["param"]) > 0
    # the target is the console's output for the drawn setting: predicting that setting scores ~0
    torch.manual_seed(5)
    x = m.normalize_input(raw)
    pick = torch.rand(3) < 1.0
    p = 0.1 + 0.8 * torch.rand(3, m.console.num_params)
    assert bool(pick.all())
    torch.manual_seed(5)
    mixed, ref, tp, has = m._synthetic(x, torch.zeros(3, 2, SR), torch.zeros(3, 2, SR), None, None)
    assert torch.allclose(tp, p) and bool(has.all())
    assert torch.allclose(mixed, m.console(x, p), atol=1e-6) and torch.allclose(ref, m.console(x.roll(1, 0), p), atol=1e-6)
    # validation uses the real pairs; approach2 has no reference to read and ignores the option
    assert not torch.allclose(step(0.01, "val")["loss"], step(0.5, "val")["loss"])
    assert VocalMST("approach2", sample_rate=SR, encoder=enc, hidden=8, synthetic_reference_prob=1.0).synthetic_reference_prob == 0


def test_loss_crop_runs_console_and_loss_on_a_crop_while_the_network_sees_the_whole_segment():
    from mst_single.system import VocalMST

    enc = {"n_mels": 16, "channels": [4], "embed_dim": 8}
    torch.manual_seed(0)
    m = VocalMST("approach2", sample_rate=SR, encoder=enc, hidden=8, dropout=0.0, loss_crop_seconds=0.25)
    raw = torch.randn(3, 1, SR) * 0.05
    # the second half of each raw is different: the network sees it, the loss of a centred crop does not
    batch = {"raw": raw, "mixed": torch.randn(3, 2, SR) * 0.05, "song": ["a", "b", "c"], "start": torch.zeros(3)}
    out = m._step(batch, "val")
    crop = int(0.25 * SR)
    assert out["output"].shape == (3, 2, crop) and out["x"].shape == (3, 1, crop) and out["target"].shape == (3, 2, crop)
    lo = (SR - crop) // 2
    x = m.normalize_input(raw)
    assert torch.equal(out["x"], x[..., lo:lo + crop]) and torch.equal(out["target"], batch["mixed"][..., lo:lo + crop])
    # the prediction is the whole segment's: changing audio outside the crop changes the parameters
    other = dict(batch, raw=torch.cat([raw[..., :lo], raw[..., lo:] * 3.0], -1))
    assert not torch.allclose(m._step(other, "val")["params"], out["params"])
    # training crops start at random positions, per item, the same span of raw and mixed
    torch.manual_seed(1)
    tr = m._step(batch, "train")
    starts = [next(s for s in range(SR - crop + 1) if torch.equal(tr["x"][i], x[i, :, s:s + crop])) for i in range(3)]
    assert len(set(starts)) > 1
    assert all(torch.equal(tr["target"][i], batch["mixed"][i, :, s:s + crop]) for i, s in enumerate(starts))
    # gradients still reach the encoder through the crop
    m.zero_grad()
    tr["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.controller.encoder.parameters())
    # a crop at least as long as the segment is the whole segment; a non-positive crop is refused
    assert VocalMST("approach2", sample_rate=SR, encoder=enc, hidden=8, loss_crop_seconds=2.0)._step(batch, "val")["output"].shape[-1] == SR
    with pytest.raises(MstError, match="loss_crop_seconds"):
        VocalMST("approach2", sample_rate=SR, encoder=enc, hidden=8, loss_crop_seconds=0)


def test_param_warmup_trains_on_the_parameter_loss_alone_then_adds_the_audio_loss(monkeypatch):
    from mst_single.system import VocalMST

    enc = {"n_mels": 16, "channels": [4], "embed_dim": 8}
    with pytest.raises(MstError, match="param_loss_weight is 0"):
        VocalMST("approach2", sample_rate=SR, encoder=enc, hidden=8, param_warmup_steps=5)
    torch.manual_seed(0)
    m = VocalMST("approach2", sample_rate=SR, encoder=enc, hidden=8, dropout=0.0, param_loss_weight=1.0, param_warmup_steps=5)
    m.console.forward = lambda *a, **k: pytest.fail("the console ran during the warm-up")
    tp = torch.rand(2, m.console.num_params)
    batch = {"raw": torch.randn(2, 1, SR) * 0.05, "mixed": torch.randn(2, 2, SR) * 0.05, "song": ["a", "b"],
             "start": torch.zeros(2), "target_params": tp}
    out = m._step(batch, "train")  # global_step 0 < 5
    assert set(out) >= {"loss", "param"} and "mrstft" not in out and out["output"] is None
    assert torch.allclose(out["loss"], (out["params"] - tp).abs().mean())
    with pytest.raises(MstError, match="needs parameter targets"):
        m._step({k: v for k, v in batch.items() if k != "target_params"}, "train")
    del m.console.forward  # after the warm-up (and in validation) the audio loss is back
    assert "mrstft" in m._step(batch, "val")
    monkeypatch.setattr(VocalMST, "global_step", property(lambda self: 5))
    out = m._step(batch, "train")
    assert "mrstft" in out and torch.allclose(out["loss"], out["mrstft"] + out["l1"] + out["param"], atol=1e-6)


def test_nested_model_dicts_from_the_command_line_are_typed_values(tmp_path, capsys):
    # `--model.encoder.feature_norm false` was kept as the string 'false' (truthy): the option was ignored
    assert cli_main(["fit", "-c", str(CONFIGS / "approach2.yaml"), "--model.encoder.feature_norm", "false",
                     "--model.loss.l1_weight", "0", "--model.loss.fft_sizes", "[512, 128]",
                     "--model.encoder", '{"n_mels": 32}', "--model.encoder.embed_dim", "16",
                     "--print_config"]) == 0
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["encoder"] == {"n_mels": 32, "embed_dim": 16}  # a whole dict replaces, later keys add
    assert model["loss"]["l1_weight"] == 0 and model["loss"]["fft_sizes"] == [512, 128]
    assert cli_main(["fit", "-c", str(CONFIGS / "approach2.yaml"), "--model.encoder.feature_norm", "false",
                     "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["encoder"]["feature_norm"] is False
