"""Sections `mix` (a 3-minute vocal) and `mix_memory` (peak RSS of `mix` on a 1-hour vocal)."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

from mst_single.bench.core import GIB, Config, _err, _log, time_it
from mst_single.bench.signals import write_long_wav


def make_checkpoint(approach: str, path: Path, sample_rate: int) -> Path:
    """A freshly initialised VocalMST saved the way Lightning saves one (state_dict + hyper_parameters)."""
    import pytorch_lightning as pl
    import torch

    from mst_single.system import VocalMST

    torch.manual_seed(0)
    model = VocalMST(approach=approach, sample_rate=sample_rate)
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": pl.__version__, "epoch": 0, "global_step": 0}
    from mst_single.fileio import atomic_path

    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def _mix_inputs(tmp: Path, cfg: Config, seconds: float) -> dict:
    raw = write_long_wav(tmp / f"raw_{int(seconds)}s.wav", seconds, cfg.sample_rate, channels=1, subtype="PCM_24")
    ref = tmp / "reference.wav"
    if not ref.exists():
        write_long_wav(ref, min(30.0, seconds), cfg.sample_rate, channels=2, subtype="PCM_24", seed=7)
    ckpts = {a: (tmp / f"{a}.ckpt") for a in ("approach1", "approach2")}
    for a, p in ckpts.items():
        if not p.exists():
            make_checkpoint(a, p, cfg.sample_rate)
    return {"raw": raw, "reference": ref, "ckpt": ckpts}


def _mix_call(approach: str, inputs: dict, out: Path):
    from mst_single.mix import mix_file

    return mix_file(inputs["raw"], out, inputs["ckpt"][approach],
                    reference=inputs["reference"] if approach == "approach1" else None)


def bench_mix(cfg: Config, tmp: Path) -> dict:
    out = {"input": {"seconds": cfg.mix_seconds, "sample_rate": cfg.sample_rate, "channels": 1,
                     "file": "synthesised vocal, PCM_24 WAV; approach1 also reads a 30 s stereo reference"}}
    try:
        inputs = _mix_inputs(tmp, cfg, cfg.mix_seconds)
    except Exception as e:
        cfg.errors.append(f"mix.inputs: {_err(e)}")
        traceback.print_exc()
        return {**out, "error": _err(e)}
    for approach in ("approach1", "approach2"):
        dst = tmp / f"mixed_{approach}.wav"
        _log(f"mix: {approach}, {cfg.mix_seconds:g} s")
        try:
            t0 = time.perf_counter()
            _mix_call(approach, inputs, dst)  # the warm-up: loads the checkpoint (mix caches the model)
            first = time.perf_counter() - t0
            r = time_it(lambda: _mix_call(approach, inputs, dst), cfg.repeats, 0, "cpu")
            r["warmup"], r["first_run_s"] = 1, first
            r["rtf"] = r["median_s"] / cfg.mix_seconds
            r["x_realtime"] = cfg.mix_seconds / r["median_s"]
            out[approach] = r
        except Exception as e:
            out[approach] = {"error": _err(e)}
            cfg.errors.append(f"mix.{approach}: {_err(e)}")
            traceback.print_exc()
        with contextlib.suppress(FileNotFoundError):
            dst.unlink()
    out["_inputs"] = inputs
    return out


# Peak RSS of the child itself: VmHWM of /proc/self/status (Linux; the high-water mark of this
# process's own memory map, which starts fresh at exec). Not ru_maxrss: Linux keeps that across
# fork + exec, so a child of a big parent would report the parent's size at fork time.
_CHILD = r"""
import json, resource, sys, time


def peak_kib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]), "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
t0 = time.perf_counter()
from mst_single.mix import mix_file
raw, out, ckpt, ref = sys.argv[1:5]
t1 = time.perf_counter()
after_import = peak_kib()[0]
mix_file(raw, out, ckpt, reference=ref or None)
t2 = time.perf_counter()
peak, how = peak_kib()
print("BENCH_CHILD " + json.dumps({"peak_kib": peak, "peak_source": how,
                                   "after_import_kib": after_import, "import_s": t1 - t0, "mix_s": t2 - t1}))
"""


def peak_rss_of_mix(approach: str, inputs: dict, out: Path, poll_s: float = 0.05) -> dict:
    """Run mix_file in a fresh Python process; its peak RSS (kernel high-water mark) and a polled one."""
    import psutil

    cmd = [sys.executable, "-c", _CHILD, str(inputs["raw"]), str(out), str(inputs["ckpt"][approach]),
           str(inputs["reference"]) if approach == "approach1" else ""]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, polled = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            polled = max(polled, ps.memory_info().rss)
        time.sleep(poll_s)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"mix subprocess failed (exit {proc.returncode}): {stderr.strip()[-800:]}")
    child = json.loads(next(ln for ln in stdout.splitlines() if ln.startswith("BENCH_CHILD "))[12:])
    peak = child["peak_kib"] * 1024
    return {"peak_rss_gib": peak / GIB, "polled_peak_rss_gib": polled / GIB, "process_wall_s": wall,
            "rss_after_imports_gib": child["after_import_kib"] * 1024 / GIB,
            "mix_s": child["mix_s"], "import_s": child["import_s"],
            "peak_source": child["peak_source"],
            "method": "peak RSS (VmHWM) of a fresh `python -c mix_file(...)` process (whole process: Python, torch, "
                      "model, buffers); psutil RSS polled every 50 ms as a cross-check"}


def bench_mix_memory(cfg: Config, tmp: Path, approaches=("approach2", "approach1")) -> dict:
    out = {"input": {"seconds": cfg.memory_seconds, "sample_rate": cfg.sample_rate, "channels": 1,
                     "file": "synthesised vocal written chunk by chunk as PCM_16 WAV in a temp dir, deleted after"}}
    raw = tmp / f"raw_{int(cfg.memory_seconds)}s.wav"
    try:
        t0 = time.perf_counter()
        write_long_wav(raw, cfg.memory_seconds, cfg.sample_rate, channels=1, subtype="PCM_16")
        out["input"]["write_s"] = time.perf_counter() - t0
        out["input"]["bytes"] = raw.stat().st_size
        inputs = _mix_inputs(tmp, cfg, min(cfg.mix_seconds, 10.0))
        inputs["raw"] = raw
        for approach in approaches:
            dst = tmp / f"mixed_long_{approach}.wav"
            _log(f"mix_memory: {approach}, {cfg.memory_seconds:g} s in a subprocess")
            try:
                r = peak_rss_of_mix(approach, inputs, dst)
                r["output_bytes"] = dst.stat().st_size if dst.exists() else None
                r["rtf"] = r["mix_s"] / cfg.memory_seconds
                out[approach] = r
            except Exception as e:
                out[approach] = {"error": _err(e)}
                cfg.errors.append(f"mix_memory.{approach}: {_err(e)}")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    dst.unlink()
    except Exception as e:
        out["error"] = _err(e)
        cfg.errors.append(f"mix_memory: {_err(e)}")
        traceback.print_exc()
    finally:
        with contextlib.suppress(FileNotFoundError):
            raw.unlink()
    return out
