"""`mst-single targets`: which songs it fits, and the errors it stops with."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import make_vocal_data, synth_vocal
from mst_single.cli import main

SR = 16000


def test_unmatched_files_name_its_own_flag_which_skips_them(tmp_path, capsys, monkeypatch):
    from mst_single.experiments import baselines as B

    root = make_vocal_data(tmp_path / "data", songs=2, seconds=3)
    sf.write(root / "raw" / "lonely.wav", synth_vocal(3.0, SR), SR)
    cmd = ["targets", str(root), "-o", str(tmp_path / "t.json"), "--sample-rate", str(SR), "--prior-weight", "0"]
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert f"{root}: 1 song names have no partner file" in err and "raw/lonely.wav" in err
    assert "or pass --allow-unmatched to skip them" in err and "allow_unmatched: true" not in err
    assert not (tmp_path / "t.json").exists()

    fitted = []

    def fake_fit(console, songs, **kw):  # the fits themselves are tested with ablate's baselines
        fitted.extend(s.name for s in songs)
        return {s.name: (np.full((1, console.num_params), 0.5, np.float32), 0.0) for s in songs}

    monkeypatch.setattr(B, "fit_songs", fake_fit)
    with pytest.warns(UserWarning, match="skipping 1 song names have no partner file:\n  raw/lonely.wav"):
        assert main(cmd + ["--allow-unmatched"]) == 0
    assert fitted == ["song00", "song01"]
    assert sorted(json.loads((tmp_path / "t.json").read_text())["params"]) == ["song00", "song01"]
