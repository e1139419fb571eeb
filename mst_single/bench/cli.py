"""`python -m mst_single.bench`: arguments, the run over the sections, the JSON report."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from mst_single.errors import MstError
from mst_single.bench.core import GIB, Config, _err, _log
from mst_single.bench.data import bench_data, complete_data
from mst_single.bench.mix import bench_mix, bench_mix_memory
from mst_single.bench.report import evaluate_targets, format_table
from mst_single.bench.stages import bench_stages
from mst_single.bench.train_step import bench_train_step, complete_train_step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench/results.json", help="JSON results file (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: GPU timings, synchronised; default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure after one warm-up (default: 5)")
    parser.add_argument("--quick", action="store_true", help="CI-sized run (short audio, small batch): seconds, not minutes")
    parser.add_argument("--only", default=None,
                        help="comma-separated sections to run: stages,train_step,data,mix,mix_memory (default: all)")
    parser.add_argument("--step-batch", type=int, default=None,
                        help="batch of the training step and the data loader (default: 4 on CPU, 8 on CUDA: the "
                             "`full` budget)")
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
    if getattr(args, "step_batch", None):
        kw["step_batch"] = args.step_batch
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
        for section, fn in (("stages", bench_stages), ("train_step", bench_train_step), ("data", lambda c: bench_data(c, tmp)),
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
        complete_data(results)
        if cfg.device.startswith("cuda"):
            results["peak_gpu_memory_gib"] = max(_values_of(results, "cuda_max_memory_allocated_gib"), default=None)
            results["gpu"] = torch.cuda.get_device_name(torch.device(cfg.device))
            results["gpu_total_memory_gib"] = torch.cuda.get_device_properties(torch.device(cfg.device)).total_memory / GIB
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


def _values_of(tree, key: str) -> list:
    """Every value stored under `key` anywhere in a nested dict/list."""
    if isinstance(tree, dict):
        return [v for k, v in tree.items() if k == key and v is not None] + \
            [x for v in tree.values() for x in _values_of(v, key)]
    if isinstance(tree, list):
        return [x for v in tree for x in _values_of(v, key)]
    return []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mst_single.bench", description="Performance benchmark: our chain, loss, training step, data loading and mix vs stock.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except MstError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
