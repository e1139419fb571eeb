"""`mst-single compare`: tables that never mix budgets or data sets nor count reruns as seeds, the
`--check-same` reproduction check, real run folders and W&B offline runs of tiny real fits."""
import argparse
import csv
import json
import re
import shutil

import pytest

from contract_rows import experiment_rows
from mst_single import compare
from mst_single.errors import MstError
from mst_single.experiments.records import write_csv


def results_folder(path, rows):
    write_csv(path / "results.csv", rows, compare.COLUMNS)
    return path


def seed_rows(variant, seed_values, metric="mrstft", budget="smoke", data="demo", songs=("a", "b"), eval_policy="-"):
    """Rows of ``variant`` whose seed s scores ``seed_values[s]`` on every song (mean rows included)."""
    out = []
    for seed, v in enumerate(seed_values):
        base = dict(experiment="e01", budget=budget, data=data, variant=variant, approach="-", policy="-",
                    eval_policy=eval_policy, fold=0, seed=seed, metric=metric)
        out += [dict(base, song=s, value=v) for s in songs] + [dict(base, song="mean", value=v)]
    return out


def cli(argv):
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    return compare.run(parser.parse_args([str(a) for a in argv]))


# ----------------------------------------------------------------------------------------------- tables
def test_budgets_and_data_sets_get_their_own_tables_and_reruns_are_not_seeds(tmp_path, capsys):
    exp = tmp_path / "e01"
    results_folder(exp / "results" / "smoke", seed_rows("approach2", [1.0, 2.0, 3.0]) + seed_rows("oracle", [0.5])
                   + seed_rows("approach2", [7.0], data="other-data"))
    results_folder(exp / "results" / "cpu", seed_rows("approach2", [0.8, 0.9], budget="cpu"))
    out_md, out_csv = tmp_path / "t.md", tmp_path / "t.csv"
    # the experiment folder (both budgets) plus its smoke folder again: the same runs, read twice
    assert cli([exp, exp / "results" / "smoke", "--out", out_md, "--csv", out_csv]) == 0
    printed = capsys.readouterr().out
    assert "note: 15 repeated rows ignored" in printed
    smoke, other, cpu = (printed.split(h)[1].split("budget `")[0] for h in
                         ("budget `smoke`, data `demo`", "budget `smoke`, data `other-data`", "budget `cpu`, data `demo`"))
    assert "| approach2 | 3 | 2.000 ± 1.000 |" in smoke and "| oracle | 1 | **0.500** |" in smoke
    assert "| approach2 | 1 | 7.000 |" in other and "| approach2 | 2 | 0.850 ± 0.071 |" in cpu
    assert out_md.read_text() in printed
    lines = out_csv.read_text().splitlines()
    assert lines[0] == "budget,data,variant,metric,n,mean,std"
    assert "smoke,demo,approach2,mrstft,3,2.0,1.0" in lines and "smoke,other-data,approach2,mrstft,1,7.0," in lines
    assert lines[1].startswith("cpu,demo,approach2,mrstft,2,0.85")


def test_an_older_results_csv_without_budget_data_fold_is_read(tmp_path, capsys):
    old = tmp_path / "results.csv"
    old.write_text("experiment,variant,approach,policy,eval_policy,seed,song,metric,value\n"
                   "e01,approach1,approach1,song,other,0,s1,mrstft,1.5\ne01,approach1,approach1,song,other,0,mean,mrstft,1.5\n")
    assert cli([old]) == 0
    assert "| approach1 (eval ref: other) | 1 | 1.500 |" in capsys.readouterr().out


def test_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(MstError, match="no such file"):
        cli([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MstError, match="neither a results folder"):
        cli([tmp_path / "empty"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(MstError, match="not an ablation results.csv"):
        cli([tmp_path / "bad"])
    with pytest.raises(MstError, match="--group"):
        cli(["--wandb", "me/proj"])
    with pytest.raises(MstError, match="no W&B offline runs"):
        cli(["--wandb", tmp_path / "empty"])
    with pytest.raises(MstError, match="nothing to compare"):
        cli([])
    with pytest.raises(MstError, match="exactly two"):
        cli([tmp_path / "bad", "--check-same", "0.02"])


# ----------------------------------------------------------------------------------------------- check-same
def test_near_zero_metrics_are_compared_absolutely():
    """Issue 15: identity lufs_err 5e-8 vs 1.7e-7 and per-parameter errors 2e-4 vs 1e-2 are no difference."""
    a = seed_rows("identity", [5e-8], "lufs_err") + seed_rows("approach2", [2e-4], "param_err/gain_db")
    b = seed_rows("identity", [1.7e-7], "lufs_err") + seed_rows("approach2", [1e-2], "param_err/gain_db")
    report = compare.check_same(a, b, 0.02)
    assert report.ok and report.rows_beyond == [] and "REPRODUCED: 2 of 2 seed means" in report.text
    c = seed_rows("approach2", [3e-2], "param_err/gain_db")  # 0.03 of the range: beyond ABS_TOL 0.01
    assert not compare.check_same(a[4:], c, 0.02).ok


def test_seed_means_within_two_standard_errors_reproduce_a_real_shift_does_not():
    committed = seed_rows("approach2", [1.0, 1.1, 0.9]) + seed_rows("oracle", [0.5])
    # per run up to 9 % apart, the same seed mean: seeds differ more than that from each other
    rerun = seed_rows("approach2", [1.05, 1.0, 0.95]) + seed_rows("oracle", [0.5])
    report = compare.check_same(committed, rerun, 0.02)
    assert report.ok, report.text
    assert len(report.rows_beyond) == 9  # 3 seeds x (2 songs + mean) beyond max(0.01, 2 %)
    assert "(not decisive: the seed means are)" in report.text
    g = next(g for g in report.groups if g["label"] == "approach2")
    assert g["why"] == "2 SE" and g["allowed"] == pytest.approx(2 * ((0.1**2 + 0.05**2) / 3) ** 0.5)  # sd 0.1, 0.05
    shifted = seed_rows("approach2", [1.3, 1.4, 1.2]) + seed_rows("oracle", [0.5])
    bad = compare.check_same(committed, shifted, 0.02)
    assert not bad.ok
    assert "DIFFERS smoke/demo approach2 mrstft: seed mean 1.000 -> 1.300 (Δ 0.300" in bad.text
    assert bad.text.splitlines()[-1].startswith("NOT REPRODUCED: 1 of 2 seed means within tolerance")
    # how much came back bit for bit, what the same machine gives (issue 15, point 2)
    assert (report.identical, report.shared) == (3, 12) and report.max_rel == pytest.approx(0.1 / 1.1)
    assert "values: 3 of 12 identical bit for bit (largest relative difference 0.091)" in report.text
    same = compare.check_same(committed, committed, 0.02)
    assert (same.identical, same.shared, same.max_rel) == (12, 12, 0.0)
    assert "values: 12 of 12 identical bit for bit\n" in same.text
    # NaN = NaN is the same bits; a value that became infinite is an infinite difference, not a NaN one
    key = ["song"]
    assert compare.bitwise([dict(song="a", value=float("nan")), dict(song="b", value=1.0)],
                           [dict(song="a", value=float("nan")), dict(song="b", value=float("inf"))], key) == \
        dict(identical=1, shared=2, one_side=0, max_rel=float("inf"))


def test_a_ranking_that_flips_within_tolerance_is_reported():
    committed = seed_rows("approach1", [1.0, 1.02]) + seed_rows("approach2", [1.01, 1.03])
    rerun = seed_rows("approach1", [1.02, 1.04]) + seed_rows("approach2", [1.0, 1.02])
    report = compare.check_same(committed, rerun, 0.02)
    assert report.ok  # each within tolerance ...
    assert "the ranking by mrstft changed (best first): approach1, approach2 -> approach2, approach1" in report.text
    assert "ranking" not in compare.check_same(committed, committed).text  # ... but no winner can be named


def test_a_single_seed_is_held_to_the_relative_and_absolute_tolerance():
    a = seed_rows("approach2", [1.0])
    assert compare.check_same(a, seed_rows("approach2", [1.015]), 0.02).ok  # 1.5 % < 2 %
    assert not compare.check_same(a, seed_rows("approach2", [1.059]), 0.02).ok  # issue 15: 5.9 %
    assert compare.check_same(a, seed_rows("approach2", [1.059]), 0.06).ok


def test_missing_rows_fail_and_other_budgets_or_data_are_refused():
    a = seed_rows("approach2", [1.0, 1.1])
    report = compare.check_same(a, seed_rows("approach2", [1.0]), 0.02)
    assert not report.ok and report.missing and "missing: only in the first" in report.text
    with pytest.raises(MstError, match="different budgets/data sets"):
        compare.check_same(a, seed_rows("approach2", [1.0, 1.1], budget="cpu"))
    with pytest.raises(MstError, match="different budgets/data sets"):
        compare.check_same(a, seed_rows("approach2", [1.0, 1.1], data="demo-adaptive"))
    # a repeated row (a rerun appended to the same file) is not another seed
    report = compare.check_same(a + a, a)
    assert report.ok and "ignored repeated rows" in report.text


def test_check_same_on_full_results_folders(tmp_path, capsys):
    rows, _, _ = experiment_rows(songs=8, seeds=3, folds=2)
    a = results_folder(tmp_path / "committed", rows)
    b = results_folder(tmp_path / "same", rows)
    drift = [dict(r, value=r["value"] * (1.05 if r["variant"] == "approach2" and r["metric"] == "mrstft" else 1))
             for r in rows]
    c = results_folder(tmp_path / "drift", drift)
    assert cli([a, b, "--check-same", "0.02"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("REPRODUCED")
    assert cli([a, c, "--check-same", "0.02"]) == 1
    out = capsys.readouterr().out
    assert "DIFFERS cpu/demo-adaptive approach2 mrstft" in out and out.count("DIFFERS") == 1
    assert cli([a, c, "--check-same", "0.06"]) == 0


# ----------------------------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Two tiny real `mst-single fit` runs (approach2, seeds 0 and 1) with W&B offline, as ablate names them."""
    import wandb

    from conftest import make_vocal_data, tiny_fit_args
    from mst_single.train import cli_main

    root = tmp_path_factory.mktemp("compare-runs")
    data = make_vocal_data(root / "demo", songs=5, seconds=3)
    runs = root / "runs"
    for seed in (0, 1):
        args = tiny_fit_args(data, runs)
        args[args.index("--wandb") + 1] = "true"
        rc = cli_main(["fit", "-c", "configs/approach2.yaml", *args, "--run_name", f"approach2-s{seed}",
                       "--seed_everything", str(seed), "--wandb_group", "e01",
                       "--tags", '["budget-smoke", "data-demo"]'])
        assert rc == 0
        wandb.finish()  # as ablate's worker does: the next fit in this process starts its own W&B run
    return runs


@pytest.mark.slow
def test_real_run_folders_and_their_wandb_offline_runs_give_the_same_table(real_runs, tmp_path, capsys, monkeypatch):
    s0, s1 = real_runs / "approach2-s0", real_runs / "approach2-s1"
    last = {}
    for run in (s0, s1):  # the last validation values of each run's metrics.csv
        for r in csv.DictReader(open(run / "metrics.csv")):
            last.update({(run.name, k): float(v) for k, v in r.items() if k in ("val/loss", "val/mrstft") and v})
    rows = compare.rows_from_path(s0) + compare.rows_from_path(s1)
    assert {(r["variant"], r["seed"], r["data"], r["experiment"]) for r in rows} == {
        ("approach2", "0", "demo", "e01"), ("approach2", "1", "demo", "e01")}
    assert next(r["value"] for r in rows if r["seed"] == "1" and r["metric"] == "val/mrstft") == last[(s1.name, "val/mrstft")]
    assert {r["metric"] for r in rows} == {"val/l1", "val/loss", "val/mrstft"}  # not val/params/*

    rerun = tmp_path / "elsewhere" / "approach2-s0"  # the same run in another folder: not a third seed
    shutil.copytree(s0, rerun)
    assert cli([s0, s1, rerun]) == 0
    table = capsys.readouterr().out
    assert "repeated rows ignored" in table and "| approach2 | 2 |" in table

    offline = compare.offline_runs(real_runs)
    assert sorted(r.name for r in offline) == ["approach2-s0", "approach2-s1"]
    assert {r.group for r in offline} == {"e01"} and "budget-smoke" in offline[0].tags
    assert cli(["--wandb", real_runs, "--group", "e01"]) == 0
    from_wandb = capsys.readouterr().out
    assert "budget `smoke`, data `demo`:" in from_wandb  # budget and data from the run's tags
    assert from_wandb.split("\n", 2)[2] == table.split("\n", 3)[3]  # the same numbers as metrics.csv

    # online: only the network is replaced; the runs are the real ones read back from their files
    import wandb

    class Api:
        def __init__(self, timeout=None):
            pass

        def runs(self, project, filters):
            assert project == "me/vocal-mst" and filters == {"group": {"$regex": r"^e01(/[^/]+)?$"}}
            return offline + offline[:1]  # a run listed twice (same id) counts once

    monkeypatch.setattr(wandb, "Api", Api)
    assert cli(["--wandb", "me/vocal-mst", "--group", "e01"]) == 0
    assert capsys.readouterr().out == from_wandb


def test_wandb_summary_keys_eval_policy_and_config(capsys):
    runs = [compare.WandbRun("id0", "approach1-f1-s0", "e01", ["approach1"],
                             {"budget": "cpu", "data": "demo-per-song", "variant": "approach1"},
                             {"eval/song/mrstft": 1.0, "eval/other/mrstft": 2.0, "eval/shuffled/mrstft": 2.5,
                              "eval/param_err/gain_db": 0.1, "_step": 3, "note": "x", "flag": True}),
            compare.WandbRun("id1", "approach1-f1-s1", "e01", [], {"budget": "cpu", "data": "demo-per-song"},
                             {"eval/song/mrstft": 3.0, "eval/other/mrstft": 4.0}),
            compare.WandbRun("id2", "approach2-s0", "other-group", [], {}, {"eval/mrstft": 0.5})]
    rows = compare.rows_from_wandb(runs, "e01")
    assert {(r["variant"], r["fold"], r["seed"], r["eval_policy"]) for r in rows if r["metric"] == "mrstft"} == {
        ("approach1", "1", "0", "song"), ("approach1", "1", "0", "other"), ("approach1", "1", "0", "shuffled"),
        ("approach1", "1", "1", "song"), ("approach1", "1", "1", "other")}
    assert {r["budget"] for r in rows} == {"cpu"} and not any(r["metric"] == "flag" for r in rows)
    with pytest.raises(MstError, match="no W&B runs of group 'nope'"):
        compare.rows_from_wandb(runs, "nope")
    # ablate logs to EXPERIMENT/BUDGET: the experiment name takes every budget, each its own table
    logged = [compare.WandbRun(f"id{i}", "approach2-s0", g, [], {"budget": b}, {"eval/mrstft": float(i)})
              for i, (g, b) in enumerate([("e01/cpu", "cpu"), ("e01/smoke", "smoke"), ("e011/cpu", "cpu")])]
    assert [r["value"] for r in compare.rows_from_wandb(logged, "e01")] == [0.0, 1.0]
    assert [r["value"] for r in compare.rows_from_wandb(logged, "e01/smoke")] == [1.0]
    assert compare.group_filter("e01/cpu") == {"group": "e01/cpu"}
    assert re.fullmatch(compare.group_filter("e01")["group"]["$regex"][1:-1], "e01/cpu")
    assert not re.fullmatch(compare.group_filter("e01")["group"]["$regex"][1:-1], "e011/cpu")


def test_wandb_without_login_or_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(MstError, match="cannot read W&B project 'me/proj'") as e:
        cli(["--wandb", "me/proj", "--group", "e01"])
    assert "wandb login" in str(e.value) and "--wandb RESULTS_FOLDER" in str(e.value)


def test_run_folders_trained_at_different_sample_rates_are_flagged(tmp_path, capsys):
    def run(name, sr, loss):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.yaml").write_text(f"model: {{approach: approach2}}\ndata: {{root: /x/demo, sample_rate: {sr}}}\n")
        (folder / "metrics.csv").write_text(f"step,val/loss\n3,{loss}\n")
        return str(folder)

    a, b, c = run("a2-16k", 16000, 0.9), run("a2-48k", 48000, 0.7), run("a2-48k-b", 48000, 0.8)
    assert cli([a, b, c]) == 0
    err = capsys.readouterr().err
    assert ("warning: runs on data `demo` were trained at different sample rates (16000 Hz: a2-16k; "
            "48000 Hz: a2-48k, a2-48k-b)") in err and "one table does not rank them" in err
    assert cli([b, c]) == 0 and "warning" not in capsys.readouterr().err


def test_a_run_without_validation_songs_is_read_from_its_test_scores(tmp_path, capsys):
    run = tmp_path / "a1-noval"
    run.mkdir()
    (run / "config.yaml").write_text("model: {approach: approach1}\ndata: {root: /x/demo, val_fraction: 0}\n")
    (run / "metrics.csv").write_text("step,train/loss\n0,1.5\n1,1.2\n")
    with pytest.raises(MstError, match=r"no validation songs \(data.val_fraction 0 or its split file\)") as e:
        compare.rows_from_path(run)
    # a split file that leaves none: read from the songs its provenance.json lists per split
    split = tmp_path / "a1-split"
    split.mkdir()
    (split / "config.yaml").write_text("model: {approach: approach1}\ndata: {root: /x/demo, split_file: s.json}\n")
    (split / "metrics.csv").write_text("step,train/loss\n0,1.5\n")
    with pytest.raises(MstError, match="yet"):  # no provenance: the run may still reach a validation step
        compare.rows_from_path(split)
    (split / "provenance.json").write_text(json.dumps({"songs": {"train": ["a", "b"], "val": [], "test": ["c"]}}))
    with pytest.raises(MstError, match="no validation songs"):
        compare.rows_from_path(split)
    assert f"mst-single test -c {run / 'config.yaml'} --ckpt_path {run / 'checkpoints' / 'last.ckpt'}" in str(e.value)
    (run / "test").mkdir()
    (run / "test" / "metrics.csv").write_text("step,test/mrstft,test/loss\n1,0.8,0.9\n")
    assert {(r["metric"], r["value"]) for r in compare.rows_from_path(run)} == {("test/mrstft", 0.8), ("test/loss", 0.9)}
