"""notebooks/quickstart.ipynb, executed as a user runs it: top to bottom, on the demo data, on the CPU.

The notebook is the file users open: the tests run that file, with the "tiny" budget and temporary
folders injected after its `parameters` cell (papermill's convention). A temporary "drive" folder stands
in for Google Drive (runs survive there) and a "local" one for the runtime's disk (lost on disconnect).

- `test_quickstart_runs_and_resumes_after_a_disconnect`: the first session trains both approaches for one
  epoch and then "disconnects" (the kernel is shut down after the training cells); the second session
  runs all cells on a fresh local disk with two epochs: both runs resume from last.ckpt, then the
  curves, the comparison table, the players, spectrograms and mixes appear, and the files behind them.
- `test_plain_recipes_train_without_targets_or_ridge_and_unknown_or_switched_recipes_are_refused`: the "plain"
  value of `APPROACH2_RECIPE` trains configs/approach2.yaml with no targets, that of `APPROACH1_RECIPE`
  configs/approach1.yaml with no targets and no style ridge; a misspelt recipe is refused, and so is the other recipe on a
  run trained with one (resuming would mix the two).
- `test_install_cell_keeps_the_runtime_torch`: a fresh "hosted runtime" (a virtual environment holding
  only a torch build and ipykernel) runs the whole notebook, whose install cell installs vocal-mst into
  it; torch must be the runtime's own afterwards. Run for the ends of setup.py's torch range that are on
  local disk (no multi-GB download in CI).
"""
from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
A1, A2 = "quickstart-approach1", "quickstart-approach2"


def tiny_parameters(tmp: Path, local: str, **extra) -> dict:
    return dict(DATA="demo", DEMO_DIR=str(tmp / "drive" / "demo"), RUNS_DIR=str(tmp / "drive" / "runs"),
                LOCAL_DATA=str(tmp / local), BUDGET="tiny", LISTEN_SONGS=1, LISTEN_SECONDS=2.0, **extra)


def with_parameters(params: dict):
    """The notebook with a cell setting `params` inserted after its `parameters` cell (as papermill does)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, cell)
    return nb


def client(nb, kernel_name: str = "python3") -> NotebookClient:
    # cwd notebooks/: the notebook finds the checkout it lives in, as when opened from a clone
    return NotebookClient(nb, timeout=600, kernel_name=kernel_name, resources={"metadata": {"path": str(NOTEBOOK.parent)}})


def outputs_text(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("display_data", "execute_result"):
            parts.append(str(o.data.get("text/markdown", o.data.get("text/plain", ""))))
        elif o.output_type == "error":
            parts.append("\n".join(o.traceback))
    return "".join(parts)


def cell_with(nb, needle: str):
    return next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_committed_notebook_has_no_outputs_and_one_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c for c in code if c.outputs or c.execution_count is not None] == []
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert sum("train" in c.metadata.get("tags", []) for c in code) == 2  # the two fit cells


def test_install_cell_refuses_a_runtime_torch_outside_the_range(tmp_path):
    """A runtime whose torch is older than the range: a clear error before pip runs (nothing installed)."""
    fake = tmp_path / "fake" / "torch-2.5.1+cu124.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.5.1+cu124\n")
    nb = with_parameters(tiny_parameters(tmp_path, "local"))
    cells = [c.source for c in nb.cells[:nb.cells.index(cell_with(nb, "keep-runtime-torch")) + 1] if c.cell_type == "code"]
    # -S: site-packages without their .pth files, so vocal-mst's editable install is not importable
    # (a runtime without it); the fake torch metadata comes first on the path
    env = dict(os.environ, PYTHONPATH=f"{fake.parent}{os.pathsep}{sysconfig.get_paths()['purelib']}")
    out = subprocess.run([sys.executable, "-S", "-c", "\n".join(cells)], cwd=NOTEBOOK.parent, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert ("this runtime's torch 2.5.1+cu124 is outside vocal-mst's supported range torch<2.15,>=2.6"
            in out.stderr), out.stderr
    assert "$ pip install" not in out.stdout and "SKIPPED: Google Drive mount" in out.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~2-3 min on 2 idle cores; several times that on a busy machine
def test_quickstart_runs_and_resumes_after_a_disconnect(tmp_path):
    runs = tmp_path / "drive" / "runs"

    # session 1: one epoch each, then the runtime disconnects (the kernel goes, local disk too)
    # approach1 with ridge-start-60: the default oracle-targets recipe plus the style ridge and refined mixes (plain: the next test)
    nb1 = with_parameters(tiny_parameters(tmp_path, "local1", MAX_EPOCHS=1, APPROACH1_RECIPE="ridge-start-60"))
    c1 = client(nb1)
    with c1.setup_kernel():
        for i, cell in enumerate(nb1.cells):
            c1.execute_cell(cell, i)
            if "train" in cell.metadata.get("tags", []) and "approach1" in cell.source:
                break
    assert "SKIPPED: Google Drive mount" in outputs_text(cell_with(nb1, "drive.mount"))
    check = outputs_text(cell_with(nb1, 'mst("check-data"'))
    assert "$ mst-single check-data " in check and re.search(r"song\s+dur s\s+raw Hz", check)
    assert "8 pairs, 8 usable" in check
    first = {}
    for name in (A2, A1):
        assert (runs / name / "checkpoints" / "last.ckpt").is_file()
        first[name] = metrics_rows(runs / name)
        assert {r["epoch"] for r in first[name]} == {"0"}
    shutil.rmtree(tmp_path / "local1")

    # session 2: "Run all" again on a fresh local disk, two epochs: the same cells resume
    nb2 = with_parameters(tiny_parameters(tmp_path, "local2", APPROACH1_RECIPE="ridge-start-60"))
    client(nb2).execute()
    errors = [o for c in nb2.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    for name, cell in ((A2, "RUN_A2 = fit("), (A1, "RUN_A1 = fit(")):
        text = outputs_text(cell_with(nb2, cell))
        assert f"resuming from {runs / name / 'checkpoints' / 'last.ckpt'}" in text
        assert "--ckpt_path last" in text and "$ mst-single fit -c configs/" in text
        rows = metrics_rows(runs / name)
        assert rows[:len(first[name])] == first[name]  # the first session's history is kept
        assert {r["epoch"] for r in rows} == {"0", "1"}
        assert len(list((runs / name / "checkpoints").glob("best-*.ckpt"))) == 1
        assert list((runs / name / "wandb").glob("offline-run-*"))  # W&B offline by default
    # approach2's default recipe: the oracle-prior targets of every song, fitted in session 1 (cached on
    # "Drive", nothing refitted in session 2), and the recipe config trained toward them
    targets = json.loads((runs / "quickstart-targets.json").read_text())
    assert len(targets["params"]) == 8 and len(list((runs / ".cache" / "oracle").glob("oracle-*.json"))) == 16
    first_a2, again_a2 = (outputs_text(cell_with(nb, "RUN_A2 = fit(")) for nb in (nb1, nb2))
    assert "$ mst-single targets " in again_a2 and "--sample-rate 16000" in again_a2
    assert "restart 1:" in first_a2 and "restart 1:" not in again_a2
    assert "-c configs/approach2-ridge-init-slow.yaml" in again_a2
    cfg = yaml.safe_load((runs / A2 / "config.yaml").read_text())
    assert cfg["model"]["descriptor_init"] == "ridge" and cfg["data"]["param_targets"].endswith("quickstart-targets.json")
    assert "SKIPPED: W&B online" in outputs_text(cell_with(nb2, "if WANDB_ONLINE:"))
    # approach1's ridge-start-60 recipe: fit with the style ridge (fitted in session 1, kept on resume),
    # trained toward the plain oracle fits, which approach2's targets had cached (no fit of their own)
    first_a1 = outputs_text(cell_with(nb1, "RUN_A1 = fit("))
    assert "--prior-weight 0" in first_a1 and "restart 1:" not in first_a1
    assert "-c configs/approach1-oracle-targets.yaml" in first_a1
    assert "--model.style_ridge true" in outputs_text(cell_with(nb2, "RUN_A1 = fit("))
    cfg1 = yaml.safe_load((runs / A1 / "config.yaml").read_text())
    assert cfg1["model"]["style_ridge"] is True and cfg1["model"]["param_loss_weight"] == 1.0
    assert cfg1["data"]["param_targets"].endswith("quickstart-oracle-targets.json")
    plain_fits = json.loads((runs / "quickstart-oracle-targets.json").read_text())["params"]
    assert set(plain_fits) == set(targets["params"]) and plain_fits != targets["params"]
    assert len(list((tmp_path / "local2" / "raw").iterdir())) == 8  # copied to the "local disk"

    # curves inline, and the comparison table of the two runs
    curves = cell_with(nb2, "plt.subplots")
    assert any("image/png" in o.get("data", {}) for o in curves.outputs)
    assert (runs / "quickstart-curves.png").stat().st_size > 0
    table = (runs / "quickstart-comparison.md").read_text()
    assert A1 in table and A2 in table and "val/mrstft" in table and "val/params/" not in table
    shown = outputs_text(cell_with(nb2, '"compare"'))
    # the per-parameter means left out; val/param: the recipe's distance to the target settings
    assert re.search(r"\| variant \| seeds \| val/l1 \| val/loss \| val/mrstft \| val/param \|\n", shown)
    assert re.search(rf"\| {A2} \| 1 \| [*0-9.]+ \| [*0-9.]+ \| [*0-9.]+ \| [*0-9.]+ \|\n", shown)

    # players and spectrograms for the held-out songs; each test song mixed by both checkpoints
    listen = cell_with(nb2, "LISTEN_DIR =")
    html = "".join(o.data.get("text/html", "") for o in listen.outputs if o.output_type == "display_data")
    assert html.count("<audio") == 4  # raw, approach2, approach1, target for LISTEN_SONGS = 1
    assert sum("image/png" in o.get("data", {}) for o in listen.outputs) == 1
    mixed = sorted(p.name for p in (runs / "quickstart-listen").glob("*.wav"))
    assert len(mixed) == 2 and {n.split(".")[1] for n in mixed} == {"approach1", "approach2"}
    # REFERENCE is a training song's mix, not the test song's: the refinement's warning reaches the cell
    assert re.search(r"warning: \S+mixed/\S+: not a mix of \S+ as far as alignment tells", outputs_text(listen))

    # the new raw vocal, mixed by each checkpoint: OUT, its parameters and the mix sheet shown
    new = cell_with(nb2, "MIX_DIR =")
    for approach in ("approach2", "approach1"):
        out = next((runs / "quickstart-mixes").glob(f"*.{approach}.wav"))
        params = json.loads(Path(f"{out}.params.json").read_text())
        assert params["approach"] == approach and "best-" in params["checkpoint"]
        # approach1 mixes as its recipe says: the style ridge's setting, refined 60 steps on the reference
        refine = params["refine"]
        assert (refine is None) if approach == "approach2" else (refine["steps"] == 60 and refine["start"] == "ridge")
        sheet = Path(f"{out}.mixsheet.md").read_text()
        assert sheet in outputs_text(new)
    assert outputs_text(new).count("# Mix sheet:") == 2


def test_plain_recipes_train_without_targets_or_ridge_and_unknown_or_switched_recipes_are_refused(tmp_path):
    from nbclient.exceptions import CellExecutionError

    runs = tmp_path / "drive" / "runs"
    nb = with_parameters(tiny_parameters(tmp_path, "local", MAX_EPOCHS=1, APPROACH2_RECIPE="plain",
                                         APPROACH1_RECIPE="plain"))
    c = client(nb)
    with c.setup_kernel():
        for i, cell in enumerate(nb.cells):
            c.execute_cell(cell, i)
            if "RUN_A2 = fit(" in cell.source:
                a2_cell, a2_i = cell, i
                text = outputs_text(cell)
            if "RUN_A1 = fit(" in cell.source:
                break
        a1_text = outputs_text(cell)
        assert "$ mst-single fit -c configs/approach1.yaml" in a1_text and "style_ridge" not in a1_text
        assert yaml.safe_load((runs / A1 / "config.yaml").read_text())["model"]["style_ridge"] is False
        # the other recipe on the same run would resume a plain run with the style ridge: refused, naming the fix
        for value in ("ridge-start-60", "oracle-targets", "ridge"):
            nb.cells.append(nbformat.v4.new_code_cell(f"APPROACH1_RECIPE = {value!r}"))
            c.execute_cell(nb.cells[-1], len(nb.cells) - 1)
            with pytest.raises(CellExecutionError) as err:
                c.execute_cell(cell, i)
            if value == "ridge":
                assert "APPROACH1_RECIPE = 'ridge': choose 'oracle-targets', 'ridge-start-60' or 'plain'" in str(err.value)
            else:
                key = "style_ridge = False" if value == "ridge-start-60" else "param_loss_weight = 0.0"
                assert f"{runs / A1}: trained with model.{key}" in str(err.value)
                assert "set RUN_PREFIX to a new name" in str(err.value)
        assert yaml.safe_load((runs / A1 / "config.yaml").read_text())["model"]["style_ridge"] is False
        cell, i = a2_cell, a2_i
        assert "$ mst-single fit -c configs/approach2.yaml" in text and "$ mst-single targets" not in text
        assert not (runs / "quickstart-targets.json").exists() and not list(runs.glob(".cache/oracle/*.json"))
        cfg = yaml.safe_load((runs / A2 / "config.yaml").read_text())
        assert cfg["data"]["param_targets"] is None and cfg["model"].get("descriptor_init") != "ridge"
        assert (runs / A2 / "checkpoints" / "last.ckpt").is_file()

        # a misspelt recipe: the same cell stops before fitting anything, naming the choices
        nb.cells.append(nbformat.v4.new_code_cell("APPROACH2_RECIPE = 'ridge'"))
        c.execute_cell(nb.cells[-1], len(nb.cells) - 1)
        with pytest.raises(CellExecutionError) as err:
            c.execute_cell(cell, i)
        assert "APPROACH2_RECIPE = 'ridge': choose 'ridge-init-slow' or 'plain'" in str(err.value)
        # and the other recipe on the plain run stops before fitting any targets
        nb.cells.append(nbformat.v4.new_code_cell("APPROACH2_RECIPE = 'ridge-init-slow'"))
        c.execute_cell(nb.cells[-1], len(nb.cells) - 1)
        with pytest.raises(CellExecutionError) as err:
            c.execute_cell(cell, i)
        assert f"{runs / A2}: trained with model.take_descriptors = False" in str(err.value)
    assert not (runs / "quickstart-targets.json").exists()


def _requirement(name: str) -> Requirement:
    """vocal-mst's requirement on `name` (from the installed metadata, i.e. setup.py)."""
    return next(r for r in map(Requirement, importlib.metadata.requires("vocal-mst")) if r.name == name)


def _torch_ends() -> list[str]:
    """The ends of setup.py's torch range as pip versions: ">=2.6,<2.15" -> ["2.6.0", "2.14.*"]."""
    req = _requirement("torch")
    lower = next(s.version for s in req.specifier if s.operator == ">=")
    upper = next(s.version for s in req.specifier if s.operator == "<")
    return [f"{lower}.0" if lower.count(".") == 1 else lower, f"{upper.rsplit('.', 1)[0]}.{int(upper.rsplit('.', 1)[1]) - 1}.*"]


def _local_torch_wheel(spec: str) -> str | None:
    """The version of a torch wheel matching `spec` (e.g. "2.14.*") that pip finds on local disk
    (its file:// indexes and find-links), for this Python; None if it would have to download one."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    places = [u for line in out.splitlines() for u in re.findall(r"(?:file://)?(/[^\s']+)", line.split("=", 1)[-1])
              if re.match(r"[\w:.-]*(find-links|extra-index-url|index-url)=", line)]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    pattern = re.compile(r"torch-(" + re.escape(spec).replace(r"\*", r"[0-9]+") + r")(?:\+[\w.]+)?-" + tag + r"-")
    found = set()
    for place in places:
        p = Path(place)
        for f in [*p.glob("torch-*.whl"), *p.parent.glob("*/torch-*.whl")]:
            m = pattern.match(f.name)
            if m and "linux" in f.name:
                found.add(m.group(1))
    return max(found, key=lambda v: tuple(map(int, v.split(".")))) if found else None


@pytest.mark.slow
@pytest.mark.timeout(3600)  # writes a ~5.4 GB CUDA build of torch: minutes on a busy disk
@pytest.mark.parametrize("end", ["lower", "upper"])
def test_install_cell_keeps_the_runtime_torch(tmp_path, end):
    spec = _torch_ends()[0 if end == "lower" else 1]
    version = spec if "*" not in spec else _local_torch_wheel(spec)
    if version is None or (not os.environ.get("MST_TEST_TORCH_DOWNLOAD") and _local_torch_wheel(version) is None):
        pytest.skip(f"torch {spec} ({end} end of setup.py's range) is not on local disk; PyPI's build is a "
                    "multi-GB CUDA download, so CI does not run it (MST_TEST_TORCH_DOWNLOAD=1 allows it)")
    if shutil.disk_usage(tmp_path).free < 9e9:
        pytest.skip(f"a runtime with torch {version} (a CUDA build) needs about 6 GB; "
                    f"{shutil.disk_usage(tmp_path).free / 1e9:.1f} GB free")
    # the "hosted runtime": its own torch and a Jupyter kernel, nothing of ours
    runtime = tmp_path / "runtime"
    try:
        _run_notebook_in_runtime(tmp_path, runtime, version)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)  # several GB


def _run_notebook_in_runtime(tmp_path: Path, runtime: Path, version: str) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(runtime)], check=True)
    py = runtime / "bin" / "python"
    kernel = f"ipykernel{_requirement('ipykernel').specifier}"  # the dev extra's pin
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"torch=={version}", kernel], check=True)
    torch_files = {p: p.stat().st_mtime_ns for p in (runtime / "lib").glob("python3*/site-packages/torch/*.py")}
    assert torch_files
    spec_dir = tmp_path / "kernels" / "runtime"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(py), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"runtime torch {version}", "language": "python"}))
    env = dict(os.environ, JUPYTER_PATH=str(tmp_path), PATH=f"{runtime / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.pop("VIRTUAL_ENV", None)
    nb = with_parameters(tiny_parameters(tmp_path, "local"))
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(tmp_path)  # where nbclient looks for the kernel spec
    try:
        client(nb, kernel_name="runtime").execute(env=env)
    finally:
        os.environ.pop("JUPYTER_PATH") if old is None else os.environ.__setitem__("JUPYTER_PATH", old)
    install = outputs_text(cell_with(nb, "keep-runtime-torch"))
    assert f"torch {version} kept (the runtime's own)" in install
    assert f"-c keep-runtime-torch.txt   # keep-runtime-torch.txt: torch=={version}" in install
    got = subprocess.run([str(py), "-c", "import torch, mst_single; print(torch.__version__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert got.split("+")[0] == version
    assert {p: p.stat().st_mtime_ns for p in torch_files} == torch_files  # not reinstalled
    runs = tmp_path / "drive" / "runs"
    for name in (A2, A1):
        assert (runs / name / "checkpoints" / "last.ckpt").is_file()
        prov = json.loads((runs / name / "provenance.json").read_text())
        assert prov["packages"]["torch"].split("+")[0] == version  # trained with the runtime's torch
    assert len(list((runs / "quickstart-mixes").glob("*.mixsheet.md"))) == 2
