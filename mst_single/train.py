"""`mst-single fit|validate|test -c configs/approach1.yaml [--key value ...]`: LightningCLI for `VocalMST`.

Config files
    `configs/base.yaml` holds every setting (model, data, trainer, run options, seed);
    `configs/approach1.yaml` / `approach2.yaml` start with `__base__: base.yaml` and state only what
    differs. `cli_main` expands each `-c FILE` that has a `__base__` key (a path relative to FILE,
    possibly chained) into `-c BASE -c FILE-without-the-key`; a base already included is not
    included twice. Later `-c` files and `--section.key value` arguments override earlier ones,
    e.g. `--data.root my_data --trainer.max_steps 2000 --model.lr 3e-4`.

Run folder (`--runs_dir`, default `runs/`; `--run_name`, default `$MST_RUN_NAME` or
`<approach>-<YYYYmmdd-HHMMSS>`)::

    runs/<run_name>/
        config.yaml            resolved config of the run (also in W&B's config)
        provenance.json        command, seed, git commit, patch-series hash, packages, hardware
        metrics.csv            CSV logger, always (train/*, val/*, lr, parameter means)
        hparams.yaml           model + data hyper-parameters
        checkpoints/last.ckpt  latest state (a real file); best-*.ckpt: lowest val/loss
        examples/epoch_XXX/    audio, spectrograms, parameter tables (every N epochs)
        wandb/                 W&B run, offline unless WANDB_MODE=online
        validate/, test/       the same logs for `validate` / `test` runs of this run's checkpoints

Progress: Lightning's progress bar only on a terminal; otherwise (a log file, `ablate`'s runs, CI)
one line at a time (`callbacks.LineProgressCallback`: step/total, loss, elapsed, ETA).

Resuming: `fit ... --ckpt_path last` continues the run named by `--run_name`; without a run name it
continues the newest `runs/<approach>-*` folder holding `checkpoints/last.ckpt` (and says which).
`validate`/`test` with `--ckpt_path runs/NAME/checkpoints/X.ckpt` log into `runs/NAME/<subcommand>/`
and take the model settings (and sample rate) from the checkpoint.
"""
from __future__ import annotations

import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Optional

import yaml

from mst_single.errors import MstError

BASE_KEY = "__base__"


# ----------------------------------------------------------------------------------------------
# config inheritance

def read_yaml_mapping(path: Path) -> dict:
    """A YAML file that must hold a mapping; MstError naming the file otherwise (empty file: {})."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise MstError(f"cannot read the config file ({e.strerror})", path,
                       "check the path (configs live in configs/, e.g. -c configs/approach1.yaml)") from e
    except yaml.YAMLError as e:
        raise MstError(f"the config file is not valid YAML ({e})", path, "fix the YAML syntax") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MstError("the config file must hold a mapping (key: value lines)", path, "fix the file")
    return data


def _expand_config(path: Path, seen: set, chain: tuple = ()) -> list[str]:
    """`-c` arguments for one config file: its `__base__` chain first (each file once), then itself."""
    path = path.resolve()
    if path in chain:
        raise MstError(f"config inheritance loops back to {path.name}", path, f"remove the {BASE_KEY} cycle")
    if not path.is_file():
        raise MstError("config file not found", path, "check the path, e.g. -c configs/approach1.yaml")
    data = read_yaml_mapping(path)
    base = data.pop(BASE_KEY, None)
    out: list[str] = []
    if base is not None:
        bases = base if isinstance(base, list) else [base]
        for b in bases:
            bpath = (path.parent / str(b)).resolve()
            if bpath not in seen:
                out += _expand_config(bpath, seen, chain + (path,))
    seen.add(path)
    if base is None:
        out += ["-c", str(path)]
    elif data:  # the file minus its __base__ key, handed over as YAML text
        out += ["-c", yaml.safe_dump(data, sort_keys=False)]
    return out


def expand_argv(argv: list[str]) -> list[str]:
    """Replace each `-c FILE` / `--config FILE` / `--config=FILE` by its expanded `__base__` chain."""
    out, seen, i = [], set(), 0
    while i < len(argv):
        a = argv[i]
        if a in ("-c", "--config") and i + 1 < len(argv):
            out += _expand_config(Path(argv[i + 1]), seen)
            i += 2
            continue
        if a.startswith("--config="):
            out += _expand_config(Path(a.split("=", 1)[1]), seen)
        else:
            out.append(a)
        i += 1
    return out


# ----------------------------------------------------------------------------------------------
# run folders

def _wandb_id(run_dir: Path, resume: bool) -> str:
    """One W&B run id per run folder (kept in `.wandb_id` so a resumed fit continues the same W&B run)."""
    f = run_dir / ".wandb_id"
    if resume and f.is_file():
        return f.read_text().strip()
    from mst_single.fileio import write_text

    rid = re.sub(r"[^A-Za-z0-9_-]+", "-", run_dir.name)[:48] + "-" + secrets.token_hex(3)
    write_text(f, rid)
    return rid


def newest_run(runs_dir: Path, approach: str) -> Path | None:
    """The most recently written `runs_dir/<approach>-*` folder holding `checkpoints/last.ckpt`."""
    found = [p for p in runs_dir.glob(f"{approach}-*/checkpoints/last.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime).parent.parent if found else None


def resolve_run_dir(subcommand: str, run_name: str | None, runs_dir: str, approach: str,
                    ckpt_path: str | None) -> tuple[Path, bool]:
    """(run folder, resuming?) for a subcommand; see the module docstring for the rules."""
    runs = Path(runs_dir)
    if run_name:
        run_dir = runs / run_name
    elif ckpt_path and ckpt_path not in ("last", "best") and Path(ckpt_path).parent.name == "checkpoints":
        run_dir = Path(ckpt_path).resolve().parent.parent  # validate/test/resume of a given run's checkpoint
    elif ckpt_path == "last":
        run_dir = newest_run(runs, approach)
        if run_dir is None:
            raise MstError(f"--ckpt_path last: no {approach} run with checkpoints/last.ckpt", runs,
                           "pass --run_name NAME of the run to resume, or drop --ckpt_path to start a new run")
        print(f"resuming the newest {approach} run: {run_dir}", file=sys.stderr)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = runs / f"{approach}-{stamp}"
        k = 2
        while run_dir.exists():
            run_dir, k = runs / f"{approach}-{stamp}-{k}", k + 1
    resuming = subcommand == "fit" and ckpt_path is not None
    if subcommand == "fit":
        has_ckpt = (run_dir / "checkpoints" / "last.ckpt").is_file()
        if ckpt_path == "last" and not has_ckpt:
            raise MstError("--ckpt_path last: this run has no checkpoints/last.ckpt", run_dir,
                           "check --run_name, or drop --ckpt_path to start the run from scratch")
        if ckpt_path is None and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
            raise MstError("the run folder already holds checkpoints of an earlier run", run_dir,
                           "resume it with --ckpt_path last, or choose a new --run_name")
    return run_dir, resuming


# What `fit --ckpt_path` may change when it resumes a run: how it is logged and where its files are
# read from (a notebook copies its data to a new local disk each session), not what it trains.
RESUME_FREE = {"model": {"log_audio_every_n_epochs", "num_log_examples"},
               "data": {"root", "num_workers", "cache_dir", "allow_unmatched", "param_targets"}}


def check_resume_config(run_dir: Path, config: dict, ckpt_path: str | None) -> None:
    """Refuse to resume the run in ``run_dir`` with other ``model.*`` / ``data.*`` settings than it was
    trained with (its ``config.yaml``) outside :data:`RESUME_FREE`: another approach fails on the weights
    after config.yaml was rewritten, another sample rate trains on silently different data."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    old = read_yaml_mapping(saved)
    diffs = []
    for section, free in RESUME_FREE.items():
        a, b = old.get(section) or {}, config.get(section) or {}
        diffs += [f"{section}.{k} {b.get(k)!r} (the run: {a.get(k)!r})"
                  for k in sorted(set(a) | set(b)) if k not in free and a.get(k) != b.get(k)]
    if diffs:
        more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
        raise MstError(f"--ckpt_path {ckpt_path}: resuming would change what this run trains: "
                       f"{'; '.join(diffs[:4])}{more}", saved,
                       f"resume with the run's own settings (-c {saved} --ckpt_path last), or start a new run "
                       "under another --run_name")


# ----------------------------------------------------------------------------------------------
# the CLI

def _cli_classes():
    """Build the LightningCLI subclasses lazily (importing Lightning takes seconds)."""
    import torch
    from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

    from mst_single import fileio, provenance
    from mst_single.callbacks import (AtomicCheckpointIO, ExamplesCallback, LineProgressCallback, ResumeCallback,
                                      RunCheckpoint, RunCSVLogger)
    from mst_single.progress import on_terminal
    from mst_single.system import find_wandb_logger

    class RunConfigCallback(SaveConfigCallback):
        """Writes `config.yaml` and `provenance.json` into the log folder (atomically) and logs both
        to W&B's run config."""

        def __init__(self, *args, argv=None, **kwargs):
            super().__init__(*args, save_to_log_dir=False, **kwargs)
            self.argv = argv

        def save_config(self, trainer, pl_module, stage) -> None:
            log_dir = Path(trainer.log_dir)
            text = self.parser.dump(self.config, skip_none=False)
            fileio.write_text(log_dir / self.config_filename, text)
            # the songs of each split as the data module drew them (its setup runs before this hook)
            splits = getattr(getattr(trainer, "datamodule", None), "splits", None) or {}
            songs = {k: sorted(x.name for x in v) for k, v in splits.items()} or None
            prov = provenance.collect(command=["mst-single", *(self.argv or [])],
                                      seed=self.config.get("seed_everything"), run_dir=str(log_dir), stage=stage,
                                      songs=songs,
                                      ckpt_path=self.config.get("ckpt_path"),
                                      torch_deterministic=torch.are_deterministic_algorithms_enabled())
            fileio.write_json(log_dir / "provenance.json", prov)
            lg = find_wandb_logger(trainer)
            if lg is not None:
                lg.experiment.config.update({"config": yaml.safe_load(text), "provenance": prov},
                                            allow_val_change=True)

    class VocalCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.link_arguments("data.sample_rate", "model.sample_rate")
            # the model decides whether items carry the songs' take descriptors (one key in the YAML)
            parser.link_arguments("model.take_descriptors", "data.take_descriptors")
            parser.add_argument("--run_name", type=Optional[str], default=os.environ.get("MST_RUN_NAME") or None,
                                help="run folder name under runs_dir (default: $MST_RUN_NAME or "
                                     "<approach>-<timestamp>); give it to resume a run with --ckpt_path last")
            parser.add_argument("--runs_dir", type=str, default="runs", help="folder holding the run folders")
            parser.add_argument("--wandb", type=bool, default=True,
                                help="also log to W&B (offline unless WANDB_MODE=online); CSV is always on")
            parser.add_argument("--wandb_project", type=str, default="vocal-mst", help="W&B project")
            parser.add_argument("--wandb_group", type=Optional[str], default=None, help="W&B group (e.g. an experiment)")
            parser.add_argument("--tags", type=list[str], default=[], help="extra W&B tags")
            parser.add_argument("--save_top_k", type=int, default=1, help="best checkpoints kept (by val/loss)")

        def before_instantiate_classes(self) -> None:
            sub = self.subcommand
            c = self.config[sub]
            ckpt = c.get("ckpt_path")
            if ckpt not in (None, "last", "best", "hpc", "registry") and not Path(ckpt).is_file():
                raise MstError("checkpoint not found", ckpt, "check the path (runs/NAME/checkpoints/last.ckpt)")
            if ckpt not in (None, "last", "best", "hpc", "registry"):
                # the checkpoint's own model settings were merged in by LightningCLI; the data must be
                # read at the rate the model was trained at
                sr = _checkpoint_sample_rate(ckpt)
                if sr and sr != c.data.sample_rate:
                    print(f"using the checkpoint's sample rate {sr} Hz (config said {c.data.sample_rate})",
                          file=sys.stderr)
                    c.data.sample_rate = c.model.sample_rate = sr
            self.run_dir, self.resuming = resolve_run_dir(sub, c.get("run_name"), c.get("runs_dir"),
                                                          c.model.approach, ckpt)
            if self.resuming:  # before anything is written: config.yaml must keep describing the run
                check_resume_config(self.run_dir, yaml.safe_load(self._parser(sub).dump(c, skip_none=False)), ckpt)
            self.log_dir = self.run_dir if sub == "fit" else self.run_dir / sub
            c.run_name = self.run_dir.name

        def instantiate_trainer(self, **kwargs):
            c = self.config[self.subcommand]
            trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
            self._new_run_dir = not self.run_dir.exists()
            fileio.ensure_dir(self.log_dir)  # MstError naming the folder when it cannot be created
            loggers = [RunCSVLogger(self.log_dir)]
            if c.get("wandb") and os.environ.get("WANDB_MODE", "offline") != "disabled":
                loggers.append(self._wandb_logger(c))
            trainer_config["logger"] = loggers
            trainer_config["default_root_dir"] = str(self.run_dir)
            plugins = trainer_config.get("plugins") or []
            plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
            trainer_config["plugins"] = plugins + [AtomicCheckpointIO()]
            callbacks = [self._get(self.config_init, k) for k in self._parser(self.subcommand).callback_keys]
            # a progress bar only on a terminal; in a log file (ablate, CI, nohup) one line at a time
            if not (trainer_config.get("enable_progress_bar", True) and on_terminal()):
                trainer_config["enable_progress_bar"] = False
                callbacks.append(LineProgressCallback())
            callbacks += [
                RunCheckpoint(dirpath=str(self.run_dir / "checkpoints"),
                                filename="best-epoch{epoch:03d}-step{step:06d}-val{val/loss:.4f}",
                                auto_insert_metric_name=False, monitor="val/loss", mode="min",
                                save_top_k=c.get("save_top_k", 1), save_last=True),
                ExamplesCallback(self.run_dir / "examples"),
                ResumeCallback(),
            ]
            return self._instantiate_trainer(trainer_config, callbacks)

        def _run_subcommand(self, subcommand) -> None:
            try:
                super()._run_subcommand(subcommand)
            except BaseException:
                # a new run that failed before its first logged step (bad data, ...) leaves no folder
                # behind: its config and W&B files describe a run that never trained
                run_dir = getattr(self, "run_dir", None)
                if getattr(self, "_new_run_dir", False) and run_dir is not None and run_dir.is_dir() \
                        and not any((run_dir / "checkpoints").glob("*.ckpt")) and not _logged_a_step(run_dir):
                    import shutil

                    _finish_wandb()  # its files are in the folder
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise

        def _wandb_logger(self, c):
            from pytorch_lightning.loggers import WandbLogger

            offline = os.environ.get("WANDB_MODE", "offline") != "online"
            policy = c.data.get("reference_policy")
            tags = [c.model.approach] + ([f"policy-{policy}"] if c.model.approach == "approach1" else [])
            return WandbLogger(name=self.run_dir.name, save_dir=str(self.log_dir), offline=offline,
                               # a W&B sweep agent names the run it expects through WANDB_RUN_ID
                               id=os.environ.get("WANDB_RUN_ID") or _wandb_id(self.log_dir, self.resuming),
                               project=c.get("wandb_project"),
                               group=c.get("wandb_group"), tags=tags + list(c.get("tags") or []),
                               # ablate gives each unit a fixed id: a rerun resumes/replaces that run
                               job_type=self.subcommand, resume="allow")

    return VocalCLI, RunConfigCallback


def _logged_a_step(run_dir: Path) -> bool:
    """Whether the run's metrics.csv holds a row (training went at least one logged step)."""
    try:
        with open(run_dir / "metrics.csv") as f:
            return sum(1 for _ in f) > 1
    except OSError:
        return False


def _checkpoint_sample_rate(path: str) -> int | None:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read means the file is not a usable checkpoint
        raise MstError(f"cannot read the checkpoint ({type(e).__name__}: {str(e)[:200]})", path,
                       "pass a .ckpt written by `mst-single fit` (runs/NAME/checkpoints/)") from e
    sr = (ckpt.get("hyper_parameters") or {}).get("sample_rate") if isinstance(ckpt, dict) else None
    return int(sr) if sr else None


def cli_main(argv: list[str] | None = None, keep_wandb: bool = False) -> int:
    """Run `fit`/`validate`/`test` (argv as after `mst-single`); returns the exit code.

    The W&B run is closed at the end unless ``keep_wandb`` (ablate's worker adds the test metrics to
    the same run, then closes it).

    User errors (MstError: bad config path, data problems, NaN loss) are printed without a traceback
    and give exit code 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("WANDB_MODE", "offline")  # no account, no network unless asked for
    import warnings

    # LightningCLI warns when args= is used while sys.argv holds other arguments: that is our design
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # an empty val loader (no validation songs) is allowed; fit says so once, in its own words
    warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")
    try:
        expanded = expand_argv(argv)
        from mst_single.data import VocalDataModule
        from mst_single.system import VocalMST

        cli_cls, config_cb = _cli_classes()
        cli_cls(VocalMST, VocalDataModule, args=expanded, auto_configure_optimizers=False,
                save_config_callback=config_cb, save_config_kwargs={"overwrite": True, "argv": argv},
                seed_everything_default=0, parser_kwargs={"prog": "mst-single"})
    except MstError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # jsonargparse: --help (0) or a bad argument (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    finally:
        if not keep_wandb:
            _finish_wandb()
    return 0


def _finish_wandb() -> None:
    """Close this run's W&B stream, so the next fit in the same process (a notebook, a test) starts
    its own run and a resumed run can take the same id again."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


if __name__ == "__main__":
    sys.exit(cli_main())
