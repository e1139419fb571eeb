"""Device behaviour that a CPU can prove: the training step reads nothing back to the host and
copies nothing between devices (run on `meta` tensors, which hold no data), the console's fixed
sizes for accelerators equal the CPU's data-dependent ones, and bf16-mixed training.

The GPU itself is exercised by tests/test_cuda.py (skipped without CUDA) and scripts/gpu-check.sh.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mst_single.console import VocalConsole
from mst_single.system import VocalMST

SR = 16000


class HostTraffic(TorchDispatchMode):
    """Records every host read of a value (`.item()`, `bool(t)`, `float(t)`: aten._local_scalar_dense)
    and every copy between two devices (`.to(device)`, `.cpu()`, `torch.tensor(..., device=)`)."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if "_local_scalar_dense" in name:
            self.events.append(f"host read ({name})")
        elif "_to_copy" in name and "device" in kwargs and torch.device(kwargs["device"]) != args[0].device:
            self.events.append(f"copy {args[0].device} -> {kwargs['device']} of {tuple(args[0].shape)}")
        elif name.endswith("copy_") and isinstance(args[1], torch.Tensor) and args[0].device != args[1].device:
            self.events.append(f"copy {args[1].device} -> {args[0].device} of {tuple(args[1].shape)}")
        return func(*args, **kwargs)


def _tiny_model(approach: str) -> VocalMST:
    return VocalMST(approach=approach, sample_rate=SR, encoder={"n_mels": 16, "channels": [4, 8], "embed_dim": 8},
                    hidden=8, loss={"fft_sizes": [512, 128], "hop_sizes": [128, 32], "win_lengths": [512, 128]})


def _step_on(model: VocalMST, device: str) -> torch.Tensor:
    """The body of a training step: loudness normalisation, controller, console, loss, backward."""
    raw = torch.empty(2, 1, SR, device=device)
    mixed = torch.empty(2, 2, SR, device=device)
    ref = torch.empty(2, 2, SR, device=device) if model.needs_reference else None
    x = model.normalize_input(raw)
    loss = model.loss_fn(model.console(x, model.controller(x, ref)), mixed)["loss"]
    loss.backward()
    return loss


@pytest.mark.parametrize("approach", ["approach1", "approach2"])
def test_training_step_copies_nothing_to_or_from_the_host(approach):
    """On the meta device (no data: any value read on the host would raise) a whole step runs, and
    after the first one (which fills the per-device caches: noise bands, grids, K-weighting) it
    neither copies between devices nor reads a value back. The same hook sees the copies and
    reads that a careless step would make, so the check can fail."""
    model = _tiny_model(approach).to("meta")
    _step_on(model, "meta")  # warm-up: constants are made once per device
    with HostTraffic() as traffic:
        loss = _step_on(model, "meta")
    assert loss.device.type == "meta"
    assert traffic.events == []
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.controller.parameters())
    with HostTraffic() as traffic:  # the hook does see traffic
        torch.ones(3).to("meta")
        with pytest.raises(RuntimeError, match="meta"):
            torch.ones(3, device="meta").sum().item()
    assert len(traffic.events) == 2


def test_static_sizes_equal_the_cpu_sizes():
    """The accelerator's fixed EQ FIR and reverb IR lengths give the same output as the CPU's
    data-dependent ones (the extra taps are the tails below -150 / -80 dB), gradients included."""
    g = torch.Generator().manual_seed(0)
    raw = 0.2 * torch.randn(2, 1, SR, generator=g)
    outs = []
    for static in (False, True):
        c = VocalConsole(SR, static_sizes=static)
        p = torch.rand(2, c.num_params, generator=torch.Generator().manual_seed(1)).requires_grad_()
        y = c(raw, p)
        y.square().mean().backward()
        outs.append((y.detach(), p.grad))
    (y1, g1), (y2, g2) = outs
    assert (y1 - y2).abs().max() <= 1e-5 * y1.abs().max()
    assert (g1 - g2).abs().max() <= 1e-4 * g1.abs().max()
    c = VocalConsole(48000)
    assert c.eq_fir_taps_max == 65536 and c.reverb_ir_taps_max == 120000


def test_bf16_autocast_runs_the_controller_in_bf16_and_the_chain_in_float32():
    """Under bf16 autocast (what `--trainer.precision bf16-mixed` sets up) the controller's layers
    run in bfloat16 while the console and the loss stay float32, and the step has finite gradients."""
    model = _tiny_model("approach1")
    g = torch.Generator().manual_seed(0)
    raw, mixed, ref = (0.1 * torch.randn(2, c, SR, generator=g) for c in (1, 2, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = model.normalize_input(raw)
        p = model.controller(x, ref)
        y = model.console(x, p)
        losses = model.loss_fn(y, mixed)
    assert p.dtype == torch.bfloat16 and y.dtype == torch.float32 and losses["loss"].dtype == torch.float32
    losses["loss"].backward()
    grads = [q.grad for q in model.controller.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert any(gr.abs().sum() > 0 for gr in grads)


@pytest.mark.slow
def test_fit_with_bf16_mixed_precision(make_data, tmp_path):
    """`mst-single fit --trainer.precision bf16-mixed` trains on the real config (CPU autocast)."""
    import csv
    import math
    from pathlib import Path

    import yaml

    from conftest import tiny_fit_args
    from mst_single.train import cli_main

    root = make_data(songs=5, seconds=3.0)
    cfg = Path(__file__).resolve().parent.parent / "configs" / "approach2.yaml"
    rc = cli_main(["fit", "-c", str(cfg), *tiny_fit_args(root, tmp_path / "runs"), "--trainer.precision", "bf16-mixed",
                   "--run_name", "bf16"])
    assert rc == 0
    run = tmp_path / "runs" / "bf16"
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == "bf16-mixed"
    rows = list(csv.DictReader(open(run / "metrics.csv", newline="")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_evaluation_device_follows_the_training_accelerator(monkeypatch):
    """`ablate` evaluates (and fits its baselines) on CUDA when there is one, unless the training
    config asks for the CPU."""
    from mst_single.experiments.evaluate import eval_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert eval_device("auto").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert eval_device("auto").type == "cuda" and eval_device("gpu").type == "cuda"
    assert eval_device("cpu").type == "cpu" and eval_device(None).type == "cuda"
