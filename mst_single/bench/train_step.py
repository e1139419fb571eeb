"""Section `train_step`: a whole training step per approach, ours vs the same step on stock stages
(and chain + loss alone); examples per second."""
from __future__ import annotations

import contextlib
import traceback

from mst_single.bench.core import Config, _err, _log, time_it
from mst_single.bench.signals import _training_batch
from mst_single.bench.stages import _fwd_bwd
from mst_single.bench.stock import stock_chain, stock_denormalize, stock_loss, stock_param_names
from mst_single.bench.upstream import bench_upstream


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
    p_o = torch.full((cfg.train_batch, console.num_params), 0.5, device=cfg.device, requires_grad=True)
    p_s = torch.full((cfg.train_batch, len(stock_param_names(reverb))), 0.5, device=cfg.device, requires_grad=True)

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

    out = {"input": {"batch": cfg.train_batch, "seconds": cfg.seconds, "sample_rate": cfg.sample_rate},
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
    try:
        out["compressor"] = bench_step_compressor(cfg)
    except Exception as ex:
        out["compressor"] = {"error": _err(ex)}
        cfg.errors.append(f"train_step.compressor: {_err(ex)}")
        traceback.print_exc()
    return out


def bench_step_compressor(cfg: Config) -> dict:
    """The console's compressor alone, forward + backward, on the training step's batch (mono,
    parameters mid-range as leaves): the part of the step it takes (`share_of_step`, filled in by
    `complete_train_step`). On CPU the numba kernels, elsewhere the torch path on the device."""
    import torch

    from mst_single import functional as F

    b = _training_batch(cfg)
    x = b["raw"].clone().requires_grad_(True)
    n = cfg.train_batch
    ps = [torch.full((n,), v, device=cfg.device, requires_grad=True) for v in (-24.0, 4.0, 5.0, 120.0, 6.0, 3.0)]
    _log("train_step: compressor alone")
    res = time_it(_fwd_bwd(lambda: F.compressor(x, cfg.sample_rate, *ps), [x, *ps]), cfg.repeats, cfg.warmup, cfg.device)
    res["backend"] = "numba" if x.device.type == "cpu" else "torch"
    return res


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
            # the stages run at their own batch: dasp's reverb cost grows linearly with it
            scale = ts["input"]["batch"] / max(st.get("input", {}).get("batch", ts["input"]["batch"]), 1)
            if "median_s" in rv:
                e["stock"] = {"median_s": e["stock_no_reverb"]["median_s"] + scale * rv["median_s"], "iqr_s": None, "n": 0,
                              "estimated": True,
                              "method": "estimated: stock step without reverb (median) + dasp reverb forward+backward on "
                                        "the same batch (stages.reverb.stock.forward_backward: "
                                        + ("extrapolated" if rv.get("estimated") else "measured once")
                                        + (f", scaled by {scale:g} from the stages' batch" if scale != 1 else "")
                                        + "); run with --full-stock-step to measure directly"}
        for k in ("ours", "ours_no_reverb", "stock", "stock_no_reverb"):
            if e.get(k, {}).get("median_s") is not None and approach != "chain_loss":
                e[k]["per_example_s"] = e[k]["median_s"] / ts["input"]["batch"]
                e[k]["steps_per_s"] = 1.0 / e[k]["median_s"]
                e[k]["examples_per_s"] = ts["input"]["batch"] / e[k]["median_s"]
        comp = ts.get("compressor", {}).get("median_s")
        if comp is not None and e.get("ours", {}).get("median_s") and approach != "chain_loss":
            e["compressor_share_of_step"] = comp / e["ours"]["median_s"]
        with contextlib.suppress(KeyError, TypeError, ZeroDivisionError):
            e["speedup_cpu_no_reverb"] = e["stock_no_reverb"]["cpu_median_s"] / e["ours_no_reverb"]["cpu_median_s"]
        for suffix in ("", "_no_reverb"):
            try:
                e["speedup" + suffix] = e["stock" + suffix]["median_s"] / e["ours" + suffix]["median_s"]
            except (KeyError, TypeError, ZeroDivisionError):
                pass
