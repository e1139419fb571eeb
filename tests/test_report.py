"""Plots and the HTML report: files exist, are PNGs, and the HTML references them relatively."""
import numpy as np

from mst_single.experiments import report
from mst_single.experiments.tables import markdown_table, summarize

PNG = b"\x89PNG\r\n\x1a\n"


def rows():
    out = []
    for variant, vals in (("approach1", [1.0, 1.2]), ("identity", [2.0])):
        for seed, v in enumerate(vals):
            for metric, value in (("mrstft", v), ("si_sdr", -v)):
                out.append(dict(experiment="e", variant=variant, approach="x", policy="-", eval_policy="-",
                                seed=seed, song="mean", metric=metric, value=value))
    return out


def test_metric_plots_one_png_per_metric(tmp_path):
    paths = report.metric_plots(rows(), tmp_path / "plots")
    assert [p.name for p in paths] == ["metric_mrstft.png", "metric_si_sdr.png"]
    assert all(p.read_bytes()[:8] == PNG for p in paths)
    assert [p.name for p in report.metric_plots(rows(), tmp_path / "p2", "demo", ["si_sdr", "nope"])] == \
        ["metric_si_sdr_demo.png"]


def test_training_curves_from_lightning_csv(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/loss,val/loss,lr\n0,4,1.5,,0.1\n0,9,1.2,,0.1\n0,9,,1.1,\n")
    curves = report.read_metrics_csv(csv)
    assert curves["train/loss"] == ([4.0, 9.0], [1.5, 1.2]) and curves["val/loss"] == ([9.0], [1.1])
    assert report.pick_curves(curves) == ["train/loss", "val/loss"]
    png = report.training_curves_png({"a-s0": csv, "missing": tmp_path / "nope.csv"}, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == PNG
    # several runs of one variant (seeds, folds) share a label
    assert report.training_curves_png([("a", csv), ("a", csv), ("b", csv)], tmp_path / "c2.png").exists()
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch,step,lr\n0,1,0.1\n")
    assert report.training_curves_png({"x": empty}, tmp_path / "none.png") is None


def test_report_html_has_players_images_table_and_params(tmp_path):
    audio = tmp_path / "audio" / "song1" / "raw.flac"
    audio.parent.mkdir(parents=True)
    audio.write_bytes(b"fLaC")
    spec = report.spectrogram_png([("raw", np.random.default_rng(0).standard_normal((1, 8000)) * 0.1),
                                   ("mix <b>", np.zeros((2, 8000)))], 16000, tmp_path / "spectrograms" / "song1.png")
    assert spec.read_bytes()[:8] == PNG
    plots = report.metric_plots(rows(), tmp_path / "plots")
    table = markdown_table(*summarize(rows()))
    params = {"columns": ["true", "approach1"], "rows": [["gain_db", "dB", 2.0, 1.25], ["comp_ratio", ":1", None, 4.0]]}
    sections = [("Mean ± std", "a note", table), ("Empty", "", "")]
    out = report.write_report(tmp_path / "report.html", "e01 & co", "Question <x>", sections, plots,
                              [dict(name="song1", note="n", audio=[("raw", audio)], spectrogram=spec, params=params)])
    html = out.read_text()
    assert "<audio controls preload='none' src='audio/song1/raw.flac'>" in html
    assert "src='spectrograms/song1.png'" in html and "src='plots/metric_mrstft.png'" in html
    assert "e01 &amp; co" in html and "Question &lt;x&gt;" in html  # escaped
    assert "<td>approach1</td>" in html and "<b>1.100 ± 0.141</b>" in html  # results table, best bold
    assert "<td>gain_db</td><td>dB</td><td class=\"num\">2</td><td class=\"num\">1.25</td>" in html
    assert "<h2>Mean ± std</h2>\n<p>a note</p>" in html and "Empty" not in html  # empty tables are skipped
    assert str(tmp_path) not in html  # every reference is relative: the folder can move
