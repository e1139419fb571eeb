"""`mst-single ablate experiments/NAME`: train and evaluate every variant × data set × fold × seed of an
experiment, fit the baselines, and write the results folder ``experiments/NAME/results/<budget>/``.

The work is in ``mst_single.experiments`` (config: experiment configs and budgets; folds: splits;
runner: units, workers, baselines, W&B, outputs; evaluate; baselines); this module is the command
line. See experiments/README.md for the config format and the outputs.

    mst-single ablate experiments/NAME [--budget B] [--data DIR | --data NAME=DIR ...] [--seeds N]
                      [--folds K] [--out DIR] [--force] [--jobs N]
    mst-single ablate experiments/NAME --variant V --seed S [--fold K] [--data-name D]  # some units only
    mst-single ablate experiments/NAME --budget B --export-sweep     # NAME/sweep.yaml (W&B grid)
    mst-single ablate experiments/NAME --budget B --check            # rerun elsewhere, compare to committed
    mst-single ablate experiments/NAME --budget B --check --variant V   # the same, for some variants only
                                                   [--cached-fits]   # (keep the cached oracle fits)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from mst_single.errors import MstError
from mst_single.fileio import write_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", type=Path, help="experiment folder, e.g. experiments/e01-approach1-vs-approach2")
    parser.add_argument("--budget", default="smoke", help="budget defined in experiments/base.yaml (smoke, cpu, full)")
    parser.add_argument("--data", action="append", metavar="DIR|NAME=DIR",
                        help="data folder(s) instead of the config's `data:` (repeat for several data sets)")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 per variant (default: the budget's `seeds`)")
    parser.add_argument("--folds", type=int,
                        help="K-fold cross-validation over songs, every song a test song once (default: the "
                             "budget's `folds`; 0 = the hash split)")
    parser.add_argument("--out", type=Path, help="results folder (default: EXPERIMENT/results/BUDGET)")
    parser.add_argument("--force", action="store_true", help="retrain runs even if their eval.json is up to date")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at the same time (each uses OMP_NUM_THREADS threads; results do not change); "
                             "before they start, as many songs' parameter-target fits at once")
    parser.add_argument("--variant", action="append",
                        help="run only this variant (repeat for several; training + evaluation, no baselines or "
                             "tables); with --check: rerun only these variants (and the baselines) and compare their rows")
    parser.add_argument("--seed", type=int, help="run only this seed (no baselines or tables)")
    parser.add_argument("--fold", type=int, help="run only this fold (no baselines or tables)")
    parser.add_argument("--data-name", help="run only on this data set (no baselines or tables)")
    parser.add_argument("--export-sweep", action="store_true",
                        help="write EXPERIMENT/sweep.yaml (W&B grid over variant × seed [× fold × data]) and stop")
    parser.add_argument("--check", action="store_true",
                        help="rerun the committed results of this budget (with their seeds, folds, data folders and "
                             "torch threads) into a temporary folder (or --out) and compare; exit 1 when they "
                             "differ beyond the tolerances")
    parser.add_argument("--cached-fits", action="store_true",
                        help="with --check: reuse the oracle / oracle-prior fits already in the fit cache (keyed by "
                             "each song's sha256 and every fitting setting) instead of refitting every song, e.g. "
                             "in a clone whose cache an earlier --check on this machine filled")


def run(args) -> int:
    from mst_single.experiments import runner

    t_start = time.time()
    if args.check:
        return check(args)
    if args.export_sweep:
        path = write_text(Path(args.experiment) / "sweep.yaml", sweep_yaml(args))
        print(f"wrote {path}")
        return 0
    plan = runner.make_plan(args)
    print(plan_summary(plan), flush=True)
    done = runner.execute(plan, force=args.force, jobs=args.jobs)
    if plan.unit_mode:
        print("unit mode (--variant/--seed/--fold/--data-name): run folders written; no baselines or tables "
              f"(run `mst-single ablate {Path(args.experiment).as_posix()} --budget {plan.budget}` to collect)")
        return 0
    tables = runner.collect(plan, done)
    # a check's rerun is made by the check's command line (a plain one would rerun every variant)
    command = getattr(args, "check_command", None) or "mst-single ablate " + " ".join(_argv_of(args))
    block = runner.write_outputs(plan, tables, command, time.time() - t_start)
    from mst_single.fileio import write_json

    write_json(plan.out / "provenance.json", runner.provenance(plan, done, command, time.time() - t_start))
    if args.out is None:
        runner.update_readme(Path(args.experiment), plan.budget, block)
    print()
    print(block.strip())
    print(f"\nwrote {plan.out}: results.csv, predictions.csv, runs.csv, results.md, report.html, plots/, provenance.json "
          f"({(time.time() - t_start) / 60:.1f} min)")
    return 0


def plan_summary(plan) -> str:
    """The line `ablate` starts with: what runs, on which songs, where the results go. A plan restricted
    with --fold names its folds out of the experiment's (``plan.splits`` holds only those)."""
    tested = sum(len(s["test"]) for v in plan.splits.values() for s in v.values())
    folds = sorted({f for v in plan.splits.values() for f in v})
    if not plan.folds:
        split = "the hash split"
    elif len(folds) < plan.folds:
        split = f"fold {', '.join(map(str, folds))} of {plan.folds}"
    else:
        split = f"{plan.folds} folds"
    return (f"{plan.exp['name']}: {len(plan.units)} runs (variants {', '.join(dict.fromkeys(u.variant for u in plan.units))}"
            f" × data {', '.join(plan.splits)} × {split} × seeds {plan.seeds}), budget {plan.budget}, "
            f"{tested} test songs; results {plan.out}")


# ----------------------------------------------------------------------------------------------- check
def check(args) -> int:
    """Rerun a committed results folder elsewhere, as it was made (its seeds, folds, data folders and
    torch threads per run, from its provenance.json, unless given on the command line), and compare."""
    from mst_single.experiments import config as C
    from mst_single.experiments import records as R
    from mst_single.experiments import runner

    committed = Path(args.experiment) / runner.RESULTS / args.budget
    if not (committed / "results.csv").is_file():
        raise MstError(f"no committed results for budget {args.budget!r}", committed / "results.csv",
                       f"run `mst-single ablate {Path(args.experiment).as_posix()} --budget {args.budget}` first")
    prov_path = committed / "provenance.json"
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    if args.seed is not None or args.fold is not None or args.data_name:
        raise MstError("--check reruns whole variants: every seed, fold and data set of the committed table",
                       committed / "results.csv", "drop --seed / --fold / --data-name (--variant V picks variants)")
    rerun = argparse.Namespace(**vars(args))
    # --variant: those variants' runs and the baselines, with tables, not unit mode (nothing to compare then)
    chosen = runner.variants_of(args)
    rerun.variant, rerun.only_variants = None, chosen
    rerun.check_command = "mst-single ablate " + " ".join(_argv_of(args))
    # a check refits every song by default (a cache made by other code or another machine would hide a
    # difference); the runs themselves go to a new folder and are trained either way
    rerun.check, rerun.force = False, not getattr(args, "cached_fits", False)
    if rerun.seeds is None and prov.get("seeds"):
        rerun.seeds = len(prov["seeds"])
    if rerun.folds is None and "folds" in prov:
        rerun.folds = int(prov["folds"] or 0)
    if rerun.data is None and prov.get("data"):  # e.g. made with --data data/demo-adaptive
        rerun.data = [f"{name}={folder}" for name, folder in prov["data"].items()]
    rerun.out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"{Path(args.experiment).name}-{args.budget}-"))
    threads = (prov.get("hardware") or {}).get("torch_threads")
    print(f"check: rerunning {committed} into {rerun.out} (data {', '.join(rerun.data or ['from the config'])}"
          + (f"; {threads} torch thread(s) per run, as the committed table" if threads else "")
          + ("; oracle fits from the cache" if not rerun.force else "; every oracle fit redone") + ")", flush=True)
    with _torch_threads(threads):
        code = run(rerun)
    if code != 0:
        return code
    from mst_single.compare import bitwise, check_same

    # the rerun went to another folder but is the same experiment (check_same matches on its name too)
    rows = R.read_csv(committed / "results.csv")
    # with --variant, a baseline's rows are rerun too: every row whose variant is not one of the experiment's
    variants = set(C.load_experiment(args.experiment)["variants"])

    def rerun_row(r) -> bool:
        return not chosen or r["variant"] in chosen or r["variant"] not in variants

    if chosen:
        skipped = sorted({r["variant"] for r in rows if r["variant"] in variants} - set(chosen))
        rows = [r for r in rows if rerun_row(r)]
        print(f"check: comparing the rows of {', '.join(chosen)} and the baselines only"
              + (f"; not rerun: {', '.join(skipped)}" if skipped else ""))
    report = check_same(rows, R.read_csv(rerun.out / "results.csv"))
    print(report.text)
    preds = committed / "predictions.csv"
    if preds.is_file() and (rerun.out / "predictions.csv").is_file():  # what was predicted, not only its score
        mine = [r for r in R.read_csv(preds) if rerun_row(r)]
        same = bitwise(mine, R.read_csv(rerun.out / "predictions.csv"), [c for c in R.PREDICTIONS_COLUMNS if c != "value"])
        print(f"predictions: {same['identical']} of {same['shared']} predicted parameter values identical bit for bit"
              + (f" (largest relative difference {same['max_rel']:.2g})" if same["identical"] < same["shared"] else "")
              + (f"; {same['one_side']} only on one side" if same["one_side"] else ""))
    return 0 if report.ok else 1


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run with ``n`` torch threads here and in the workers (OMP_NUM_THREADS), then restore: the thread
    count alone changes training trajectories (float sums in another order), so a check compares like
    with like."""
    if not n:
        yield
        return
    import torch

    before_env, before = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = str(int(n))
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if before_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before_env


# ----------------------------------------------------------------------------------------------- sweep
def sweep_yaml(args) -> str:
    """A W&B sweep (grid over variant × seed, × fold and × data set where there are several) whose
    agents run this same command, one unit each (from the config alone: no data folder needed)."""
    from mst_single.experiments import config as C

    exp = C.load_experiment(args.experiment)
    folder = Path(exp["folder"]).as_posix()
    params = {"variant": {"values": list(exp["variants"])},
              "seed": {"values": C.seeds_of(exp, args.budget, args.seeds)}}
    folds = C.folds_of(exp, args.budget, args.folds)
    if folds:
        params["fold"] = {"values": list(range(folds))}
    data = list(C.data_sets(exp, args.data))
    if len(data) > 1:
        params["data-name"] = {"values": data}
    group = f"{exp['name']}/{args.budget}"
    sweep = {"name": group, "project": (exp.get("wandb") or {}).get("project", "vocal-mst"), "program": "mst-single",
             "method": "grid", "parameters": params,
             "command": ["mst-single", "ablate", folder, "--budget", args.budget, "${args}"]}
    head = (f"# W&B sweep for {exp['name']} (budget {args.budget}), written by: mst-single ablate {folder} --budget "
            f"{args.budget} --export-sweep\n# wandb sweep {folder}/sweep.yaml   then on each machine:   wandb agent "
            f"ENTITY/PROJECT/SWEEP_ID\n# Each agent runs one unit (`--variant V --seed S ...`). On a shared disk, "
            f"`mst-single ablate {folder} --budget {args.budget}`\n# then reuses the finished runs and writes the "
            f"tables; else: mst-single compare --wandb ENTITY/PROJECT --group {group}\n")
    return head + yaml.safe_dump(sweep, sort_keys=False)


def _argv_of(args) -> list[str]:
    out = [Path(args.experiment).as_posix()]
    for d in args.data or []:
        out += ["--data", str(d)]
    from mst_single.experiments.runner import variants_of

    for v in variants_of(args):
        out += ["--variant", v]
    for flag, value in (("--budget", args.budget), ("--seeds", args.seeds), ("--folds", args.folds), ("--out", args.out),
                        ("--seed", args.seed), ("--fold", args.fold),
                        ("--data-name", args.data_name)):
        if value is not None:
            out += [flag, str(value)]
    out += ["--jobs", str(args.jobs)] if getattr(args, "jobs", 1) > 1 else []
    out += ["--check"] if getattr(args, "check", False) else []
    out += ["--cached-fits"] if getattr(args, "cached_fits", False) else []
    return out + (["--force"] if args.force else [])


def main(argv=None) -> int:
    """``python -m mst_single.ablate --worker SPEC`` (used by ``ablate`` itself) or the normal CLI."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        from mst_single.experiments.runner import worker

        try:
            return worker(Path(argv[1]))
        except MstError as e:  # the parent shows the end of this log: the message, not a traceback
            print(f"error: {e}", file=sys.stderr)
            return 2
    parser = argparse.ArgumentParser(prog="mst-single ablate")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except MstError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
