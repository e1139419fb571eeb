"""Section `stages`: gain, EQ, compressor, reverb and the loss, ours vs stock, forward and
forward + backward, with the max abs difference where the math is the same."""
from __future__ import annotations

import contextlib

from mst_single.bench.core import Config, _err, _log, summarize, time_it
from mst_single.bench.signals import batch_audio
from mst_single.bench.stock import STOCK_REVERB_NAMES, stock_loss


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
