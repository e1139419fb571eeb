"""The upstream patch series (patches/): complete, well formed, applies in order, dependencies declared.

All but the round-trip test need no upstream checkout and no network: what needs upstream (each patch
alone on the pinned commit with its tests failing before and passing after) is
`python scripts/patches.py check --standalone` (`make patches-standalone`), run where Diff-MST is
checked out. The round trip runs only where the submodule is checked out at the pinned commit.
"""
from __future__ import annotations

import csv
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mst_single.provenance import patch_series_hash

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("patches_tool", ROOT / "scripts" / "patches.py")
patches = importlib.util.module_from_spec(_spec)
sys.modules["patches_tool"] = patches  # dataclasses look their module up there
_spec.loader.exec_module(patches)

# the upstream defects of issue 14 and the vocal pieces, each one patch
FIXES = [
    "Make torchaudio optional for training and data loading",
    "Return instrument ids before stereo flags from MultitrackDataset",
    "Keep the parameter loss in System's total loss",
    "Log one MR-STFT metric in training and validation",
    "Give naive+feat.yaml one loss weight per audio feature",
    "Load the model in scripts/run.py with load_diffmst",
    "Save the resolved config of each run in main.py",
]
VOCAL = [
    "Add MRSTFTL1Loss for targets aligned with the prediction",
    "Add VocalReferenceDataset and VocalDataModule for paired vocals",
    "Add VocalSystem for paired training on one track",
    "Add configs to train on paired vocals with main.py",
]


@pytest.fixture
def series(tmp_path) -> Path:
    """A private copy of patches/ to break."""
    return Path(shutil.copytree(ROOT / "patches", tmp_path / "patches"))


def names(series: Path) -> list[str]:
    return patches.read_series(series)[0]


def committed() -> list:
    return patches.load_series(patches.PATCHES)


def by_subject(subject: str):
    return next(p for p in committed() if p.subject == subject)


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, count))


def problems_text(series: Path) -> str:
    return "\n".join(patches.check(series))


# ----------------------------------------------------------------------------------------------
# the committed series

def test_committed_series_passes_check():
    assert patches.check() == []
    listed = names(patches.PATCHES)
    assert len(listed) == len(committed()) >= 17
    assert [n[:4] for n in listed] == [f"{i:04d}" for i in range(1, len(listed) + 1)]


def test_one_patch_per_defect_and_the_vocal_pieces():
    subjects = [p.subject for p in committed()]
    for subject in FIXES + VOCAL:
        assert subjects.count(subject) == 1, subject
    touched = {b.path for p in committed() for b in p.blocks}
    for path in ("mst/callbacks/mix.py", "configs/models/naive+feat.yaml", "scripts/run.py", "main.py",
                 "mst/vocal_dataloader.py", "mst/vocal_system.py", "configs/data/vocal.yaml",
                 "configs/models/vocal-approach1.yaml", "configs/models/vocal-approach2.yaml", "requirements-vocal.txt"):
        assert path in touched, path


def test_standalone_fixes_come_first_and_depend_on_nothing():
    series = committed()
    first_dependent = next(i for i, p in enumerate(series) if patches.depends_on(p))
    assert first_dependent >= 12
    assert all(not patches.depends_on(p) for p in series[:first_dependent])
    assert {s for s in FIXES} <= {p.subject for p in series[:first_dependent]}


def test_dependencies_of_the_vocal_group():
    series = committed()
    configs = by_subject(VOCAL[-1])
    base = {p.subject for p in patches.closure(configs, series)}
    assert set(VOCAL) <= base
    assert {"Allow a MixStyleTransferModel without mix encoder", "Treat a mono reference mix as dual mono",
            "Let the controller take any number of mix tokens up to two",
            "Fix the mix console when the track panner is off",
            "Add optional look-ahead compensation to the mix console"} <= base
    assert [p.subject for p in patches.closure(by_subject(FIXES[1]), series)] == [FIXES[1]]
    assert patches.test_files(by_subject(VOCAL[1])) == ["tests/test_vocal_dataloader.py"]


def test_no_copies_of_our_package_and_reviewable_sizes():
    for p in committed():
        assert len(p.text) < 30_000, (p.name, len(p.text))
        for b in p.blocks:
            assert not b.path.startswith("mst/vocal/"), (p.name, b.path)
            assert b"mst_single" not in (b.added or b""), (p.name, b.path)
        assert "Generated from vocal-mst" not in p.text
    dataset = next(b for b in by_subject(VOCAL[1]).blocks if b.path == "mst/vocal_dataloader.py")
    assert dataset.new_file and dataset.added.count(b"\n") <= 350


def test_loss_reuses_upstreams_auraloss():
    block = next(b for b in by_subject(VOCAL[0]).blocks if b.path == "mst/loss.py")
    assert "+import auraloss" in block.text and "auraloss.freq.MultiResolutionSTFTLoss(" in block.text


def test_check_command_line_reports_ok():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "patches.py"), "check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{len(committed())} patches OK" in result.stdout


# ----------------------------------------------------------------------------------------------
# the series applies in order (blob ids) and dependencies point backwards

def test_reordered_series_does_not_apply(series):
    """0010 and 0011 both change mst/modules.py: in the other order the blob ids do not chain."""
    a, b = names(series)[9:11]
    (series / a).rename(series / f"0011{a[4:]}")
    (series / b).rename(series / f"0010{b[4:]}")
    edit(series / "series", f"{a}\n{b}\n", f"0010{b[4:]}\n0011{a[4:]}\n")
    text = problems_text(series)
    assert "mst/modules.py starts from blob" in text and "does not apply in this order" in text


def test_patch_on_another_upstream_version_is_rejected(series):
    target = series / names(series)[0]
    pin = patches.PIN_BLOBS["mst/dataloader.py"]
    edit(target, f"index {pin}..", f"index {'1' * 40}..")
    text = problems_text(series)
    assert f"{target.name}: mst/dataloader.py starts from blob 111111111111" in text


def test_unknown_or_later_dependency_is_rejected(series):
    first = series / names(series)[1]
    edit(first, "Upstream-Status: Pending", "Depends-on: Add nothing at all\nUpstream-Status: Pending")
    second = series / names(series)[2]
    edit(second, "Upstream-Status: Pending", f"Depends-on: {VOCAL[-1]}\nUpstream-Status: Pending")
    text = problems_text(series)
    assert f'{first.name}: Depends-on names "Add nothing at all", which no patch in the series has' in text
    assert f'{second.name}: Depends-on "{VOCAL[-1]}", which comes later in the series' in text


# ----------------------------------------------------------------------------------------------
# broken copies are rejected with a message that names the patch and the problem

def test_missing_trailer_is_rejected(series):
    target = series / names(series)[0]
    edit(target, "Upstream-Status: Pending\n", "")
    text = problems_text(series)
    assert target.name in text and "Upstream-Status" in text


def test_unlisted_patch_is_rejected(series):
    shutil.copy(series / names(series)[0], series / "0099-Extra-change.patch")
    assert "0099-Extra-change.patch: not listed in series" in problems_text(series)


def test_listed_but_missing_patch_is_rejected(series):
    gone = names(series)[-1]
    (series / gone).unlink()
    assert f"lists '{gone}', which does not exist" in problems_text(series)


def test_missing_series_file_is_rejected(series):
    (series / "series").unlink()
    assert "series: missing" in problems_text(series)


@pytest.mark.parametrize("old, new, message", [
    ("Subject: [PATCH] Make torchaudio", "Subject: [PATCH] Makes torchaudio", "imperative"),
    ("Subject: [PATCH] Make torchaudio", "Subject: [PATCH] Added torchaudio", "imperative"),
    ("Subject: [PATCH] Make torchaudio", "Subject: [PATCH] make torchaudio", "capitalised"),
    ("Subject: [PATCH] Make torchaudio optional for training and data loading\n",
     "Subject: [PATCH] Make torchaudio optional for training and data loading.\n", "ends with a period"),
    ("From: vocal-mst <vocal-mst@users.noreply.github.com>", "From: Someone <a@b.c>", "author is"),
    ("From 0000000000000000000000000000000000000000 Mon", "From 1111111111111111111111111111111111111111 Mon",
     "--zero-commit"),
    ("Upstream-Status: Pending", "Upstream-Status: Maybe", "Upstream-Status"),
])
def test_malformed_header_or_message_is_rejected(series, old, new, message):
    target = series / names(series)[0]
    edit(target, old, new)
    text = problems_text(series)
    assert target.name in text and message in text


def test_hunk_with_wrong_line_count_is_rejected(series):
    target = series / names(series)[0]
    text = target.read_text()
    i = text.index("\n@@ -") + 1
    j = text.index("\n", i)
    header = text[i:j]
    m = patches.HUNK.match(header)
    bad = header.replace(f"+{m.group(3)},{m.group(4)}", f"+{m.group(3)},{int(m.group(4)) + 5}", 1)
    target.write_text(text[:i] + bad + text[j:])
    assert "header says" in problems_text(series)


def test_patch_without_test_is_rejected(series):
    target = series / names(series)[1]
    text = target.read_text()
    cut = text.index("diff --git a/tests/")
    target.write_text(text[:cut])
    assert f"{target.name}: adds or changes no test under tests/" in problems_text(series)


def test_misnumbered_patch_is_rejected(series):
    first, second = names(series)[:2]
    series_file = series / "series"
    edit(series_file, f"{first}\n{second}\n", f"{second}\n{first}\n")
    assert f"{second}: is number 1 in series but named 0002" in problems_text(series)


# ----------------------------------------------------------------------------------------------
# provenance

def test_patch_series_hash_follows_the_patches(series):
    assert patch_series_hash(series) == patch_series_hash(patches.PATCHES)
    assert patch_series_hash(series) not in ("", "none")
    before = patch_series_hash(series)
    edit(series / names(series)[2], "Upstream-Status: Pending", "Upstream-Status: Submitted [GitHub PR]")
    assert patch_series_hash(series) != before


def test_patch_series_hash_follows_the_series_order(series):
    before = patch_series_hash(series)
    first, second = names(series)[:2]
    edit(series / "series", f"{first}\n{second}\n", f"{second}\n{first}\n")
    assert patch_series_hash(series) != before


# ----------------------------------------------------------------------------------------------
# the submodule pointer

def test_gitmodules_and_gitlink_name_the_pinned_upstream():
    text = (ROOT / ".gitmodules").read_text()
    assert '[submodule "Diff-MST"]' in text
    assert "path = Diff-MST" in text and f"url = {patches.UPSTREAM_URL}" in text
    staged = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--stage", "--", "Diff-MST"],
                            capture_output=True, text=True, timeout=30)
    assert staged.returncode == 0, staged.stderr
    assert staged.stdout.split() == ["160000", patches.PIN, "0", "Diff-MST"]


# ----------------------------------------------------------------------------------------------
# with upstream checked out (not in CI): apply with git am, export back byte for byte

def _upstream_at_pin() -> bool:
    up = patches.DEFAULT_UPSTREAM
    if not (up / ".git").exists():
        return False
    head = subprocess.run(["git", "-C", str(up), "rev-parse", "HEAD"], capture_output=True, text=True)
    return head.returncode == 0 and head.stdout.strip() == patches.PIN


def round_trip(copy: Path, series: Path, out: Path) -> None:
    """apply the series to ``copy`` (a clean checkout at the pin), refuse a second apply, export it
    back to ``out`` and compare byte for byte."""
    commits = patches.apply(copy, series)
    assert len(commits) == len(names(series))
    with pytest.raises(patches.PatchError, match="not at the pinned commit"):
        patches.apply(copy, series)
    out.mkdir()
    patches.export(copy, patches.BRANCH, out)
    for name in names(series):
        assert (out / name).read_bytes() == (series / name).read_bytes(), name
    assert (out / "series").read_bytes() == (series / "series").read_bytes()


@pytest.mark.skipif(not _upstream_at_pin(), reason="needs Diff-MST/ checked out at the pinned commit "
                    "(git submodule update --init Diff-MST); CI has no upstream")
def test_apply_and_export_round_trip(tmp_path, series):
    copy = tmp_path / "Diff-MST"
    subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", str(patches.DEFAULT_UPSTREAM), str(copy)],
                   check=True, timeout=300)
    subprocess.run(["git", "-C", str(copy), "checkout", "-q", "--detach", patches.PIN], check=True, timeout=300)
    round_trip(copy, series, tmp_path / "exported")

def test_apply_and_export_refuse_an_empty_submodule_folder(tmp_path, series):
    """In a clone without the submodule, Diff-MST/ is empty: git must not fall through to this repo."""
    empty = tmp_path / "Diff-MST"
    empty.mkdir()
    with pytest.raises(patches.PatchError, match="not a git checkout"):
        patches.apply(empty, series)
    with pytest.raises(patches.PatchError, match="not a git checkout"):
        patches.export(empty, patches.BRANCH, series)
    assert (series / "series").exists() and names(series) == names(patches.PATCHES)


def test_standalone_and_test_refuse_an_empty_submodule_folder(tmp_path):
    empty = tmp_path / "Diff-MST"
    empty.mkdir()
    with pytest.raises(patches.PatchError, match="not a git checkout"):
        patches.standalone(empty, Path(sys.executable))
    with pytest.raises(patches.PatchError, match="not a git checkout"):
        patches.test_series(empty, Path(sys.executable))


# ----------------------------------------------------------------------------------------------
# the torchaudio stand-in for upstream's tests, and the upstream-fit report

def test_torchaudio_standin_reads_and_writes_like_torchaudio(tmp_path):
    env = patches.test_env(Path(sys.executable), tmp_path)  # torchaudio does not import here
    assert env["PYTHONPATH"] == str(tmp_path / "standin")
    code = (
        "import numpy as np, torch, torchaudio\n"
        "from torchaudio.pipelines import HDEMUCS_HIGH_MUSDB_PLUS\n"
        f"path = r'{tmp_path / 'x.wav'}'\n"
        "x = torch.linspace(-0.5, 0.5, 2000).repeat(2, 1)\n"
        "torchaudio.save(path, x, 16000)\n"
        "assert torchaudio.info(path).num_frames == 2000\n"
        "y, sr = torchaudio.load(path, frame_offset=100, num_frames=50)\n"
        "assert sr == 16000 and y.shape == (2, 50) and torch.equal(y, x[:, 100:150])\n"
        "try:\n    HDEMUCS_HIGH_MUSDB_PLUS.get_model()\nexcept RuntimeError as e:\n    print('raised:', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "raised: torchaudio.pipelines.HDEMUCS_HIGH_MUSDB_PLUS is not available" in result.stdout


def test_fit_report_writes_the_loss_curve(tmp_path):
    run = tmp_path / "run" / "lightning_logs" / "version_0"
    run.mkdir(parents=True)
    rows = ["epoch,lr-Adam,step,train/l1_step,train/loss_step,train/mrstft_step,val/loss,val/l1,val/mrstft",
            ",1e-05,0,,,,,,"]
    rows += [f"0,,{s},0.1,{10.0 / (s + 1):.4f},1.0,,," for s in range(30)]
    rows += ["0,,29,,,,0.75,0.1,0.65"]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run / "config.yaml").write_text("seed_everything: 42\n")
    out = tmp_path / "report"
    report = patches.fit_report(tmp_path / "run", out)
    assert report["steps"] == 30 and report["val"] == [(29, 0.75)]
    assert report["first20"] == pytest.approx(sum(10.0 / (s + 1) for s in range(20)) / 20, rel=1e-3)
    table = list(csv.DictReader((out / "loss.csv").open()))
    assert [int(r["step"]) for r in table] == list(range(30))
    assert float(table[0]["train_loss"]) == 10.0 and table[29]["val_loss"] == "0.75"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "config.yaml").read_text() == "seed_everything: 42\n"
    with pytest.raises(patches.PatchError, match="metrics.csv"):
        patches.fit_report(tmp_path / "nothing", out)


def test_committed_fit_record_is_well_formed():
    rows = list(csv.DictReader((patches.PATCHES / "upstream-fit" / "loss.csv").open()))
    steps = [int(r["step"]) for r in rows]
    assert len(rows) >= 100 and steps == sorted(set(steps))
    assert all(float(r["train_loss"]) > 0 and float(r["train_loss"]) < float("inf") for r in rows)
    assert (patches.PATCHES / "upstream-fit" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    config = (patches.PATCHES / "upstream-fit" / "config.yaml").read_text()
    assert "class_path: mst.vocal_system.VocalSystem" in config and "lr: 1.0e-05" in config
