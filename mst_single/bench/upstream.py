"""Upstream Diff-MST's one-track training step, measured only with a patched checkout."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

from mst_single.bench.core import Config, _err, _log, time_it
from mst_single.bench.signals import _training_batch


def upstream_status(root: Path) -> tuple[bool, str]:
    """Is ``root`` an upstream Diff-MST checkout with every patch of patches/series applied?"""
    from mst_single.provenance import REPO_ROOT

    if not (root / "mst" / "system.py").exists():
        return False, f"skipped: Diff-MST/ not checked out and patched ({root} has no mst/system.py)"
    series = REPO_ROOT / "patches" / "series"
    names = [ln.split("#", 1)[0].strip() for ln in series.read_text().splitlines()] if series.exists() else []
    subjects = []
    for name in filter(None, names):
        for line in (REPO_ROOT / "patches" / name).read_text(errors="replace").splitlines():
            if line.startswith("Subject:"):
                subjects.append(line.split("]", 1)[-1].strip() if "]" in line else line[8:].strip())
                break
    if not subjects:
        return False, "skipped: Diff-MST/ is checked out but patches/series lists no patch to apply"
    log = subprocess.run(["git", "-C", str(root), "log", "--format=%s", "-n", "200"], capture_output=True, text=True)
    missing = [s for s in subjects if s not in log.stdout.splitlines()]
    if missing:
        return False, f"skipped: Diff-MST/ not checked out and patched ({len(missing)} of {len(subjects)} patches not applied)"
    return True, "patched"


def _instantiate(spec):
    """Instantiate a jsonargparse-style ``{class_path, init_args}`` tree (dotted strings for callables)."""
    import importlib

    if isinstance(spec, dict) and "class_path" in spec:
        mod, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(mod), name)
        return cls(**{k: _instantiate(v) for k, v in (spec.get("init_args") or {}).items()})
    if isinstance(spec, list):
        return [_instantiate(v) for v in spec]
    if isinstance(spec, str) and spec.count(".") >= 2 and spec.split(".")[0] == "mst":
        import importlib

        mod, _, name = spec.rpartition(".")
        with contextlib.suppress(ImportError, AttributeError):
            return getattr(importlib.import_module(mod), name)
    return spec


def upstream_step_fn(cfg: Config, root: Path, batch: int = 1):
    """One training step of upstream Diff-MST's patched one-track system (``VocalSystem``, built from
    ``configs/models/vocal-approach1.yaml``): training_step on a dict batch (raw, reference, mixed)
    + backward + Adam step. Returns (step, model, config path)."""
    import torch
    import yaml

    cfgs = sorted((root / "configs" / "models").glob("vocal-approach1*.yaml"))
    if not cfgs:
        raise FileNotFoundError(f"no configs/models/vocal-approach1.yaml in {root}")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    spec = yaml.safe_load(cfgs[0].read_text())["model"]
    cwd = os.getcwd()
    os.chdir(root)  # upstream reads data/*.json relative to its checkout
    try:
        torch.manual_seed(0)
        model = _instantiate(spec).to(cfg.device)
    finally:
        os.chdir(cwd)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    b = _training_batch(cfg, batch, seconds=max(cfg.seconds, 4.0))  # upstream's CNN needs >= ~3 s

    def step():
        opt.zero_grad(set_to_none=True)
        out = model.training_step(b, 0)
        (out["loss"] if isinstance(out, dict) else out).backward()
        opt.step()
    return step, model, cfgs[0]


def upstream_measure(cfg: Config, root: Path) -> dict:
    import warnings

    warnings.filterwarnings("ignore", message=".*self.log.*")
    step, model, config = upstream_step_fn(cfg, root, batch=1)
    res = time_it(step, min(cfg.repeats, 3), 1, cfg.device)
    res.update(config=str(config.relative_to(root)), batch=1, per_example_s=res["median_s"],
               seconds=max(cfg.seconds, 4.0),
               trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
               note="batch 1 (one step of upstream's 191 M-parameter model at batch 4 takes most of a minute "
                    "on 2 cores); at most 3 runs after 1 warm-up; compare per_example_s")
    return res


_UPSTREAM_CHILD = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from mst_single.bench import Config, upstream_measure
print("BENCH_UPSTREAM " + json.dumps(upstream_measure(Config(**json.loads(sys.argv[3])), Path(sys.argv[2]))))
"""


def bench_upstream(cfg: Config) -> dict:
    from mst_single.provenance import REPO_ROOT

    root = Path(cfg.upstream_dir) if cfg.upstream_dir else REPO_ROOT / "Diff-MST"
    ok, why = upstream_status(root)
    if not ok:
        _log(why)
        return {"skipped": why}
    _log("train_step: upstream Diff-MST (patched checkout found)")
    try:
        upstream_python = REPO_ROOT / ".venv-upstream" / "bin" / "python"  # `make upstream-install`
        if upstream_python.exists():
            # upstream's own environment, in a child process running this same function
            proc = subprocess.run([str(upstream_python), "-c", _UPSTREAM_CHILD, str(REPO_ROOT), str(root),
                                   json.dumps({k: v for k, v in asdict(cfg).items() if k != "errors"})],
                                  capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_UPSTREAM ")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"upstream step in {upstream_python} failed: {proc.stderr.strip()[-800:]}")
            res = json.loads(lines[-1][len("BENCH_UPSTREAM "):])
            res["python"] = str(upstream_python)
        else:
            res = upstream_measure(cfg, root)
            res["python"] = sys.executable
        return res
    except Exception as e:
        cfg.errors.append(f"train_step.upstream: {_err(e)}")
        traceback.print_exc()
        return {"error": _err(e)}
