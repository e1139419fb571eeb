"""`mst-single ablate`: experiment configs, data sets, folds, run ids, baselines, logs, end-to-end on
tiny data (folds, W&B offline runs, reuse, --check), sweep export."""
import argparse
import csv
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mst_single import ablate
from mst_single.errors import MstError
from mst_single.experiments import config as C
from mst_single.experiments import folds as F
from mst_single.experiments import records as R
from mst_single.experiments import runner
from mst_single.metrics import METRIC_UNITS
from mst_single.provenance import REPO_ROOT

EXPERIMENTS = REPO_ROOT / "experiments"
TINY = """# mst-single ablate {folder} --budget test
base: {base}
question: Does the pipeline run end to end?
data: {data}
variants:
  approach1:
    configs: [configs/approach1.yaml]
    overrides: {{model.param_loss_weight: 1.0}}
    refine: {{steps: 2, crops: 1}}
  approach2:
    configs: [configs/approach2.yaml]
    overrides: {{model.take_descriptors: true, model.descriptor_lr: 0.02}}
    train_fraction: 0.5
budgets:
  test:
    seeds: 1
    folds: 2
    overrides:
      data.sample_rate: 16000
      data.segment_seconds: 1.0
      data.batch_size: 2
      data.train_segments_per_epoch: 4
      data.val_fraction: 0.2
      trainer.max_epochs: 100
      trainer.max_steps: 4
      trainer.check_val_every_n_epoch: 2
      trainer.limit_val_batches: 1
      trainer.num_sanity_val_steps: 0
      trainer.log_every_n_steps: 1
      model.log_audio_every_n_epochs: 0
      model.encoder: {{n_mels: 32, channels: [8, 16], embed_dim: 32}}
      model.hidden: 32
      model.loss: {{fft_sizes: [1024, 256], hop_sizes: [256, 64], win_lengths: [1024, 256]}}
    baselines:
      mean_preset: {{max_steps: 6, patience: 2, min_delta: 0.01, batch_size: 2, segment_seconds: 1.0, lr: 0.1}}
      oracle: {{max_steps: 6, patience: 2, min_delta: 0.01, batch_size: 2, segment_seconds: 1.0, lr: 0.1, restarts: 2}}
eval:
  report_songs: 1
  report_seconds: 1
"""
# trainer.enable_progress_bar is left at its default (true): not on a terminal, fit must log lines


def parse(argv):
    parser = argparse.ArgumentParser()
    ablate.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def cli(argv):
    return ablate.run(parse(argv))


def write_experiment(folder: Path, data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(TINY.format(folder=folder, base=EXPERIMENTS / "base.yaml", data=data))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mst_single.demo import make_demo_data

    root = tmp_path_factory.mktemp("ablate")
    data = make_demo_data(root / "demo", songs=6, seconds=3, seed=0, sample_rate=16000)
    return write_experiment(root / "exp-tiny", data), data


# ----------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", sorted(p.name for p in EXPERIMENTS.glob("e[0-9]*") if p.is_dir()))
def test_committed_experiments_load_and_state_their_command(name):
    assert len(list(EXPERIMENTS.glob("e[0-9]*"))) >= 10
    folder = EXPERIMENTS / name
    first = (folder / "config.yaml").read_text().splitlines()[0]
    assert first.startswith(f"# mst-single ablate experiments/{name}")
    exp = C.load_experiment(folder)
    # one variant is enough for a recipe's own table (e16-e17): it is measured against the baselines
    assert exp["command"] == first[2:] and exp["question"] and len(exp["variants"]) >= 1
    for budget in ("smoke", "cpu", "full"):
        for v in exp["variants"]:
            cfg = C.variant_config(exp, v, budget, "data/demo")
            assert cfg["model"]["approach"] in ("approach1", "approach2")
            assert cfg["data"]["root"] == "data/demo" and cfg["trainer"]["max_steps"] > 0
    assert (folder / "README.md").exists()


def test_committed_readmes_link_images_that_exist():
    import re

    readmes = sorted(EXPERIMENTS.glob("*/README.md")) + [EXPERIMENTS / "README.md", REPO_ROOT / "README.md"]
    links = [(r, m) for r in readmes for m in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", r.read_text())]
    assert len(links) >= 8  # e01-e05 show their plots
    missing = [f"{r.relative_to(REPO_ROOT)}: {m}" for r, m in links if not (r.parent / m).is_file()]
    assert not missing, missing


def test_budgets_cpu_is_44k_with_folds_and_budgets_reach_model_keys():
    exp = C.load_experiment(EXPERIMENTS / "e01-approach1-vs-approach2")
    cpu = C.variant_config(exp, "approach2", "cpu", "d")
    assert cpu["data"]["sample_rate"] == 44100 and cpu["data"]["segment_seconds"] == 1.5
    assert cpu["data"]["batch_size"] == 8 and cpu["trainer"]["max_steps"] == 200 and cpu["model"]["lr"] == 0.003
    assert C.folds_of(exp, "cpu") == 2 and C.seeds_of(exp, "cpu") == [0, 1, 2]
    assert C.folds_of(exp, "smoke") == 0 and C.seeds_of(exp, "smoke") == [0, 1, 2]
    assert C.folds_of(exp, "cpu", 5) == 5 and C.seeds_of(exp, "cpu", 2) == [0, 1]
    exp["budgets"]["cpu"]["overrides"]["model.encoder.embed_dim"] = 7
    assert C.variant_config(exp, "approach2", "cpu", "d")["model"]["encoder"]["embed_dim"] == 7
    with pytest.raises(MstError, match="--folds 1"):
        C.folds_of(exp, "cpu", 1)
    oracle = C.baseline_settings(exp, "cpu")["oracle"]
    assert oracle["restarts"] >= 2 and oracle["patience"] > 0 and oracle["max_steps"] > oracle["patience"]


def test_unmatched_files_hint_the_budget_override_that_skips_them(tmp_path):
    import soundfile as sf
    from conftest import make_vocal_data, synth_vocal

    data = make_vocal_data(tmp_path / "data", songs=4, seconds=2)
    sf.write(data / "raw" / "lonely.wav", synth_vocal(2.0, 16000), 16000)
    folder = write_experiment(tmp_path / "exp", data)
    with pytest.raises(MstError) as e:
        runner.make_plan(parse([folder, "--budget", "test", "--data", f"x={data}"]))
    msg = str(e.value)
    assert "raw/lonely.wav" in msg and "--allow-unmatched" not in msg  # ablate has no such flag
    hint = f"add `budgets: {{test: {{overrides: {{data.allow_unmatched: true}}}}}}` to {folder / 'config.yaml'}"
    assert hint in msg
    # what the hint says works: every unit skips the unmatched name
    text = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(text.replace("      data.sample_rate: 16000\n",
                                                     "      data.sample_rate: 16000\n      data.allow_unmatched: true\n"))
    with pytest.warns(UserWarning, match="lonely"):
        plan = runner.make_plan(parse([folder, "--budget", "test", "--data", f"x={data}"]))
    assert plan.units and all(u.config["data"]["allow_unmatched"] is True for u in plan.units)
    assert not any("lonely" in n for f in plan.splits["x"].values() for part in f.values() for n in part)


def test_variant_overrides_go_deep_and_win_over_the_budget():
    exp = C.load_experiment(EXPERIMENTS / "e03-loss")
    l1 = C.variant_config(exp, "l1-only", "smoke", "d")
    assert l1["model"]["loss"]["w_sc"] == 0 and l1["model"]["loss"]["w_log_mag"] == 0
    assert l1["model"]["loss"]["fft_sizes"] == [4096, 2048, 1024, 512]  # the rest of the dict is kept
    assert l1["data"]["sample_rate"] == 16000  # budget override
    e02 = C.load_experiment(EXPERIMENTS / "e02-reference-policy")
    policies = {v: C.approach_policy(C.variant_config(e02, v, "smoke", "d")) for v in e02["variants"]}
    assert policies == {"train-same": ("approach1", "same"), "train-song": ("approach1", "song"),
                        "train-other": ("approach1", "other")}
    assert C.eval_policies(e02, "approach1") == ["other", "song", "shuffled"]
    assert C.eval_policies(e02, "approach2") == ["-"]


def test_data_settings_have_one_definition_with_the_data_modules_defaults():
    import inspect

    from mst_single.data import VocalDataModule

    defaults = inspect.signature(VocalDataModule.__init__).parameters
    s = C.data_settings({"root": "x", "sample_rate": 16000, "batch_size": 3})
    assert set(s) == set(C.DATA_KEYS) and "batch_size" not in s
    assert s["sample_rate"] == 16000 and s["silence_threshold_db"] == defaults["silence_threshold_db"].default
    assert C.split_kwargs(s) == dict(seed=0, val_fraction=0.1, test_fraction=0.1, split_file=None)
    assert set(C.index_kwargs(s)) == {"sample_rate", "max_lag_seconds", "allow_unmatched", "cache_dir"}


def test_bad_experiment_configs_are_explained(tmp_path):
    with pytest.raises(MstError, match="no config.yaml"):
        C.load_experiment(tmp_path)
    (tmp_path / "config.yaml").write_text("variants: {a: {configs: [configs/approach1.yaml]}}\n")
    with pytest.raises(MstError, match="first line must be the command"):
        C.load_experiment(tmp_path)
    head = f"# mst-single ablate {tmp_path}\nbase: {EXPERIMENTS / 'base.yaml'}\n"
    (tmp_path / "config.yaml").write_text(head + "variants: {a: {configs: [x.yaml], lr: 3}}\n")
    with pytest.raises(MstError, match="unknown keys: lr"):
        C.load_experiment(tmp_path)
    (tmp_path / "config.yaml").write_text(head + "variants: {oracle: {configs: [x.yaml]}}\n")
    with pytest.raises(MstError, match="reserved"):
        C.load_experiment(tmp_path)
    (tmp_path / "config.yaml").write_text(head + "baselines: [identity, magic]\nvariants: {a: {configs: [x.yaml]}}\n")
    with pytest.raises(MstError, match="unknown baselines: magic"):
        C.load_experiment(tmp_path)
    (tmp_path / "config.yaml").write_text(head + "variants: {a: {configs: [configs/nope.yaml]}}\n")
    exp = C.load_experiment(tmp_path)
    with pytest.raises(MstError, match="training config not found"):
        C.variant_config(exp, "a", "smoke", "d")
    with pytest.raises(MstError, match="unknown budget 'huge'"):
        C.variant_config(exp, "a", "huge", "d")
    for bad, needle in [("{steps: 0}", "steps >= 1"), ("{lr: 0.1}", "with `steps`"), ("{steps: 3, tries: 2}", "with `steps`"),
                        ("{steps: many}", "must be numbers"), ("30", "must be a mapping"),
                        ("{steps: 3, match_level: 'no'}", "match_level: true/false"),
                        ("{steps: 3, start: sideways}", "start:` must be one of network, ridge")]:
        (tmp_path / "config.yaml").write_text(head + f"variants: {{a: {{configs: [x.yaml], refine: {bad}}}}}\n")
        with pytest.raises(MstError, match=needle):
            C.load_experiment(tmp_path)
    (tmp_path / "config.yaml").write_text(head + "variants: {a: {configs: [x.yaml], refine: {steps: '4', lr: 0.1}}}\n")
    assert C.load_experiment(tmp_path)["variants"]["a"]["refine"] == {"steps": 4, "lr": 0.1}
    exp["eval"] = {"reference_policies": ["other", "mine"]}
    with pytest.raises(MstError, match="unknown evaluation reference policies: mine"):
        C.eval_policies(exp, "approach1")


def test_data_sets_from_a_folder_a_list_a_mapping_or_the_command_line(tmp_path):
    exp = {"folder": str(tmp_path), "variants": {"a": {"configs": ["c"], "data": ["adaptive"]}}}
    exp["data"] = {"adaptive": "d/demo-adaptive", "per-song": {"folder": "d/ps", "build": "make ps"}}
    sets = C.data_sets(exp)
    assert list(sets) == ["adaptive", "per-song"] and sets["per-song"]["folder"] == Path("d/ps")
    assert sets["per-song"]["build"] == "make ps" and "mst-single demo-data d/demo-adaptive" == sets["adaptive"]["build"]
    assert C.variant_data(exp, "a", list(sets)) == ["adaptive"]
    assert list(C.data_sets({"folder": ".", "data": ["x/one", "y/two"]})) == ["one", "two"]
    assert list(C.data_sets({"folder": ".", "data": "x/demo"})) == ["demo"]
    assert {k: v["folder"] for k, v in C.data_sets(exp, ["adaptive=/a", "/b/per-song"]).items()} == {
        "adaptive": Path("/a"), "per-song": Path("/b/per-song")}
    exp["variants"]["a"]["data"] = ["nope"]
    with pytest.raises(MstError, match="does not have: nope"):
        C.data_sets(exp)


def test_a_missing_data_folder_names_the_folder_and_the_command_that_builds_it(tmp_path):
    folder = write_experiment(tmp_path / "exp", "")
    text = (folder / "config.yaml").read_text().replace("data: \n", "data:\n  demo-adaptive: {folder: "
                                                        f"{tmp_path}/nowhere, build: mst-single demo-data X --style adaptive}}\n")
    (folder / "config.yaml").write_text(text)
    with pytest.raises(MstError) as e:
        runner.make_plan(parse([folder, "--budget", "test"]))
    assert "demo-adaptive" in str(e.value) and "nowhere" in str(e.value)
    assert "mst-single demo-data X --style adaptive" in str(e.value)


# ----------------------------------------------------------------------------------------------- folds
NAMES = [f"take{i:03d}" for i in range(60)]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_test_every_song_once_and_never_train_on_a_test_song(k):
    settings = C.data_settings({"root": "x", "val_fraction": 0.1})
    splits = F.splits(NAMES, settings, k)
    assert len(splits) == k  # 60 songs: no fold is empty
    tested = [n for s in splits.values() for n in s["test"]]
    assert sorted(tested) == sorted(NAMES)  # every song a test song exactly once
    for f, s in splits.items():
        train, val, test = set(s["train"]), set(s["val"]), set(s["test"])
        assert not (train & test) and not (val & test) and not (train & val)
        assert train | val | test == set(NAMES) and val and train
        assert all(F.fold_of(n, k) == f for n in test)
    # hash-assigned: adding songs moves no one
    more = F.splits(NAMES + [f"new{i}" for i in range(20)], settings, k)
    assert all(set(splits[f]["test"]) <= set(more[f]["test"]) for f in splits)
    assert F.splits(NAMES, dict(settings, split_seed=1), k)[0]["test"] != splits[0]["test"]


def test_without_folds_the_hash_split_is_fold_0_and_folds_refuse_a_split_file():
    from types import SimpleNamespace

    from mst_single.data import split_songs

    settings = C.data_settings({"root": "x"})
    (only,) = F.splits(NAMES, settings, 0).items()
    expected = split_songs([SimpleNamespace(name=n) for n in NAMES], 0, 0.1, 0.1)
    assert only[0] == 0 and only[1] == {k: [p.name for p in v] for k, v in expected.items()}
    with pytest.raises(MstError, match="folds and data.split_file"):
        F.splits(NAMES, dict(settings, split_file="s.json"), 3)


def test_a_training_subset_keeps_val_and_test_and_nests(make_data, tmp_path):
    root = make_data(songs=8, seconds=1.5)
    split = F.fold_split(F.song_names(root), 0, 2, 0, 0.2)
    small, sub_small = F.train_subset(root, split, 0.25, tmp_path / "s")
    big, sub_big = F.train_subset(root, split, 0.75, tmp_path / "b")
    assert sub_small["test"] == split["test"] and sub_small["val"] == split["val"]
    assert set(sub_small["train"]) < set(sub_big["train"]) <= set(split["train"])
    assert sorted(p.stem for p in (small / "raw").iterdir()) == sorted(sum(sub_small.values(), []))


# ----------------------------------------------------------------------------------------------- run ids
def test_run_ids_are_deterministic_and_differ_per_unit():
    key = ("e01", "cpu", "demo-adaptive", "approach1", 2, 0)
    rid = R.run_id(*key)
    assert rid == R.run_id(*key) and len(rid) == 16 and rid.isalnum()
    others = {R.run_id(*key[:i], v, *key[i + 1:]) for i, v in enumerate(("e02", "smoke", "demo", "approach2", 1, 1))}
    assert len(others | {rid}) == 7


def test_the_plan_gives_each_unit_its_split_file_run_id_and_wandb_keys(tiny, tmp_path):
    folder, data = tiny
    other = tmp_path / "second"
    import shutil

    shutil.copytree(data, other)
    exp_dir = write_experiment(tmp_path / "exp-two", "")
    text = (exp_dir / "config.yaml").read_text().replace("data: \n", f"data: {{first: {data}, second: {other}}}\n")
    text = text.replace("    train_fraction: 0.5\n", "    train_fraction: 0.5\n    data: [second]\n")
    (exp_dir / "config.yaml").write_text(text)
    plan = runner.make_plan(parse([exp_dir, "--budget", "test", "--seeds", "2"]))
    keys = [(u.variant, u.data, u.fold, u.seed) for u in plan.units]
    assert keys == [("approach1", d, f, s) for d in ("first", "second") for f in (0, 1) for s in (0, 1)] + [
        ("approach2", "second", f, s) for f in (0, 1) for s in (0, 1)]
    assert plan.out == exp_dir / "results" / "test" and plan.group == "exp-two/test"
    u = plan.units[-1]
    assert u.run_id == R.run_id("exp-two", "test", "second", "approach2", 1, 1)
    assert u.run_dir == plan.out / "runs" / "approach2-second-f1-s1"
    assert u.config["seed_everything"] == 1 and u.config["wandb_group"] == "exp-two/test"
    assert {"budget-test", "data-second", "variant-approach2", "fold-1", "seed-1"} <= set(u.config["tags"])
    runner.prepare_data(plan)
    assert json.loads(Path(u.eval_data["split_file"]).read_text()) == plan.splits["second"][1]
    sub = json.loads(Path(u.config["data"]["split_file"]).read_text())  # the training subset's own split
    assert sub["test"] == plan.splits["second"][1]["test"] and set(sub["train"]) <= set(plan.splits["second"][1]["train"])
    assert Path(u.config["data"]["root"]).parent.name == "second"  # runs/_data/second/fold1-train-0.5
    # a unit's spec hash does not depend on when it was planned; a changed setting changes it
    again = runner.make_plan(parse([exp_dir, "--budget", "test", "--seeds", "2"]))
    assert [x.spec["hash"] for x in again.units] == [x.spec["hash"] for x in plan.units]
    assert runner.make_plan(parse([exp_dir, "--budget", "test", "--folds", "3"])).units[0].spec["hash"] != \
        plan.units[0].spec["hash"]


def test_each_training_fraction_has_its_own_split_file(tiny, tmp_path):
    folder, data = tiny
    exp_dir = write_experiment(tmp_path / "exp-frac", data)
    text = (exp_dir / "config.yaml").read_text().replace(
        "    train_fraction: 0.5\n", "    train_fraction: 0.5\n  approach2-quarter:\n"
        "    configs: [configs/approach2.yaml]\n    train_fraction: 0.25\n")
    (exp_dir / "config.yaml").write_text(text)
    plan = runner.make_plan(parse([exp_dir, "--budget", "test", "--folds", "0"]))
    runner.prepare_data(plan)
    half, quarter = (next(u for u in plan.units if u.variant == v) for v in ("approach2", "approach2-quarter"))
    assert half.config["data"]["split_file"] != quarter.config["data"]["split_file"]
    for u in (half, quarter):  # the split file lists exactly the songs of the subset's folder
        split = json.loads(Path(u.config["data"]["split_file"]).read_text())
        on_disk = sorted(F.song_names(Path(u.config["data"]["root"])))
        assert sorted(split["train"] + split["val"] + split["test"]) == on_disk
        assert split["test"] == u.split["test"] and set(split["train"]) <= set(u.split["train"])
    assert len(json.loads(Path(quarter.config["data"]["split_file"]).read_text())["train"]) < \
        len(json.loads(Path(half.config["data"]["split_file"]).read_text())["train"])


def test_refine_is_refused_for_approach2_before_anything_runs(tiny, tmp_path):
    folder, data = tiny
    exp_dir = write_experiment(tmp_path / "exp-refine2", data)
    text = (exp_dir / "config.yaml").read_text().replace("    train_fraction: 0.5\n",
                                                        "    train_fraction: 0.5\n    refine: {steps: 3}\n")
    (exp_dir / "config.yaml").write_text(text)
    with pytest.raises(MstError, match="variant 'approach2': `refine:` needs a reference"):
        runner.make_plan(parse([exp_dir, "--budget", "test"]))
    assert not (exp_dir / "results").exists()
    # a ridge start needs runs that fit the style ridge (model.style_ridge)
    text = (exp_dir / "config.yaml").read_text().replace("    refine: {steps: 3}\n", "").replace(
        "refine: {steps: 2, crops: 1}", "refine: {steps: 2, crops: 1, start: ridge}")
    (exp_dir / "config.yaml").write_text(text)
    with pytest.raises(MstError, match="variant 'approach1': `refine: {start: ridge}` starts from the model's style"):
        runner.make_plan(parse([exp_dir, "--budget", "test"]))
    (exp_dir / "config.yaml").write_text(text.replace("overrides: {model.param_loss_weight: 1.0}",
                                                      "overrides: {model.param_loss_weight: 1.0, model.style_ridge: true}"))
    unit = next(u for u in runner.make_plan(parse([exp_dir, "--budget", "test"])).units if u.variant == "approach1")
    assert unit.spec["refine"]["start"] == "ridge" and unit.config["model"]["style_ridge"] is True
    assert not (exp_dir / "results").exists()
    # the house preset for another vocal's mix needs runs that fit it (model.house_preset), and a known choice
    text = (exp_dir / "config.yaml").read_text()
    for refine, needle in (("other_vocal: house", "`refine: {other_vocal: house}` mixes with the model's house preset"),
                           ("other_vocal: copy", "`refine: other_vocal:` must be one of house, refine")):
        (exp_dir / "config.yaml").write_text(text.replace("start: ridge}", f"start: ridge, {refine}}}"))
        with pytest.raises(MstError, match=re.escape(needle)):
            runner.make_plan(parse([exp_dir, "--budget", "test"]))
    (exp_dir / "config.yaml").write_text(text.replace("start: ridge}", "start: ridge, other_vocal: house}").replace(
        "model.style_ridge: true}", "model.style_ridge: true, model.house_preset: true}"))
    unit = next(u for u in runner.make_plan(parse([exp_dir, "--budget", "test"])).units if u.variant == "approach1")
    assert unit.spec["refine"]["other_vocal"] == "house" and unit.config["model"]["house_preset"] is True
    assert not (exp_dir / "results").exists()


def test_truth_targets_are_the_true_settings_of_train_and_val_songs_only(tiny, tmp_path):
    from mst_single.console import VocalConsole
    from mst_single.data import read_param_targets

    folder, data = tiny
    exp_dir = write_experiment(tmp_path / "exp-truth", data)
    text = (exp_dir / "config.yaml").read_text().replace(
        "    overrides: {model.param_loss_weight: 1.0}\n", "    overrides: {model.param_loss_weight: 1.0}\n"
        "    param_targets: truth\n")
    (exp_dir / "config.yaml").write_text(text)
    plan = runner.make_plan(parse([exp_dir, "--budget", "test"]))
    a1 = [u for u in plan.units if u.variant == "approach1"]
    assert {u.targets for u in a1} == {"truth"} and {u.targets for u in plan.units if u.variant == "approach2"} == {None}
    assert all(u.config["data"]["param_targets"].endswith(f"param-targets-truth-fold{u.fold}.json") for u in a1)
    runner.prepare_data(plan)
    runner.prepare_targets(plan)
    truth = json.loads((data / "truth.json").read_text())["songs"]
    console = VocalConsole(16000)
    for u in a1:
        names, params = read_param_targets(u.config["data"]["param_targets"])
        assert names == console.param_names
        assert set(params) == set(u.split["train"]) | set(u.split["val"]) and not set(params) & set(u.split["test"])
        song = sorted(params)[0]
        units = console.denormalize(torch.from_numpy(params[song])[None])
        given = truth[song]["params"]
        assert {"eq_band1_gain_db", "comp_threshold_db"} <= set(given)
        default = console.denormalize(console.default_params(1))
        for name in console.param_names:  # the true value, clamped to the console's range; unused stages neutral
            spec = next(x for x in console.specs if x.name == name)
            want = min(max(given[name], spec.low), spec.high) if name in given else float(default[name])
            assert float(units[name]) == pytest.approx(want, rel=1e-3, abs=1e-2), name
    # a variant's unknown source and a data folder without truth.json are explained
    (exp_dir / "config.yaml").write_text(text.replace("param_targets: truth", "param_targets: best"))
    with pytest.raises(MstError, match="param_targets 'best' is not one of oracle, oracle-prior, truth"):
        runner.make_plan(parse([exp_dir, "--budget", "test"]))
    with pytest.raises(MstError, match="truth needs the data's true settings") as e:
        runner.truth_targets(tmp_path, {}, [])
    assert "truth.json" in str(e.value)


def test_oracle_prior_targets_are_refitted_toward_the_median_fit_and_cached(tiny, tmp_path, monkeypatch):
    from mst_single.data import read_param_targets
    from mst_single.experiments import baselines as B

    folder, data = tiny
    exp_dir = write_experiment(tmp_path / "exp-prior", data)
    text = (exp_dir / "config.yaml").read_text().replace(
        "    overrides: {model.param_loss_weight: 1.0}\n", "    overrides: {model.param_loss_weight: 1.0}\n"
        "    param_targets: oracle-prior\n")
    (exp_dir / "config.yaml").write_text(text + "param_target_prior_weight: 0.5\n")
    monkeypatch.setenv("MST_ORACLE_CACHE", str(tmp_path / "cache"))
    plan = runner.make_plan(parse([exp_dir, "--budget", "test"]))
    a1 = [u for u in plan.units if u.variant == "approach1"]
    assert {u.targets for u in a1} == {"oracle-prior"}
    assert all(u.config["data"]["param_targets"].endswith(f"param-targets-oracle-prior-fold{u.fold}.json") for u in a1)
    assert all(u.spec["param_targets"]["prior_weight"] == 0.5 for u in a1)  # in the run's hash: a new weight retrains
    calls = []
    fit_songs = B.fit_songs
    monkeypatch.setattr(B, "fit_songs", lambda *a, **k: calls.append(k) or fit_songs(*a, **k))
    runner.prepare_data(plan)
    runner.prepare_targets(plan)
    anchored = [k for k in calls if k.get("prior") is not None]
    assert anchored and all(k["prior_weight"] == 0.5 for k in anchored)
    u = a1[0]
    names, params = read_param_targets(u.config["data"]["param_targets"])
    assert set(params) == set(u.split["train"]) | set(u.split["val"]) and not set(params) & set(u.split["test"])
    assert not runner.targets_file(plan.runs_dir, u.data, u.fold, "oracle").exists()  # only the source used

    def no_fit(*a, **k):
        raise AssertionError("refitted a cached song")

    # the prior fits are cached beside the plain fits: a second run refits nothing
    monkeypatch.setattr(B, "fit_setting", no_fit)
    runner.prepare_targets(plan)
    again = read_param_targets(u.config["data"]["param_targets"])[1]
    assert all(np.array_equal(again[n], params[n]) for n in params)
    (exp_dir / "config.yaml").write_text(text + "param_target_prior_weight: -1\n")
    with pytest.raises(MstError, match="param_target_prior_weight -1 is not a positive number"):
        runner.make_plan(parse([exp_dir, "--budget", "test"]))


def test_a_prior_holds_a_fit_near_it_and_the_median_setting_is_per_parameter():
    from mst_single.experiments.baselines import fit_setting, median_setting
    from mst_single.losses import MRSTFTL1Loss

    console, raw, target = _toy_problem()  # the target needs the input gain at 0.8 (neutral 0.5)
    loss = MRSTFTL1Loss(**SMALL_LOSS)
    prior = console.default_params(1)
    kw = dict(max_steps=60, lr=0.1, patience=100, min_delta=1e-3, loss_fn=loss, progress=False)
    free, _ = fit_setting(console, lambda step: (raw, target), **kw)
    held, _ = fit_setting(console, lambda step: (raw, target), prior=prior, prior_weight=1000.0, **kw)
    same, _ = fit_setting(console, lambda step: (raw, target), prior=prior, prior_weight=0.0, **kw)
    assert float(free[0, 0]) - float(prior[0, 0]) > 0.1  # on its way to the gain of 0.8
    assert abs(float(held[0, 0]) - float(prior[0, 0])) < 0.02  # a strong prior wins over the audio
    assert (held - prior).abs().max() < 0.2 * (free - prior).abs().max()
    assert torch.equal(same, free)  # weight 0: no prior at all
    a, b, c = torch.tensor([[0.1, 0.5, 0.9]]), torch.tensor([[0.2, 0.5, 0.98]]), torch.tensor([[0.9, 0.5, 0.7]])
    med = median_setting([a, b, c])
    assert med.shape == (1, 3) and torch.allclose(med, torch.tensor([[0.2, 0.5, 0.9]]), atol=1e-5)


def test_true_setting_baseline_scores_each_songs_true_setting_and_needs_truth(tiny, tmp_path):
    import shutil

    from mst_single.console import VocalConsole
    from mst_single.experiments import evaluate as E

    folder, data = tiny
    exp_dir = write_experiment(tmp_path / "exp-true", data)
    text = (exp_dir / "config.yaml").read_text() + "baselines: [true-setting]\n"
    (exp_dir / "config.yaml").write_text(text)
    plan = runner.make_plan(parse([exp_dir, "--budget", "test"]))
    runner.prepare_data(plan)
    out = runner.run_baselines(plan, "demo", 0)
    mrstft = {r["song"]: r["value"] for r in out["rows"] if r["variant"] == "true-setting" and r["metric"] == "mrstft"}
    u = plan.units[0]
    testset = E.TestSet(**u.eval_data)
    assert set(mrstft) == set(testset.names) | {"mean"} and len(testset.names) >= 1
    # each song is scored with its own truth.json setting: the same number as evaluating that setting directly
    truth = json.loads((data / "truth.json").read_text())["songs"]
    console = VocalConsole(testset.sample_rate)
    song = testset.names[0]
    p = console.normalize({k: v for k, v in truth[song]["params"].items() if k in console.param_names})
    direct = E.evaluate_setting(console, -23.0, testset, p, keep_audio=False, progress=False)[0]  # names[0] first
    assert mrstft[song] == pytest.approx(direct.metrics["mrstft"], rel=1e-6)
    # and a worse setting scores worse: the baseline is not a constant
    other = E.evaluate_setting(console, -23.0, testset, console.default_params(1), keep_audio=False, progress=False)[0]
    assert other.metrics["mrstft"] > direct.metrics["mrstft"]
    # data without truth.json: an error that names the file and the fix
    bare = tmp_path / "bare"
    shutil.copytree(data, bare)
    (bare / "truth.json").unlink()
    with pytest.raises(MstError, match="true-setting baseline needs every test song's true setting") as e:
        runner.true_settings(E.TestSet(**dict(u.eval_data, root=str(bare))), console)
    assert "truth.json" in str(e.value) and "demo-data" in str(e.value)


def test_descriptor_ridge_baseline_is_the_ridge_of_the_prior_targets_on_the_training_songs(tmp_path, monkeypatch):
    from mst_single.audio import house_loudness, song_descriptors
    from mst_single.demo import make_demo_data
    from mst_single.descriptors import descriptor_stats, ridge_logits, standardise
    from mst_single.experiments import baselines as B
    from mst_single.experiments import evaluate as E
    from mst_single.experiments import stats as S

    data = make_demo_data(tmp_path / "demo", songs=10, seconds=3, seed=1, sample_rate=16000, style="adaptive")
    exp_dir = write_experiment(tmp_path / "exp-ridge", data)
    text = (exp_dir / "config.yaml").read_text() + "baselines: [mean-preset, descriptor-ridge]\n"
    (exp_dir / "config.yaml").write_text(text)
    monkeypatch.setenv("MST_ORACLE_CACHE", str(tmp_path / "cache"))
    plan = runner.make_plan(parse([exp_dir, "--budget", "test"]))
    runner.prepare_data(plan)
    out = runner.run_baselines(plan, "demo", 0)
    testset = E.TestSet(**plan.units[0].eval_data)
    train, val = list(testset.splits["train"]), list(testset.splits["val"])
    assert len(train) >= 3 and testset.names
    mrstft = {r["song"] for r in out["rows"] if r["variant"] == "descriptor-ridge" and r["metric"] == "mrstft"}
    assert mrstft == set(testset.names) | {"mean"}

    # the same numbers from the pieces: prior targets of train+val (cached: no refit), the ridge on train only
    fits, console = runner.fit_oracle(plan, "demo", plan.units[0].config["model"], train + val)
    monkeypatch.setattr(B, "fit_setting", lambda *a, **k: pytest.fail("refitted a cached prior fit"))
    prior = runner.fit_prior(plan, plan.units[0].config["model"], train + val, console, fits)
    D = np.stack([song_descriptors(s) for s in train])
    mean, std = descriptor_stats(D)
    W, b, lam = ridge_logits(standardise(D, mean, std), np.stack([prior[s.name][0].reshape(-1).numpy() for s in train]))
    got = {(r["song"], r["param"]): float(r["value"]) for r in out["predictions"] if r["variant"] == "descriptor-ridge"}
    index = {n: i for i, n in enumerate(console.param_names)}
    assert {s for s, _ in got} == set(testset.names)
    for song in testset.songs:
        want = 1 / (1 + np.exp(-(b + standardise(song_descriptors(song), mean, std) @ W)))
        # all but the output gain, which moves each song to the house loudness (as model.match_loudness does)
        bad = [(p, v, want[index[p]]) for (s, p), v in got.items()
               if s == song.name and p != "output_gain_db" and abs(v - want[index[p]]) > 1e-6]
        assert not bad
    info = out["fits"]["descriptor-ridge"]
    assert info["strength"] == lam and info["train_songs"] == len(train)
    assert info["house_lufs"] == pytest.approx(house_loudness(train))
    # another prior weight is another baseline: not reused from the cache
    assert runner.run_baselines(plan, "demo", 0).get("reused")
    (exp_dir / "config.yaml").write_text(text + "param_target_prior_weight: 0.5\n")
    monkeypatch.undo()
    monkeypatch.setenv("MST_ORACLE_CACHE", str(tmp_path / "cache"))
    plan = runner.make_plan(parse([exp_dir, "--budget", "test"]))
    assert not runner.run_baselines(plan, "demo", 0).get("reused")
    # the tables compare it with the mean preset and each trained variant with it
    pairs = S.default_pairs([("approach2", "-"), ("mean-preset", "-"), ("descriptor-ridge", "-")])
    assert (("descriptor-ridge", "-"), ("mean-preset", "-")) in pairs
    assert (("approach2", "-"), ("descriptor-ridge", "-")) in pairs


# ----------------------------------------------------------------------------------------------- evaluation
def test_derangement_has_no_fixed_point_and_is_seeded():
    from mst_single.experiments.evaluate import derangement

    for n in (2, 3, 7, 20):
        perm = derangement(n, 0)
        assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))
    assert derangement(9, 0) == derangement(9, 0) and derangement(9, 0) != derangement(9, 1)


def test_shuffled_and_song_alt_references(make_data):
    from mst_single.experiments.evaluate import TestSet, derangement

    root = make_data(songs=5, seconds=6.0)
    ts = TestSet(root, sample_rate=16000, segment_seconds=1.0, test_fraction=0.99, val_fraction=0.0)
    assert len(ts.names) >= 4
    song, alt, shuffled = ts.segments("song"), ts.segments("song-alt"), ts.segments("shuffled")
    partner = derangement(len(shuffled.songs), shuffled.seed)
    for k in range(len(song)):
        a, b, c = song[k], alt[k], shuffled[k]
        assert a["song"] == b["song"] == c["song"] and a["start"] == b["start"]
        assert a["reference_song"] == b["reference_song"] == a["song"]  # both the song's own mix
        assert abs(b["reference_start"] - a["reference_start"]) >= song.segment  # a different section
        assert abs(b["reference_start"] - b["start"]) >= song.segment
        i = [s.name for s in shuffled.songs].index(c["song"])
        assert c["reference_song"] == shuffled.songs[partner[i]].name != c["song"]  # one fixed other song


def test_identity_has_the_models_input_normalisation_not_the_targets_loudness(make_data):
    from mst_single.experiments.evaluate import TestSet, evaluate_identity
    from mst_single.loudness import integrated_loudness, song_gain_db

    root = make_data(songs=3, seconds=3.0)
    ts = TestSet(root, sample_rate=16000, segment_seconds=1.0, test_fraction=0.99, val_fraction=0.0)
    ident = {r.song: r for r in evaluate_identity(ts, -23.0)}
    matched = {r.song: r for r in evaluate_identity(ts, -23.0, level_matched=True)}
    for name in ts.names:
        raw, target = ts.audio(name)
        gain = 10 ** (song_gain_db(ts.raw_lufs(name), -23.0) / 20)
        np.testing.assert_allclose(ident[name].output, np.repeat(raw, 2, 0) * gain, rtol=1e-6, atol=1e-7)
        # identity pays for the level it has; the level-matched variant is given the target's
        assert abs(integrated_loudness(ident[name].output, 16000) - integrated_loudness(target, 16000)) == \
            pytest.approx(ident[name].metrics["lufs_err"], abs=1e-3)
        assert matched[name].metrics["lufs_err"] < 0.05
        assert not ident[name].setting and not ident[name].params


# ----------------------------------------------------------------------------------------------- baselines
SMALL_LOSS = dict(fft_sizes=[512, 128], hop_sizes=[128, 32], win_lengths=[512, 128])


def _toy_problem(seed=0):
    from conftest import synth_vocal

    from mst_single.console import VocalConsole

    console = VocalConsole(16000, {"reverb": False, "compressor": False})
    raw = torch.from_numpy(synth_vocal(0.5, 16000, seed=seed))[None, None]
    true = console.default_params(1).clone()
    true[0, 0] = 0.8  # the input gain: a clear, learnable offset
    with torch.no_grad():
        target = console(raw, true)
    return console, raw, target


def test_fit_setting_stops_when_converged_and_reports_the_steps():
    from mst_single.experiments.baselines import fit_setting
    from mst_single.losses import MRSTFTL1Loss

    console, raw, target = _toy_problem()
    loss = MRSTFTL1Loss(**SMALL_LOSS)
    p, info = fit_setting(console, lambda step: (raw, target), max_steps=400, lr=0.1, patience=10, min_delta=1e-3,
                          loss_fn=loss, progress=False)
    assert info.stopped_by == "converged" and 10 <= info.steps < 400 and len(info.losses) == info.steps
    assert info.losses[-1] < 0.2 * info.losses[0]
    _, capped = fit_setting(console, lambda step: (raw, target), max_steps=5, lr=0.1, patience=10, min_delta=1e-3,
                            loss_fn=loss, progress=False)
    assert capped.stopped_by == "max_steps" and capped.steps == 5


def test_a_lucky_first_batch_does_not_stop_the_mean_preset_early(monkeypatch):
    from mst_single.experiments import baselines as B

    console, raw, target = _toy_problem()
    # the first batch is the easiest: its loss is a best the later (noisier) ones never beat
    losses = iter([0.1] + [1.0] * 100)

    def lucky(out, _target):
        return {"loss": out.mean() * 0 + next(losses)}

    _, early = B.fit_setting(console, lambda step: (raw, target), max_steps=60, lr=0.1, patience=10, min_delta=1e-3,
                             loss_fn=lucky, progress=False)
    assert early.stopped_by == "converged" and early.steps == 11
    losses = iter([0.1] + [1.0] * 100)
    _, waited = B.fit_setting(console, lambda step: (raw, target), max_steps=60, lr=0.1, patience=10, min_delta=1e-3,
                              loss_fn=lucky, progress=False, min_steps=20)
    assert waited.stopped_by == "converged" and waited.steps == 20
    # the mean preset waits for twice its patience; the oracle's fits (cached per song) are unchanged
    seen = {}
    monkeypatch.setattr(B, "fit_setting", lambda *a, **k: seen.update(k) or (None, None))
    monkeypatch.setattr("mst_single.data.VocalReferenceDataset", lambda **k: None)
    B.fit_mean_preset(console, [], target_lufs=-23.0, budget=dict(max_steps=60, patience=10, min_delta=1e-3, lr=0.1,
                                                                  batch_size=2, segment_seconds=0.5), progress=False)
    assert seen["min_steps"] == 20 and seen["patience"] == 10


def test_the_mean_preset_is_cached_by_its_songs_and_settings(make_data, tmp_path, monkeypatch):
    """`fit_mean_preset(cache_dir=...)`: the same songs and settings read the fit back bit for bit, anything
    that changes the fit (seed, the songs or their order) fits again, and `refit` refits."""
    from mst_single.console import VocalConsole
    from mst_single.data import index_songs
    from mst_single.experiments import baselines as B

    songs = index_songs(make_data(songs=3, seconds=2.0), 16000)
    console = VocalConsole(16000)
    kw = dict(target_lufs=-23.0, budget=dict(max_steps=4, patience=2, min_delta=0.01, lr=0.1, batch_size=2,
                                               segment_seconds=0.5), progress=False, cache_dir=tmp_path)
    p, info = B.fit_mean_preset(console, songs, seed=0, **kw)
    assert len(list(tmp_path.glob("mean-preset-*.json"))) == 1 and 1 <= info.steps <= 4
    fitted = []
    real = B._fit_mean_preset
    monkeypatch.setattr(B, "_fit_mean_preset", lambda *a: fitted.append(a) or real(*a))
    again, info2 = B.fit_mean_preset(console, songs, seed=0, **kw)
    assert not fitted and torch.equal(again, p) and info2.steps == info.steps and info2.losses == info.losses
    for other in (dict(seed=1), dict(songs=songs[::-1]), dict(songs=songs[:2]), dict(refit=True)):
        args = {**kw, "seed": 0, **other}
        B.fit_mean_preset(console, args.pop("songs", songs), **args)
    assert len(fitted) == 4 and len(list(tmp_path.glob("mean-preset-*.json"))) == 4  # refit replaced its own


def test_the_oracle_fits_with_restarts_picks_the_best_on_the_whole_song_and_is_cached(make_data, tmp_path, monkeypatch):
    from mst_single.console import VocalConsole
    from mst_single.data import index_songs
    from mst_single.experiments import baselines as B

    songs = index_songs(make_data(songs=2, seconds=2.0), 16000)
    console = VocalConsole(16000)
    budget = dict(max_steps=4, patience=2, min_delta=0.01, lr=0.1, batch_size=2, segment_seconds=0.5)
    fits = B.fit_songs(console, songs, target_lufs=-23.0, budget=budget, cache_dir=tmp_path, seed=0, restarts=2,
                       progress=False)
    assert set(fits) == {s.name for s in songs}
    for p, info in fits.values():
        assert p.shape == (1, console.num_params) and len(info.restarts) == 2
        assert info.score == min(r["score"] for r in info.restarts) and 1 <= info.steps <= 4
    assert len(list(tmp_path.glob("oracle-*.json"))) == 2

    def no_fit(*a, **k):
        raise AssertionError("refitted a cached song")

    monkeypatch.setattr(B, "fit_setting", no_fit)
    again = B.fit_songs(console, songs, target_lufs=-23.0, budget=budget, cache_dir=tmp_path, seed=0, restarts=2,
                        progress=False)
    for name in fits:
        assert torch.equal(again[name][0], fits[name][0]) and again[name][1].steps == fits[name][1].steps
    with pytest.raises(AssertionError, match="refitted"):  # refit (ablate --force) ignores the cache
        B.fit_songs(console, songs[:1], target_lufs=-23.0, budget=budget, cache_dir=tmp_path, seed=0, restarts=2,
                    progress=False, refit=True)
    with pytest.raises(AssertionError, match="refitted"):  # another budget is another fit
        B.fit_songs(console, songs, target_lufs=-23.0, budget=dict(budget, lr=0.2), cache_dir=tmp_path, seed=0,
                    restarts=2, progress=False)
    # the key is the files' contents: a copy of the data folder elsewhere (new paths, new mtimes)
    # reuses the fits; a changed file is refitted
    import os
    import shutil

    copy = shutil.copytree(Path(songs[0].raw_path).parent.parent, tmp_path / "copied-data")
    for f in copy.rglob("*.wav"):
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))  # as a copy to another disk would (new mtimes)
    moved = index_songs(copy, 16000)
    assert moved[0].raw_path != songs[0].raw_path
    assert Path(moved[0].raw_path).stat().st_mtime_ns != Path(songs[0].raw_path).stat().st_mtime_ns
    reused = B.fit_songs(console, moved, target_lufs=-23.0, budget=budget, cache_dir=tmp_path, seed=0, restarts=2,
                         progress=False)
    assert all(torch.equal(reused[n][0], fits[n][0]) for n in fits)
    import soundfile as sf

    x, sr = sf.read(moved[0].mixed_path, always_2d=True)
    sf.write(moved[0].mixed_path, 0.5 * x, sr)
    with pytest.raises(AssertionError, match="refitted"):
        B.fit_songs(console, index_songs(copy, 16000)[:1], target_lufs=-23.0, budget=budget, cache_dir=tmp_path,
                    seed=0, restarts=2, progress=False)


def test_oracle_fits_in_parallel_processes_equal_the_serial_ones(make_data, tmp_path, capsys):
    """`fit_songs(jobs=2)` (`mst-single targets --jobs`, ablate's parameter targets): the same fits,
    bit for bit, as one after another at one torch thread, plain and pulled toward a prior, cached the same."""
    from mst_single.console import VocalConsole
    from mst_single.data import index_songs
    from mst_single.experiments import baselines as B

    songs = index_songs(make_data(songs=3, seconds=2.0), 16000)
    console = VocalConsole(16000)
    budget = dict(max_steps=4, patience=2, min_delta=0.01, lr=0.1, batch_size=2, segment_seconds=0.5)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = {}
        for jobs in (1, 2):
            kw = dict(target_lufs=-23.0, budget=budget, cache_dir=tmp_path / f"jobs{jobs}", seed=0)
            plain = B.fit_songs(console, songs, restarts=2, jobs=jobs, **kw)
            prior = B.fit_songs(console, songs, prior=B.median_setting([p for p, _ in plain.values()]),
                                prior_weight=0.5, jobs=jobs, **kw)
            got[jobs] = (plain, prior)
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    for s in songs:  # one line per song and fit, whichever process finished first
        assert out.count(f"oracle {s.name} (") == 4
    assert out.count("[3/3 fitted, ") == 4 and "ETA 0:00]" in out  # how far along, in completion order
    for serial, parallel in zip(*got.values()):
        assert list(parallel) == [s.name for s in songs]  # in the songs' order
        for name, (p, info) in serial.items():
            assert torch.equal(parallel[name][0], p) and parallel[name][1].restarts == info.restarts
    assert not torch.equal(got[1][0][songs[0].name][0], got[1][1][songs[0].name][0])  # the prior did pull
    files = {j: sorted(f.name for f in (tmp_path / f"jobs{j}").glob("oracle-*.json")) for j in (1, 2)}
    assert len(files[1]) == 6 and files[1] == files[2]
    for f in files[1]:
        assert (tmp_path / "jobs1" / f).read_text() == (tmp_path / "jobs2" / f).read_text()

    # a song that cannot be read fails the call with the worker's error, and the other songs are not all waited for
    many = index_songs(make_data(songs=8, seconds=2.0), 16000)
    Path(many[0].mixed_path).unlink()
    with pytest.raises(Exception) as err:
        B.fit_songs(console, many, target_lufs=-23.0, budget=budget, restarts=2, seed=0, progress=False, jobs=2,
                    cache_dir=tmp_path / "broken")
    assert many[0].name in str(err.value)
    assert len(list((tmp_path / "broken").glob("oracle-*.json"))) < 7


# ----------------------------------------------------------------------------------------------- end to end
def wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file (LevelDB log format after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, out = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(payload)
        elif kind == 2:
            buf = payload
        elif kind in (3, 4):
            buf += payload
            if kind == 4:
                out.append(buf)
    return [pb.Record.FromString(p) for p in out]


def wandb_runs(folder: Path) -> dict:
    """{run id: (group, job_type, tags, config, summary)} of the offline W&B runs under ``folder``."""
    runs = {}
    for f in folder.rglob("run-*.wandb"):
        run, cfg, summary = None, {}, {}
        for r in wandb_records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run = r.run
                cfg.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
            elif kind == "config":
                cfg.update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "summary":
                summary.update({i.key: json.loads(i.value_json) for i in r.summary.update})
        runs[run.run_id] = (run.run_group, run.job_type, set(run.tags), cfg, summary)
    return runs


@pytest.mark.slow
def test_house_preset_runs_share_one_fit_per_fold_with_the_mean_preset_baseline(tiny, tmp_path, capsys, monkeypatch):
    """`model.house_preset` + `refine: {other_vocal: house}` (e17): `ablate` fits each fold's house preset once
    before the runs start, the runs and the `mean-preset` baseline (at the same settings) read that fit, and
    with another song's mix every test song gets exactly the mean preset's setting, while the song's own mix
    is refined on."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    from mst_single.system import HOUSE_PRESET_FIT

    _, data = tiny
    exp_dir = write_experiment(tmp_path / "exp-house", data)
    house = dict(HOUSE_PRESET_FIT, segment_seconds=1.0)
    text = (exp_dir / "config.yaml").read_text()
    text = text[:text.index("  approach2:")] + text[text.index("budgets:"):]  # approach1 only
    text = text.replace("overrides: {model.param_loss_weight: 1.0}", "overrides: {model.param_loss_weight: 1.0, "
                        "model.style_ridge: true, model.house_preset: true}")
    text = text.replace("refine: {steps: 2, crops: 1}", "refine: {steps: 2, crops: 1, start: ridge, other_vocal: house}")
    text = text.replace("mean_preset: {max_steps: 6, patience: 2, min_delta: 0.01, batch_size: 2, segment_seconds: 1.0, "
                        "lr: 0.1}", "mean_preset: " + json.dumps(house))
    (exp_dir / "config.yaml").write_text(text + "  reference_policies: [other, song]\n")
    assert cli([exp_dir, "--budget", "test", "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "house presets: 2 training set(s)" in printed and "house preset fold 1 (demo):" in printed
    out = exp_dir / "results" / "test"
    assert len(list((out / "runs" / "_cache").glob("mean-preset-*.json"))) == 2  # one per fold, for runs and baseline
    settings = {}
    for r in csv.DictReader(open(out / "predictions.csv")):
        settings.setdefault((r["variant"], r["eval_policy"], r["fold"], r["song"]), {})[r["param"]] = r["value"]
    songs = {(k[2], k[3]) for k in settings if k[0] == "mean-preset"}
    assert len(songs) == len(F.song_names(data))
    for fold, song in songs:
        preset = settings[("mean-preset", "-", fold, song)]
        assert settings[("approach1", "other", fold, song)] == preset  # as written: bit for bit
        assert settings[("approach1", "song", fold, song)] != preset
    from mst_single.mix import load_model

    for fold in (0, 1):
        model = load_model(out / "runs" / f"approach1-demo-f{fold}-s0" / "checkpoints" / "last.ckpt")[0]
        song = next(s for f, s in songs if f == str(fold))
        want = [float(settings[("mean-preset", "-", str(fold), song)][k]) for k in model.console.param_names]
        assert model.house_start()[0].tolist() == want


def test_ablate_with_folds_end_to_end_then_reuse_and_check(tiny, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    folder, data = tiny
    assert cli([folder, "--budget", "test"]) == 0
    printed = capsys.readouterr().out
    out = folder / "results" / "test"
    assert "[1/4] approach1 fold 0 seed 0 (demo): training + evaluation" in printed
    assert "baselines fold 1 (demo): oracle fitted on" in printed

    # approach1 trained with the oracle settings of its fold's training/validation songs as targets,
    # never a test song's; the fits are the oracle baseline's own (one cache, each song fitted once)
    assert "parameter targets fold 1 (demo): the oracle setting of" in printed
    for fold in (0, 1):
        targets = json.loads((out / "runs" / "_data" / "demo" / f"param-targets-fold{fold}.json").read_text())
        split = json.loads((out / "runs" / "_data" / "demo" / "splits" / f"fold{fold}.json").read_text())
        assert set(targets["params"]) == set(split["train"]) | set(split["val"])
        assert not set(targets["params"]) & set(split["test"]) and len(targets["names"]) == 30
        cfg = yaml.safe_load((out / "runs" / f"approach1-demo-f{fold}-s0" / "variant.yaml").read_text())
        assert cfg["model"]["param_loss_weight"] == 1.0 and cfg["data"]["param_targets"].endswith(f"fold{fold}.json")
    cached = {json.loads(f.read_text())["song"] for f in (folder.parent / ".cache" / "oracle").glob("oracle-*.json")}
    assert cached == set(F.song_names(data))
    metrics = list(csv.DictReader(open(out / "runs" / "approach1-demo-f0-s0" / "metrics.csv")))
    assert any(r.get("train/param") not in (None, "") for r in metrics)

    # approach1 (refine: 2 steps): each song's setting is the network's, refined on the references it read
    from mst_single.experiments import evaluate as E
    from mst_single.mix import load_model

    spec = json.loads((out / "runs" / "approach1-demo-f0-s0" / "unit.json").read_text())
    assert spec["refine"] == {"steps": 2, "crops": 1}
    assert "refine" not in json.loads((out / "runs" / "approach2-demo-f0-s0" / "unit.json").read_text())
    model = load_model(out / "runs" / "approach1-demo-f0-s0" / "checkpoints" / "last.ckpt")[0]
    testset = E.TestSet(**spec["eval_data"])
    plain = E.predict_settings(model, testset, "other", progress=False)
    refined = E.predict_settings(model, testset, "other", progress=False, refine=spec["refine"], seed=0)
    logged = {}
    for r in csv.DictReader(open(out / "predictions.csv")):
        if (r["variant"], r["eval_policy"], r["fold"], r["seed"]) == ("approach1", "other", "0", "0"):
            logged.setdefault(r["song"], {})[r["param"]] = float(r["value"])
    for name in testset.names:
        got = torch.tensor([[logged[name][k] for k in model.console.param_names]])
        assert torch.allclose(got, refined[name], atol=1e-6)
        assert (refined[name] - plain[name]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="only Approach 1"):
        E.predict_settings(load_model(out / "runs" / "approach2-demo-f0-s0" / "checkpoints" / "last.ckpt")[0],
                           testset, "same", progress=False, refine={"steps": 1})

    # results.csv: the contract's columns; every song tested exactly once per (variant, policy, seed)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert tuple(rows[0]) == R.RESULTS_COLUMNS
    assert {(r["experiment"], r["budget"], r["data"]) for r in rows} == {("exp-tiny", "test", "demo")}
    songs = sorted(F.song_names(data))
    keys = {(r["variant"], r["eval_policy"]) for r in rows}
    assert keys == {("approach1", "other"), ("approach1", "song"), ("approach1", "shuffled"), ("approach2", "-"),
                    ("identity", "-"), ("mean-preset", "-"), ("oracle", "-")}
    for variant, policy in keys:
        mine = [r for r in rows if (r["variant"], r["eval_policy"]) == (variant, policy) and r["metric"] == "mrstft"]
        assert sorted(r["song"] for r in mine if r["song"] != "mean") == songs
        assert sorted(r["fold"] for r in mine if r["song"] == "mean") == ["0", "1"]
        for r in mine:
            if r["song"] != "mean":
                assert F.fold_of(r["song"], 2) == int(r["fold"])  # tested in its own fold
        got = {r["metric"] for r in rows if (r["variant"], r["eval_policy"]) == (variant, policy)}
        assert set(METRIC_UNITS) - {"param_err"} <= got
        assert ("param_err" in got) == (variant != "identity")  # truth.json exists; identity has no setting
    a1 = [r for r in rows if r["variant"] == "approach1"]
    assert {(r["approach"], r["policy"]) for r in a1} == {("approach1", "song")}
    ident = [float(r["value"]) for r in rows if r["variant"] == "identity" and r["metric"] == "lufs_err"]
    assert min(ident) > 0.5  # not level-matched

    # predictions.csv: settings in [0, 1] per test song, song-alt for approach1, the fitted baselines
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    assert tuple(preds[0]) == R.PREDICTIONS_COLUMNS
    assert {(p["variant"], p["eval_policy"]) for p in preds} == (keys - {("identity", "-")}) | {("approach1", "song-alt")}
    assert all(0.0 <= float(p["value"]) <= 1.0 for p in preds)
    n_params = len({p["param"] for p in preds})
    assert sum(1 for p in preds if (p["variant"], p["eval_policy"]) == ("oracle", "-")) == len(songs) * n_params

    # runs.csv: one row per training run and per baseline x fold, with the steps used
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert tuple(runs[0]) == R.RUNS_COLUMNS
    trained = [r for r in runs if r["variant"] in ("approach1", "approach2")]
    assert len(trained) == 4 and {r["steps"] for r in trained} == {"4"}
    assert all((out / r["checkpoint"]).is_file() for r in trained)
    fitted = {(r["variant"], r["fold"]): int(r["steps"]) for r in runs if r["variant"] in ("mean-preset", "oracle")}
    assert set(fitted) == {(v, f) for v in ("mean-preset", "oracle") for f in ("0", "1")}
    assert all(2 <= s <= 6 for s in fitted.values())
    for r in runs:
        assert r["run_id"] == R.run_id("exp-tiny", "test", "demo", r["variant"], int(r["fold"]), int(r["seed"]))

    # logs a person can read: no carriage returns, line by line, small
    for r in trained:
        log = (out / r["checkpoint"]).parent.parent / "ablate.log"
        text = log.read_text()
        assert "\r" not in text and log.stat().st_size < 30_000
        assert "fit: training from step 0 to 4" in text and "fit: 4/4 steps (100%)" in text

    # W&B: offline runs with the deterministic ids, one group per experiment/budget, baselines included
    wb = wandb_runs(out / "runs")
    assert set(wb) == {r["run_id"] for r in runs}
    for r in runs:
        group, job, tags, cfg, summary = wb[r["run_id"]]
        assert group == "exp-tiny/test" and {"budget-test", "data-demo", f"fold-{r['fold']}"} <= tags
        assert (cfg["variant"], cfg["fold"], cfg["data"]) == (r["variant"], int(r["fold"]), "demo")
        key = "eval/other/mrstft" if r["variant"] == "approach1" else "eval/mrstft"
        mean = next(float(x["value"]) for x in rows if x["variant"] == r["variant"] and x["fold"] == r["fold"]
                    and x["song"] == "mean" and x["metric"] == "mrstft" and x["eval_policy"] in ("other", "-"))
        assert summary[key] == pytest.approx(mean)
        assert job == ("baseline" if r["variant"] in ("identity", "mean-preset", "oracle") else "fit")

    md = (out / "results.md").read_text()
    # led by the paired statistics (every song of both folds), then collapse, then mean ± std
    assert md.index("### Paired differences") < md.index("### Collapse") < md.index("### Mean ± std")
    n = len(songs)
    assert f"| approach2 vs mean-preset | {n} |" in md and f"| approach1 (eval ref: other) vs mean-preset | {n} |" in md
    assert "approach1 (eval ref: song, upper bound)" in md and "approach1 (eval ref: shuffled, control)" in md
    assert "| oracle |" in md and f"{n} test songs; seeds 0; 2 folds" in md
    html = (out / "report.html").read_text()
    assert "src='audio/demo/" in html and "<th>true</th>" in html
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["folds"] == 2 and prov["budget"] == "test" and prov["data"] == {"demo": str(data)}
    assert sorted(prov["splits"]["demo"]) == ["fold0", "fold1"]

    # unchanged runs are reused; --check reruns the committed table elsewhere and finds it the same
    assert cli([folder, "--budget", "test"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("up to date") == 6  # 4 runs + 2 baseline folds
    assert cli([folder, "--budget", "test", "--check", "--out", tmp_path / "rerun"]) == 0
    printed = capsys.readouterr().out
    assert "REPRODUCED" in printed and "NOT REPRODUCED" not in printed
    # --check --variant: that variant's runs and the baselines only, rows of the others not compared
    assert cli([folder, "--budget", "test", "--check", "--variant", "approach2", "--out", tmp_path / "rerun2"]) == 0
    printed = capsys.readouterr().out
    assert "not rerun: approach1" in printed and "REPRODUCED" in printed and "NOT REPRODUCED" not in printed
    rerun = {r["variant"] for r in csv.DictReader(open(tmp_path / "rerun2" / "results.csv"))}
    assert rerun == {"approach2", "identity", "mean-preset", "oracle"}
    # its provenance names the command that made it: the check's, not a plain run of every variant
    made_by = json.loads((tmp_path / "rerun2" / "provenance.json").read_text())["command"]
    assert made_by == (f"mst-single ablate {folder.as_posix()} --variant approach2 --budget test "
                       f"--out {tmp_path / 'rerun2'} --check"), made_by


def test_check_reruns_with_the_committed_data_folders_and_thread_count(tmp_path, monkeypatch, capsys):
    import os

    committed = tmp_path / "exp-x" / "results" / "cpu"
    committed.mkdir(parents=True)
    (committed / "results.csv").write_text(",".join(R.RESULTS_COLUMNS) + "\n")
    (committed / "provenance.json").write_text(json.dumps(
        {"seeds": [0, 1, 2], "folds": 2, "data": {"demo-adaptive": "data/demo-adaptive"},
         "hardware": {"torch_threads": 1}}))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    before = torch.get_num_threads()
    seen = {}

    def fake_run(args):  # the rerun itself: record how it would run, then fail so that nothing is compared
        seen.update(data=args.data, seeds=args.seeds, folds=args.folds, force=args.force, check=args.check,
                    env=os.environ["OMP_NUM_THREADS"], threads=torch.get_num_threads())
        return 3

    monkeypatch.setattr(ablate, "run", fake_run)
    args = parse([tmp_path / "exp-x", "--budget", "cpu", "--check", "--out", tmp_path / "rerun"])
    assert ablate.check(args) == 3
    assert seen == dict(data=["demo-adaptive=data/demo-adaptive"], seeds=3, folds=2, force=True, check=False,
                        env="1", threads=1)
    assert "1 torch thread(s) per run" in capsys.readouterr().out
    assert os.environ["OMP_NUM_THREADS"] == "2" and torch.get_num_threads() == before  # restored
    # what the command line gives wins
    args = parse([tmp_path / "exp-x", "--budget", "cpu", "--check", "--data", "d=/elsewhere", "--seeds", "1",
                  "--out", tmp_path / "rerun2"])
    ablate.check(args)
    assert seen["data"] == ["d=/elsewhere"] and seen["seeds"] == 1
    # --cached-fits: the runs are retrained (a new folder), the cached oracle fits are kept
    assert "every oracle fit redone" in capsys.readouterr().out
    ablate.check(parse([tmp_path / "exp-x", "--budget", "cpu", "--check", "--cached-fits", "--out", tmp_path / "r3"]))
    assert seen["force"] is False and "oracle fits from the cache" in capsys.readouterr().out


def test_check_with_variant_reruns_those_variants_and_compares_only_their_rows(tmp_path, monkeypatch, capsys):
    folder = write_experiment(tmp_path / "exp-x", tmp_path / "data")  # variants approach1, approach2
    committed = folder / "results" / "test"
    committed.mkdir(parents=True)

    def rows(variant, value, seeds=(0, 1)):
        base = dict(experiment="exp-x", budget="test", data="demo", variant=variant, approach="-", policy="-",
                    eval_policy="-", fold=0, metric="mrstft")
        return [dict(base, seed=s, song=n, value=value + 0.01 * s) for s in seeds for n in ("a", "b", "mean")]

    R.write_csv(committed / "results.csv", rows("approach1", 0.9) + rows("approach2", 0.7) + rows("oracle", 0.4, [0]),
                R.RESULTS_COLUMNS)
    (committed / "provenance.json").write_text(json.dumps({"seeds": [0, 1], "folds": 2}))
    seen, rerun_value = {}, [0.7]

    def preds(variant, value):
        return [dict(experiment="exp-x", budget="test", data="demo", variant=variant, eval_policy="-", fold=0, seed=0,
                     song=n, param=k, value=value) for n in ("a", "b") for k in ("gain_db", "comp_ratio")]

    R.write_csv(committed / "predictions.csv", preds("approach1", 0.1) + preds("approach2", 0.2) + preds("oracle", 0.3),
                R.PREDICTIONS_COLUMNS)

    def fake_run(args):  # the rerun: those variants' runs and the baselines, written as a results folder
        seen.update(variant=args.variant, only=args.only_variants)
        plan = runner.make_plan(args)
        seen["planned"] = sorted({u.variant for u in plan.units})
        seen["unit_mode"] = plan.unit_mode
        R.write_csv(args.out / "results.csv", rows("approach2", rerun_value[0]) + rows("oracle", 0.4, [0]),
                    R.RESULTS_COLUMNS)
        moved = preds("approach2", 0.2)
        moved[0]["value"] = 0.25
        R.write_csv(args.out / "predictions.csv", moved + preds("oracle", 0.3), R.PREDICTIONS_COLUMNS)
        return 0

    monkeypatch.setattr(ablate, "run", fake_run)
    monkeypatch.setattr(C, "check_data_folder", lambda *a, **k: None)
    monkeypatch.setattr(F, "song_names", lambda *a, **k: [f"s{i}" for i in range(6)])
    argv = [folder, "--budget", "test", "--check", "--variant", "approach2"]
    assert ablate.check(parse(argv + ["--out", tmp_path / "r1"])) == 0
    assert seen == dict(variant=None, only=["approach2"], planned=["approach2"], unit_mode=False)
    printed = capsys.readouterr().out
    assert "comparing the rows of approach2 and the baselines only; not rerun: approach1" in printed
    assert "only in the first" not in printed and "NOT REPRODUCED" not in printed and "REPRODUCED" in printed
    assert "values: 9 of 9 identical bit for bit\n" in printed
    assert "predictions: 7 of 8 predicted parameter values identical bit for bit (largest relative difference 0.2)\n" \
        in printed  # approach1's predictions, not rerun, are not counted as missing
    # a real difference in the chosen variant still fails the check
    rerun_value[0] = 0.9
    assert ablate.check(parse(argv + ["--out", tmp_path / "r2"])) == 1
    assert "NOT REPRODUCED" in capsys.readouterr().out
    with pytest.raises(MstError, match="no variant 'approach3'"):
        ablate.check(parse([folder, "--budget", "test", "--check", "--variant", "approach3", "--out", tmp_path / "r3"]))
    with pytest.raises(MstError, match="--check reruns whole variants"):
        ablate.check(parse(argv + ["--seed", "1"]))


def test_export_sweep_is_a_grid_over_units_running_the_same_cli(tiny):
    folder, _ = tiny
    assert cli([folder, "--budget", "test", "--seeds", "2", "--export-sweep"]) == 0
    sweep = yaml.safe_load((folder / "sweep.yaml").read_text())
    assert sweep["method"] == "grid" and sweep["name"] == "exp-tiny/test"
    assert sweep["parameters"] == {"variant": {"values": ["approach1", "approach2"]}, "seed": {"values": [0, 1]},
                                   "fold": {"values": [0, 1]}}
    assert sweep["command"] == ["mst-single", "ablate", folder.as_posix(), "--budget", "test", "${args}"]
    # the agent's ${args} become --variant=V --seed=S --fold=F, which the CLI accepts as one unit
    plan = runner.make_plan(parse([folder, "--budget", "test", "--variant=approach2", "--seed=1", "--fold=1"]))
    assert plan.unit_mode and [(u.variant, u.fold, u.seed) for u in plan.units] == [("approach2", 1, 1)]
    two = runner.make_plan(parse([folder, "--budget", "test", "--variant", "approach2", "--variant", "approach1",
                                  "--seed", "0", "--fold", "0"]))
    assert two.unit_mode and [u.variant for u in two.units] == ["approach1", "approach2"]  # the config's order
    # the first line says which of the experiment's folds run, and counts only their test songs
    one = ablate.plan_summary(plan)
    assert " × fold 1 of 2 × seeds [1])" in one and "1 runs" in one
    full = ablate.plan_summary(runner.make_plan(parse([folder, "--budget", "test", "--seeds", "2"])))
    assert " × 2 folds × seeds [0, 1])" in full and "8 runs" in full
    n_test = lambda line: int(line.split(" test songs")[0].rsplit(" ", 1)[1])  # noqa: E731
    assert 0 < n_test(one) < n_test(full)


def test_a_worker_refuses_to_train_when_the_package_changed_since_ablate_started(tmp_path, monkeypatch, capsys):
    """`ablate --jobs N` starts every run as a new process importing the checkout as it is then; an edit
    made meanwhile would mix two versions of the code in one table. The worker compares the package's
    fingerprint with the one `ablate` took at the start and stops with a message that says so."""
    import shutil

    import mst_single
    from mst_single.provenance import code_fingerprint

    pkg = tmp_path / "pkg"
    shutil.copytree(Path(mst_single.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_fingerprint(pkg)
    assert code_fingerprint(Path(mst_single.__file__).parent) == before  # bytecode caches do not count
    (pkg / "experiments" / "stats.py").write_text((pkg / "experiments" / "stats.py").read_text() + "\n# edit\n")
    assert code_fingerprint(pkg) != before

    from types import SimpleNamespace

    unit = SimpleNamespace(run_id="abc")
    assert runner.worker_env(unit, before)[runner.CODE_ENV] == before
    assert runner.CODE_ENV not in runner.worker_env(unit)  # a worker started by hand checks nothing

    spec = tmp_path / "run" / "unit.json"  # never read: the check comes first
    monkeypatch.setenv(runner.CODE_ENV, "0" * 64)
    assert ablate.main(["--worker", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "code changed since this `ablate` started" in err and str(spec.parent) in err and "worktree" in err
    monkeypatch.setenv(runner.CODE_ENV, code_fingerprint())  # unchanged: past the check, to the missing spec
    with pytest.raises(FileNotFoundError):
        runner.worker(spec)


def test_ridge_heldout_scores_ridge_start_on_new_data_without_training(tiny, tmp_path, capsys):
    """scripts/ridge_heldout.py (e09 README, "Held-out check"): the baselines and every fold's test songs,
    refined from a style ridge fitted on that fold's training + validation raws; no network trained."""
    import importlib.util

    from mst_single import style as S
    from mst_single.console import VocalConsole
    from mst_single.experiments import evaluate as E

    spec = importlib.util.spec_from_file_location("ridge_heldout", REPO_ROOT / "scripts" / "ridge_heldout.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    folder, data = tiny
    exp_dir = write_experiment(tmp_path / "exp-heldout", data)
    text = (exp_dir / "config.yaml").read_text().replace(
        "overrides: {model.param_loss_weight: 1.0}", "overrides: {model.param_loss_weight: 1.0, model.style_ridge: true, "
        "model.style_ridge_renders: 2}").replace("refine: {steps: 2, crops: 1}", "refine: {steps: 2, crops: 1, start: ridge}")
    (exp_dir / "config.yaml").write_text(text)
    args = ["--experiment", str(exp_dir), "--variant", "approach1", "--budget", "test", "--data", f"demo={data}",
            "--seeds", "0,1", "--out", str(tmp_path / "out")]
    threads = torch.get_num_threads()
    assert script.main(args) == 0
    assert torch.get_num_threads() == threads  # a later test's training would otherwise use another count
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if " seed " in line] == [
        "fold 0 seed 0", "fold 0 seed 1", "fold 1 seed 0", "fold 1 seed 1", "all folds, seed 0", "all folds, seed 1"]
    assert "all folds, seed 0: 6 songs, mrstft" in out and "gap closed" in out  # every song tested once
    assert not list((tmp_path / "out" / "runs").glob("approach1-*"))  # nothing trained
    assert (tmp_path / "out" / "runs" / "_data" / "demo" / "baselines-fold0.json").is_file()

    # what it scores: the ridge of the fold's training + validation raws, then the variant's refinement
    split = tmp_path / "out" / "runs" / "_data" / "demo" / "splits" / "fold0.json"
    ts = E.TestSet(data, sample_rate=16000, segment_seconds=1.0, val_fraction=0.2, split_file=str(split))
    console = VocalConsole(16000)
    got = script.ridge_start_settings(console, ts, -23.0, {"steps": 2, "crops": 1, "start": "ridge"}, 2, seed=1)
    raws, n = S.style_ridge_raws(list(ts.splits["train"]) + list(ts.splits["val"]), 16000, -23.0, 1.0)
    ridge = S.fit_style_ridge(console, raws, 2, seed=1)
    name = ts.names[0]
    raw, ref = E.song_segments(ts.segments("song"), name, 16000, -23.0)
    start = S.style_ridge_setting(ridge, raw, ref, 16000)
    assert n == len(ts.splits["train"]) + len(ts.splits["val"]) and set(got) == set(ts.names)
    assert torch.allclose(got[name], S.refine_setting(console, raw, ref, start, steps=2, crops=1, seed=1), atol=1e-6)
    assert (got[name] - start).abs().max() > 1e-4  # refined, not the ridge's setting as it is
    with pytest.raises(MstError, match="not refined from a style ridge"):
        script.main([*args[:2], "--variant", "approach2", *args[4:]])

    # one fold, another refinement (how e09's ridge-start-60 got its steps): the same ridge, refined 3 steps
    assert script.main([*args[:8], "--seeds", "1", "--fold", "1", "--steps", "3", "--lr", "0.1", *args[10:]]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if " seed " in line] == ["fold 1 seed 1",
                                                                                    "fold 1 only, seed 1"]
    # fold 1 alone reuses the baselines the full run fitted (its report songs once came from fold 1 alone)
    assert "baselines fold 1 (demo): up to date" in out
    got = script.ridge_start_settings(console, ts, -23.0, {"steps": 3, "lr": 0.1, "crops": 1}, 2, seed=1)  # fold 0
    assert torch.allclose(got[name], S.refine_setting(console, raw, ref, start, steps=3, lr=0.1, crops=1, seed=1),
                          atol=1e-6)
    with pytest.raises(MstError, match="needs steps >= 1"):
        script.main([*args, "--steps", "0"])


def test_provenance_names_the_inputs_its_commit_does_not_hold(tmp_path):
    """e15's table named a clean commit that lacked its config.yaml (still untracked when it ran)."""
    import subprocess

    from mst_single import provenance as P

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text("a: 1\n")
    (tmp_path / ".gitignore").write_text("configs/scratch-*\n")
    git("add", ".")
    git("commit", "-q", "-m", "x")
    (tmp_path / "configs" / "new.yaml").write_text("b: 2\n")
    (tmp_path / "configs" / "scratch-1.yaml").write_text("c: 3\n")  # ignored: not an input the commit lacks
    (tmp_path / "experiments" / "e99").mkdir(parents=True)
    (tmp_path / "experiments" / "e99" / "config.yaml").write_text("variants: {}\n")
    inputs = ("configs", "experiments/e99/config.yaml", "experiments/base.yaml")  # the last does not exist
    got = P.git_commit(tmp_path, inputs)
    assert got["dirty"] is False
    assert got["untracked_inputs"] == ["configs/new.yaml", "experiments/e99/config.yaml"]
    (tmp_path / "configs" / "base.yaml").write_text("a: 2\n")  # a tracked file changed: dirty, as before
    assert P.git_commit(tmp_path, inputs)["dirty"] is True
    git("add", ".")
    git("commit", "-q", "-m", "y")
    assert P.git_commit(tmp_path, inputs) == dict(P.git_commit(tmp_path, inputs), dirty=False, untracked_inputs=[])
    assert P.git_commit(tmp_path / "nowhere")["commit"] == "unknown"
