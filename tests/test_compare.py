"""`mst-single compare`: tables from results folders and run folders, reproduction check, errors."""
import argparse
import math

import pytest

from mst_single import compare
from mst_single.errors import MstError


def write_results_csv(path, rows):
    """results.csv in compare's columns (the rows below have no budget/data/fold)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=compare.COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows({**r, "value": repr(float(r["value"]))} for r in rows)


def rows_for(experiment, variant, seed_values, metric="mrstft", eval_policy="-", song_values=None):
    out = []
    for seed, v in enumerate(seed_values):
        base = dict(experiment=experiment, variant=variant, approach="approach1", policy="song",
                    eval_policy=eval_policy, seed=seed)
        out.append(dict(base, song="mean", metric=metric, value=v))
        for song, sv in (song_values or {}).items():
            out.append(dict(base, song=song, metric=metric, value=sv))
    return out


def results_folder(tmp_path, name, rows):
    folder = tmp_path / name / "results"
    write_results_csv(folder / "results.csv", rows)
    return folder


def cli(argv):
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    return compare.run(parser.parse_args(argv))


def test_two_results_folders_give_one_table_with_mean_and_std(tmp_path, capsys):
    a = results_folder(tmp_path, "e01", rows_for("e01", "approach1", [1.0, 2.0, 3.0], song_values={"s1": 9.0})
                       + rows_for("e01", "approach1", [5.0, 7.0, 9.0], metric="si_sdr")
                       + rows_for("e01", "oracle", [0.5]))
    b = results_folder(tmp_path, "e03", rows_for("e03", "l1-only", [2.0, 2.0]))
    assert cli([str(a), str(b.parent.parent / "e03"), "--out", str(tmp_path / "t.md"), "--csv", str(tmp_path / "t.csv")]) == 0
    printed = capsys.readouterr().out
    # per-seed song means only (the per-song value 9.0 is not averaged in); sample std of 1,2,3 = 1
    assert "| e01/approach1 | 3 | 2.000 ± 1.000 | 7.000 ± 2.000 |" in printed  # only row with si_sdr: not bold
    assert "| e03/l1-only | 2 | 2.000 ± 0.000 |" in printed
    assert "| e01/oracle | 1 | **0.500** |" in printed  # single seed: no std; lowest mrstft in bold
    assert (tmp_path / "t.md").read_text() == printed
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "variant,metric,n,mean,std"
    assert "e01/approach1,mrstft,3,2.0,1.0" in lines
    assert "e01/oracle,mrstft,1,0.5," in lines


def test_summarize_labels_eval_policy_and_skips_per_parameter_errors():
    rows = (rows_for("e02", "song", [1.0], eval_policy="other")
            + rows_for("e02", "song", [0.2], metric="param_err/gain_db", eval_policy="other")
            + rows_for("e02", "song", [0.3], metric="param_err", eval_policy="other"))
    labels, metrics, stats = compare.summarize(rows)
    assert labels == ["song (eval ref: other)"]
    assert metrics == ["mrstft", "param_err"]
    assert stats[("song (eval ref: other)", "param_err")][0] == 0.3
    assert math.isnan(stats[("song (eval ref: other)", "mrstft")][1])


def test_run_folders_are_grouped_by_name_without_seed(tmp_path, capsys):
    for seed, val in ((0, 0.4), (1, 0.6)):
        run = tmp_path / "runs" / f"approach2-s{seed}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"seed_everything: {seed}\n")
        (run / "metrics.csv").write_text(
            "epoch,step,train/loss,val/loss,val/mrstft\n"
            f"0,4,1.5,,\n0,4,,{val + 1},{val + 0.5}\n1,9,1.2,,\n1,9,,{val},{val - 0.1}\n")
    assert cli([str(tmp_path / "runs" / "approach2-s0"), str(tmp_path / "runs" / "approach2-s1")]) == 0
    out = capsys.readouterr().out
    assert "| approach2 | 2 | 0.500 ± 0.141 | 0.400 ± 0.141 |" in out  # last val/loss, val/mrstft


def test_check_same_passes_within_tolerance_and_fails_beyond(tmp_path, capsys):
    a = results_folder(tmp_path, "a", rows_for("e", "v", [1.0, 2.0]))
    b = results_folder(tmp_path, "b", rows_for("e", "v", [1.01, 2.0]))
    c = results_folder(tmp_path, "c", rows_for("e", "v", [1.5, 2.0]))
    d = results_folder(tmp_path, "d", rows_for("e", "v", [1.0]))
    assert cli([str(a), str(b), "--check-same", "0.02"]) == 0
    assert "REPRODUCED" in capsys.readouterr().out
    assert cli([str(a), str(c), "--check-same", "0.02"]) == 1
    assert cli([str(a), str(d), "--check-same", "0.02"]) == 1
    assert "only in the first" in capsys.readouterr().out


def test_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(MstError, match="no such file"):
        cli([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MstError, match="neither a results folder"):
        cli([str(tmp_path / "empty")])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(MstError, match="not an ablation results.csv"):
        cli([str(tmp_path / "bad")])
    with pytest.raises(MstError, match="--group"):
        cli(["--wandb", "me/proj"])
    with pytest.raises(MstError, match="nothing to compare"):
        cli([])


def test_wandb_without_login_or_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(MstError, match="cannot read W&B project 'me/proj'") as e:
        cli(["--wandb", "me/proj", "--group", "e01"])
    assert "wandb login" in str(e.value)


def test_wandb_group_runs_become_rows_per_variant_and_eval_policy(monkeypatch, capsys):
    import wandb

    class Run:
        def __init__(self, name, summary):
            self.name, self.config, self.summary = name, {}, summary

    runs = [Run("approach1-s0", {"eval/song/mrstft": 1.0, "eval/other/mrstft": 2.0, "eval/param_err/gain_db": 0.1,
                                 "_step": 3, "note": "x"}),
            Run("approach1-s1", {"eval/song/mrstft": 3.0, "eval/other/mrstft": 4.0}),
            Run("approach2-s0", {"eval/mrstft": 0.5})]

    class Api:
        def __init__(self, timeout=None):
            pass

        def runs(self, project, filters):
            assert project == "me/proj" and filters == {"group": "e01"}
            return runs

    monkeypatch.setattr(wandb, "Api", Api)
    assert cli(["--wandb", "me/proj", "--group", "e01"]) == 0
    out = capsys.readouterr().out
    assert "| approach1 (eval ref: song) | 2 | 2.000 ± 1.414 |" in out
    assert "| approach1 (eval ref: other) | 2 | 3.000 ± 1.414 |" in out
    assert "| approach2 | 1 | **0.500** |" in out and "param_err" not in out
