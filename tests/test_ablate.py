"""`mst-single ablate`: experiment configs, end-to-end run on tiny data, determinism, sweep export."""
import argparse
import csv
import json
from pathlib import Path

import pytest
import yaml

from mst_single import ablate
from mst_single.compare import COLUMNS, reproduction_diff, rows_from_path
from mst_single.errors import MstError
from mst_single.metrics import METRIC_UNITS
from mst_single.provenance import REPO_ROOT

EXPERIMENTS = REPO_ROOT / "experiments"
TINY = """# mst-single ablate {folder} --budget test
base: {base}
question: Does the pipeline run end to end?
seeds: 1
variants:
  approach1:
    configs: [configs/approach1.yaml]
  approach2:
    configs: [configs/approach2.yaml]
    train_fraction: 0.5
budgets:
  test:
    overrides:
      data.sample_rate: 16000
      data.segment_seconds: 1.0
      data.batch_size: 2
      data.train_segments_per_epoch: 4
      trainer.max_epochs: 100
      trainer.max_steps: 4
      trainer.check_val_every_n_epoch: 2
      trainer.limit_val_batches: 1
      trainer.num_sanity_val_steps: 0
      trainer.log_every_n_steps: 1
      trainer.enable_progress_bar: false
      model.log_audio_every_n_epochs: 0
      model.encoder: {{n_mels: 32, channels: [8, 16], embed_dim: 32}}
      model.hidden: 32
    baselines:
      mean_preset: {{steps: 2, batch_size: 2, segment_seconds: 1.0, lr: 0.1}}
      oracle: {{steps: 2, batch_size: 2, segment_seconds: 1.0, lr: 0.1}}
eval:
  report_songs: 1
  report_seconds: 1
wandb:
  enabled: false
"""


def cli(argv):
    parser = argparse.ArgumentParser()
    ablate.add_arguments(parser)
    return ablate.run(parser.parse_args([str(a) for a in argv]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mst_single.demo import make_demo_data

    root = tmp_path_factory.mktemp("ablate")
    data = make_demo_data(root / "data", songs=5, seconds=3, seed=0, sample_rate=16000)
    folder = root / "exp-tiny"
    folder.mkdir()
    (folder / "config.yaml").write_text(TINY.format(folder=folder, base=EXPERIMENTS / "base.yaml"))
    return folder, data


# ----------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ["e01-approach1-vs-approach2", "e02-reference-policy", "e03-loss", "e04-data-size"])
def test_committed_experiments_load_and_state_their_command(name):
    folder = EXPERIMENTS / name
    first = (folder / "config.yaml").read_text().splitlines()[0]
    assert first.startswith(f"# mst-single ablate experiments/{name}")
    exp = ablate.load_experiment(folder)
    assert exp["command"] == first[2:] and exp["question"] and len(exp["variants"]) >= 2
    for budget in ("smoke", "full"):
        for v in exp["variants"]:
            cfg = ablate.variant_config(exp, v, budget, "data/demo")
            assert cfg["model"]["approach"] in ("approach1", "approach2")
            assert cfg["data"]["root"] == "data/demo" and cfg["trainer"]["max_steps"] > 0
    assert (folder / "README.md").exists()


def test_variant_overrides_go_deep_and_win_over_the_budget():
    exp = ablate.load_experiment(EXPERIMENTS / "e03-loss")
    l1 = ablate.variant_config(exp, "l1-only", "smoke", "d")
    assert l1["model"]["loss"]["w_sc"] == 0 and l1["model"]["loss"]["w_log_mag"] == 0
    assert l1["model"]["loss"]["fft_sizes"] == [4096, 2048, 1024, 512]  # the rest of the dict is kept
    assert l1["data"]["sample_rate"] == 16000  # budget override
    e02 = ablate.load_experiment(EXPERIMENTS / "e02-reference-policy")
    policies = {v: ablate.approach_policy(ablate.variant_config(e02, v, "smoke", "d")) for v in e02["variants"]}
    assert policies == {"train-same": ("approach1", "same"), "train-song": ("approach1", "song"),
                        "train-other": ("approach1", "other")}
    assert ablate.eval_policies(e02, "approach1") == ["song", "other"]
    assert ablate.eval_policies(e02, "approach2") == ["-"]


def test_bad_experiment_configs_are_explained(tmp_path):
    with pytest.raises(MstError, match="no config.yaml"):
        ablate.load_experiment(tmp_path)
    (tmp_path / "config.yaml").write_text("variants: {a: {configs: [configs/approach1.yaml]}}\n")
    with pytest.raises(MstError, match="first line must be the command"):
        ablate.load_experiment(tmp_path)
    (tmp_path / "config.yaml").write_text(f"# mst-single ablate {tmp_path}\nbase: {EXPERIMENTS / 'base.yaml'}\n"
                                          "variants: {a: {configs: [x.yaml], lr: 3}}\n")
    with pytest.raises(MstError, match="unknown keys: lr"):
        ablate.load_experiment(tmp_path)
    (tmp_path / "config.yaml").write_text(f"# mst-single ablate {tmp_path}\nbase: {EXPERIMENTS / 'base.yaml'}\n"
                                          "variants: {a: {configs: [configs/nope.yaml]}}\n")
    exp = ablate.load_experiment(tmp_path)
    with pytest.raises(MstError, match="training config not found"):
        ablate.variant_config(exp, "a", "smoke", "d")
    with pytest.raises(MstError, match="unknown budget 'huge'"):
        ablate.variant_config(exp, "a", "huge", "d")


def test_export_sweep_is_a_grid_over_variants_and_seeds_running_the_same_cli(tiny):
    folder, _ = tiny
    assert cli([folder, "--budget", "test", "--seeds", "2", "--export-sweep"]) == 0
    text = (folder / "sweep.yaml").read_text()
    sweep = yaml.safe_load(text)
    assert sweep["method"] == "grid" and sweep["name"] == "exp-tiny"
    assert sweep["parameters"] == {"variant": {"values": ["approach1", "approach2"]}, "seed": {"values": [0, 1]}}
    assert sweep["command"] == ["mst-single", "ablate", folder.as_posix(), "--budget", "test", "${args}"]
    # the agent's ${args} become --variant=V --seed=S, which the CLI accepts
    parser = argparse.ArgumentParser()
    ablate.add_arguments(parser)
    args = parser.parse_args([str(folder), "--budget", "test", "--variant=approach2", "--seed=1"])
    assert (args.variant, args.seed) == ("approach2", 1)


# ----------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_ablate_end_to_end_then_rerun_reproduces_results_csv(tiny, capsys):
    folder, data = tiny
    out_a, out_b = folder / "results", folder / "rerun"
    assert cli([folder, "--budget", "test", "--data", data]) == 0
    printed = capsys.readouterr().out
    assert "[1/2] approach1-s0" in printed and "| variant | seeds |" in printed

    rows = list(csv.DictReader(open(out_a / "results.csv")))
    assert tuple(rows[0]) == COLUMNS
    means = {(r["variant"], r["eval_policy"]) for r in rows if r["song"] == "mean"}
    assert means == {("approach1", "song"), ("approach1", "other"), ("approach2", "-"), ("identity", "-"),
                     ("mean-preset", "-"), ("oracle", "-")}
    audio_metrics = set(METRIC_UNITS) - {"param_err"}
    for key in means:
        got = {r["metric"] for r in rows if (r["variant"], r["eval_policy"]) == key and r["song"] == "mean"}
        assert audio_metrics <= got
        assert ("param_err" in got) == (key[0] != "identity")  # truth.json exists; identity has no setting
    songs = {r["song"] for r in rows} - {"mean"}
    assert len(songs) == 1
    a1 = [r for r in rows if r["variant"] == "approach1"]
    assert {r["approach"] for r in a1} == {"approach1"} and {r["policy"] for r in a1} == {"song"}

    md = (out_a / "results.md").read_text()
    assert "| approach1 (eval ref: other) | 1 |" in md and "| oracle | 1 |" in md
    assert {p.name for p in (out_a / "plots").glob("*.png")} >= {"metric_mrstft.png", "metric_si_sdr.png",
                                                                  "training_curves.png"}
    html = (out_a / "report.html").read_text()
    song = songs.pop()
    for name in ("raw", "target", "approach1@song", "approach1@other", "approach2", "identity", "mean-preset", "oracle"):
        assert f"src='audio/{song}/{name}.flac'" in html
        assert (out_a / "audio" / song / f"{name}.flac").stat().st_size > 0
    assert "<h4>Parameters (units)</h4>" in html and "<th>true</th>" in html
    prov = json.loads((out_a / "provenance.json").read_text())
    assert prov["command"].startswith("mst-single ablate") and prov["commit"] and prov["wall_time_s"] > 0
    assert prov["patch_series_sha256"] and prov["packages"]["torch"] and prov["hardware"]["cpu_count"]
    assert {r["run"] for r in prov["runs"]} == {"approach1-s0", "approach2-s0"}
    assert prov["runs"][0]["config"]["model"]["approach"] == "approach1"
    # approach2 trained on half the training songs, through a data subset of symlinks
    sub = json.loads((out_a / "runs" / "approach2-s0" / "unit.json").read_text())["config"]["data"]["root"]
    assert "train-0.5" in sub and len(list((Path(sub) / "raw").iterdir())) < 5

    # unchanged runs are reused; a rerun from scratch into another folder gives the same numbers
    assert cli([folder, "--budget", "test", "--data", data]) == 0
    assert "up to date" in capsys.readouterr().out
    assert cli([folder, "--budget", "test", "--data", data, "--out", out_b]) == 0
    worst, problems = reproduction_diff(rows_from_path(out_a), rows_from_path(out_b))
    assert problems == [] and worst == 0.0
