"""The CSV files of a results folder (``experiments/NAME/results/<budget>/``): columns, run ids, I/O.

- ``results.csv`` (:data:`RESULTS_COLUMNS`): one row per (run, evaluation reference policy, song,
  metric); ``song == "mean"`` rows are the mean over that run's test songs. Baselines are rows with
  variant ``identity`` / ``identity-level-matched`` / ``mean-preset`` / ``oracle`` (approach, policy,
  eval_policy ``-``), one per data set × fold, their ``seed`` the baseline seed. For Approach 1,
  ``eval_policy`` is ``other`` (another song's mix: the headline), ``song`` (the song's own mix: an
  upper bound) or ``shuffled`` (the control: a fixed derangement of the test songs' mixes).
- ``predictions.csv`` (:data:`PREDICTIONS_COLUMNS`): every test song's setting in the console's
  normalised [0, 1] space, per model run and evaluation policy (Approach 1 also ``song-alt``: a
  second, different section of the song's own mix) and for ``mean-preset`` / ``oracle``.
- ``runs.csv`` (:data:`RUNS_COLUMNS`): one row per training run, and per baseline × data × fold
  (``steps`` = the most optimiser steps any of its fits took; ``checkpoint`` = where its fit is
  stored).

``fold`` is 0 without folds. Values are written with ``repr`` (exact floats).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from mst_single.errors import MstError
from mst_single.fileio import write_text

NONE = "-"  # approach/policy/eval_policy where it does not apply (baselines, approach2)
BASELINES = ("identity", "identity-level-matched", "mean-preset", "oracle", "true-setting", "descriptor-ridge")
RESULTS_COLUMNS = ("experiment", "budget", "data", "variant", "approach", "policy", "eval_policy", "fold", "seed",
                   "song", "metric", "value")
PREDICTIONS_COLUMNS = ("experiment", "budget", "data", "variant", "eval_policy", "fold", "seed", "song", "param",
                       "value")
RUNS_COLUMNS = ("experiment", "budget", "data", "variant", "fold", "seed", "run_id", "train_seconds", "steps",
                "eval_seconds", "checkpoint")
FILES = {"results.csv": RESULTS_COLUMNS, "predictions.csv": PREDICTIONS_COLUMNS, "runs.csv": RUNS_COLUMNS}


def run_id(experiment: str, budget: str, data: str, variant: str, fold: int, seed: int) -> str:
    """The deterministic id of one run (W&B run id, ``runs.csv``): a rerun of the same unit gets the same id."""
    from mst_single.experiments.config import stable_hash

    return stable_hash([experiment, budget, data, variant, int(fold), int(seed)])


def _cell(v) -> str:
    if isinstance(v, float):
        return repr(v)
    return "" if v is None else str(v)


def write_csv(path: Path, rows: list[dict], columns=None) -> Path:
    """Rows as CSV, atomically, ``columns`` in that order (default: every key, first seen first);
    floats (and every ``value``) written with repr, so they read back exactly."""
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(float(r[c]) if c == "value" else r.get(c)) for c in columns])
    return write_text(path, buf.getvalue())


def read_csv(path: Path, columns: tuple | None = None) -> list[dict]:
    """Rows of one of the files as dicts of strings; MstError when its columns are not the expected ones."""
    path = Path(path)
    columns = columns or FILES.get(path.name)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = tuple(reader.fieldnames or ())
    if columns and header != tuple(columns):
        raise MstError(f"unexpected columns {list(header)} (expected {list(columns)})", path,
                       "rerun `mst-single ablate` to write it in the current format")
    return rows
