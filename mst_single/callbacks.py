"""What a training run writes into its run folder, besides what Lightning does on its own.

- `ExamplesCallback`: every N epochs, audio (raw / output / target), a spectrogram PNG of the three
  and a table of predicted parameters (units) for a few fixed validation segments, written to
  `RUN/examples/epoch_XXX/` and logged to W&B when W&B is active.
- `RunCSVLogger`: Lightning's CSVLogger, but `metrics.csv` is rewritten atomically (temp file +
  rename) instead of appended to, and a resumed run keeps the rows of the run it resumes (stock
  CSVLogger deletes them) minus those logged after the checkpoint it resumes from.
- `RunCheckpoint`: `last.ckpt` is the latest state after every epoch (see its docstring).
- `AtomicCheckpointIO`: checkpoints written through `mst_single.fileio.atomic_path` (fsync, rename),
  so a `kill -9` never leaves a truncated `last.ckpt`.
- `LineProgressCallback`: training progress as one line at a time (step/total, loss, elapsed, ETA),
  used instead of Lightning's progress bar when the output is not a terminal (see `mst_single.train`).
"""
from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from mst_single import fileio

ROLES = ("raw", "output", "target")


# ----------------------------------------------------------------------------------------------
# crash-safe writers

class AtomicCheckpointIO(TorchCheckpointIO):
    """Save checkpoints to a temporary file beside the target, fsync, then rename into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        with fileio.atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class _RunCSVWriter(_ExperimentWriter):
    """metrics.csv kept whole in memory and rewritten atomically on each flush."""

    def __init__(self, log_dir: str):
        self.metrics: list[dict] = []
        self.metrics_keys: list[str] = []
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.hparams: dict = {}
        self.rows: list[dict] = []
        os.makedirs(log_dir, exist_ok=True)
        if os.path.isfile(self.metrics_file_path):  # a resumed run: keep its history
            with open(self.metrics_file_path, newline="") as f:
                reader = csv.DictReader(f)
                self.metrics_keys = list(reader.fieldnames or [])
                self.rows = [{k: v for k, v in r.items() if v not in ("", None)} for r in reader]

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (they came from past the checkpoint being resumed)."""
        self.rows = [r for r in self.rows if float(r.get("step", 0)) <= step]
        self._write()

    def save(self) -> None:
        if not self.metrics:
            return
        for m in self.metrics:
            for k in m:
                if k not in self.metrics_keys:
                    self.metrics_keys.append(k)
        self.metrics_keys.sort()
        self.rows += self.metrics
        self.metrics = []
        self._write()

    def _write(self) -> None:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=self.metrics_keys)
        w.writeheader()
        w.writerows(self.rows)
        fileio.write_text(self.metrics_file_path, buf.getvalue())

    def log_hparams(self, params: dict) -> None:
        from pytorch_lightning.core.saving import save_hparams_to_yaml

        self.hparams.update(params)
        path = os.path.join(self.log_dir, "hparams.yaml")
        with fileio.atomic_path(path) as tmp:
            save_hparams_to_yaml(tmp, self.hparams)


class RunCSVLogger(CSVLogger):
    """CSVLogger writing `metrics.csv` and `hparams.yaml` straight into `save_dir` (no
    name/version sub-folders), atomically; see the module docstring."""

    def __init__(self, save_dir, flush_logs_every_n_steps: int = 50):
        super().__init__(save_dir, name="", version="", flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    def log_dir(self) -> str:
        return self.save_dir

    @property
    def experiment(self) -> _RunCSVWriter:
        if self._experiment is None:
            self._experiment = _RunCSVWriter(self.save_dir)
        return self._experiment


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` is the latest state at every save point (epoch end).

    Lightning 2.6 refreshes `last.ckpt` only when a top-k (best) checkpoint was saved at the same
    step, so after an epoch without improvement `last.ckpt` would still hold the best epoch and
    `fit --ckpt_path last` would silently go back in time. Here `last.ckpt` is written every time.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._no_val = _no_val_songs(trainer)
        if self._no_val and trainer.is_global_zero:
            print("fit: no validation songs (data.val_fraction or the split file leaves none): no val/loss, so no "
                  "best-*.ckpt; checkpoints/last.ckpt is the model", flush=True)

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        # without validation songs there is nothing to rank by: Lightning would warn about the missing
        # val/loss at every save instead
        if getattr(self, "_no_val", False) and self.monitor not in monitor_candidates:
            return
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _ensure_last(self, trainer: pl.Trainer) -> None:
        # skipped when this step was already saved (top-k and last written by the parent)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _no_val_songs(trainer: pl.Trainer) -> bool:
    """True when the run's VocalDataModule has no validation dataset (no song in the val split)."""
    datasets = getattr(getattr(trainer, "datamodule", None), "datasets", None)
    return isinstance(datasets, dict) and not datasets.get("val")


class ResumeCallback(pl.Callback):
    """At the start of training, trim metrics.csv back to the restored step (resume), or empty it
    (a fresh fit in a folder whose earlier run died before its first checkpoint), so that no row
    appears twice and no row of a dead run survives."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        # the checkpoint holds `_batches_that_stepped` steps; the first step after it logs at that
        # step number, so rows at it or later come from past the checkpoint
        step = trainer.fit_loop.epoch_loop._batches_that_stepped - 1 if trainer.ckpt_path else -1
        for lg in trainer.loggers:
            if isinstance(lg, RunCSVLogger):
                lg.experiment.truncate_after(step)


# ----------------------------------------------------------------------------------------------
# progress

class LineProgressCallback(pl.Callback):
    """Training progress as plain lines (``mst_single.progress.LineProgress``), for logs:

        fit: 30/300 steps (10%), loss 0.1234, 0:45 elapsed, ETA 6:45
        validation after step 60: val/loss 0.1187

    A line every ``every_n_steps`` steps (default: a tenth of the run) or ``every_seconds``, whichever
    comes first, one per validation, and one at the end.
    """

    def __init__(self, every_seconds: float = 30.0, every_n_steps: int | None = None):
        self.every_seconds, self.every_n_steps = every_seconds, every_n_steps
        self.bar = None

    @staticmethod
    def _total(trainer: pl.Trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        per_epoch = trainer.num_training_batches
        if trainer.max_epochs and trainer.max_epochs > 0 and per_epoch and per_epoch != float("inf"):
            return int(trainer.max_epochs * per_epoch)
        return None

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        from mst_single.progress import LineProgress

        if not trainer.is_global_zero:
            return
        total = self._total(trainer)
        every_n = self.every_n_steps or (max(1, total // 10) if total else None)
        self.bar = LineProgress(total=total, desc="fit", unit="steps", every_seconds=self.every_seconds,
                                every_n=every_n)
        self.bar.n = self.bar._last_n = float(trainer.global_step)  # a resumed run starts where it stopped
        self.bar.write(f"fit: training from step {trainer.global_step}" + (f" to {total}" if total else ""))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.bar.set_postfix(loss=f"{float(loss):.4f}")
        self.bar.update(trainer.global_step - self.bar.n)

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self.bar is None or trainer.sanity_checking:
            return
        vals = {k: float(v) for k, v in trainer.callback_metrics.items()
                if k.startswith("val/") and k.count("/") == 1 and isinstance(v, torch.Tensor) and v.numel() == 1}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(vals.items())[:4])
        self.bar.write(f"validation after step {trainer.global_step}: {shown or 'done'}")

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ----------------------------------------------------------------------------------------------
# examples

def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)[:80] or "song"


def format_value(value: float, unit: str) -> str:
    """A parameter value with its unit, e.g. "-18.0 dB", "3.2 kHz", "3.5:1"."""
    if unit == "Hz":
        return f"{value / 1000:.2f} kHz" if value >= 1000 else f"{value:.0f} Hz"
    if unit == ":1":
        return f"{value:.1f}:1"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"
    if unit == "Q":
        return f"Q {value:.2f}"
    if unit in ("", None):
        return f"{value:.2f}"
    return f"{value:+.1f} {unit}" if unit == "dB" else f"{value:.2f} {unit}"


def params_table(examples: list[dict], specs) -> str:
    """Markdown table: one row per parameter, one column per example, values in units."""
    head = "| parameter | " + " | ".join(f"{e['song']} @ {e['start']}" for e in examples) + " |"
    lines = [head, "|" + "---|" * (len(examples) + 1)]
    for s in specs:
        lines.append(f"| {s.name} | " + " | ".join(format_value(e["params"][s.name], s.unit) for e in examples) + " |")
    return "\n".join(lines) + "\n"


def spectrogram_png(path: Path, signals: dict[str, np.ndarray], sample_rate: int, title: str) -> None:
    """One log-magnitude spectrogram per signal (channels averaged), stacked, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(signals), 1, figsize=(8, 2.2 * len(signals)), sharex=True, squeeze=False)
    nfft = 1024 if sample_rate > 24000 else 512
    for ax, (name, x) in zip(axes[:, 0], signals.items()):
        mono = np.asarray(x, np.float64).reshape(-1, np.asarray(x).shape[-1]).mean(0)
        ax.specgram(mono + 1e-9, NFFT=nfft, Fs=sample_rate, noverlap=nfft * 3 // 4, cmap="magma",
                    vmin=-130, vmax=-20, scale="dB")
        ax.set_ylabel(f"{name}\nHz")
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel("s")
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


class ExamplesCallback(pl.Callback):
    """Every `model.log_audio_every_n_epochs` epochs (epoch 0 included), for the model's first
    `num_log_examples` validation segments (the val grid is fixed, so the same segments each time):
    `OUT/epoch_XXX/NN_SONG_{raw,output,target}.wav`, `NN_SONG_spectrogram.png` and `params.md`
    (predicted parameters in units). `raw` is the network/console input, i.e. the raw vocal
    loudness-normalised to `model.target_lufs`. The same goes to W&B (Audio, Image, Table) when a
    WandbLogger is attached.

    Args:
        out_dir: folder for `epoch_XXX/` (default: `<trainer.default_root_dir>/examples`).
    """

    def __init__(self, out_dir: str | os.PathLike | None = None):
        self.out_dir = Path(out_dir) if out_dir is not None else None

    def _due(self, trainer: pl.Trainer, pl_module) -> bool:
        n = int(getattr(pl_module.hparams, "log_audio_every_n_epochs", 0) or 0)
        return (n > 0 and not trainer.sanity_checking and trainer.state.fn == "fit"
                and trainer.current_epoch % n == 0 and trainer.is_global_zero)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        pl_module._examples = [] if self._due(trainer, pl_module) else None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        examples, pl_module._examples = pl_module._examples, None
        if examples:
            self.write(trainer, pl_module, examples)

    def write(self, trainer: pl.Trainer, pl_module, examples: list[dict]) -> Path:
        out = (self.out_dir or Path(trainer.default_root_dir) / "examples") / f"epoch_{trainer.current_epoch:03d}"
        sr = pl_module.sample_rate
        specs = pl_module.console.specs
        files = []
        for i, e in enumerate(examples):
            stem = f"{i:02d}_{_safe(e['song'])}"
            paths = {r: out / f"{stem}_{r}.wav" for r in ROLES}
            for r in ROLES:
                fileio.write_audio(paths[r], e[r], sr)
            png = out / f"{stem}_spectrogram.png"
            spectrogram_png(png, {r: e[r] for r in ROLES}, sr,
                            f"{e['song']} @ {e['start'] / sr:.1f} s, epoch {trainer.current_epoch}")
            files.append((e, paths, png))
        fileio.write_text(out / "params.md",
                          f"# Predicted parameters, epoch {trainer.current_epoch} (step {trainer.global_step})\n\n"
                          + params_table(examples, specs))
        self._log_wandb(trainer, pl_module, files, specs)
        return out

    @staticmethod
    def _log_wandb(trainer, pl_module, files, specs) -> None:
        from mst_single.system import find_wandb_logger

        from mst_single.system import safe_wandb_log

        lg = find_wandb_logger(trainer)
        if lg is None:
            return
        import wandb

        sr = pl_module.sample_rate
        log = {"trainer/global_step": trainer.global_step}
        try:
            for i, (e, paths, png) in enumerate(files):
                for r in ROLES:
                    x = np.asarray(e[r], np.float32)
                    log[f"examples/{i}/{r}"] = wandb.Audio(x.T if x.ndim == 2 else x, sample_rate=sr,
                                                           caption=f"{e['song']} {r}")
                log[f"examples/{i}/spectrogram"] = wandb.Image(str(png), caption=e["song"])
            columns = ["song", "start"] + [f"{s.name} [{s.unit}]" if s.unit else s.name for s in specs]
            rows = [[e["song"], e["start"]] + [e["params"][s.name] for s in specs] for e, _, _ in files]
            log["examples/params"] = wandb.Table(columns=columns, data=rows)
        except Exception as e:  # noqa: BLE001 - a W&B media problem must not stop training
            from pytorch_lightning.utilities import rank_zero_warn

            rank_zero_warn(f"W&B example logging failed ({type(e).__name__}: {e}); files are in {paths['raw'].parent}")
            return
        safe_wandb_log(lg, log)
