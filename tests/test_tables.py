"""results.md / paired.csv / collapse.csv / plots / report.html from rows in the pipeline contract's format."""
import csv
import json

import numpy as np
import pytest
import soundfile as sf

from contract_rows import experiment_rows
from mst_single.errors import MstError
from mst_single.experiments import tables

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One results folder: two data sets (approach2 adapts on one, collapses on the other), report songs."""
    out = tmp_path_factory.mktemp("results") / "cpu"
    r1, p1, u1 = experiment_rows("demo-adaptive", approach2="adapts", approach1="reads")
    r2, p2, u2 = experiment_rows("demo-per-song", approach2="collapsed", approach1="ignores", seed=1)
    clip = out.parent / "clips" / "raw.flac"
    clip.parent.mkdir(parents=True)
    sf.write(clip, np.random.default_rng(0).standard_normal((8000, 2)) * 0.1, 16000)
    # truth.json gives one parameter: the oracle's gain, as a fit of the true setting would find it
    truth = {"demo-adaptive": {r["song"]: {"gain_db": r["value"]} for r in p1
                               if r["variant"] == "oracle" and r["param"] == "gain_db"}}
    meta = dict(command="mst-single ablate experiments/e01 --budget cpu", wall_seconds=90.0,
                data_paths={"demo-adaptive": "data/demo-adaptive"}, truth=truth,
                report_songs=[dict(data="demo-adaptive", name="song000", audio=[("raw", clip)])])
    paths = tables.write_results(out, {"name": "e01", "question": "Which approach?"}, "cpu", r1 + r2 + r1[:50],
                                 p1 + p2, u1 + u2, meta, n_boot=2000)
    return out, paths


def test_results_md_leads_with_paired_statistics_then_collapse_then_mean_std(written):
    out, paths = written
    md = paths["results_md"].read_text()
    assert md.startswith("# e01: results (budget `cpu`)") and "**Question.** Which approach?" in md
    adaptive, per_song = md.split("## Data `demo-adaptive`")[1].split("## Data `demo-per-song`")
    order = [adaptive.index(h) for h in ("### Paired differences", "### Collapse", "### Mean ± std over seeds")]
    assert order == sorted(order)
    assert "10 test songs; seeds 0, 1, 2; 2 folds" in adaptive and "(2000 resamples of the songs)" in adaptive
    rows = [ln for ln in adaptive.splitlines() if ln.startswith("| approach")]
    # headline first: approach1 is judged with another song's mix; the song's own mix is its upper bound
    assert rows[0].startswith("| approach2 vs mean-preset | 10 |")
    assert "| approach1 (eval ref: other) vs mean-preset | 10 |" in adaptive
    assert "| approach1 (eval ref: song, upper bound) vs mean-preset |" in adaptive
    assert "| approach1 (eval ref: shuffled, control) vs mean-preset |" in adaptive
    assert "| approach2 vs approach1 (eval ref: other) |" in adaptive
    assert "| 10 / 0 / 0 |" in rows[0]  # approach2 beats the preset on every song
    # collapse: working models pass on one data set, the collapsed / reference-ignoring ones are flagged
    assert "| approach2 | 3 | 10 | 5 |" in adaptive and "| no |" in adaptive.split("| approach2 | 3 | 10 | 5 |")[1]
    flag = next(ln for ln in per_song.splitlines() if ln.startswith("| approach2 | 3 |"))
    assert "yes (3/3 seeds)" in flag
    a1 = next(ln for ln in per_song.splitlines() if ln.startswith("| approach1 (eval ref: song, upper bound) | 3 |"))
    assert a1.rstrip(" |").endswith("no (0/3 seeds)")  # sensitivity 0: it ignores the reference
    assert "| mean-preset | 1 | 10 | 5 | 0.00 (0.00) | 0.00 | 0.00 (0.00) | 0.00 | yes (1/1 seeds) |" in adaptive
    # the true settings judged like a model (truth = the oracle's gain here: it follows the oracle)
    assert "| truth | 1 | 10 |" in adaptive and "| truth |" not in per_song
    assert "Runs: 12 training runs, median 101 s each; mean-preset fitted in 140, 140 steps; oracle" in adaptive
    # the README block is results.md without its title, its plots linked from the experiment's folder
    block = paths["readme_block"]
    assert block == md.split("\n", 2)[2].replace("](plots/", "](results/cpu/plots/")
    assert "](results/cpu/plots/paired_demo-adaptive.png)" in block and "](plots/" not in block


def test_paired_and_collapse_csv_hold_the_numbers_of_the_tables(written):
    out, paths = written
    paired = list(csv.DictReader(open(paths["paired_csv"])))
    row = next(r for r in paired if r["data"] == "demo-adaptive" and r["a"] == "approach2" and r["metric"] == "mrstft")
    assert row["b"] == "mean-preset" and row["songs"] == "10" and row["tie_band"] == "0.01"
    assert float(row["ci_low"]) < float(row["mean"]) < float(row["ci_high"]) < 0
    per_seed = json.loads(row["gap_closed_per_seed"])
    assert set(per_seed) == {"0", "1", "2"} and float(row["gap_closed"]) == pytest.approx(np.median(list(per_seed.values())))
    assert 0.5 < float(row["gap_closed"]) < 1.0
    assert f"{float(row['mean']):.3f} [" in paths["results_md"].read_text()
    collapse = list(csv.DictReader(open(paths["collapse_csv"])))
    assert {(r["data"], r["variant"]) for r in collapse} >= {("demo-adaptive", "approach2"), ("demo-per-song", "approach1")}
    assert len([r for r in collapse if r["data"] == "demo-adaptive" and r["variant"] == "approach2"]) == 3  # per seed
    a2 = next(r for r in collapse if r["data"] == "demo-adaptive" and r["variant"] == "approach2")
    assert float(a2["adaptivity_truth"]) > 0.9 and a2["sensitivity"] == ""  # Approach 2 reads no reference
    assert "| adaptivity vs truth |" in paths["results_md"].read_text()
    a1 = next(r for r in collapse if r["data"] == "demo-per-song" and r["variant"] == "approach1")
    assert float(a1["sensitivity"]) == 0.0 and float(a1["scale"]) > 0.1 and a1["reads_reference"] == "no"
    assert a1["adaptivity_truth"] == ""  # no truth for this data set


def test_plots_and_report_html(written):
    out, paths = written
    names = {p.name for p in paths["plots"]}
    assert names == {"paired_demo-adaptive.png", "params_vs_oracle_demo-adaptive.png", "metric_mrstft_demo-adaptive.png",
                     "paired_demo-per-song.png", "params_vs_oracle_demo-per-song.png", "metric_mrstft_demo-per-song.png"}
    assert all(p.read_bytes()[:8] == PNG for p in paths["plots"])  # training curves: no metrics.csv here
    html = paths["report_html"].read_text()
    heads = [html.index(f"<h2>Data demo-adaptive: {h}") for h in ("paired differences", "collapse", "mean ± std")]
    assert heads == sorted(heads) and heads[-1] < html.index("<h2>Data demo-per-song: paired differences")
    assert "<td>approach1 (eval ref: song, upper bound)</td>" in html and "yes (3/3 seeds)" in html
    assert "src='plots/params_vs_oracle_demo-adaptive.png'" in html
    assert "<audio controls preload='none' src='../clips/raw.flac'>" in html  # relative to the report
    assert "src='spectrograms/demo-adaptive_song000.png'" in html
    assert (out / "spectrograms" / "demo-adaptive_song000.png").read_bytes()[:8] == PNG
    # settings of the report song: truth, the baselines and each condition's first seed, in [0, 1]
    assert "<th>true</th>" in html and "<th>approach1 (eval ref: other)</th>" in html
    true_gain = next(r["value"] for r in experiment_rows("demo-adaptive")[1] if r["variant"] == "oracle"
                     and r["song"] == "song000" and r["param"] == "gain_db")
    assert f"<td>gain_db</td><td>[0, 1]</td><td class=\"num\">{true_gain:.3g}</td>" in html


def test_budgets_never_mix(tmp_path):
    r, p, u = experiment_rows(songs=4, seeds=1, folds=1)
    r2, _, _ = experiment_rows(budget="smoke", songs=4, seeds=1, folds=1)
    with pytest.raises(MstError, match="budgets \\['cpu', 'smoke'\\]"):
        tables.write_results(tmp_path, {"name": "e"}, "cpu", r + r2, p, u)


def test_summarize_pools_folds_and_labels_eval_policies():
    r, _, _ = experiment_rows(songs=6, seeds=2, folds=3)
    labels, metrics, stats = tables.summarize(r)
    assert labels == ["identity", "mean-preset", "oracle", "approach2", "approach1 (eval ref: other)",
                      "approach1 (eval ref: song, upper bound)", "approach1 (eval ref: shuffled, control)"]
    assert metrics[0] == "mrstft" and "param_err" in metrics and not any("/" in m for m in metrics)
    mean, std, n = stats[("approach2", "mrstft")]
    per_seed = [np.mean([float(x["value"]) for x in r if x["variant"] == "approach2" and x["metric"] == "mrstft"
                         and x["song"] != "mean" and x["seed"] == s]) for s in (0, 1)]
    assert n == 2 and mean == pytest.approx(np.mean(per_seed)) and std == pytest.approx(np.std(per_seed, ddof=1))
    assert stats[("oracle", "mrstft")][2] == 1


def test_one_test_song_gives_no_interval_and_no_star():
    # a custom folder with one test song: a zero-width interval starred as significant read as certainty
    from mst_single.experiments import stats as S
    from mst_single.experiments.tables import paired_all_markdown, paired_markdown

    one = S.paired({"s": 0.5}, {"s": 0.6}, "mrstft", ("approach2", "none"), ("mean-preset", "none"))
    two = S.paired({"s": 0.5, "t": 0.4}, {"s": 0.6, "t": 0.6}, "mrstft", ("approach2", "none"), ("mean-preset", "none"))
    assert one.n == 1 and "| 1 | -0.100 [n/a, n/a] |" in paired_markdown([one])
    assert "-0.100 (1/0/0)" in paired_all_markdown([one]) and "*" not in paired_all_markdown([one])
    assert two.ci[0] < two.ci[1] < 0 and "-0.150* (2/0/0)" in paired_all_markdown([two])
