#!/usr/bin/env bash
# The GPU check of issue 12, prepared for a session that has a GPU machine for a few minutes:
# the CUDA tests (tests/test_cuda.py) and `make bench DEVICE=cuda`, everything written to $OUT.
#
#   scripts/gpu-check.sh wheels    # HERE, once (needs PyPI): .whl/ = the packages the GPU image lacks
#   then, on the GPU machine, from the repository root (the device tool: carry [".whl"], timeout 600 s):
#   bash scripts/gpu-check.sh      # -> $OUT/tests.log, $OUT/bench.log, $OUT/results-gpu.json, $OUT/summary.txt
#
# The GPU image has python3 with a CUDA torch, Lightning, numba, scipy, pytest; the wheels add the
# rest of setup.py's pins that the package imports (no wandb: runs use --wandb false). Copy
# $OUT/results-gpu.json to bench/results-gpu.json and commit it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
WHEELS="soundfile==0.14.0 soxr==1.1.0 pyloudnorm==0.2.0 jsonargparse==4.53.0 docstring-parser==0.18.0
        typeshed-client==2.15.0 cffi==2.1.1 pycparser==3.12 dasp-pytorch==0.0.1 auraloss==0.4.0"

if [ "${1:-}" = wheels ]; then
  mkdir -p .whl
  for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$w" || exit 1
  done
  ls .whl; exit 0
fi

ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/: run 'scripts/gpu-check.sh wheels' first and carry .whl"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 2
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 WANDB_MODE=disabled OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
python3 - <<'PY' 2>&1 | tee "$OUT/env.txt"
import torch, numba, pytorch_lightning as pl
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
print("lightning", pl.__version__, "numba", numba.__version__)
PY

# a stand-in virtualenv so that `make bench` uses this python and installs nothing
mkdir -p /tmp/venv/bin && ln -sf "$(command -v python3)" /tmp/venv/bin/python && touch /tmp/venv/.installed

t0=$(date +%s)
timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py tests/test_device.py 2>&1 | tee "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}
t1=$(date +%s)
args="--repeats 3 --memory-seconds 600 --estimate-stock-reverb"
if command -v make >/dev/null; then
  timeout 330 make bench DEVICE=cuda VENV=/tmp/venv BENCH_OUT="$OUT/results-gpu.json" BENCH_ARGS="$args" 2>&1 | tee "$OUT/bench.log"
else  # the same command as the Makefile's
  timeout 330 python3 -m mst_single.bench --device cuda --out "$OUT/results-gpu.json" $args 2>&1 | tee "$OUT/bench.log"
fi
bench_rc=${PIPESTATUS[0]}
t2=$(date +%s)
{ echo "tests rc=$tests_rc ($((t1 - t0)) s); bench rc=$bench_rc ($((t2 - t1)) s)"; grep -A40 "^what " "$OUT/bench.log"; } \
  | tee "$OUT/summary.txt"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
