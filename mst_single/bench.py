"""Side-by-side performance benchmark: our chain, loss, training step and `mix` vs stock dasp-pytorch / auraloss.

    python -m mst_single.bench [--out bench/results.json] [--device cpu|cuda] [--repeats 5] [--quick]

Everything is measured in ONE process, one figure after the other on the same inputs, so that the
machine's load affects both sides alike. Each figure is the median (and inter-quartile range) of
``--repeats`` timed runs after one untimed warm-up run, except where a stock function is too slow
to repeat (dasp-pytorch's ``noise_shaped_reverberation`` backward: ~3 min for batch 4 x 4 s);
those are measured fewer times and the JSON says so (``n``, ``note``).

Sections (JSON keys, printed as one table):
- ``stages``: gain, EQ, compressor, reverb and the loss, forward (autograd on, as in training) and
  forward + backward, ours vs stock, batch 4 x 4 s mono at 48 kHz (stereo for the loss), with the
  max abs difference of the outputs where the math is the same (``same_math``).
- ``train_step``: a whole step (loudness normalisation, controller, full chain, loss, backward,
  optimiser step) per approach: ours (`VocalMST.training_step`) vs the same step on stock
  dasp-pytorch stages + auraloss, vs upstream Diff-MST's one-track step when ``Diff-MST/`` is
  checked out with the patch series applied.
- ``mix``: `mix_file` on a synthesised 3-minute vocal per approach (freshly initialised checkpoint):
  wall time and real-time factor (wall / audio duration).
- ``mix_memory``: `mix_file` on a 1-hour vocal in a subprocess: peak resident memory.
- ``targets``: met / not met, each with a profile of what bounds it when not met.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import math
import os
import pstats
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mst_single.errors import MstError

SAMPLE_RATE = 48000
GIB = 2**30
STAGES = ("gain", "eq", "compressor", "reverb", "loss")
# Targets of issue 6 (2-core CPU).
TARGET_STEP_SPEEDUP = 10.0
TARGET_MIX_SECONDS, TARGET_MIX_DURATION = 2.0, 180.0
TARGET_PEAK_GIB, TARGET_PEAK_DURATION = 2.0, 3600.0


@dataclass
class Config:
    """What to measure and at which sizes (seconds of audio, samples at ``sample_rate``)."""
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 1
    quick: bool = False
    sample_rate: int = SAMPLE_RATE
    batch: int = 4
    seconds: float = 4.0                # stage / loss / training-step segment length
    mix_seconds: float = 180.0          # the "3-minute vocal"
    memory_seconds: float = 3600.0      # the "1-hour vocal"
    stock_reverb_ir: int = 65536        # dasp noise_shaped_reverberation num_samples (its default)
    stock_reverb_forward_repeats: int = 3
    full_stock_step: bool = False       # measure the stock full-chain step directly (slow) instead of summing parts
    estimate_stock_reverb: bool = False  # extrapolate dasp reverb forward+backward from two short runs (busy machines)
    profile: bool = False               # profile every target, not only the missed ones
    sections: tuple = ("stages", "train_step", "mix", "mix_memory")
    upstream_dir: str = ""
    threads: int = 0
    errors: list = field(default_factory=list)

    @classmethod
    def quick_config(cls, **kw) -> "Config":
        """CI-sized: seconds, not minutes. Targets are then judged on rates (see ``evaluate_targets``)."""
        base = dict(quick=True, batch=2, seconds=0.5, mix_seconds=5.0, memory_seconds=10.0,
                    stock_reverb_ir=2048, stock_reverb_forward_repeats=2)
        base.update(kw)
        return cls(**base)


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
    import torch

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


# ----------------------------------------------------------------------------------------------
# signals


def vocal_like(start: int, n: int, sample_rate: int, seed: int = 0) -> np.ndarray:
    """A deterministic sung-vowel-like test signal (samples,) float32 in [-1, 1].

    Notes of 0.4 s with vibrato, 8 harmonics, a syllable envelope and breath noise; depends only on
    absolute sample positions, so chunks generated one after another concatenate to the same signal
    (a 1-hour file is written without ever holding it in memory).
    """
    t = (start + np.arange(n, dtype=np.float64)) / sample_rate
    note = np.floor(t / 0.4).astype(np.int64)
    scale = np.array([0, 2, 4, 5, 7, 9, 7, 4, 2, -3, 0, 5])
    f0 = 196.0 * 2.0 ** (scale[(note * 7 + seed) % len(scale)] / 12.0)
    frac = t / 0.4 - note
    phase = 2 * np.pi * f0 * t + 0.3 * np.sin(2 * np.pi * 5.5 * t)
    y = np.zeros(n)
    for k in range(1, 9):
        y += np.sin(k * phase) / k**1.3
    env = np.sin(np.pi * frac) ** 2 * (0.3 + 0.7 * (0.5 + 0.5 * np.sin(2 * np.pi * 0.13 * t + seed)))
    breath = 0.035 * _hash_noise(start + np.arange(n, dtype=np.uint64), seed)
    return (0.25 * env * y + breath).astype(np.float32)


def _hash_noise(i: np.ndarray, seed: int) -> np.ndarray:
    """Uniform noise in [-1, 1) that depends only on the sample index (counter-based hash)."""
    with np.errstate(over="ignore"):
        h = (i + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return (h >> np.uint64(11)).astype(np.float64) * (2.0 / 2**53) - 1.0


def batch_audio(batch: int, channels: int, seconds: float, sample_rate: int, seed: int = 0):
    """(batch, channels, samples) float32 tensor of distinct vocal-like items."""
    import torch

    n = int(round(seconds * sample_rate))
    x = np.stack([np.stack([vocal_like(0, n, sample_rate, seed=seed + 17 * b + 5 * c) for c in range(channels)])
                  for b in range(batch)])
    return torch.from_numpy(x)


def write_long_wav(path, seconds: float, sample_rate: int, channels: int = 1, subtype: str = "PCM_16",
                   chunk_seconds: float = 20.0, seed: int = 0) -> Path:
    """Write a long vocal-like file chunk by chunk (bounded memory), atomically."""
    import soundfile as sf

    from mst_single.fileio import atomic_path

    total, chunk = int(round(seconds * sample_rate)), int(chunk_seconds * sample_rate)
    with atomic_path(path) as tmp:
        with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=channels, subtype=subtype, format="WAV") as f:
            for start in range(0, total, chunk):
                n = min(chunk, total - start)
                y = np.stack([vocal_like(start, n, sample_rate, seed=seed + c) for c in range(channels)], axis=1)
                f.write(y)
    return Path(path)


# ----------------------------------------------------------------------------------------------
# the stock chain: dasp-pytorch 0.0.1 stages, auraloss 0.4.0 loss


# (name, low, high, log scale) of the stock chain's parameters, in units, for the training step.
# Ranges are those a vocal chain needs; the compressor knee starts at 1 dB because dasp's
# compressor has NaN gradients at knee 0 (issue 3).
STOCK_EQ = [("low_shelf", 20.0, 1000.0), ("band0", 60.0, 500.0), ("band1", 200.0, 2000.0),
            ("band2", 800.0, 6000.0), ("band3", 2000.0, 16000.0), ("high_shelf", 2000.0, 16000.0)]
STOCK_PARAMS = (
    [("gain_db", -24.0, 24.0, False)]
    + [p for band, lo, hi in STOCK_EQ for p in ((f"{band}_gain_db", -12.0, 12.0, False),
                                                (f"{band}_cutoff_freq", lo, hi, True),
                                                (f"{band}_q_factor", 0.3, 6.0, True))]
    + [("threshold_db", -50.0, 0.0, False), ("ratio", 1.0, 12.0, True), ("attack_ms", 0.5, 100.0, True),
       ("release_ms", 10.0, 1000.0, True), ("knee_db", 1.0, 12.0, False), ("makeup_gain_db", 0.0, 24.0, False)]
    + [(f"band{i}_gain", 0.0, 1.0, False) for i in range(12)]
    + [(f"band{i}_decay", 0.0, 1.0, False) for i in range(12)]
    + [("mix", 0.0, 1.0, False), ("output_gain_db", -24.0, 24.0, False)]
)
STOCK_REVERB_NAMES = [f"band{i}_gain" for i in range(12)] + [f"band{i}_decay" for i in range(12)] + ["mix"]


def stock_param_names(reverb: bool) -> list[str]:
    return [n for n, *_ in STOCK_PARAMS if reverb or n not in STOCK_REVERB_NAMES]


def stock_denormalize(p, reverb: bool) -> dict:
    """(batch, P) in [0, 1] -> dict of (batch,) tensors in units for the stock chain."""
    import torch

    table = {n: (lo, hi, log) for n, lo, hi, log in STOCK_PARAMS}
    out = {}
    for i, name in enumerate(stock_param_names(reverb)):
        lo, hi, log = table[name]
        v = p[:, i]
        out[name] = torch.exp(math.log(lo) + v * (math.log(hi) - math.log(lo))) if log else lo + v * (hi - lo)
    return out


def stock_chain(x, sample_rate: int, u: dict, reverb: bool = True, reverb_ir: int = 65536):
    """Stock vocal chain: gain -> dasp parametric EQ -> dasp compressor -> dasp reverb -> output gain.

    x: (batch, 1, samples) -> (batch, 2, samples).
    """
    import dasp_pytorch.functional as D

    y = D.gain(x, sample_rate, u["gain_db"])
    y = D.parametric_eq(y, sample_rate, **{k: u[k] for k in _eq_arg_names()})
    y = D.compressor(y, sample_rate, u["threshold_db"], u["ratio"], u["attack_ms"], u["release_ms"],
                     u["knee_db"], u["makeup_gain_db"])
    if reverb:
        y = D.noise_shaped_reverberation(y, sample_rate, *[u[n] for n in STOCK_REVERB_NAMES],
                                         num_samples=reverb_ir)
    else:
        y = y.repeat(1, 2, 1)
    return D.gain(y, sample_rate, u["output_gain_db"])


def _eq_arg_names() -> list[str]:
    return [f"{band}_{k}" for band, _, _ in STOCK_EQ for k in ("gain_db", "cutoff_freq", "q_factor")]


def stock_loss(ours_loss):
    """auraloss MultiResolutionSTFTLoss with exactly the settings of our MRSTFTL1Loss instance."""
    import auraloss

    return auraloss.freq.MultiResolutionSTFTLoss(
        fft_sizes=list(ours_loss.fft_sizes), hop_sizes=list(ours_loss.hop_sizes), win_lengths=list(ours_loss.win_lengths),
        w_sc=ours_loss.w_sc, w_log_mag=ours_loss.w_log_mag, w_lin_mag=0.0, w_phs=0.0, eps=ours_loss.eps)


# ----------------------------------------------------------------------------------------------
# section: stages


def _fwd_bwd(fn, leaves):
    """Forward + backward of ``fn`` w.r.t. ``leaves`` (with a fixed random cotangent-free scalar)."""
    def run():
        for t in leaves:
            t.grad = None
        y = fn()
        y = y["loss"] if isinstance(y, dict) else y
        (y if y.dim() == 0 else y.square().mean()).backward()
    return run


def _bench_pair(cfg: Config, name: str, ours_fn, stock_fn, leaves_ours, leaves_stock, same_math: bool,
                note: str = "", stock_repeats: tuple | None = None) -> dict:
    """Time forward and forward+backward of both implementations; max |diff| when ``same_math``."""
    import torch

    entry = {"same_math": same_math, "note": note}
    _log(f"stages: {name}")
    for side, fn, leaves, reps in (("ours", ours_fn, leaves_ours, None), ("stock", stock_fn, leaves_stock, stock_repeats)):
        if fn is None:
            continue
        fwd_reps, fwd_warm, bwd_reps, bwd_warm = reps or (cfg.repeats, cfg.warmup, cfg.repeats, cfg.warmup)
        try:
            entry[side] = {"forward": time_it(fn, fwd_reps, fwd_warm, cfg.device)}
            if bwd_reps > 0:  # 0: measured by the caller (dasp reverb)
                entry[side]["forward_backward"] = time_it(_fwd_bwd(fn, leaves), bwd_reps, bwd_warm, cfg.device)
        except Exception as e:
            entry[side] = {"error": _err(e)}
            cfg.errors.append(f"stages.{name}.{side}: {_err(e)}")
    if same_math and ours_fn is not None and stock_fn is not None:
        with torch.no_grad():
            a, b = ours_fn(), stock_fn()
            a = a["mrstft"] if isinstance(a, dict) else a
            b = b["loss"] if isinstance(b, dict) else b
            if a.shape != b.shape and a.dim() == 3 and b.dim() == 3:  # our chain stages may return stereo
                a = a[:, : b.shape[1]]
            entry["max_abs_diff"] = float((a - b).abs().max())
            entry["max_abs_ref"] = float(b.abs().max())
    for k in ("forward", "forward_backward"):
        try:
            entry.setdefault("speedup", {})[k] = entry["stock"][k]["median_s"] / entry["ours"][k]["median_s"]
            entry.setdefault("speedup_cpu", {})[k] = entry["stock"][k]["cpu_median_s"] / entry["ours"][k]["cpu_median_s"]
        except (KeyError, TypeError, ZeroDivisionError):
            pass
    return entry


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()[:500]


def bench_stages(cfg: Config) -> dict:
    import torch

    import dasp_pytorch.functional as D

    dev, sr, B = cfg.device, cfg.sample_rate, cfg.batch
    torch.manual_seed(0)
    x = batch_audio(B, 1, cfg.seconds, sr).to(dev)
    ours = _OursStages(sr, dev)
    out = {"input": {"batch": B, "channels": 1, "seconds": cfg.seconds, "sample_rate": sr}}

    def leaf(vals):
        return torch.tensor(vals[:B] if len(vals) >= B else (vals * B)[:B], dtype=torch.float32, device=dev).requires_grad_(True)

    # --- gain: identical math (10^(dB/20) * x)
    g = leaf([-6.0, -1.5, 3.0, 9.0])
    g_s = g.detach().clone().requires_grad_(True)
    xo, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out["gain"] = _bench_pair(cfg, "gain", ours.fn("gain", xo, {"gain_db": g}), lambda: D.gain(xs, sr, g_s),
                              [xo, g], [xs, g_s], same_math=True)

    # --- EQ: both RBJ cookbook biquads applied by frequency sampling; same math if our design agrees.
    eq_units = {"low_shelf_gain_db": [4.0, -3.0, 2.0, -6.0], "low_shelf_cutoff_freq": [120.0, 200.0, 90.0, 300.0],
                "low_shelf_q_factor": [0.707] * 4,
                "band0_gain_db": [-3.0, 2.0, 5.0, -4.0], "band0_cutoff_freq": [250.0, 300.0, 180.0, 400.0],
                "band0_q_factor": [1.0, 2.0, 0.7, 1.4],
                "band1_gain_db": [2.0, -5.0, 3.0, 1.0], "band1_cutoff_freq": [900.0, 1200.0, 700.0, 1500.0],
                "band1_q_factor": [1.5, 0.8, 2.5, 1.0],
                "band2_gain_db": [4.0, 3.0, -2.0, 6.0], "band2_cutoff_freq": [3000.0, 2500.0, 4000.0, 3500.0],
                "band2_q_factor": [1.2, 1.0, 3.0, 0.9],
                "band3_gain_db": [-4.0, 2.0, 3.0, -1.0], "band3_cutoff_freq": [7000.0, 8000.0, 6000.0, 9000.0],
                "band3_q_factor": [2.0, 4.0, 1.0, 1.5],
                "high_shelf_gain_db": [3.0, -2.0, 5.0, 1.0], "high_shelf_cutoff_freq": [8000.0, 10000.0, 6000.0, 12000.0],
                "high_shelf_q_factor": [0.707] * 4}
    eq_o = {k: leaf(v) for k, v in eq_units.items()}
    eq_s = {k: v.detach().clone().requires_grad_(True) for k, v in eq_o.items()}
    xo, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eq_same, eq_note = ours.eq_same_math()
    out["eq"] = _bench_pair(cfg, "eq", ours.fn("eq", xo, eq_o), lambda: D.parametric_eq(xs, sr, **eq_s),
                            [xo, *eq_o.values()], [xs, *eq_s.values()], same_math=eq_same, note=eq_note)

    # --- compressor: dasp smooths with the attack constant only (release ignored): different ballistics.
    cu = {"threshold_db": [-24.0, -18.0, -30.0, -12.0], "ratio": [4.0, 3.0, 8.0, 2.0],
          "attack_ms": [5.0, 10.0, 2.0, 20.0], "release_ms": [100.0, 200.0, 60.0, 400.0],
          "knee_db": [6.0, 3.0, 9.0, 6.0], "makeup_gain_db": [6.0, 3.0, 10.0, 2.0]}
    c_o = {k: leaf(v) for k, v in cu.items()}
    c_s = {k: v.detach().clone().requires_grad_(True) for k, v in c_o.items()}
    xo, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out["compressor"] = _bench_pair(
        cfg, "compressor", ours.fn("compressor", xo, c_o),
        lambda: D.compressor(xs, sr, c_s["threshold_db"], c_s["ratio"], c_s["attack_ms"], c_s["release_ms"],
                             c_s["knee_db"], c_s["makeup_gain_db"]),
        [xo, *c_o.values()], [xs, *c_s.values()], same_math=False,
        note="different ballistics: ours smooths gain reduction with separate attack and release; dasp 0.0.1 "
             "uses one attack-only one-pole via frequency sampling (release_ms ignored), so no output diff")

    # --- reverb: different models (our FFT-convolution reverb vs dasp's noise-shaped IR + direct conv).
    rv = {f"band{i}_gain": leaf([0.5 + 0.04 * i]) for i in range(12)}
    rv.update({f"band{i}_decay": leaf([0.3 + 0.03 * i]) for i in range(12)})
    rv["mix"] = leaf([0.25])
    rv_s = [rv[n] for n in STOCK_REVERB_NAMES]
    xo, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    fr = cfg.stock_reverb_forward_repeats
    out["reverb"] = _bench_pair(
        cfg, "reverb", ours.fn("reverb", xo, ours.reverb_units(B)),
        lambda: D.noise_shaped_reverberation(xs, sr, *rv_s, num_samples=cfg.stock_reverb_ir),
        [xo, *ours.leaves], [xs, *rv_s], same_math=False, stock_repeats=(fr, 0, 0, 0),
        note=f"different models: ours convolves with a parametric stereo IR via FFT; dasp builds a noise-shaped IR "
             f"of {cfg.stock_reverb_ir} samples and convolves directly (conv1d under vmap). dasp forward: {fr} runs, "
             f"no warm-up (each takes seconds); dasp forward+backward: see stock.forward_backward.method")
    if "forward" in out["reverb"].get("stock", {}):
        out["reverb"]["stock"]["forward_backward"] = _stock_reverb_backward(cfg, x, rv_s)
        with contextlib.suppress(KeyError, TypeError, ZeroDivisionError):
            out["reverb"]["speedup"]["forward_backward"] = (out["reverb"]["stock"]["forward_backward"]["median_s"]
                                                           / out["reverb"]["ours"]["forward_backward"]["median_s"])

    # --- loss: stereo, identical settings -> same math (compare our `mrstft` term with auraloss)
    y = batch_audio(B, 2, cfg.seconds, sr, seed=100).to(dev)
    t = batch_audio(B, 2, cfg.seconds, sr, seed=200).to(dev)
    try:
        from mst_single.losses import MRSTFTL1Loss

        lo = MRSTFTL1Loss().to(dev)
        ls = stock_loss(lo).to(dev)
        yo, ys = y.clone().requires_grad_(True), y.clone().requires_grad_(True)
        out["loss"] = _bench_pair(cfg, "loss", lambda: lo(yo, t), lambda: ls(ys, t), [yo], [ys], same_math=True,
                                  note=f"MR-STFT term vs auraloss.freq.MultiResolutionSTFTLoss with identical settings "
                                       f"(fft {lo.fft_sizes}, hop {lo.hop_sizes}, win {lo.win_lengths}, w_sc {lo.w_sc}, "
                                       f"w_log_mag {lo.w_log_mag}); ours also computes the waveform L1")
        out["loss"]["input"] = {"batch": B, "channels": 2, "seconds": cfg.seconds}
        if cfg.quick:
            return out
        import auraloss

        ld = auraloss.freq.MultiResolutionSTFTLoss().to(dev)
        yd = y.clone().requires_grad_(True)
        out["loss"]["stock_auraloss_defaults"] = {
            "forward_backward": time_it(_fwd_bwd(lambda: ld(yd, t), [yd]), cfg.repeats, cfg.warmup, dev),
            "note": "auraloss MultiResolutionSTFTLoss() with its own defaults (fft 1024/2048/512, hop 120/240/50)"}
    except Exception as e:
        out["loss"] = {"error": _err(e)}
        cfg.errors.append(f"stages.loss: {_err(e)}")
    return out


def _stock_reverb_backward(cfg: Config, x, rv_params) -> dict:
    """dasp noise_shaped_reverberation forward + backward, measured ONCE (no warm-up).

    At 4 x 4 s it takes ~3 min on 2 free cores (far longer on a busy machine). With
    ``--estimate-stock-reverb`` it is instead measured once on each of two short prefixes of the
    same batch and extrapolated to the full length with an affine fit in the number of samples
    (its direct convolution costs about a + b * samples: the padded input is samples + IR - 1 long).
    """
    import dasp_pytorch.functional as D

    def run_once(n: int) -> float:
        xs = x[..., :n].clone().requires_grad_(True)
        fn = _fwd_bwd(lambda: D.noise_shaped_reverberation(xs, cfg.sample_rate, *rv_params, num_samples=cfg.stock_reverb_ir),
                      [xs, *rv_params])
        return time_it(fn, 1, 0, cfg.device)["median_s"]

    T = x.shape[-1]
    if not cfg.estimate_stock_reverb:
        _log(f"stages: reverb (dasp forward+backward once at full length {T} samples)")
        t = run_once(T)
        return {**summarize([t]), "warmup": 0, "method": f"measured ONCE at full length ({T} samples), no warm-up"}
    lengths = [int(0.25 * cfg.sample_rate), int(0.5 * cfg.sample_rate)]
    _log(f"stages: reverb (dasp forward+backward once each at {lengths} samples, extrapolated to {T})")
    times = [run_once(n) for n in lengths]
    slope = (times[1] - times[0]) / (lengths[1] - lengths[0])
    est = times[1] + slope * (T - lengths[1])
    return {"median_s": est, "iqr_s": None, "n": 0, "warmup": 0, "estimated": True,
            "measured": [{"samples": n, "seconds": t} for n, t in zip(lengths, times)],
            "method": f"ESTIMATED: measured ONCE each (no warm-up) at {lengths[0]} and {lengths[1]} samples and "
                      f"extrapolated to {T} samples with an affine fit (direct convolution: cost a + b * samples); "
                      "run without --estimate-stock-reverb to measure the full length directly (~3 min on 2 free cores)"}


class _OursStages:
    """Our stages (mst_single.functional) called with the stock benchmark's units, as the console calls them."""

    def __init__(self, sample_rate: int, device: str):
        self.sr, self.device, self.leaves = sample_rate, device, []
        import mst_single.functional as F

        self.F = F

    @staticmethod
    def eq_same_math() -> tuple[bool, str]:
        return True, ("same filter design: RBJ-cookbook biquads (low shelf, 4 peaking, high shelf; Q form for "
                      "the shelves, as dasp's biquad) applied by frequency sampling; the FFT lengths differ (dasp: "
                      "next power of 2 >= 2T-1; ours: T + 0.5 s), so the diff is the truncated IIR tail")

    def reverb_units(self, batch: int) -> dict:
        import torch

        vals = {"decay_s": [1.2, 0.6, 2.0, 1.5], "predelay_ms": [20.0, 10.0, 40.0, 5.0],
                "tone": [0.5, 0.3, 0.8, 0.6], "wet_db": [-12.0, -18.0, -9.0, -15.0]}
        units = {k: torch.tensor((v * batch)[:batch], device=self.device).requires_grad_(True) for k, v in vals.items()}
        self.leaves = list(units.values())
        return units

    def fn(self, stage: str, x, u: dict):
        F, sr = self.F, self.sr
        if stage == "gain":
            return lambda: F.gain(x, u["gain_db"])
        if stage == "eq":
            import torch

            bands = ("low_shelf", "band0", "band1", "band2", "band3", "high_shelf")
            return lambda: F.parametric_eq(x, sr, torch.stack([u[f"{b}_gain_db"] for b in bands], 1),
                                           torch.stack([u[f"{b}_cutoff_freq"] for b in bands], 1),
                                           torch.stack([u[f"{b}_q_factor"] for b in bands], 1))
        if stage == "compressor":
            return lambda: F.compressor(x, sr, u["threshold_db"], u["ratio"], u["attack_ms"], u["release_ms"],
                                        u["knee_db"], u["makeup_gain_db"])
        if stage == "reverb":
            from mst_single.console import REVERB_IR_SECONDS

            # as VocalConsole does: dry to both channels + wet stereo send (IR built from the parameters)
            return lambda: x.expand(-1, 2, -1) + F.reverb(x, sr, u["decay_s"], u["predelay_ms"], u["tone"], u["wet_db"],
                                                          ir_seconds=REVERB_IR_SECONDS)
        raise ValueError(stage)


# ----------------------------------------------------------------------------------------------
# section: whole training step


def _training_batch(cfg: Config, batch: int | None = None, seconds: float | None = None) -> dict:
    B, sec = batch or cfg.batch, seconds or cfg.seconds
    return {"raw": batch_audio(B, 1, sec, cfg.sample_rate, seed=1).to(cfg.device),
            "mixed": batch_audio(B, 2, sec, cfg.sample_rate, seed=2).to(cfg.device),
            "reference": batch_audio(B, 2, sec, cfg.sample_rate, seed=3).to(cfg.device),
            "song": [f"bench{i}" for i in range(B)], "start": [0] * B}


def _optimizer_of(model):
    opt = model.configure_optimizers()
    if isinstance(opt, dict):
        opt = opt["optimizer"]
    if isinstance(opt, (list, tuple)):
        opt = opt[0]
        if isinstance(opt, (list, tuple)):
            opt = opt[0]
    return opt


def ours_step_fn(cfg: Config, approach: str, reverb: bool = True):
    """A closure doing one training step of our VocalMST: training_step (loudness normalisation,
    controller, console, loss; its self.log calls return at once without a Trainer) + backward +
    gradient guard + optimiser step. Lightning's own loop overhead is not included (nor in stock)."""
    import warnings

    import torch

    from mst_single.console import STAGES as CONSOLE_STAGES
    from mst_single.system import VocalMST

    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer here, by design
    torch.manual_seed(0)
    stages = {s: (s != "reverb" or reverb) for s in CONSOLE_STAGES}
    model = VocalMST(approach=approach, sample_rate=cfg.sample_rate, stages=stages).to(cfg.device)
    model.train()
    opt = _optimizer_of(model)
    batch = _training_batch(cfg)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model.training_step(batch, 0)
        loss = out["loss"] if isinstance(out, dict) else out
        loss.backward()
        if hasattr(model, "on_before_optimizer_step"):  # our NaN/Inf gradient guard runs in every real step
            model.on_before_optimizer_step(opt)
        opt.step()
        return loss
    return step, model


def stock_step_fn(cfg: Config, approach: str, ours_model, reverb: bool = True):
    """The same step on stock stages: our controller architecture (same encoder/hidden sizes, output
    head sized for the stock parameters), our loudness normalisation, dasp-pytorch chain, auraloss
    MR-STFT (our settings) + the same weighted waveform L1, Adam."""
    import torch

    from mst_single.models import build_controller

    torch.manual_seed(0)
    names = stock_param_names(reverb)
    hp = dict(getattr(ours_model, "hparams", {}) or {})
    kw = {"encoder": dict(hp.get("encoder") or {})}  # exactly as VocalMST builds its controller
    if hp.get("hidden") is not None:
        kw["hidden"] = hp["hidden"]
    controller = build_controller(approach, len(names), cfg.sample_rate, **kw).to(cfg.device)
    ours_loss = _find_loss(ours_model)
    mrstft = stock_loss(ours_loss).to(cfg.device)
    l1_weight = ours_loss.l1_weight
    opt = torch.optim.AdamW(controller.parameters(), lr=float(hp.get("lr", 1e-3)), weight_decay=float(hp.get("weight_decay", 0.0)))
    batch = _training_batch(cfg)
    target_lufs = hp.get("target_lufs")
    normalize = None
    if target_lufs is not None:
        from mst_single.loudness import normalize_loudness

        normalize = normalize_loudness

    def step():
        opt.zero_grad(set_to_none=True)
        raw = batch["raw"]
        if normalize is not None:
            raw, _ = normalize(raw, cfg.sample_rate, target_lufs)
        p = controller(raw, batch["reference"] if controller.needs_reference else None)
        y = stock_chain(raw, cfg.sample_rate, stock_denormalize(p, reverb), reverb=reverb, reverb_ir=cfg.stock_reverb_ir)
        loss = mrstft(y, batch["mixed"]) + l1_weight * (y - batch["mixed"]).abs().mean()
        loss.backward()
        opt.step()
        return loss
    return step, controller


def _find_loss(model):
    from mst_single.losses import MRSTFTL1Loss

    for m in model.modules():
        if isinstance(m, MRSTFTL1Loss):
            return m
    return MRSTFTL1Loss()


def chain_loss_fns(cfg: Config, reverb: bool):
    """Forward + backward of chain + loss only (no encoder, no optimiser), parameters as leaves at
    mid-range: what our stages and loss changed, without the network both steps share."""
    import torch

    from mst_single.console import STAGES as CONSOLE_STAGES
    from mst_single.console import VocalConsole
    from mst_single.losses import MRSTFTL1Loss

    b = _training_batch(cfg)
    raw, mixed = b["raw"], b["mixed"]
    console = VocalConsole(cfg.sample_rate, {s: (s != "reverb" or reverb) for s in CONSOLE_STAGES}).to(cfg.device)
    loss = MRSTFTL1Loss().to(cfg.device)
    mrstft = stock_loss(loss).to(cfg.device)
    p_o = torch.full((cfg.batch, console.num_params), 0.5, device=cfg.device, requires_grad=True)
    p_s = torch.full((cfg.batch, len(stock_param_names(reverb))), 0.5, device=cfg.device, requires_grad=True)

    def ours():
        return loss(console(raw, p_o), mixed)["loss"]

    def stock():
        y = stock_chain(raw, cfg.sample_rate, stock_denormalize(p_s, reverb), reverb=reverb, reverb_ir=cfg.stock_reverb_ir)
        return mrstft(y, mixed) + loss.l1_weight * (y - mixed).abs().mean()
    return _fwd_bwd(ours, [p_o]), _fwd_bwd(stock, [p_s])


def bench_chain_loss(cfg: Config) -> dict:
    out = {"note": "chain + loss forward+backward only (no encoder, no optimiser), batch of the training step; "
                   "stock full chain = stock without reverb + dasp reverb forward+backward (stages)"}
    for reverb, suffix in ((False, "_no_reverb"), (True, "")):
        _log(f"train_step: chain + loss{suffix}")
        try:
            o, st = chain_loss_fns(cfg, reverb)
            out["ours" + suffix] = time_it(o, cfg.repeats, cfg.warmup, cfg.device)
            if not reverb:
                out["stock" + suffix] = time_it(st, cfg.repeats, cfg.warmup, cfg.device)
        except Exception as e:
            out["ours" + suffix] = {"error": _err(e)}
            cfg.errors.append(f"train_step.chain_loss{suffix}: {_err(e)}")
            traceback.print_exc()
    return out


def bench_train_step(cfg: Config) -> dict:
    from mst_single.models import count_parameters

    out = {"input": {"batch": cfg.batch, "seconds": cfg.seconds, "sample_rate": cfg.sample_rate},
           "upstream": bench_upstream(cfg)}
    dry_reps = (cfg.repeats, cfg.warmup)
    out["chain_loss"] = bench_chain_loss(cfg)
    for approach in ("approach1", "approach2"):
        e = out[approach] = {}
        for reverb, suffix in ((True, ""), (False, "_no_reverb")):
            _log(f"train_step: {approach}{suffix}")
            try:
                step, model = ours_step_fn(cfg, approach, reverb=reverb)
                e["ours" + suffix] = time_it(step, cfg.repeats, cfg.warmup, cfg.device)
                e["ours" + suffix]["trainable_parameters"] = count_parameters(model)
            except Exception as ex:
                e["ours" + suffix] = {"error": _err(ex)}
                cfg.errors.append(f"train_step.{approach}.ours{suffix}: {_err(ex)}")
                traceback.print_exc()
                continue
            if reverb and not cfg.full_stock_step:
                continue  # estimated below from its measured parts
            try:
                sstep, ctrl = stock_step_fn(cfg, approach, model, reverb=reverb)
                reps, warm = (1, 0) if reverb else dry_reps
                e["stock" + suffix] = time_it(sstep, reps, warm, cfg.device)
                e["stock" + suffix]["trainable_parameters"] = count_parameters(ctrl)
                if reverb:
                    e["stock"]["method"] = "measured once (no warm-up): dasp's reverb backward takes minutes"
            except Exception as ex:
                e["stock" + suffix] = {"error": _err(ex)}
                cfg.errors.append(f"train_step.{approach}.stock{suffix}: {_err(ex)}")
                traceback.print_exc()
    return out


def complete_train_step(results: dict) -> None:
    """Fill the stock full-chain step from its parts when it was not measured directly, and speed-ups.

    stock full step ~= stock step without reverb (measured) + dasp reverb forward+backward on the
    same batch (measured in ``stages``): the reverb only adds its own forward and backward to the step.
    """
    ts, st = results.get("train_step", {}), results.get("stages", {})
    for approach in ("approach1", "approach2", "chain_loss"):
        e = ts.get(approach)
        if not e:
            continue
        if "stock" not in e and "median_s" in e.get("stock_no_reverb", {}):
            rv = st.get("reverb", {}).get("stock", {}).get("forward_backward", {})
            if "median_s" in rv:
                e["stock"] = {"median_s": e["stock_no_reverb"]["median_s"] + rv["median_s"], "iqr_s": None, "n": 0,
                              "estimated": True,
                              "method": "estimated: stock step without reverb (median) + dasp reverb forward+backward on "
                                        "the same batch (stages.reverb.stock.forward_backward: "
                                        + ("extrapolated" if rv.get("estimated") else "measured once")
                                        + "); run with --full-stock-step to measure directly"}
        for k in ("ours", "ours_no_reverb", "stock", "stock_no_reverb"):
            if e.get(k, {}).get("median_s") is not None and approach != "chain_loss":
                e[k]["per_example_s"] = e[k]["median_s"] / ts["input"]["batch"]
        with contextlib.suppress(KeyError, TypeError, ZeroDivisionError):
            e["speedup_cpu_no_reverb"] = e["stock_no_reverb"]["cpu_median_s"] / e["ours_no_reverb"]["cpu_median_s"]
        for suffix in ("", "_no_reverb"):
            try:
                e["speedup" + suffix] = e["stock" + suffix]["median_s"] / e["ours" + suffix]["median_s"]
            except (KeyError, TypeError, ZeroDivisionError):
                pass


# --- upstream Diff-MST one-track step (only with a patched checkout)


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


# ----------------------------------------------------------------------------------------------
# sections: mix of a 3-minute vocal, peak memory on a 1-hour vocal


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


# ----------------------------------------------------------------------------------------------
# targets


def evaluate_targets(cfg: Config, results: dict) -> dict:
    """Met / not met for each target of issue 6; where not met (or with --profile), what bounds it.

    With --quick the sizes are smaller, so the mix target is judged on its rate (wall / audio
    duration < 2 s / 180 s) and the memory target on the shorter file (``measured_on`` says so).
    """
    out = {}
    ts = results.get("train_step", {})
    sp = {a: ts.get(a, {}).get("speedup") for a in ("approach1", "approach2")}
    sp_dry = {a: ts.get(a, {}).get("speedup_no_reverb") for a in ("approach1", "approach2")}
    if "train_step" in cfg.sections:
        vals = [v for v in sp.values() if v is not None]
        dry = [v for v in sp_dry.values() if v is not None]
        t = out["train_step_10x_faster_than_stock"] = {
            "threshold": f">= {TARGET_STEP_SPEEDUP:g}x", "speedup": sp, "met": bool(vals) and len(vals) == 2 and min(vals) >= TARGET_STEP_SPEEDUP,
            "speedup_no_reverb": sp_dry,
            "met_no_reverb": bool(dry) and len(dry) == 2 and min(dry) >= TARGET_STEP_SPEEDUP,
            "note": "full chain (with reverb) as the target states; `met_no_reverb` is the stricter like-for-like check "
                    "without dasp's slow reverb (ours without reverb vs stock without reverb)"}
        if cfg.profile or not t["met"] or not t["met_no_reverb"]:
            worst = min((a for a in sp if sp[a] is not None), key=lambda a: sp[a], default="approach1")
            t["profile"] = _safe_profile(cfg, lambda: ours_step_fn(cfg, worst)[0], f"ours training step ({worst})")
    if "mix" in cfg.sections:
        mx = results.get("mix", {})
        limit = TARGET_MIX_SECONDS * cfg.mix_seconds / TARGET_MIX_DURATION
        walls = {a: mx.get(a, {}).get("median_s") for a in ("approach1", "approach2")}
        t = out["mix_3min_under_2s"] = {
            "threshold": f"< {TARGET_MIX_SECONDS:g} s for {TARGET_MIX_DURATION:g} s of audio (RTF < {TARGET_MIX_SECONDS / TARGET_MIX_DURATION:.4f})",
            "measured_on_seconds": cfg.mix_seconds, "limit_s": limit, "wall_s": walls,
            "rtf": {a: (w / cfg.mix_seconds if w else None) for a, w in walls.items()},
            "met": all(w is not None and w < limit for w in walls.values())}
        if cfg.profile or not t["met"]:
            inputs = mx.get("_inputs")
            if inputs:
                worst = max(walls, key=lambda a: walls[a] or float("inf"))
                dst = Path(inputs["raw"]).with_name("profile_out.wav")
                t["profile"] = _safe_profile(cfg, lambda: (lambda: _mix_call(worst, inputs, dst)), f"mix_file ({worst})")
    if "mix_memory" in cfg.sections:
        mm = results.get("mix_memory", {})
        peaks = {a: mm.get(a, {}).get("peak_rss_gib") for a in ("approach1", "approach2") if a in mm}
        t = out["mix_1h_under_2GiB"] = {
            "threshold": f"< {TARGET_PEAK_GIB:g} GiB peak RSS for {TARGET_PEAK_DURATION:g} s of audio",
            "measured_on_seconds": cfg.memory_seconds, "peak_rss_gib": peaks,
            "met": bool(peaks) and all(v is not None and v < TARGET_PEAK_GIB for v in peaks.values())}
        if not t["met"] and peaks:
            t["bound_by"] = {a: {"rss_after_imports_gib": mm[a].get("rss_after_imports_gib"),
                                 "growth_during_mix_gib": (mm[a]["peak_rss_gib"] - mm[a].get("rss_after_imports_gib", 0))
                                 if mm[a].get("peak_rss_gib") is not None else None,
                                 "float32_stereo_output_gib": 2 * 4 * cfg.memory_seconds * cfg.sample_rate / GIB}
                             for a in peaks}
    if cfg.quick:
        for t in out.values():
            t["quick"] = "CI-sized run: judged on small sizes; run `make bench` for the real figures"
    return out


def _safe_profile(cfg: Config, make_fn, what: str) -> dict:
    try:
        fn = make_fn()
        fn()  # warm-up (numba JIT, caches)
        prof = profile_call(fn)
        prof["what"] = what
        return prof
    except Exception as e:
        cfg.errors.append(f"profile {what}: {_err(e)}")
        return {"what": what, "error": _err(e)}


# ----------------------------------------------------------------------------------------------
# report


def _t(stats: dict | None) -> str:
    if not stats or stats.get("median_s") is None:
        return "error" if stats and "error" in stats else "-"
    m, iqr = stats["median_s"], stats.get("iqr_s")

    def f(v):
        return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"
    s = f(m)
    if stats.get("estimated"):
        s += " (est.)"
    elif iqr is not None and stats.get("n", 0) > 1:
        s += f" ±{f(iqr / 2)}"
    elif stats.get("n") == 1:
        s += " (1 run)"
    return s


def format_table(results: dict) -> str:
    rows = [("what", "ours", "stock", "speed-up", "max|diff|")]
    st = results.get("stages", {})
    for name in STAGES:
        e = st.get(name)
        if not e:
            continue
        if "error" in e:
            rows.append((name, "error", "", "", ""))
            continue
        diff = f"{e['max_abs_diff']:.1e}" if "max_abs_diff" in e else ("n/a (differs)" if not e.get("same_math") else "-")
        for k, label in (("forward", "fwd"), ("forward_backward", "fwd+bwd")):
            o, s = e.get("ours", {}).get(k), e.get("stock", {}).get(k)
            spd = e.get("speedup", {}).get(k)
            rows.append((f"{name} {label}", _t(o), _t(s), f"{spd:.1f}x" if spd else "-", diff if k == "forward" else ""))
        if name == "loss" and "stock_auraloss_defaults" in e:
            d = e["stock_auraloss_defaults"]["forward_backward"]
            o = e.get("ours", {}).get("forward_backward", {}).get("median_s")
            rows.append(("loss fwd+bwd vs auraloss defaults", _t(e.get("ours", {}).get("forward_backward")), _t(d),
                         f"{d['median_s'] / o:.1f}x" if o else "-", ""))
    ts = results.get("train_step", {})
    for a in ("chain_loss", "approach1", "approach2"):
        e = ts.get(a)
        if not e:
            continue
        for suffix, label in (("", "full chain"), ("_no_reverb", "no reverb")):
            spd = e.get("speedup" + suffix)
            what = "chain + loss fwd+bwd" if a == "chain_loss" else f"train step {a}"
            rows.append((f"{what} ({label})", _t(e.get("ours" + suffix)), _t(e.get("stock" + suffix)),
                         f"{spd:.1f}x" if spd else "-", ""))
    if "upstream" in ts:
        u = ts["upstream"]
        o = ts.get("approach1", {}).get("ours", {}).get("per_example_s")
        if u.get("per_example_s") and o:
            rows.append(("train step per example: ours approach1 vs upstream Diff-MST (1 track, batch 1)",
                         _t({"median_s": o}), _t(u), f"{u['per_example_s'] / o:.1f}x", ""))
        else:
            rows.append(("train step upstream Diff-MST (1 track)", "see below", "", "", ""))
    mx = results.get("mix", {})
    for a in ("approach1", "approach2"):
        if a in mx:
            e = mx[a]
            sec = mx["input"]["seconds"]
            rows.append((f"mix {sec:g} s vocal, {a}", _t(e) + (f" (RTF {e['rtf']:.4f})" if "rtf" in e else ""), "", "", ""))
    mm = results.get("mix_memory", {})
    for a in ("approach1", "approach2"):
        if a in mm:
            e = mm[a]
            sec = mm["input"]["seconds"]
            v = f"peak RSS {e['peak_rss_gib']:.2f} GiB, {e['mix_s']:.1f} s" if "peak_rss_gib" in e else "error"
            rows.append((f"mix {sec:g} s vocal, {a}", v, "", "", ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    u = ts.get("upstream", {})
    if "skipped" in u or "error" in u:
        lines.append(f"upstream Diff-MST step: {u.get('skipped') or 'error: ' + u['error']}")
    tg = results.get("targets", {})
    if tg:
        lines.append("")
        lines.append("targets:")
        for name, t in tg.items():
            detail = {"train_step_10x_faster_than_stock": lambda t: "speed-up " + ", ".join(
                          f"{a} {v:.1f}x" if v else f"{a} -" for a, v in t["speedup"].items())
                          + "; without reverb " + ", ".join(f"{a} {v:.1f}x" if v else f"{a} -" for a, v in t["speedup_no_reverb"].items())
                          + f" ({'met' if t['met_no_reverb'] else 'NOT met'})",
                      "mix_3min_under_2s": lambda t: ", ".join(f"{a} {w:.2f} s" if w else f"{a} -" for a, w in t["wall_s"].items())
                          + f" for {t['measured_on_seconds']:g} s (limit {t['limit_s']:.2f} s)",
                      "mix_1h_under_2GiB": lambda t: ", ".join(f"{a} {v:.2f} GiB" if v else f"{a} -" for a, v in t["peak_rss_gib"].items())
                          + f" for {t['measured_on_seconds']:g} s"}[name](t)
            lines.append(f"  {name}: {'MET' if t['met'] else 'NOT MET'} ({detail})")
            prof = t.get("profile")
            if prof and "top_own" in prof:
                lines.append(f"    bounded by ({prof['what']}, {prof['cpu_s']:.2f} s CPU profiled; own time): " + "; ".join(
                    f"{r['function']} {r['own_share'] * 100:.0f}%" for r in prof["top_own"][:4]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench/results.json", help="JSON results file (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: GPU timings, synchronised; default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure after one warm-up (default: 5)")
    parser.add_argument("--quick", action="store_true", help="CI-sized run (short audio, small batch): seconds, not minutes")
    parser.add_argument("--only", default=None,
                        help="comma-separated sections to run: stages,train_step,mix,mix_memory (default: all)")
    parser.add_argument("--full-stock-step", action="store_true",
                        help="measure the stock full-chain training step directly (once; ~3 min per approach) "
                             "instead of summing its measured parts")
    parser.add_argument("--estimate-stock-reverb", action="store_true",
                        help="extrapolate dasp's reverb forward+backward (~3 min on 2 free cores, measured once by "
                             "default) from two short runs: for a busy machine")
    parser.add_argument("--profile", action="store_true", help="profile every target, not only the missed ones")
    parser.add_argument("--upstream-dir", default="", help="patched upstream Diff-MST checkout (default: ./Diff-MST)")
    parser.add_argument("--memory-seconds", type=float, default=None, help="length of the long-file memory test (default: 3600)")


def config_from_args(args) -> Config:
    kw = dict(device=args.device, full_stock_step=args.full_stock_step, estimate_stock_reverb=args.estimate_stock_reverb,
              profile=args.profile,
              upstream_dir=args.upstream_dir)
    if args.repeats is not None:
        if args.repeats < 1:
            raise MstError(f"--repeats must be at least 1, got {args.repeats}", fix="use --repeats 5 (the default)")
        kw["repeats"] = args.repeats
    if args.only:
        sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
        bad = [s for s in sections if s not in Config().sections]
        if bad:
            raise MstError(f"unknown section(s) in --only: {', '.join(bad)}",
                           fix=f"choose from {', '.join(Config().sections)}")
        kw["sections"] = sections
    if args.memory_seconds is not None:
        kw["memory_seconds"] = args.memory_seconds
    cfg = Config.quick_config(**kw) if args.quick else Config(**kw)
    if cfg.device not in ("cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise MstError(f"unknown --device {cfg.device!r}", fix="use --device cpu or --device cuda")
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MstError("--device cuda was asked for, but torch sees no CUDA GPU on this machine "
                           f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})",
                           fix="run with --device cpu, or on a machine with an NVIDIA GPU and a CUDA build of torch")
    return cfg


def run(args) -> int:
    import torch

    cfg = config_from_args(args)
    cfg.threads = torch.get_num_threads()
    from mst_single.provenance import collect

    t_start = time.perf_counter()
    results: dict = {"schema": 1, "config": {k: v for k, v in asdict(cfg).items() if k != "errors"},
                     "provenance": collect(), "notes": [
                         "times: median and IQR (seconds) of `n` timed runs after `warmup` untimed runs, one process",
                         "forward = forward with autograd on (as in training); forward_backward = forward + backward",
                         "speedup = stock median / ours median",
                         "the machine may have been shared with other jobs while measuring"]}
    with tempfile.TemporaryDirectory(prefix="mst-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for section, fn in (("stages", bench_stages), ("train_step", bench_train_step),
                            ("mix", lambda c: bench_mix(c, tmp)), ("mix_memory", lambda c: bench_mix_memory(c, tmp))):
            if section not in cfg.sections:
                continue
            t0 = time.perf_counter()
            _log(f"{section} ...")
            try:
                results[section] = fn(cfg)
            except Exception as e:
                results[section] = {"error": _err(e)}
                cfg.errors.append(f"{section}: {_err(e)}")
                traceback.print_exc()
            results[section]["section_wall_s"] = time.perf_counter() - t0
            _log(f"{section} done in {time.perf_counter() - t0:.1f} s")
        complete_train_step(results)
        results["targets"] = evaluate_targets(cfg, results)
        results.get("mix", {}).pop("_inputs", None)
    results["errors"] = cfg.errors
    results["total_wall_s"] = time.perf_counter() - t_start
    from mst_single.fileio import write_json

    write_json(args.out, results)
    print(format_table(results))
    print(f"\nwrote {args.out} ({results['total_wall_s']:.0f} s)")
    if cfg.errors:
        print("errors:\n  " + "\n  ".join(cfg.errors), file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mst_single.bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except MstError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
