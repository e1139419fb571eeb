"""Targets (met / not met, with a profile of what bounds a missed one) and the printed table."""
from __future__ import annotations

from pathlib import Path

from mst_single.bench.core import (GIB, STAGES, TARGET_COMPRESSOR_SHARE, TARGET_GPU_STEPS_PER_S, TARGET_MIX_DURATION,
                                   TARGET_MIX_SECONDS, TARGET_PEAK_DURATION, TARGET_PEAK_GIB, TARGET_STEP_SPEEDUP, Config,
                                   _err, profile_call)
from mst_single.bench.mix import _mix_call
from mst_single.bench.train_step import ours_step_fn


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
    if "train_step" in cfg.sections:
        shares = {a: ts.get(a, {}).get("compressor_share_of_step") for a in ("approach1", "approach2")}
        t = out["compressor_under_10pct_of_step"] = {
            "threshold": f"<= {TARGET_COMPRESSOR_SHARE:.0%} of the training step (compressor forward + backward alone, "
                         "same batch)", "share": shares, "backend": ts.get("compressor", {}).get("backend"),
            "met": all(v is not None and v <= TARGET_COMPRESSOR_SHARE for v in shares.values())}
        if not t["met"]:  # the two medians the share is made of (a loaded machine moves them apart)
            t["bound_by"] = {"compressor_median_s": ts.get("compressor", {}).get("median_s"),
                             "compressor_iqr_s": ts.get("compressor", {}).get("iqr_s"),
                             "step_median_s": {a: ts.get(a, {}).get("ours", {}).get("median_s")
                                               for a in ("approach1", "approach2")}}
        if cfg.device.startswith("cuda"):
            rate = {a: ts.get(a, {}).get("ours", {}).get("steps_per_s") for a in ("approach1", "approach2")}
            full = ts.get("input", {}).get("batch") == 8 and cfg.seconds == 4.0 and cfg.sample_rate == 48000
            out["gpu_train_5_steps_per_s"] = {
                "threshold": f">= {TARGET_GPU_STEPS_PER_S:g} steps/s at the `full` budget (batch 8 x 4 s x 48 kHz)",
                "steps_per_s": rate, "full_budget_sizes": full,
                "met": full and all(v is not None and v >= TARGET_GPU_STEPS_PER_S for v in rate.values())}
    if "data" in cfg.sections and "train_step" in cfg.sections:
        d = results.get("data", {})
        keep = {k: v.get("keeps_up") for k, v in d.items() if k.startswith("workers_")}
        out["data_loader_not_the_bottleneck"] = {
            "threshold": "the DataLoader delivers at least the segments per second the training step consumes",
            "consumed_segments_per_s": d.get("step", {}).get("segments_per_s_consumed"),
            "segments_per_s": {k: v.get("segments_per_s") for k, v in d.items() if k.startswith("workers_")},
            "keeps_up": keep, "met": any(bool(v) for v in keep.values())}
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
    for a in ("approach1", "approach2"):
        o = ts.get(a, {}).get("ours", {})
        if o.get("steps_per_s"):
            rows.append((f"train step {a}: steps / examples per second (batch {ts['input']['batch']})",
                         f"{o['steps_per_s']:.2f} / {o['examples_per_s']:.1f}", "", "", ""))
    if "median_s" in ts.get("compressor", {}):
        shares = [ts.get(a, {}).get("compressor_share_of_step") for a in ("approach1", "approach2")]
        rows.append((f"compressor fwd+bwd alone ({ts['compressor']['backend']}), share of the step",
                     _t(ts["compressor"]) + " (" + " / ".join(f"{v:.0%}" for v in shares if v is not None) + ")", "", "", ""))
    d = results.get("data", {})
    for k, v in d.items():
        if k.startswith("workers_") and "segments_per_s" in v:
            rows.append((f"DataLoader {k.split('_')[1]} workers: segments/s (epoch of {v['segments']}, first batch)",
                         f"{v['segments_per_s']:.1f} ({_t(v)}, {v['first_batch_s']:.2f} s)", "", "",
                         "" if "keeps_up" not in v else ("keeps up" if v["keeps_up"] else "TOO SLOW")))
    if "step" in d:
        rows.append(("training step consumes: segments/s", f"{d['step']['segments_per_s_consumed']:.1f}", "", "", ""))
    if results.get("peak_gpu_memory_gib") is not None:
        rows.append((f"peak GPU memory ({results.get('gpu', 'GPU')})", f"{results['peak_gpu_memory_gib']:.2f} GiB", "", "", ""))
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
                          + f" for {t['measured_on_seconds']:g} s",
                      "compressor_under_10pct_of_step": lambda t: ", ".join(
                          f"{a} {v:.1%}" if v is not None else f"{a} -" for a, v in t["share"].items()),
                      "gpu_train_5_steps_per_s": lambda t: ", ".join(
                          f"{a} {v:.2f}/s" if v else f"{a} -" for a, v in t["steps_per_s"].items())
                          + ("" if t["full_budget_sizes"] else " (not at the full budget sizes)"),
                      "data_loader_not_the_bottleneck": lambda t: f"step consumes {t['consumed_segments_per_s'] or 0:.1f}/s; "
                          + ", ".join(f"{k} {v:.1f}/s" for k, v in t["segments_per_s"].items() if v)}[name](t)
            lines.append(f"  {name}: {'MET' if t['met'] else 'NOT MET'} ({detail})")
            prof = t.get("profile")
            if prof and "top_own" in prof:
                lines.append(f"    bounded by ({prof['what']}, {prof['cpu_s']:.2f} s CPU profiled; own time): " + "; ".join(
                    f"{r['function']} {r['own_share'] * 100:.0f}%" for r in prof["top_own"][:4]))
    return "\n".join(lines)
