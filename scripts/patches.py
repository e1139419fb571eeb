#!/usr/bin/env python3
"""Our patch series on upstream Diff-MST (``patches/``): check it, apply it, export it, test it.

    python scripts/patches.py check                       # CI: needs no upstream checkout
    python scripts/patches.py check --standalone [--upstream Diff-MST] [--python PY]
    python scripts/patches.py apply  [--upstream Diff-MST]
    python scripts/patches.py export [--upstream Diff-MST] [--from vocal-mst]
    python scripts/patches.py test   [--upstream Diff-MST] [--python PY]
    python scripts/patches.py fit-report RUN_DIR [--out patches/upstream-fit]

``patches/series`` lists the patches in order; each is ``git format-patch`` output (``0001-*.patch``)
made by ``export`` with options that keep the bytes stable (zero commit ids, no signature, no
diffstat, full blob ids, fixed identity and dates). ``apply`` runs ``git am`` with a fixed committer
and ``--committer-date-is-author-date``, so the applied commits have the same ids on every machine;
``git am`` never applies a hunk with fuzz.

A patch that needs another one says so in its message with a ``Depends-on: <subject>`` trailer; a
patch without one is independent: it applies alone on the pinned commit and its tests pass there.
``check`` verifies what needs no upstream (well formed, dependencies point backwards, every file's
blob ids chain from the pinned commit's through the series); ``check --standalone`` proves the rest
on an upstream checkout: for each patch, on a fresh tree at the pin with only its dependencies
applied, its tests fail without its change and pass with it.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make mst_single importable
    sys.path.insert(0, str(ROOT))

from mst_single.errors import MstError  # noqa: E402
from mst_single.fileio import write_text  # noqa: E402

UPSTREAM_URL = "https://github.com/sai-soum/Diff-MST"
PIN = "3b90ef838272b827c86610cf25b510a23a4147fd"
# git blob ids at PIN of the upstream files the series changes (what `git ls-tree PIN` prints): the
# first patch that touches a file must start from exactly this content
PIN_BLOBS = {
    "configs/models/naive+feat.yaml": "fc1fc337df0bd458777168a9c0a074649780080d",
    "main.py": "94fa91380eda77a349c64281aa090f3f97613855",
    "mst/callbacks/mix.py": "9137ad1f32a62a1e0881103517ef7e5b70429f6b",
    "mst/dataloader.py": "d8f92ec61914c43f1ec548a322d56ad3f9a75472",
    "mst/fx_encoder.py": "5b223ef24c864dfbf390f18a8ef850e5926722fb",
    "mst/loss.py": "400a3f3d3d05cee1e7f876d33bee743e8cfb09d2",
    "mst/modules.py": "90bd94e0dd525076f3fae90d5d88552a7977c54e",
    "mst/system.py": "34169b141e6a3bdcda489cb89c0b87f53c9c3c3d",
    "scripts/run.py": "d00606c5da68635ef1e6249e1c668fdc758da6e4",
}
PATCHES = ROOT / "patches"
DEFAULT_UPSTREAM = ROOT / "Diff-MST"
DEFAULT_PYTHON = ROOT / ".venv-upstream" / "bin" / "python"
BRANCH = "vocal-mst"
NAME, EMAIL = "vocal-mst", "vocal-mst@users.noreply.github.com"
ZERO = "0" * 40

SERIES_HEADER = (f"# Patches onto {UPSTREAM_URL} at {PIN}, applied in this order\n"
                 "# by `python scripts/patches.py apply`; regenerate with `export`.\n")
PATCH_NAME = re.compile(r"^(\d{4})-[A-Za-z0-9._-]+\.patch$")
TRAILER = re.compile(r"^Upstream-Status: (Pending|Submitted \[[^\]]+\]|Accepted|Backport \[[^\]]+\]|"
                     r"Denied|Inappropriate \[[^\]]+\])$")
DEPENDS = re.compile(r"^Depends-on: (.+)$")
HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
NOT_IMPERATIVE = re.compile(r"^([A-Za-z]+(ed|ing)|[A-Za-z]*[^s]s)$")  # Added, Adding, Adds (not Process)
IMPERATIVE_ANYWAY = {"Embed", "Speed", "Feed", "Need", "Seed", "Shed", "Bring", "Sing", "String", "Ping", "Focus", "Bias"}
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C", "TZ": "UTC"}
# git settings that would change format-patch's bytes if a user had them set in the repo
GIT_STABLE = ["-c", "core.abbrev=12", "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false",
              "-c", "diff.algorithm=myers", "-c", "diff.renames=false", "-c", "core.quotePath=true",
              "-c", f"user.name={NAME}", "-c", f"user.email={EMAIL}"]
# upstream has no pytest configuration: -c /dev/null keeps pytest from taking this repository's
# pyproject.toml (Diff-MST/ lives inside it) and its options (timeout, ...) for upstream's
PYTEST = ["-m", "pytest", "-q", "-c", os.devnull, "-p", "no:cacheprovider"]


class PatchError(MstError):
    """The patch series is incomplete, malformed or does not apply."""


def blob_id(data: bytes) -> str:
    """git's object id of a file's content (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ----------------------------------------------------------------------------------------------
# reading patches

@dataclass
class Block:
    """One file's diff in a patch (``diff --git`` to the next one)."""
    path: str
    text: str
    new_file: bool = False
    added: bytes | None = None  # a new file's content, rebuilt from its '+' lines
    index_from: str | None = None  # blob id before the change (``index a..b``)
    index_to: str | None = None  # blob id after the change
    problems: list[str] = field(default_factory=list)


@dataclass
class Patch:
    name: str
    text: str
    headers: dict[str, str]
    subject: str
    message: list[str]  # commit message body lines (after the subject)
    preamble: str  # everything before the first block
    blocks: list[Block]
    problems: list[str]


def _parse_block(lines: list[str]) -> Block:
    m = re.match(r"^diff --git a/(\S+) b/(\S+)$", lines[0].rstrip("\n"))
    if not m or m.group(1) != m.group(2):
        return Block(path="?", text="".join(lines), problems=[f"unreadable diff header: {lines[0].strip()!r}"])
    block = Block(path=m.group(2), text="".join(lines))
    i, problems = 1, block.problems
    while i < len(lines) and not lines[i].startswith(("--- ", "@@")):
        head = lines[i].rstrip("\n")
        if head.startswith("new file mode "):
            block.new_file = True
        elif head.startswith("index "):
            ids = re.match(r"^index ([0-9a-f]+)\.\.([0-9a-f]+)", head)
            if ids:
                block.index_from, block.index_to = ids.group(1), ids.group(2)
        elif head.startswith("Binary files") or head.startswith("GIT binary patch"):
            problems.append(f"{block.path}: binary diff (not reviewable as text)")
        i += 1
    if i < len(lines) and lines[i].startswith("--- "):
        want_old = "--- /dev/null" if block.new_file else f"--- a/{block.path}"
        if lines[i].rstrip("\n") != want_old or i + 1 >= len(lines) or lines[i + 1].rstrip("\n") != f"+++ b/{block.path}":
            problems.append(f"{block.path}: unexpected ---/+++ lines")
        i += 2
    added: list[str] = []
    hunks = 0
    while i < len(lines):
        m = HUNK.match(lines[i])
        if not m:
            problems.append(f"{block.path}: expected a hunk header, got {lines[i].strip()[:60]!r}")
            break
        hunks += 1
        old_len = int(m.group(2)) if m.group(2) is not None else 1
        new_len = int(m.group(4)) if m.group(4) is not None else 1
        i += 1
        old = new = 0
        while i < len(lines) and (old < old_len or new < new_len):
            c = lines[i][:1]
            if c == " ":
                old, new = old + 1, new + 1
            elif c == "-":
                old += 1
            elif c == "+":
                new += 1
                added.append(lines[i][1:])
            elif c == "\\":
                pass
            else:
                break
            i += 1
        if i < len(lines) and lines[i].startswith("\\"):  # "\ No newline at end of file"
            if block.new_file and added:
                added[-1] = added[-1].rstrip("\n")
            i += 1
        if (old, new) != (old_len, new_len):
            problems.append(f"{block.path}: hunk {hunks} has {old}/{new} old/new lines, header says {old_len}/{new_len}")
            break
    if hunks == 0 and not block.new_file:
        problems.append(f"{block.path}: no hunks")
    if block.new_file:
        block.added = "".join(added).encode("utf-8")
    return block


def parse_patch(name: str, text: str) -> Patch:
    """Split ``git format-patch`` output into headers, message and file blocks, noting every problem."""
    problems: list[str] = []
    lines = text.splitlines(keepends=True)
    if not lines or not re.match(r"^From [0-9a-f]{40} Mon Sep 17 00:00:00 2001$", lines[0].rstrip("\n")):
        problems.append("does not start with a `From <commit> Mon Sep 17 00:00:00 2001` line (not git format-patch output)")
    elif lines[0][5:45] != ZERO:
        problems.append("the From line has a commit id: export with --zero-commit (scripts/patches.py export)")
    headers: dict[str, str] = {}
    i, last = 1, None
    while i < len(lines) and lines[i].strip():
        line = lines[i].rstrip("\n")
        if line[:1] in " \t" and last:
            headers[last] += " " + line.strip()
        elif ":" in line:
            last, value = line.split(":", 1)
            headers[last] = value.strip()
        else:
            problems.append(f"unreadable header line {line[:60]!r}")
        i += 1
    for h in ("From", "Date", "Subject"):
        if h not in headers:
            problems.append(f"no {h}: header")
    subject = re.sub(r"^\[PATCH[^\]]*\]\s*", "", headers.get("Subject", ""))
    start = i + 1 if i < len(lines) else i
    first_block = next((k for k in range(start, len(lines)) if lines[k].startswith("diff --git ")), len(lines))
    message = [ln.rstrip("\n") for ln in lines[start:first_block]]
    if message and message[-1] == "---":  # format-patch with a diffstat puts '---' before it
        message = message[:-1]
    while message and not message[-1].strip():
        message.pop()
    blocks: list[Block] = []
    k = first_block
    while k < len(lines):
        j = next((m for m in range(k + 1, len(lines)) if lines[m].startswith("diff --git ")), len(lines))
        blocks.append(_parse_block(lines[k:j]))
        k = j
    for b in blocks:
        problems += b.problems
    return Patch(name=name, text=text, headers=headers, subject=subject, message=message,
                 preamble="".join(lines[:first_block]), blocks=blocks, problems=problems)


def read_series(patches: Path = PATCHES) -> tuple[list[str], list[str]]:
    """(patch names listed in ``series``, problems)."""
    series = patches / "series"
    if not series.is_file():
        return [], [f"{series}: missing (one patch file name a line, in apply order)"]
    names, problems = [], []
    for n, line in enumerate(series.read_text(encoding="utf-8").splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if not PATCH_NAME.match(name):
            problems.append(f"{series}:{n}: '{name}' is not a 000N-subject.patch name")
        if name in names:
            problems.append(f"{series}:{n}: '{name}' is listed twice")
        names.append(name)
    return names, problems


# ----------------------------------------------------------------------------------------------
# check

def check_subject(subject: str) -> list[str]:
    problems = []
    if not subject:
        return ["empty subject"]
    if len(subject) > 72:
        problems.append(f"subject is {len(subject)} characters (at most 72)")
    if subject.endswith("."):
        problems.append("subject ends with a period")
    first = subject.split()[0]
    if not first[:1].isupper():
        problems.append(f"subject should start with a capitalised imperative verb, not '{first}'")
    elif NOT_IMPERATIVE.match(first) and first not in IMPERATIVE_ANYWAY:
        problems.append(f"subject should be imperative ('Add', 'Fix', ...), not '{first}'")
    return problems


def depends_on(patch: Patch) -> list[str]:
    """Subjects named by the patch's ``Depends-on:`` trailers."""
    return [m.group(1).strip() for ln in patch.message if (m := DEPENDS.match(ln))]


def check_patch(patch: Patch) -> list[str]:
    problems = list(patch.problems)
    problems += check_subject(patch.subject)
    author = patch.headers.get("From", "")
    if author and author != f"{NAME} <{EMAIL}>":
        problems.append(f"author is '{author}', expected '{NAME} <{EMAIL}>' (export sets it)")
    body = [ln for ln in patch.message if ln.strip()]
    if len(body) < 2:
        problems.append("no body saying why (a paragraph before the Upstream-Status trailer)")
    if not body or not TRAILER.match(body[-1]):
        problems.append("the message does not end with an `Upstream-Status: Pending` (or Submitted [where], "
                        "Inappropriate [why], ...) trailer")
    if not patch.blocks:
        problems.append("changes no file")
    elif not any(b.path.startswith("tests/") for b in patch.blocks):
        problems.append("adds or changes no test under tests/")
    return problems


def check_dependencies(patches: list[Patch]) -> list[str]:
    """Every ``Depends-on`` names the subject of an earlier patch in the series."""
    problems, earlier = [], set()
    subjects = {p.subject for p in patches}
    for patch in patches:
        for subject in depends_on(patch):
            if subject not in subjects:
                problems.append(f"{patch.name}: Depends-on names \"{subject}\", which no patch in the series has")
            elif subject not in earlier:
                problems.append(f"{patch.name}: Depends-on \"{subject}\", which comes later in the series")
        earlier.add(patch.subject)
    return problems


def check_chain(patches: list[Patch], pin_blobs: dict[str, str] = PIN_BLOBS) -> list[str]:
    """The series applies in order, as far as can be told without upstream's files: each file's first
    change starts from its blob at the pinned commit (a new file from nothing, and only if upstream
    has no such file), and every later change from the blob the previous one left."""
    problems, current = [], {}
    for patch in patches:
        for b in patch.blocks:
            if b.index_from is None or b.index_to is None:
                problems.append(f"{patch.name}: {b.path} has no `index <from>..<to>` line (export with --full-index)")
                continue
            if b.path in current:
                want = current[b.path]
            elif b.new_file:
                want = ZERO
                if b.path in pin_blobs:
                    problems.append(f"{patch.name}: adds {b.path}, which upstream already has at the pin")
            else:
                want = pin_blobs.get(b.path)
                if want is None:
                    problems.append(f"{patch.name}: changes {b.path}, which is neither in PIN_BLOBS (upstream at the "
                                    "pin) nor added by an earlier patch; add its `git ls-tree` blob id to PIN_BLOBS")
                    continue
            if not want.startswith(b.index_from) or len(b.index_from) != 40:
                problems.append(f"{patch.name}: {b.path} starts from blob {b.index_from[:12]}, but the pin and the "
                                f"patches before it leave {want[:12]}: the series does not apply in this order")
            if b.new_file and b.added is not None and blob_id(b.added) != b.index_to:
                problems.append(f"{patch.name}: {b.path}: the added lines do not hash to the blob id in its index line")
            current[b.path] = b.index_to
    return problems


def check(patches_dir: Path = PATCHES) -> list[str]:
    """Everything that can be checked without upstream's files; returns the problems (empty: fine)."""
    names, problems = read_series(patches_dir)
    on_disk = sorted(p.name for p in patches_dir.glob("*.patch"))
    for name in on_disk:
        if name not in names:
            problems.append(f"{patches_dir / name}: not listed in series (add it there, or delete it)")
    patches: list[Patch] = []
    for n, name in enumerate(names, 1):
        path = patches_dir / name
        if not path.is_file():
            problems.append(f"{patches_dir / 'series'}: lists '{name}', which does not exist")
            continue
        m = PATCH_NAME.match(name)
        if m and int(m.group(1)) != n:
            problems.append(f"{path}: is number {n} in series but named {m.group(1)}")
        patch = parse_patch(name, path.read_text(encoding="utf-8"))
        patches.append(patch)
        problems += [f"{path}: {p}" for p in check_patch(patch)]
    subjects = [p.subject for p in patches]
    for s in sorted({s for s in subjects if subjects.count(s) > 1}):
        problems.append(f"two patches have the subject \"{s}\"")
    problems += [f"{patches_dir}/{p}" for p in check_dependencies(patches) + check_chain(patches)]
    return problems


def load_series(patches_dir: Path = PATCHES) -> list[Patch]:
    """The parsed patches in series order (after ``check`` found no problem)."""
    names, _ = read_series(patches_dir)
    return [parse_patch(n, (patches_dir / n).read_text(encoding="utf-8")) for n in names]


def closure(patch: Patch, patches: list[Patch]) -> list[Patch]:
    """The patch and everything it depends on, directly or not, in series order."""
    by_subject = {p.subject: p for p in patches}
    need, todo = {patch.subject}, [patch]
    while todo:
        for subject in depends_on(todo.pop()):
            if subject not in need and subject in by_subject:
                need.add(subject)
                todo.append(by_subject[subject])
    return [p for p in patches if p.subject in need]


def test_files(patch: Patch) -> list[str]:
    return [b.path for b in patch.blocks if b.path.startswith("tests/") and b.path.endswith(".py")]


# ----------------------------------------------------------------------------------------------
# apply / export (need the upstream checkout)

def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, **GIT_ENV}
    result = subprocess.run(["git", *GIT_STABLE, "-C", str(repo), *args], capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise PatchError(f"`git {' '.join(args)}` failed: {(result.stderr or result.stdout).strip()}", repo)
    return result


def require_checkout(upstream: Path) -> None:
    """``upstream`` is a git checkout of its own (not the empty submodule folder, where git would
    silently act on this repository instead)."""
    if not (upstream / ".git").exists():
        raise PatchError("is not a git checkout of Diff-MST", upstream,
                         "run `git submodule update --init Diff-MST` (or pass --upstream DIR)")


def check_upstream(upstream: Path) -> None:
    """The checkout exists, is at the pinned commit and has no changes."""
    require_checkout(upstream)
    head = git(upstream, "rev-parse", "HEAD").stdout.strip()
    if head != PIN:
        raise PatchError(f"is at {head[:12]}, not at the pinned commit {PIN[:12]} (already patched?)", upstream,
                         f"run `git -C {upstream} checkout --detach {PIN}` (drops earlier applied patches)")
    status = git(upstream, "status", "--porcelain").stdout
    if status.strip():
        raise PatchError(f"has uncommitted changes or untracked files:\n{status.rstrip()}", upstream,
                         f"clean it (`git -C {upstream} stash -u`) or use a fresh checkout")


def apply(upstream: Path, patches_dir: Path = PATCHES, branch: str = BRANCH) -> list[str]:
    """``git am`` the series onto the pinned commit on a new branch; returns the new commit ids."""
    problems = check(patches_dir)
    if problems:
        raise PatchError("the series does not pass `check`:\n  " + "\n  ".join(problems), patches_dir)
    check_upstream(upstream)
    names, _ = read_series(patches_dir)
    git(upstream, "checkout", "-q", "-B", branch, PIN)
    result = git(upstream, "am", "--quiet", "--committer-date-is-author-date", "--no-3way", "--whitespace=nowarn",
                 *[str((patches_dir / n).resolve()) for n in names], check=False)
    if result.returncode != 0:
        git(upstream, "am", "--abort", check=False)
        git(upstream, "checkout", "-q", "--detach", PIN, check=False)
        raise PatchError(f"a patch does not apply cleanly: {(result.stdout + result.stderr).strip()}", upstream,
                         "rebase the series on the pinned commit (apply by hand, fix, export)")
    return git(upstream, "rev-list", "--reverse", f"{PIN}..HEAD").stdout.split()


def export(upstream: Path, branch: str = BRANCH, patches_dir: Path = PATCHES) -> list[str]:
    """Write ``PIN..branch`` as the series (stable bytes); returns the patch names."""
    require_checkout(upstream)
    if git(upstream, "merge-base", "--is-ancestor", PIN, branch, check=False).returncode != 0:
        raise PatchError(f"branch '{branch}' does not contain the pinned commit {PIN[:12]}", upstream,
                         "export a branch made with `apply` (or based on the pin)")
    with tempfile.TemporaryDirectory() as tmp:
        git(upstream, "format-patch", "--quiet", "--zero-commit", "--no-signature", "--no-stat", "--full-index",
            "--no-numbered", "--no-renames", "--no-binary", "--encode-email-headers", "-o", tmp, f"{PIN}..{branch}")
        made = sorted(Path(tmp).glob("*.patch"))
        if not made:
            raise PatchError(f"branch '{branch}' has no commits after the pin", upstream)
        for old in patches_dir.glob("*.patch"):
            if PATCH_NAME.match(old.name) and old.name not in {p.name for p in made}:
                old.unlink()
        for p in made:
            write_text(patches_dir / p.name, p.read_text(encoding="utf-8"))
    names = [p.name for p in made]
    write_text(patches_dir / "series", SERIES_HEADER + "".join(n + "\n" for n in names))
    return names


# ----------------------------------------------------------------------------------------------
# tests on upstream (need the checkout and a Python with upstream's requirements)

# torch releases newer than torchaudio's have no torchaudio build (torch 2.13 here), while upstream's
# modules import it at module level. Where it is missing, tests run with this stand-in on the path:
# upstream's maintainers run them with torchaudio installed, and only file I/O is real here (it is
# what scripts/run.py and MultitrackDataset call before "Make torchaudio optional"); the torchaudio
# patch's own test blocks torchaudio outright, so the stand-in cannot make it pass.
TORCHAUDIO_STANDIN = '''"""Stand-in for torchaudio's file I/O (soundfile), written by vocal-mst's scripts/patches.py."""
import sys
import types

import numpy as np
import soundfile as sf
import torch


def set_audio_backend(backend):
    pass


def info(filepath, backend=None):
    i = sf.info(str(filepath))
    return types.SimpleNamespace(sample_rate=i.samplerate, num_frames=i.frames, num_channels=i.channels)


def load(filepath, frame_offset=0, num_frames=-1, backend=None, **kwargs):
    x, sr = sf.read(str(filepath), start=frame_offset, frames=num_frames, dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(x.T)), sr


def save(filepath, src, sample_rate, **kwargs):
    sf.write(str(filepath), src.detach().cpu().numpy().T, sample_rate, subtype="FLOAT")


class _Unavailable:
    """A name that imports but raises when used."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        raise RuntimeError(f"{self._name} is not available in this torchaudio stand-in")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is not available in this torchaudio stand-in")


class _Module(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unavailable(f"{self.__name__}.{name}")


for _name in ("functional", "transforms", "pipelines"):
    globals()[_name] = sys.modules[f"{__name__}.{_name}"] = _Module(f"{__name__}.{_name}")
'''


def test_env(python: Path, scratch: Path) -> dict[str, str]:
    """Environment for upstream's tests: the torchaudio stand-in on PYTHONPATH if torchaudio is missing."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WANDB_MODE": "offline"}
    env.pop("PYTHONPATH", None)
    if subprocess.run([str(python), "-c", "import torchaudio"], capture_output=True, env=env).returncode != 0:
        (scratch / "standin" / "torchaudio").mkdir(parents=True, exist_ok=True)
        (scratch / "standin" / "torchaudio" / "__init__.py").write_text(TORCHAUDIO_STANDIN)
        env["PYTHONPATH"] = str(scratch / "standin")
    return env


def run_pytest(python: Path, tree: Path, tests: list[str], env: dict[str, str], timeout: float = 1800):
    """pytest on ``tests`` in ``tree`` with upstream's (empty) settings; tree's mst comes first."""
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in [str(tree), env.get("PYTHONPATH")] if p)}
    return subprocess.run([str(python), *PYTEST, "--rootdir", str(tree), *tests], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=timeout)


def summary(result: subprocess.CompletedProcess) -> str:
    """pytest's closing line ("3 passed in 9.1s")."""
    lines = [ln.strip("= ") for ln in result.stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else (result.stderr.strip().splitlines() or ["no output"])[-1]


def fresh_tree(upstream: Path, dest: Path) -> None:
    """A clean worktree of ``upstream`` at the pin (shares its objects; removed by drop_tree)."""
    git(upstream, "worktree", "add", "-q", "--detach", str(dest), PIN)


def drop_tree(upstream: Path, dest: Path) -> None:
    git(upstream, "worktree", "remove", "--force", str(dest), check=False)
    git(upstream, "worktree", "prune", check=False)


def am(tree: Path, patches: list[Patch], patches_dir: Path) -> None:
    result = git(tree, "am", "--quiet", "--committer-date-is-author-date", "--no-3way", "--whitespace=nowarn",
                 *[str((patches_dir / p.name).resolve()) for p in patches], check=False)
    if result.returncode != 0:
        git(tree, "am", "--abort", check=False)
        raise PatchError(f"does not apply on the pinned commit with only its dependencies: "
                         f"{(result.stdout + result.stderr).strip()}", patches_dir / patches[-1].name)


def standalone(upstream: Path, python: Path, patches_dir: Path = PATCHES, only: list[str] | None = None,
               log=print) -> list[str]:
    """For each patch: on a fresh tree at the pin with only its dependencies, its tests fail without its
    change and pass with it. Returns the problems (empty: every patch stands on its declared base)."""
    problems = check(patches_dir)
    if problems:
        raise PatchError("the series does not pass `check`:\n  " + "\n  ".join(problems), patches_dir)
    require_checkout(upstream)
    python = Path(os.path.abspath(python))  # not resolve(): a venv's python is a symlink out of it
    series = load_series(patches_dir)
    with tempfile.TemporaryDirectory(prefix="patches-standalone-") as tmp:
        env = test_env(python, Path(tmp))
        # upstream's mst has no __init__.py: an installed copy (pip install -e Diff-MST) would merge
        # into every tree's namespace package and lend it modules that the tree under test lacks
        shadow = subprocess.run([str(python), "-c", "import mst; print(*mst.__path__)"], cwd=tmp, env=env,
                                capture_output=True, text=True)
        if shadow.returncode == 0:
            raise PatchError(f"imports mst from {shadow.stdout.strip()} outside any tree under test", python,
                             "uninstall it (`pip uninstall DiffMST`): the tests put each tree on PYTHONPATH")
        if "PYTHONPATH" in env:
            log("torchaudio does not import in this Python: tests run with the I/O stand-in (see patches/README.md)")
        for patch in series:
            if only and patch.name[:4] not in only and patch.name not in only:
                continue
            base = closure(patch, series)[:-1]
            tree = Path(tmp) / patch.name[:4]
            fresh_tree(upstream, tree)
            try:
                am(tree, base + [patch], patches_dir)
                tests = test_files(patch)
                after = run_pytest(python, tree, tests, env)
                # "before": the patch's own change undone, its tests kept
                changed = [b.path for b in patch.blocks if b.path not in tests]
                added = [b.path for b in patch.blocks if b.new_file and b.path not in tests]
                kept = [p for p in changed if p not in added]
                if kept:
                    git(tree, "checkout", "HEAD~1", "--", *kept)
                for path in added:
                    (tree / path).unlink()
                before = run_pytest(python, tree, tests, env)
            finally:
                drop_tree(upstream, tree)
            deps = "alone" if not base else "on " + " ".join(p.name[:4] for p in base)
            log(f"{patch.name[:4]} {deps:<20} before: {summary(before):<45} after: {summary(after)}")
            if after.returncode != 0:
                problems.append(f"{patch.name}: its tests fail with the patch applied {deps}:\n"
                                f"{after.stdout[-3000:]}{after.stderr[-2000:]}")
            if before.returncode == 0:
                problems.append(f"{patch.name}: its tests pass without its change ({deps}): they do not test it")
    return problems


def test_series(upstream: Path, python: Path, patches_dir: Path = PATCHES) -> subprocess.CompletedProcess:
    """All tests the series adds, in the upstream checkout (the series applied), upstream's pytest settings."""
    require_checkout(upstream)
    python = Path(os.path.abspath(python))
    tests = [t for p in load_series(patches_dir) for t in test_files(p)]
    missing = [t for t in tests if not (upstream / t).is_file()]
    if missing:
        raise PatchError(f"has no {missing[0]}: the series is not applied", upstream,
                         "run `make upstream` (or `python scripts/patches.py apply`)")
    with tempfile.TemporaryDirectory(prefix="patches-test-") as tmp:
        return run_pytest(python, upstream, tests, test_env(python, Path(tmp)))


# ----------------------------------------------------------------------------------------------
# upstream-fit report

def fit_report(run_dir: Path, out: Path) -> dict:
    """Loss curve of a ``make upstream-fit`` run (its CSVLogger metrics.csv) as out/loss.csv + loss.png,
    with the run's resolved config.yaml."""
    found = sorted(run_dir.glob("lightning_logs/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise PatchError("has no lightning_logs/version_*/metrics.csv", run_dir, "run `make upstream-fit` first")
    with open(found[-1], newline="") as f:
        rows = list(csv.DictReader(f))
    train = [(int(r["step"]), float(r["train/loss_step"]), float(r.get("train/mrstft_step") or "nan"),
              float(r.get("train/l1_step") or "nan")) for r in rows if r.get("train/loss_step")]
    val = [(int(r["step"]), float(r["val/loss"])) for r in rows if r.get("val/loss")]
    if not train:
        raise PatchError("logged no training loss", found[-1])
    out.mkdir(parents=True, exist_ok=True)
    lines = ["step,train_loss,train_mrstft,train_l1,val_loss\n"]
    val_at = dict(val)
    for step, loss, mrstft, l1 in train:
        v = val_at.get(step)
        lines.append(f"{step},{loss:.6g},{mrstft:.6g},{l1:.6g},{'' if v is None else f'{v:.6g}'}\n")
    write_text(out / "loss.csv", "".join(lines))
    if (found[-1].parent / "config.yaml").is_file():  # main.py saves the resolved config (0007)
        write_text(out / "config.yaml", (found[-1].parent / "config.yaml").read_text(encoding="utf-8"))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array([t[0] for t in train])
    loss = np.array([t[1] for t in train])
    k = min(20, len(loss))
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="train loss (per step)")
    ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"train loss ({k}-step mean)")
    if val:
        ax.plot([v[0] for v in val], [v[1] for v in val], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("MR-STFT + L1")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(suffix=".png", dir=out, delete=False) as tmp:
        fig.savefig(tmp.name)
    os.chmod(tmp.name, 0o644)  # NamedTemporaryFile makes it private
    os.replace(tmp.name, out / "loss.png")
    plt.close(fig)
    first, last = loss[: min(20, len(loss))].mean(), loss[-min(20, len(loss)):].mean()
    return {"steps": int(steps[-1]) + 1, "first20": float(first), "last20": float(last),
            "val": val, "metrics": str(found[-1])}


# ----------------------------------------------------------------------------------------------
# command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="series complete, well formed, dependencies and blob ids consistent (no upstream)")
    p.add_argument("--standalone", action="store_true",
                   help="also: each patch on a fresh tree at the pin with only its dependencies; its tests fail "
                        "without it and pass with it (needs --upstream and --python)")
    p.add_argument("--only", nargs="*", help="with --standalone: these patches only (numbers, e.g. 0002)")
    p.add_argument("--upstream", type=Path, default=DEFAULT_UPSTREAM)
    p.add_argument("--python", type=Path, default=DEFAULT_PYTHON, help="Python with upstream's requirements")
    p = sub.add_parser("apply", help=f"git am the series onto the pinned upstream checkout (branch {BRANCH})")
    p.add_argument("--upstream", type=Path, default=DEFAULT_UPSTREAM)
    p = sub.add_parser("export", help="regenerate the series from an upstream branch")
    p.add_argument("--upstream", type=Path, default=DEFAULT_UPSTREAM)
    p.add_argument("--from", dest="branch", default=BRANCH)
    p = sub.add_parser("test", help="run the tests the series adds in the (applied) upstream checkout")
    p.add_argument("--upstream", type=Path, default=DEFAULT_UPSTREAM)
    p.add_argument("--python", type=Path, default=DEFAULT_PYTHON)
    p = sub.add_parser("fit-report", help="loss curve (CSV + PNG) of a `make upstream-fit` run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=PATCHES / "upstream-fit")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            problems = check()
            if not problems and args.standalone:
                problems = standalone(args.upstream, args.python, only=args.only)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print(f"patches: {len(problems)} problem(s)", file=sys.stderr)
                return 1
            series = load_series()
            independent = sum(1 for p in series if not depends_on(p))
            what = "each fails before and passes after on its own base" if args.standalone else "well formed"
            print(f"patches: {len(series)} patches OK ({independent} independent; {what})")
        elif args.command == "apply":
            commits = apply(args.upstream)
            print(f"patches: applied {len(commits)} patches onto {PIN[:12]} in {args.upstream} "
                  f"(branch {BRANCH}, HEAD {commits[-1][:12]})")
        elif args.command == "export":
            names = export(args.upstream, args.branch)
            print(f"patches: exported {len(names)} patches from {args.branch} to {PATCHES}")
        elif args.command == "test":
            result = test_series(args.upstream, args.python)
            print(result.stdout[-6000:] + result.stderr[-3000:])
            return result.returncode
        elif args.command == "fit-report":
            report = fit_report(args.run_dir, args.out)
            print(f"fit-report: {report['steps']} steps, train loss {report['first20']:.3f} (first 20) -> "
                  f"{report['last20']:.3f} (last 20); val {report['val']}; wrote {args.out}/loss.csv, loss.png")
    except MstError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
