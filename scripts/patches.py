#!/usr/bin/env python3
"""Our patch series on upstream Diff-MST (``patches/``): check it, refresh it, apply it, export it.

    python scripts/patches.py check                       # CI: needs no upstream checkout
    python scripts/patches.py refresh                     # rewrite the mst_single-derived files in the patches
    python scripts/patches.py apply  [--upstream Diff-MST]
    python scripts/patches.py export [--upstream Diff-MST] [--from vocal-mst]

``patches/series`` lists the patches in order; each is ``git format-patch`` output (``0001-*.patch``)
made by ``export`` with options that keep the bytes stable (zero commit ids, no signature, no
diffstat, full blob ids, fixed identity and dates). ``apply`` runs ``git am`` with a fixed committer
and ``--committer-date-is-author-date``, so the applied commits have the same ids on every machine;
``git am`` never applies a hunk with fuzz.

One source of truth: where ``mst_single`` has the component (the loss, the data layer), the patch
carries the same code, generated from ``mst_single`` (imports rewritten to relative ones, a header
naming the source) as new files under ``mst/vocal/``. ``check`` regenerates them and fails when a
patch is stale; ``refresh`` rewrites those file blocks in the patches, without upstream, so that
the series follows ``mst_single``.
"""
from __future__ import annotations

import argparse
import ast
import difflib
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
PATCHES = ROOT / "patches"
SOURCE = ROOT / "mst_single"
DEFAULT_UPSTREAM = ROOT / "Diff-MST"
BRANCH = "vocal-mst"
NAME, EMAIL = "vocal-mst", "vocal-mst@users.noreply.github.com"
ZERO = "0" * 40

GEN_DIR = "mst/vocal"  # where generated copies of mst_single modules live in upstream's tree
# Patch subject -> the mst_single modules whose code it carries. The mst_single modules they import
# come along, each in the first patch (in series order) that needs it; the first patch also
# carries the package's __init__.py.
GENERATED = {
    "Add MRSTFTL1Loss for waveform-aligned training": ["losses"],
    "Add VocalReferenceDataset and VocalDataModule": ["data"],
}
GEN_HEADER = ("# Generated from vocal-mst {source} by scripts/patches.py: edit it there and run\n"
              "# `python scripts/patches.py refresh`, not here.\n")
GEN_INIT = ('"""Single-track (vocal) components generated from vocal-mst\'s mst_single package.\n\n'
            'Each module is a copy of mst_single/<name>.py with its imports made relative; edit the\n'
            'original and run `python scripts/patches.py refresh` in vocal-mst.\n"""\n')

SERIES_HEADER = (f"# Patches onto {UPSTREAM_URL} at {PIN}, applied in this order\n"
                 "# by `python scripts/patches.py apply`; regenerate with `export` or `refresh`.\n")
PATCH_NAME = re.compile(r"^(\d{4})-[A-Za-z0-9._-]+\.patch$")
TRAILER = re.compile(r"^Upstream-Status: (Pending|Submitted \[[^\]]+\]|Accepted|Backport \[[^\]]+\]|"
                     r"Denied|Inappropriate \[[^\]]+\])$")
HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
NOT_IMPERATIVE = re.compile(r"^([A-Za-z]+(ed|ing)|[A-Za-z]*[^s]s)$")  # Added, Adding, Adds (not Process)
IMPERATIVE_ANYWAY = {"Embed", "Speed", "Feed", "Need", "Seed", "Shed", "Bring", "Sing", "String", "Ping", "Focus", "Bias"}
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C", "TZ": "UTC"}
# git settings that would change format-patch's bytes if a user had them set in the repo
GIT_STABLE = ["-c", "core.abbrev=12", "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false",
              "-c", "diff.algorithm=myers", "-c", "diff.renames=false", "-c", "core.quotePath=true",
              "-c", f"user.name={NAME}", "-c", f"user.email={EMAIL}"]


class PatchError(MstError):
    """The patch series is incomplete, malformed, stale or does not apply."""


# ----------------------------------------------------------------------------------------------
# generated files

def blob_id(data: bytes) -> str:
    """git's object id of a file's content (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _imported_modules(source: str, path: Path) -> list[str]:
    """The mst_single modules that ``source`` imports (any form, also inside functions)."""
    names = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "mst_single":
                names += [a.name for a in node.names]
            elif node.module.startswith("mst_single."):
                names.append(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names += [a.name.split(".")[1] for a in node.names if a.name.startswith("mst_single.")]
    return names


def rewrite_imports(source: str, path: Path) -> str:
    """``mst_single`` imports -> relative imports; anything else that names the package is an error."""
    out = []
    for line in source.splitlines(keepends=True):
        line = re.sub(r"^(\s*)from mst_single\.([\w.]+) import ", r"\1from .\2 import ", line)
        line = re.sub(r"^(\s*)from mst_single import ", r"\1from . import ", line)
        line = re.sub(r"^(\s*)import mst_single\.(\w+) as (\w+)", r"\1from . import \2 as \3", line)
        out.append(line)
    text = "".join(out)
    for node in ast.walk(ast.parse(text, str(path))):
        bad = (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "mst_single" for a in node.names)) \
            or (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "mst_single") \
            or (isinstance(node, ast.Name) and node.id == "mst_single")
        if bad:
            raise PatchError(f"line {node.lineno} refers to the mst_single package in a way that cannot be made "
                             "relative in upstream's tree", path,
                             "use `from mst_single.MODULE import NAME` (or `from mst_single import MODULE`)")
    return text


def generated_files(source: Path = SOURCE) -> dict[str, dict[str, bytes]]:
    """For each patch subject in GENERATED: {upstream path: file bytes} it must add, in path order."""
    done: set[str] = set()
    result: dict[str, dict[str, bytes]] = {}
    for n, (subject, roots) in enumerate(GENERATED.items()):
        files: dict[str, bytes] = {}
        if n == 0:
            files[f"{GEN_DIR}/__init__.py"] = GEN_INIT.encode()
        todo = list(roots)
        while todo:
            name = todo.pop(0)
            if name in done:
                continue
            path = source / f"{name}.py"
            if not path.is_file():
                raise PatchError(f"mst_single module '{name}' (carried by the patch \"{subject}\") does not exist",
                                 path, "add it, or change GENERATED in scripts/patches.py")
            text = path.read_text(encoding="utf-8")
            done.add(name)
            todo += [m for m in _imported_modules(text, path) if m not in done]
            header = GEN_HEADER.format(source=f"mst_single/{name}.py")
            files[f"{GEN_DIR}/{name}.py"] = (header + rewrite_imports(text, path)).encode("utf-8")
        result[subject] = dict(sorted(files.items()))
    return result


# ----------------------------------------------------------------------------------------------
# reading patches

@dataclass
class Block:
    """One file's diff in a patch (``diff --git`` to the next one)."""
    path: str
    text: str
    new_file: bool = False
    added: bytes | None = None  # a new file's content, rebuilt from its '+' lines
    index_to: str | None = None  # blob id after the change (``index a..b``)
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
                block.index_to = ids.group(2)
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


def check_generated(patches: dict[str, Patch], source: Path = SOURCE) -> list[str]:
    """Every generated file is in exactly the right patch with exactly the regenerated bytes."""
    problems = []
    by_subject = {p.subject: p for p in patches.values()}
    expected = generated_files(source)
    owners = {path: subject for subject, files in expected.items() for path in files}
    fix = "run `python scripts/patches.py refresh`"
    for subject, files in expected.items():
        patch = by_subject.get(subject)
        if patch is None:
            problems.append(f"no patch has the subject \"{subject}\" (it carries mst_single's {', '.join(GENERATED[subject])}); "
                            "fix GENERATED in scripts/patches.py or the series")
            continue
        blocks = {b.path: b for b in patch.blocks}
        for path, data in files.items():
            b = blocks.get(path)
            if b is None or not b.new_file:
                problems.append(f"{patch.name}: does not add {path} (generated from mst_single); {fix}")
                continue
            if b.added != data:
                have = (b.added or b"").decode("utf-8", "replace").splitlines()
                want = data.decode("utf-8").splitlines()
                diff = list(difflib.unified_diff(have, want, "patch", "mst_single", n=0, lineterm=""))
                where = next((ln for ln in diff if ln.startswith("@@")), "")
                problems.append(f"{patch.name}: {path} is stale: it differs from {source.name}/"
                                f"{Path(path).name} ({where.strip('@ ')}); {fix}")
            elif b.index_to != blob_id(data):
                problems.append(f"{patch.name}: {path} has the wrong blob id in its index line; {fix}")
    for patch in patches.values():
        for b in patch.blocks:
            if b.path.startswith(GEN_DIR + "/") and owners.get(b.path) != patch.subject:
                problems.append(f"{patch.name}: {b.path} is under {GEN_DIR}/ but is not generated for this patch "
                                f"from mst_single; {fix}")
    return problems


def check(patches_dir: Path = PATCHES, source: Path = SOURCE) -> list[str]:
    """Everything that can be checked without upstream's files; returns the problems (empty: fine)."""
    names, problems = read_series(patches_dir)
    on_disk = sorted(p.name for p in patches_dir.glob("*.patch"))
    for name in on_disk:
        if name not in names:
            problems.append(f"{patches_dir / name}: not listed in series (add it there, or delete it)")
    patches: dict[str, Patch] = {}
    for n, name in enumerate(names, 1):
        path = patches_dir / name
        if not path.is_file():
            problems.append(f"{patches_dir / 'series'}: lists '{name}', which does not exist")
            continue
        m = PATCH_NAME.match(name)
        if m and int(m.group(1)) != n:
            problems.append(f"{path}: is number {n} in series but named {m.group(1)}")
        patch = parse_patch(name, path.read_text(encoding="utf-8"))
        patches[name] = patch
        problems += [f"{path}: {p}" for p in check_patch(patch)]
    subjects = [p.subject for p in patches.values()]
    for s in sorted({s for s in subjects if subjects.count(s) > 1}):
        problems.append(f"two patches have the subject \"{s}\"")
    problems += [f"{patches_dir}/{p}" for p in check_generated(patches, source)]
    return problems


# ----------------------------------------------------------------------------------------------
# refresh (no upstream needed)

def render_new_file(path: str, data: bytes) -> str:
    """The ``diff --git`` block that git writes for a new text file (as export produces it)."""
    text = data.decode("utf-8")
    lines = text.splitlines(keepends=True)
    if not lines:
        raise PatchError("generated file is empty", path)
    count = f"+1,{len(lines)}" if len(lines) != 1 else "+1"
    out = [f"diff --git a/{path} b/{path}\n", "new file mode 100644\n", f"index {ZERO}..{blob_id(data)}\n",
           "--- /dev/null\n", f"+++ b/{path}\n", f"@@ -0,0 {count} @@\n"]
    out += ["+" + ln for ln in lines]
    if not text.endswith("\n"):
        out.append("\n\\ No newline at end of file\n")
    return "".join(out)


def refresh(patches_dir: Path = PATCHES, source: Path = SOURCE) -> list[str]:
    """Rewrite the generated files' blocks in the patches from mst_single; returns the patches changed."""
    names, problems = read_series(patches_dir)
    if problems:
        raise PatchError("; ".join(problems), patches_dir / "series")
    patches = {n: parse_patch(n, (patches_dir / n).read_text(encoding="utf-8")) for n in names}
    by_subject = {p.subject: p for p in patches.values()}
    expected = generated_files(source)
    owners = {path: subject for subject, files in expected.items() for path in files}
    changed = []
    for patch in patches.values():
        files = expected.get(patch.subject, {})
        blocks = {b.path: b.text for b in patch.blocks
                  if not (b.path.startswith(GEN_DIR + "/") and owners.get(b.path) != patch.subject)}
        blocks.update({path: render_new_file(path, data) for path, data in files.items()})
        text = patch.preamble + "".join(blocks[p] for p in sorted(blocks))
        if text != patch.text:
            write_text(patches_dir / patch.name, text)
            changed.append(patch.name)
    missing = [s for s in expected if s not in by_subject]
    if missing:
        raise PatchError(f"no patch has the subject \"{missing[0]}\"", patches_dir / "series",
                         "fix GENERATED in scripts/patches.py or create the patch on the upstream branch")
    return changed


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
# command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="series complete, patches well formed and current with mst_single (no upstream)")
    sub.add_parser("refresh", help="rewrite the mst_single-derived files in the patches (no upstream)")
    p = sub.add_parser("apply", help=f"git am the series onto the pinned upstream checkout (branch {BRANCH})")
    p.add_argument("--upstream", type=Path, default=DEFAULT_UPSTREAM)
    p = sub.add_parser("export", help="regenerate the series from an upstream branch")
    p.add_argument("--upstream", type=Path, default=DEFAULT_UPSTREAM)
    p.add_argument("--from", dest="branch", default=BRANCH)
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            problems = check()
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print(f"patches: {len(problems)} problem(s)", file=sys.stderr)
                return 1
            names, _ = read_series()
            print(f"patches: {len(names)} patches OK (generated files match mst_single)")
        elif args.command == "refresh":
            changed = refresh()
            print("patches: refreshed " + (", ".join(changed) if changed else "nothing (already current)"))
        elif args.command == "apply":
            commits = apply(args.upstream)
            print(f"patches: applied {len(commits)} patches onto {PIN[:12]} in {args.upstream} "
                  f"(branch {BRANCH}, HEAD {commits[-1][:12]})")
        elif args.command == "export":
            names = export(args.upstream, args.branch)
            print(f"patches: exported {len(names)} patches from {args.branch} to {PATCHES}")
    except MstError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
