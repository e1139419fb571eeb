"""Benchmark configuration and timing: `Config`, `time_it` (median/IQR, CUDA-synchronised, peak
GPU memory), `profile_call`, log helpers."""
from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


SAMPLE_RATE = 48000
GIB = 2**30
STAGES = ("gain", "eq", "compressor", "reverb", "loss")
# Targets of issue 6 (2-core CPU).
TARGET_STEP_SPEEDUP = 10.0
TARGET_MIX_SECONDS, TARGET_MIX_DURATION = 2.0, 180.0
TARGET_PEAK_GIB, TARGET_PEAK_DURATION = 2.0, 3600.0
# Targets of issue 12 (one GPU, the `full` budget: batch 8 x 4 s x 48 kHz).
TARGET_GPU_STEPS_PER_S = 5.0
TARGET_COMPRESSOR_SHARE = 0.10


@dataclass
class Config:
    """What to measure and at which sizes (seconds of audio, samples at ``sample_rate``)."""
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 1
    quick: bool = False
    sample_rate: int = SAMPLE_RATE
    batch: int = 4                      # stages and loss
    step_batch: int = 0                 # training step and data loader; 0 = batch (CPU) or 8 (CUDA: `full` budget)
    seconds: float = 4.0                # stage / loss / training-step / data segment length
    data_workers: tuple = (0, 2, 4)     # DataLoader worker counts measured by the `data` section
    data_batches: int = 8               # batches per timed DataLoader epoch
    mix_seconds: float = 180.0          # the "3-minute vocal"
    memory_seconds: float = 3600.0      # the "1-hour vocal"
    stock_reverb_ir: int = 65536        # dasp noise_shaped_reverberation num_samples (its default)
    stock_reverb_forward_repeats: int = 3
    full_stock_step: bool = False       # measure the stock full-chain step directly (slow) instead of summing parts
    estimate_stock_reverb: bool = False  # extrapolate dasp reverb forward+backward from two short runs (busy machines)
    profile: bool = False               # profile every target, not only the missed ones
    sections: tuple = ("stages", "train_step", "data", "mix", "mix_memory")
    upstream_dir: str = ""
    threads: int = 0
    errors: list = field(default_factory=list)

    @classmethod
    def quick_config(cls, **kw) -> "Config":
        """CI-sized: seconds, not minutes. Targets are then judged on rates (see ``evaluate_targets``)."""
        base = dict(quick=True, batch=2, seconds=0.5, mix_seconds=5.0, memory_seconds=10.0,
                    stock_reverb_ir=2048, stock_reverb_forward_repeats=2, data_workers=(0, 2), data_batches=3)
        base.update(kw)
        return cls(**base)


    @property
    def train_batch(self) -> int:
        """Batch of the training step and the data loader."""
        return self.step_batch or (8 if self.device.startswith("cuda") and not self.quick else self.batch)


# ----------------------------------------------------------------------------------------------
# timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def summarize(runs: list[float]) -> dict:
    """Median, quartiles and IQR (seconds) of timed runs."""
    a = np.asarray(runs, dtype=float)
    q1, med, q3 = (float(v) for v in np.percentile(a, [25, 50, 75]))
    return {"median_s": med, "iqr_s": q3 - q1, "q1_s": q1, "q3_s": q3, "n": len(runs),
            "runs_s": [round(float(r), 6) for r in a]}


def time_it(fn, repeats: int, warmup: int = 1, device: str = "cpu") -> dict:
    """Call ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed; summary in seconds.

    On CUDA the device is synchronised around each run and the peak allocated memory recorded.
    """
    import torch

    for _ in range(warmup):
        fn()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runs, cpu = [], []
    for _ in range(max(1, repeats)):
        _sync(device)
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        _sync(device)
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    out = summarize(runs)
    # CPU seconds of this process (all its threads): less sensitive than wall time to other jobs
    # sharing the machine; ~ wall x threads when the process has the cores to itself.
    out["cpu_median_s"] = float(np.median(cpu))
    out["warmup"] = warmup
    if cuda:
        out["cuda_max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
    return out


def profile_call(fn, top: int = 10) -> dict:
    """One profiled call of ``fn``: top Python functions by cumulative and own CPU time (cProfile), and
    top torch operators by self CPU time (torch.profiler). Shares are of the call's CPU time."""

    # CPU-time timer: on a shared machine a wall-clock profile charges other jobs' time slices to
    # whichever function happened to be running.
    prof = cProfile.Profile(time.process_time)
    t0, c0 = time.perf_counter(), time.process_time()
    prof.enable()
    fn()
    prof.disable()
    wall, total = time.perf_counter() - t0, max(time.process_time() - c0, 1e-9)
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, name), (cc, nc, tt, ct, _) in st.stats.items():
        short = f"{Path(file).name}:{line}({name})" if file != "~" else name
        if "site-packages/" in file:
            short = file.split("site-packages/")[-1] + f":{line}({name})"
        elif "/mst_single/" in file:
            short = "mst_single/" + file.split("/mst_single/")[-1] + f":{line}({name})"
        rows.append({"function": short, "calls": nc, "own_s": tt, "cumulative_s": ct})
    skip = ("profile_call", "<lambda>", "disable", "bench.py")
    by_cum = [r for r in sorted(rows, key=lambda r: -r["cumulative_s"]) if not any(s in r["function"] for s in skip)]
    by_own = sorted(rows, key=lambda r: -r["own_s"])

    def fmt(r):
        return {**r, "own_s": round(r["own_s"], 4), "cumulative_s": round(r["cumulative_s"], 4),
                "share": round(r["cumulative_s"] / total, 3), "own_share": round(r["own_s"] / total, 3)}

    out = {"wall_s": wall, "cpu_s": total, "timer": "process CPU time (shares are of the call's CPU time)",
           "top_cumulative": [fmt(r) for r in by_cum[:top]], "top_own": [fmt(r) for r in by_own[:top]]}
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as tp:
            fn()
        ev = sorted(tp.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in ev) or 1.0
        out["top_torch_ops"] = [{"op": e.key, "calls": e.count, "self_s": round(e.self_cpu_time_total / 1e6, 4),
                                 "share_of_op_time": round(e.self_cpu_time_total / total, 3)} for e in ev[:top]]
    except Exception as e:  # the profiler is a diagnostic; never let it sink the benchmark
        out["top_torch_ops_error"] = f"{type(e).__name__}: {e}"
    return out


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()[:500]
