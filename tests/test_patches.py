"""The upstream patch series (patches/): complete, well formed, current with mst_single, hashed.

All but the last test need no upstream checkout and no network. The last one applies the series to
a copy of Diff-MST/ and exports it back; it runs only where the submodule is checked out at the
pinned commit (`git submodule update --init Diff-MST`).
"""
from __future__ import annotations

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

LOSS_PATCH = next(iter(patches.GENERATED))  # subject of the patch that carries mst_single/losses.py


@pytest.fixture
def series(tmp_path) -> Path:
    """A private copy of patches/ to break."""
    return Path(shutil.copytree(ROOT / "patches", tmp_path / "patches"))


@pytest.fixture
def source(tmp_path) -> Path:
    """A private copy of mst_single/ to edit."""
    return Path(shutil.copytree(ROOT / "mst_single", tmp_path / "mst_single",
                                ignore=shutil.ignore_patterns("__pycache__")))


def names(series: Path) -> list[str]:
    return patches.read_series(series)[0]


def patch_with_subject(series: Path, subject: str) -> Path:
    for name in names(series):
        if patches.parse_patch(name, (series / name).read_text()).subject == subject:
            return series / name
    raise AssertionError(f"no patch '{subject}'")


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, count))


def problems_text(series: Path, source: Path = patches.SOURCE) -> str:
    return "\n".join(patches.check(series, source))


# ----------------------------------------------------------------------------------------------
# the committed series

def test_committed_series_passes_check():
    assert patches.check() == []
    listed = names(patches.PATCHES)
    assert len(listed) >= 10
    assert [n[:4] for n in listed] == [f"{i:04d}" for i in range(1, len(listed) + 1)]


def test_committed_series_covers_the_issue():
    subjects = [patches.parse_patch(n, (patches.PATCHES / n).read_text()).subject for n in names(patches.PATCHES)]
    touched = {b.path for n in names(patches.PATCHES)
               for b in patches.parse_patch(n, (patches.PATCHES / n).read_text()).blocks}
    assert set(patches.GENERATED) <= set(subjects)
    for path in ("mst/vocal/losses.py", "mst/vocal/data.py", "mst/vocal_system.py", "configs/data/vocal.yaml",
                 "configs/models/vocal-approach1.yaml", "configs/models/vocal-approach2.yaml"):
        assert path in touched, path


def test_check_command_line_reports_ok():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "patches.py"), "check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "patches OK" in result.stdout


def test_refresh_of_the_committed_series_changes_nothing(series):
    """The generated blocks that refresh writes are byte-identical to what git format-patch wrote."""
    before = {n: (series / n).read_bytes() for n in names(series)}
    assert patches.refresh(series) == []
    assert {n: (series / n).read_bytes() for n in names(series)} == before


def test_generated_files_carry_mst_single_code_with_relative_imports():
    files = {path: data for group in patches.generated_files().values() for path, data in group.items()}
    losses = files["mst/vocal/losses.py"].decode()
    assert losses.startswith("# Generated from vocal-mst mst_single/losses.py")
    assert losses.endswith((ROOT / "mst_single" / "losses.py").read_text())
    data = files["mst/vocal/data.py"].decode()
    assert "from .audio import" in data and "from mst_single" not in data
    assert {"mst/vocal/__init__.py", "mst/vocal/audio.py", "mst/vocal/errors.py"} <= set(files)


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


def test_stale_generated_file_is_rejected_and_refresh_fixes_it(series, source):
    edit(source / "losses.py", "from __future__ import annotations\n",
         "from __future__ import annotations\n\nSTALE_MARKER = 1  # changed after the last export\n")
    text = problems_text(series, source)
    loss_patch = patch_with_subject(series, LOSS_PATCH)
    assert f"{loss_patch.name}: mst/vocal/losses.py is stale" in text
    assert "scripts/patches.py refresh" in text

    assert patches.refresh(series, source) == [loss_patch.name]
    assert patches.check(series, source) == []
    assert "+STALE_MARKER = 1  # changed after the last export\n" in loss_patch.read_text()


def test_new_mst_single_dependency_is_added_by_refresh(series, source):
    (source / "extra_helper.py").write_text('"""A new helper the loss imports."""\nVALUE = 3\n')
    edit(source / "losses.py", "import torch\n", "import torch\n\nfrom mst_single.extra_helper import VALUE  # noqa\n")
    assert "does not add mst/vocal/extra_helper.py" in problems_text(series, source)
    patches.refresh(series, source)
    assert patches.check(series, source) == []
    block = patches.parse_patch("x", patch_with_subject(series, LOSS_PATCH).read_text())
    added = {b.path: b.added for b in block.blocks}
    assert added["mst/vocal/extra_helper.py"].endswith(b"VALUE = 3\n")
    assert b"from .extra_helper import VALUE" in added["mst/vocal/losses.py"]


def test_hand_edited_generated_file_is_rejected(series):
    target = patch_with_subject(series, LOSS_PATCH)
    edit(target, "+DEFAULT_EPS = 1e-8", "+DEFAULT_EPS = 1e-7")
    text = problems_text(series)
    assert "mst/vocal/losses.py is stale" in text


def test_unsupported_mst_single_import_is_a_clear_error(source):
    edit(source / "losses.py", "import torch\n", "import torch\nimport mst_single.errors\n")
    with pytest.raises(patches.PatchError, match="cannot be made relative"):
        patches.generated_files(source)


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
