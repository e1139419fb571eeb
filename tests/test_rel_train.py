"""Reliability (issue 7, parts 3-5): resume after kill -9, determinism, NaN safety.

Resume design under test: `fit` writes `checkpoints/last.ckpt` (atomically) at each epoch end;
training segments are drawn from (seed, epoch, index) (`data.EpochSampler`), so a run killed with
SIGKILL mid-epoch and resumed with `fit --ckpt_path last` redoes the interrupted epoch from its
start and must end with the same metrics and weights as a run that was never interrupted (same
seed, CPU). The kill is made deterministic by a callback (in a throw-away module handed to the
subprocess through `--trainer.callbacks`) that sends SIGKILL to its own process at a given
global step: the same signal as `kill -9` from outside, at a known point.

NaN safety: the console over corners and edges of its parameter box, and training steps on
silence, full-scale noise and clipped audio, give finite outputs, losses and gradients; a NaN
injected into a real `fit` stops the run with exit code 2 and a message naming the batch's songs,
and no checkpoint is written after the NaN step.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import subprocess
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_vocal_data, synth_vocal, tiny_fit_args

# tiny_fit_args keeps dropout on (0.1, as in base.yaml), so the global RNG state matters for resume
# and determinism.
from mst_single.cli import main

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
SR = 16000


def cli(*argv) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("ignore")
        code = main([str(a) for a in argv])
    return code, out.getvalue() + err.getvalue()


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


def series(rows, key) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if key in r]


def ckpt_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_vocal_data(tmp_path_factory.mktemp("train") / "data", songs=5, seconds=3.0, sample_rate=SR)


EPOCHS = 3


@pytest.fixture(scope="module")
def full_runs(data, tmp_path_factory):
    """Two uninterrupted runs, same seed (determinism), 3 epochs x 2 steps."""
    runs = tmp_path_factory.mktemp("runs")
    out = []
    for name in ("full_a", "full_b"):
        code, text = cli("fit", "-c", CONFIGS / "approach2.yaml", *tiny_fit_args(data, runs, EPOCHS), "--run_name", name)
        assert code == 0, text
        out.append(runs / name)
    return out


# ----------------------------------------------------------------------------------------------
# determinism

def test_same_seed_same_run_on_cpu(full_runs):
    a, b = (metrics(r) for r in full_runs)
    for key in ("val/loss", "val/mrstft", "val/l1", "train/loss"):
        assert series(a, key) and series(a, key) == series(b, key), key
    sa, sb = (ckpt_state(r / "checkpoints" / "last.ckpt") for r in full_runs)
    assert sa["global_step"] == 2 * EPOCHS
    for k in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k


def test_another_seed_gives_another_run(full_runs, data, tmp_path):
    """The comparison above can fail: a different seed changes the numbers."""
    code, text = cli("fit", "-c", CONFIGS / "approach2.yaml", *tiny_fit_args(data, tmp_path, 1), "--run_name", "s1",
                     "--seed_everything", "1")
    assert code == 0, text
    first_val = series(metrics(full_runs[0]), "val/loss")[0]
    assert series(metrics(tmp_path / "s1"), "val/loss")[0] != first_val


# ----------------------------------------------------------------------------------------------
# resume after kill -9

KILL_HOOK = textwrap.dedent('''
    import os, signal
    import pytorch_lightning as pl

    class KillAtStep(pl.Callback):
        """SIGKILL this process (kill -9) when training reaches global step `step`."""

        def __init__(self, step: int = 3):
            self.step = step

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == self.step:
                os.kill(os.getpid(), signal.SIGKILL)
''')


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(full_runs, data, tmp_path):
    runs = full_runs[0].parent
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "rel_killhook.py").write_text(KILL_HOOK)
    env = dict(os.environ, OMP_NUM_THREADS="2", WANDB_MODE="offline",
               PYTHONPATH=os.pathsep.join([str(hook_dir), os.environ.get("PYTHONPATH", "")]))
    # killed at global step 3: the second step of epoch 1, after epoch 0's last.ckpt was written
    cmd = [str(REPO / ".venv" / "bin" / "mst-single"), "fit", "-c", str(CONFIGS / "approach2.yaml"),
           *tiny_fit_args(data, runs, EPOCHS), "--run_name", "killed",
           "--trainer.callbacks", '[{"class_path": "rel_killhook.KillAtStep", "init_args": {"step": 3}}]']
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]
    run = runs / "killed"
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    st = ckpt_state(last)
    assert (st["epoch"], st["global_step"]) == (0, 2), "last.ckpt should hold the end of epoch 0"

    code, text = cli("fit", "-c", CONFIGS / "approach2.yaml", *tiny_fit_args(data, runs, EPOCHS), "--run_name", "killed",
                     "--ckpt_path", "last")
    assert code == 0, text
    full, resumed = metrics(full_runs[0]), metrics(run)
    for key in ("val/loss", "val/mrstft", "val/l1", "train/loss"):
        assert series(resumed, key) == series(full, key), key  # same values, each step once
    a, b = ckpt_state(full_runs[0] / "checkpoints" / "last.ckpt"), ckpt_state(last)
    assert b["global_step"] == a["global_step"] == 2 * EPOCHS
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


# ----------------------------------------------------------------------------------------------
# NaN safety: the console over its parameter box

SEG = SR // 2  # 0.5 s: cost grows with the batch; the 2.5 s reverb IR sets the FFT size anyway


def corner_patterns(num: int, rng: np.random.Generator, n_random: int = 8,
                    per_parameter: bool = True) -> tuple[torch.Tensor, list[str]]:
    """all-0, all-1, 0101..., 1010..., `n_random` random corners, and (`per_parameter`) each
    parameter alone at 0 and at 1 with the others at 0.5: (n, num) in [0, 1], a label per row."""
    rows, labels = [np.zeros(num), np.ones(num), np.arange(num) % 2, 1 - np.arange(num) % 2], \
        ["all-0", "all-1", "0101", "1010"]
    for i in range(n_random):
        rows.append(rng.integers(0, 2, num))
        labels.append(f"random corner {i}")
    for i in range(num if per_parameter else 0):
        for v in (0.0, 1.0):
            r = np.full(num, 0.5)
            r[i] = v
            rows.append(r)
            labels.append(f"param {i} = {v:g}")
    return torch.tensor(np.stack(rows), dtype=torch.float32), labels


def extreme_signals(n: int = SEG) -> dict[str, torch.Tensor]:
    """(n,) test inputs: a vocal, digital silence, full-scale white noise, a hard-clipped vocal."""
    return {
        "vocal": torch.from_numpy(synth_vocal(n / SR, SR, seed=3, level=0.5)),
        "silence": torch.zeros(n),
        "full-scale noise": torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, n).astype(np.float32)),
        "clipped": torch.from_numpy(np.clip(synth_vocal(n / SR, SR, seed=4) * 20, -1, 1).astype(np.float32)),
    }


def test_console_finite_over_the_parameter_box():
    """Corners (all-0, all-1, alternating, 8 random) for each of the 4 signals, and every parameter
    alone at 0 and at 1 for the vocal, silence and noise: finite output and finite gradients with
    respect to the parameters and the input."""
    from mst_single.console import VocalConsole

    console = VocalConsole(SR)
    xs, ps, labels = [], [], []
    for name, sig in extreme_signals().items():
        p, lab = corner_patterns(console.num_params, np.random.default_rng(len(name)),
                                 per_parameter=name != "clipped")
        xs.append(sig.reshape(1, 1, -1).expand(len(p), 1, -1))
        ps.append(p)
        labels += [f"{name}: {s}" for s in lab]
    x = torch.cat(xs).clone().requires_grad_(True)
    p = torch.cat(ps).clone().requires_grad_(True)
    y = console(x, p)
    assert y.shape == (len(p), 2, SEG) and len(p) == 4 * 12 + 3 * 2 * console.num_params
    bad = [labels[i] for i in range(len(p)) if not torch.isfinite(y[i]).all()]
    assert bad == [], f"non-finite output at {bad}"
    # a loss-like scalar through every output sample; gradients w.r.t. parameters and input
    (y.square().mean(dim=(1, 2)) + y.abs().mean(dim=(1, 2))).sum().backward()
    bad_p = [labels[i] for i in range(len(p)) if not torch.isfinite(p.grad[i]).all()]
    bad_x = [labels[i] for i in range(len(p)) if not torch.isfinite(x.grad[i]).all()]
    assert bad_p == [] and bad_x == [], f"non-finite gradients: params {bad_p}, input {bad_x}"


# ----------------------------------------------------------------------------------------------
# NaN safety: training steps on silence, full-scale noise, clipped audio

@pytest.mark.parametrize("approach", ["approach1", "approach2"])
def test_training_steps_on_extreme_audio_stay_finite(approach):
    from mst_single.system import VocalMST

    torch.manual_seed(0)
    model = VocalMST(approach, sample_rate=SR, encoder={"n_mels": 32, "channels": [8, 16], "embed_dim": 16},
                     hidden=16, loss={"fft_sizes": [1024, 256], "hop_sizes": [256, 64], "win_lengths": [1024, 256]})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sig = extreme_signals()
    cases = {
        "silence -> silence": (sig["silence"], torch.zeros(2, SEG)),
        "silence -> reverb tail": (sig["silence"], 0.01 * torch.randn(2, SEG)),
        "full-scale noise": (sig["full-scale noise"], sig["full-scale noise"].expand(2, -1)),
        "clipped": (sig["clipped"], sig["clipped"].expand(2, -1)),
        "vocal -> silence": (sig["vocal"], torch.zeros(2, SEG)),
    }
    for name, (raw, target) in cases.items():
        batch = {"raw": raw.reshape(1, 1, -1).expand(2, 1, -1).clone(), "mixed": target.expand(2, 2, -1).clone(),
                 "reference": target.expand(2, 2, -1).clone(), "song": [name, name], "start": torch.zeros(2)}
        for _ in range(2):
            opt.zero_grad()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # self.log outside a Trainer
                loss = model.training_step(batch, 0)
            assert torch.isfinite(loss), f"{approach} {name}: loss {loss}"
            loss.backward()
            grads = [q.grad for q in model.parameters() if q.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads), f"{approach} {name}: gradient"
            opt.step()
        assert all(torch.isfinite(q).all() for q in model.parameters())
        with torch.no_grad():
            y, p = model(batch["raw"], batch["reference"])
        assert torch.isfinite(y).all() and torch.isfinite(p).all() and ((p >= 0) & (p <= 1)).all(), name


# ----------------------------------------------------------------------------------------------
# NaN safety: a NaN in a real fit stops it before a poisoned checkpoint

NAN_STEP = 3  # epoch 1, after epoch 0's checkpoints were written


@pytest.mark.parametrize("where", ["output", "gradient"])
def test_nan_in_fit_stops_without_saving(where, data, tmp_path, monkeypatch):
    from mst_single.console import VocalConsole
    from mst_single.system import VocalMST

    state = {"step": 0, "songs": None, "ckpts": None}
    ckpt_dir = tmp_path / "nan" / "checkpoints"
    real_step, real_forward = VocalMST.training_step, VocalConsole.forward

    def training_step(self, batch, batch_idx):
        state["step"] = self.global_step
        if self.global_step == NAN_STEP:
            state["songs"] = list(batch["song"])
            state["ckpts"] = {p.name: sha(p) for p in ckpt_dir.iterdir()}
        return real_step(self, batch, batch_idx)

    def forward(self, raw, p):
        y = real_forward(self, raw, p)
        if torch.is_grad_enabled() and state["step"] == NAN_STEP:  # training only (validation: no_grad)
            if where == "output":
                return y * float("nan")
            y.register_hook(lambda g: g * float("nan"))  # finite loss, NaN gradients
        return y

    monkeypatch.setattr(VocalMST, "training_step", training_step)
    monkeypatch.setattr(VocalConsole, "forward", forward)
    code, text = cli("fit", "-c", CONFIGS / "approach2.yaml", *tiny_fit_args(data, tmp_path, EPOCHS), "--run_name", "nan")
    assert code == 2, text
    assert state["songs"] and state["ckpts"], "the NaN step was not reached"
    msg = text[text.index("error:"):]
    assert "Traceback" not in text
    for song in state["songs"]:
        assert song in msg, f"the message does not name {song}:\n{msg}"
    assert ("loss" in msg) if where == "output" else ("gradient" in msg), msg
    assert "--ckpt_path last" in msg
    # no checkpoint written after the NaN step: same files, same bytes; last.ckpt is epoch 0
    assert {p.name: sha(p) for p in ckpt_dir.iterdir()} == state["ckpts"]
    assert ckpt_state(ckpt_dir / "last.ckpt")["global_step"] == 2
