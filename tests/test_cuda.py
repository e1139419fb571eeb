"""The GPU path (skipped without CUDA): `fit` of both approaches on the real configs at tiny sizes,
its reproducibility under `trainer.deterministic: true`, `mix` of a GPU-trained checkpoint, the
device compressor against the CPU one, the whole-song evaluation of `ablate`, and a console + loss
step without host syncs.
Run by scripts/gpu-check.sh on a GPU machine; the CPU side of each check is in test_device.py,
test_functional.py and test_train.py.
"""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_fit_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
GPU = ["--trainer.accelerator", "gpu", "--trainer.devices", "1"]


def _fit(approach, root, runs, name, *extra):
    from mst_single.train import cli_main

    rc = cli_main(["fit", "-c", str(CONFIGS / f"{approach}.yaml"), *tiny_fit_args(root, runs, epochs=2), *GPU,
                   "--run_name", name, *extra])
    assert rc == 0
    run = runs / name
    rows = list(csv.DictReader(open(run / "metrics.csv", newline="")))
    return run, [float(r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import make_vocal_data

    return make_vocal_data(tmp_path_factory.mktemp("data"), songs=5, seconds=4.0)


@pytest.mark.parametrize("approach", ["approach1", "approach2"])
def test_fit_on_gpu_is_deterministic_and_mixes(approach, data, tmp_path):
    """Two GPU fits with the same seed (deterministic algorithms on, as configs/base.yaml sets)
    give the same losses; the run writes its checkpoint and provenance; `mix` (CPU) takes the
    GPU-trained checkpoint and writes a finite mix."""
    import json

    import soundfile as sf

    from mst_single.mix import mix_file

    run, losses = _fit(approach, data, tmp_path / "runs", "a")
    _, again = _fit(approach, data, tmp_path / "runs", "b")
    assert losses and all(math.isfinite(v) for v in losses)
    assert losses == again  # bit-identical on the same GPU and software
    prov = json.loads((run / "provenance.json").read_text())
    assert prov.get("torch_deterministic") is True
    ckpt = run / "checkpoints" / "last.ckpt"
    raw = sorted((data / "raw").iterdir())[0]
    ref = sorted((data / "mixed").iterdir())[0] if approach == "approach1" else None
    out = tmp_path / f"mixed_{approach}.wav"
    mix_file(raw, out, ckpt, reference=ref)
    y, _ = sf.read(out, dtype="float32")
    assert y.ndim == 2 and y.shape[1] == 2 and np.isfinite(y).all() and np.abs(y).max() > 0


def test_fit_bf16_mixed_on_gpu(data, tmp_path):
    _, losses = _fit("approach2", data, tmp_path / "runs", "bf16", "--trainer.precision", "bf16-mixed")
    assert losses and all(math.isfinite(v) for v in losses)


def test_device_compressor_equals_the_cpu_kernel():
    """The torch path on the GPU against the numba kernel on the CPU: 1 s of vocal-like audio at
    48 kHz, values to 1e-5 of full scale, gradients of x and every parameter to 1e-3 relative."""
    from mst_single import functional as F
    from mst_single.bench import batch_audio

    x = batch_audio(4, 1, 1.0, 48000)
    vals = [[-24.0, -40.0, -10.0, -60.0], [4.0, 20.0, 2.0, 1.5], [5.0, 0.1, 100.0, 1.0],
            [120.0, 1000.0, 10.0, 50.0], [6.0, 0.0, 12.0, 3.0], [3.0, 10.0, 0.0, 24.0]]
    res = {}
    for dev in ("cpu", "cuda"):
        xx = x.to(dev).requires_grad_()
        ps = [torch.tensor(v, device=dev, requires_grad=True) for v in vals]
        y = F.compressor(xx, 48000, *ps)
        (y * x.to(dev)).sum().backward()
        res[dev] = [y.detach().cpu()] + [t.grad.cpu() for t in [xx, *ps]]
    for a, b in zip(res["cpu"], res["cuda"]):
        assert torch.isfinite(b).all()
        assert (a - b).abs().max() <= 1e-3 * a.abs().max() + 1e-5


def test_console_and_loss_step_without_host_syncs():
    """Console + loss forward and backward on the GPU under CUDA's sync debug mode: no sync at all
    without the compressor; with it, only its convergence tests (one bool per 4 fixed-point rounds)."""
    from mst_single.console import VocalConsole
    from mst_single.losses import MRSTFTL1Loss

    def syncs(stages):
        c = VocalConsole(48000, stages)
        loss = MRSTFTL1Loss().cuda()
        raw, mixed = torch.randn(2, 1, 96000, device="cuda") * 0.1, torch.randn(2, 2, 96000, device="cuda") * 0.1
        p = torch.rand(2, c.num_params, device="cuda", requires_grad=True)
        loss(c(raw, p), mixed)["loss"].backward()  # warm-up: per-device caches
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                loss(c(raw, p), mixed)["loss"].backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return [str(x.message) for x in w if "synchroniz" in str(x.message).lower()]

    assert syncs({"compressor": False}) == []
    assert len(syncs(None)) <= 16


def test_evaluation_on_gpu_equals_the_cpu(data, tmp_path):
    """The ablation's whole-song evaluation of a GPU-trained checkpoint runs on the GPU
    (predictions and console) and scores what the same checkpoint scores on the CPU."""
    from mst_single.experiments import evaluate as E

    run, _ = _fit("approach2", data, tmp_path / "runs", "eval")
    testset = E.TestSet(data, sample_rate=16000, segment_seconds=1.0, val_fraction=0.2, test_fraction=0.2)
    assert E.eval_device("auto").type == "cuda" and E.eval_device("cpu").type == "cpu"
    on_gpu = E.evaluate_model(E.load_model(run / "checkpoints" / "last.ckpt", "cuda"), testset, "same",
                              progress=False)
    on_cpu = E.evaluate_model(E.load_model(run / "checkpoints" / "last.ckpt", "cpu"), testset, "same",
                              progress=False)
    assert [r.song for r in on_gpu] == [r.song for r in on_cpu] and on_gpu
    for g, c in zip(on_gpu, on_cpu):
        assert np.isfinite(g.output).all()
        assert g.metrics["mrstft"] == pytest.approx(c.metrics["mrstft"], rel=1e-3, abs=1e-4)
        for k in g.setting:
            assert g.setting[k] == pytest.approx(c.setting[k], abs=1e-3)
