"""What produced a result: git commit, patch-series hash, package versions, hardware.

Saved beside every run's results and logged to W&B, so that a number can be traced back to code.
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "numpy", "scipy", "pytorch-lightning", "jsonargparse", "wandb", "soundfile", "soxr",
            "pyloudnorm", "numba", "vocal-mst")


INPUTS = ("configs", "experiments/base.yaml")  # what every run reads besides the package and its data


def git_commit(root: Path = REPO_ROOT, inputs=INPUTS) -> dict:
    """The commit of the checkout, whether tracked files differ from it (``dirty``; ``unknown`` outside
    git), and ``untracked_inputs``: files under ``inputs`` (paths relative to ``root``) that the commit
    does not hold, neither tracked nor ignored. Why: a run reading an experiment config not yet committed
    is not ``dirty`` (untracked files are not counted, or every results folder being written would
    be), yet its commit alone cannot rerun it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        inputs = [str(i) for i in inputs if (Path(root) / i).exists()]
        listed = git("ls-files", "--others", "--exclude-standard", "--", *inputs).stdout.split("\n") if inputs else []
        return {"commit": head.stdout.strip(), "dirty": dirty, "untracked_inputs": sorted(f for f in listed if f)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def patch_series_hash(patches_dir: Path = REPO_ROOT / "patches") -> str:
    """sha256 over ``series`` and each patch it lists, in order: one value names the whole series."""
    h = hashlib.sha256()
    series = patches_dir / "series"
    if not series.exists():
        return "none"
    h.update(series.read_bytes())
    for line in series.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name and (patches_dir / name).exists():
            h.update(name.encode())
            h.update((patches_dir / name).read_bytes())
    return h.hexdigest()


def code_fingerprint(package: Path = Path(__file__).resolve().parent) -> str:
    """sha256 over every ``.py`` file of the package (relative path and bytes): what a process that
    imports it now would run. ``ablate`` compares it in each worker with its own value at the start."""
    h = hashlib.sha256()
    for f in sorted(package.rglob("*.py")):
        h.update(f.relative_to(package).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict:
    info = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def collect(command: list[str] | str | None = None, inputs=INPUTS, **extra) -> dict:
    """Everything needed to trace a result: command, commit (and the ``inputs`` it lacks, see
    :func:`git_commit`), patch-series hash, versions, hardware."""
    if command is None:
        command = sys.argv
    return {
        "command": command if isinstance(command, str) else " ".join(map(str, command)),
        **git_commit(inputs=inputs),
        "patch_series_sha256": patch_series_hash(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "hardware": hardware(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
