"""Score the console with each test song's TRUE setting (truth.json), as ablate scores a model (whole song).

Usage: OMP_NUM_THREADS=1 python scripts/truth_score.py experiments/e06-param-targets/results/cpu/runs
(after running e06; reads its true-targets runs' data settings and fold splits). e06 README quotes it."""
import json, sys, yaml, numpy as np, torch
from pathlib import Path
from mst_single.console import VocalConsole
from mst_single.experiments import evaluate as E
from mst_single.metrics import mrstft
runs = Path(sys.argv[1])  # e.g. experiments/e06-param-targets/results/cpu/runs
vals = {}
for f in (0, 1):
    cfg = yaml.safe_load((runs / f"true-targets-demo-adaptive-f{f}-s0" / "variant.yaml").read_text())
    data = dict(cfg["data"]); root = data.pop("root")
    data["split_file"] = str(runs / "_data" / "demo-adaptive" / "splits" / f"fold{f}.json")
    ts = E.TestSet(root, **data)
    console = VocalConsole(ts.sample_rate, (cfg.get("model") or {}).get("stages"))
    truth = json.loads((Path(root) / "truth.json").read_text())["songs"]
    for s in ts.songs:
        raw, mixed = ts.audio(s.name)
        units = {k: v for k, v in truth[s.name]["params"].items() if k in console.param_names}
        p = console.normalize(units)
        out = E.mix_song(console, float(cfg["model"].get("target_lufs", -23.0)), raw, p, s.raw_lufs)
        vals[s.name] = mrstft(out, mixed)
    print(f"fold {f}: {len(ts.songs)} songs", flush=True)
v = np.array(list(vals.values()))
print(f"truth setting in the console: mrstft mean {v.mean():.3f} over {len(v)} songs (median {np.median(v):.3f})")
