"""The benchmark harness: a CI-sized run end to end, its JSON, and the helpers it relies on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mst_single import bench
from mst_single.errors import MstError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `python -m mst_single.bench --quick --repeats 2` run (CLI, own process), shared by the tests."""
    out = tmp_path_factory.mktemp("bench") / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "mst_single.bench", "--quick", "--repeats", "2", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text()), proc.stdout


def _positive_stats(stats: dict, n: int) -> None:
    assert stats["median_s"] > 0
    assert stats["iqr_s"] >= 0
    assert stats["n"] == n
    assert len(stats["runs_s"]) == n and all(r > 0 for r in stats["runs_s"])


@pytest.mark.slow
def test_quick_run_structure_and_provenance(quick_run):
    res, _ = quick_run
    assert res["schema"] == 1 and res["errors"] == []
    assert res["config"]["quick"] is True and res["config"]["repeats"] == 2
    prov = res["provenance"]
    assert {"commit", "packages", "hardware", "time_utc"} <= set(prov)
    assert prov["hardware"]["cpu_count"] >= 1
    for section in ("stages", "train_step", "data", "mix", "mix_memory", "targets"):
        assert section in res, section


@pytest.mark.slow
def test_quick_run_stage_timings_and_diffs(quick_run):
    st = quick_run[0]["stages"]
    for name in ("gain", "eq", "compressor", "reverb", "loss"):
        e = st[name]
        _positive_stats(e["ours"]["forward"], 2)
        _positive_stats(e["ours"]["forward_backward"], 2)
        _positive_stats(e["stock"]["forward"], 2)
        assert e["speedup"]["forward_backward"] > 0
    # same math: output differences are rounding-level
    assert st["gain"]["same_math"] is True and st["gain"]["max_abs_diff"] < 1e-6
    assert st["loss"]["same_math"] is True
    assert st["loss"]["max_abs_diff"] <= 1e-5 * max(1.0, st["loss"]["max_abs_ref"])
    assert st["eq"]["same_math"] is True and st["eq"]["max_abs_diff"] < 1e-3
    # different math: said so, and no misleading diff
    for name in ("compressor", "reverb"):
        assert st[name]["same_math"] is False and "max_abs_diff" not in st[name] and st[name]["note"]
    # dasp's reverb backward is measured once, and the JSON says so
    assert st["reverb"]["stock"]["forward_backward"]["n"] == 1
    assert "ONCE" in st["reverb"]["stock"]["forward_backward"]["method"]


@pytest.mark.slow
def test_quick_run_train_step_mix_memory(quick_run):
    res = quick_run[0]
    ts = res["train_step"]
    cl = ts["chain_loss"]  # chain + loss only: what our stages and loss changed
    _positive_stats(cl["ours_no_reverb"], 2)
    _positive_stats(cl["stock_no_reverb"], 2)
    _positive_stats(cl["ours"], 2)
    assert cl["stock"]["estimated"] is True and cl["speedup"] > 0 and cl["speedup_no_reverb"] > 0
    for approach in ("approach1", "approach2"):
        _positive_stats(ts[approach]["ours"], 2)
        _positive_stats(ts[approach]["ours_no_reverb"], 2)
        _positive_stats(ts[approach]["stock_no_reverb"], 2)
        assert ts[approach]["stock"]["median_s"] > ts[approach]["stock_no_reverb"]["median_s"]
        assert ts[approach]["stock"]["estimated"] is True
        assert ts[approach]["speedup"] > 0 and ts[approach]["speedup_no_reverb"] > 0
        mix = res["mix"][approach]
        _positive_stats(mix, 2)
        assert mix["rtf"] == pytest.approx(mix["median_s"] / res["mix"]["input"]["seconds"])
        mem = res["mix_memory"][approach]
        assert 0.05 < mem["peak_rss_gib"] < 64 and mem["rss_after_imports_gib"] <= mem["peak_rss_gib"]
    # no patched upstream checkout in CI: skipped, and said so
    if not (REPO / "Diff-MST" / "mst" / "system.py").exists():
        assert ts["upstream"]["skipped"].startswith("skipped: Diff-MST/ not checked out and patched")


@pytest.mark.slow
def test_quick_run_targets_evaluated_and_printed(quick_run):
    res, stdout = quick_run
    tg = res["targets"]
    assert set(tg) == {"train_step_10x_faster_than_stock", "mix_3min_under_2s", "mix_1h_under_2GiB",
                       "compressor_under_10pct_of_step", "data_loader_not_the_bottleneck"}  # + gpu_* on CUDA
    for t in tg.values():
        assert isinstance(t["met"], bool)
    assert isinstance(tg["train_step_10x_faster_than_stock"]["met_no_reverb"], bool)
    for t in tg.values():  # a missed target carries what bounds it
        if not t["met"]:
            assert "profile" in t or "bound_by" in t
    assert "targets:" in stdout and "train step approach1" in stdout and "max|diff|" in stdout


@pytest.mark.slow
def test_quick_run_data_loader_and_step_rates(quick_run):
    """The `data` section: the DataLoader alone at each worker count, next to what the step consumes;
    the training step's steps / examples per second and the compressor's share of it."""
    res, stdout = quick_run
    d, ts = res["data"], res["train_step"]
    batch = ts["input"]["batch"]
    assert d["input"]["batch"] == batch and d["input"]["seconds"] == res["config"]["seconds"]
    for w in res["config"]["data_workers"]:
        e = d[f"workers_{w}"]
        _positive_stats(e, 2)
        assert e["segments"] == batch * res["config"]["data_batches"]
        assert e["segments_per_s"] == pytest.approx(e["segments"] / e["median_s"], rel=0.5)
        assert 0 < e["first_batch_s"] <= e["q3_s"] and isinstance(e["keeps_up"], bool)
    slower = max(ts["approach1"]["ours"]["median_s"], ts["approach2"]["ours"]["median_s"])
    assert d["step"]["segments_per_s_consumed"] == pytest.approx(batch / slower)
    assert d["workers_0"]["step_s_with_loading"] > slower
    for a in ("approach1", "approach2"):
        o = ts[a]["ours"]
        assert o["steps_per_s"] == pytest.approx(1 / o["median_s"]) and o["examples_per_s"] == pytest.approx(batch / o["median_s"])
        assert 0 < ts[a]["compressor_share_of_step"] < 1
    assert ts["compressor"]["backend"] == "numba" and ts["compressor"]["median_s"] > 0
    assert "DataLoader 0 workers" in stdout and "steps / examples per second" in stdout


def test_make_bench_device_cuda_writes_results_gpu():
    """`make bench DEVICE=cuda` runs the benchmark on the GPU into bench/results-gpu.json; plain
    `make bench` stays on the CPU (dry run: nothing is executed)."""
    def cmd(*args):
        out = subprocess.run(["make", "-n", "bench", *args, "VENV=/nonexistent"], cwd=REPO, capture_output=True, text=True)
        return [ln for ln in out.stdout.splitlines() if "mst_single.bench" in ln][0]

    assert "--device cuda --out bench/results-gpu.json" in cmd("DEVICE=cuda")
    assert "--device cpu --out bench/results.json" in cmd()


def test_summarize_median_and_iqr():
    s = bench.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["median_s"] == 3.0 and s["q1_s"] == 2.0 and s["q3_s"] == 4.0 and s["iqr_s"] == 2.0 and s["n"] == 5


def test_time_it_warms_up_then_times(monkeypatch):
    calls = []
    s = bench.time_it(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and s["n"] == 3 and s["warmup"] == 2


def test_vocal_like_chunks_concatenate(tmp_path):
    sr = 16000
    whole = bench.vocal_like(0, 3 * sr, sr)
    parts = np.concatenate([bench.vocal_like(s, sr, sr) for s in range(0, 3 * sr, sr)])
    np.testing.assert_array_equal(whole, parts)
    assert np.abs(whole).max() <= 1.0 and np.abs(whole).max() > 0.1
    # the long-file writer streams the same signal to disk (PCM_16)
    path = bench.write_long_wav(tmp_path / "long.wav", 3.0, sr, chunk_seconds=0.7)
    y, file_sr = sf.read(path, dtype="float32")
    assert file_sr == sr and y.shape == (3 * sr,)
    np.testing.assert_allclose(y, whole, atol=1.0 / 32768 + 1e-6)
    assert not list(tmp_path.glob(".*part"))  # atomic: no temp left


def test_stock_denormalize_ranges():
    import torch

    for reverb in (True, False):
        names = bench.stock_param_names(reverb)
        lo = bench.stock_denormalize(torch.zeros(1, len(names)), reverb)
        hi = bench.stock_denormalize(torch.ones(1, len(names)), reverb)
        table = {n: (a, b) for n, a, b, _ in bench.STOCK_PARAMS}
        for n in names:
            assert lo[n].item() == pytest.approx(table[n][0], rel=1e-5)
            assert hi[n].item() == pytest.approx(table[n][1], rel=1e-5)
    assert len(bench.stock_param_names(True)) - len(bench.stock_param_names(False)) == 25


def test_cuda_request_fails_clearly_without_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        cfg = bench.config_from_args(_args(device="cuda", out=str(tmp_path / "r.json")))
        assert cfg.device == "cuda"
        return
    rc = bench.main(["--device", "cuda", "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "no CUDA GPU" in err and "--device cpu" in err
    assert not (tmp_path / "r.json").exists()


def test_bad_arguments_are_user_errors():
    with pytest.raises(MstError, match="unknown section"):
        bench.config_from_args(_args(only="stages,nope"))
    with pytest.raises(MstError, match="--repeats"):
        bench.config_from_args(_args(repeats=0))
    cfg = bench.config_from_args(_args(quick=True, only="stages"))
    assert cfg.quick and cfg.sections == ("stages",) and cfg.seconds < 4.0
    assert bench.Config().train_batch == 4 and bench.Config(device="cuda").train_batch == 8  # the `full` budget
    assert bench.Config(device="cuda", step_batch=2).train_batch == 2


def test_upstream_skipped_without_checkout(tmp_path):
    ok, why = bench.upstream_status(tmp_path / "Diff-MST")
    assert ok is False and why.startswith("skipped: Diff-MST/ not checked out and patched")


def _args(**kw):
    import argparse

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args([])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_a_missed_compressor_target_carries_the_medians_it_is_made_of():
    """On a loaded machine the compressor's share of the step can pass 10 %: the report must then say
    what it was made of, as every missed target does (found by CI on a busy machine)."""
    from mst_single.bench.core import Config
    from mst_single.bench.report import evaluate_targets

    ts = {"compressor": {"median_s": 0.03, "iqr_s": 0.004, "backend": "numba"},
          "approach1": {"ours": {"median_s": 0.6}, "compressor_share_of_step": 0.05, "speedup": 20, "speedup_no_reverb": 20},
          "approach2": {"ours": {"median_s": 0.25}, "compressor_share_of_step": 0.12, "speedup": 20,
                        "speedup_no_reverb": 20}}  # speed-ups met: no profile of a real step is run
    t = evaluate_targets(Config(sections=("train_step",), profile=False), {"train_step": ts})
    missed = t["compressor_under_10pct_of_step"]
    assert missed["met"] is False
    assert missed["bound_by"] == {"compressor_median_s": 0.03, "compressor_iqr_s": 0.004,
                                  "step_median_s": {"approach1": 0.6, "approach2": 0.25}}
    ts["approach2"]["compressor_share_of_step"] = 0.08
    met = evaluate_targets(Config(sections=("train_step",), profile=False), {"train_step": ts})
    assert met["compressor_under_10pct_of_step"]["met"] is True and "bound_by" not in met["compressor_under_10pct_of_step"]
