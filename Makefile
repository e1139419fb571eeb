# `make demo` and `make test` work on a fresh machine: each creates .venv and installs into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/demo
# CPU threads for torch: CI has 2 cores.
export OMP_NUM_THREADS ?= 2
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: demo demo-data test bench install clean reproduce

$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/mst-single demo-data $(DATA) --style adaptive --songs 48 --seconds 15 --seed 0
	$(BIN)/mst-single check-data $(DATA)
	$(BIN)/mst-single ablate experiments/e01-approach1-vs-approach2 --data $(DATA) --budget smoke

# The demo data on which one preset is not enough (issue 10; README "Demo data"): 48 songs x 15 s per
# style, a few seconds a song on one core. adaptive: settings follow the take; per-song: settings independent of the take.
# Rerunning rewrites the same files; other DEMO_SONGS / DEMO_SECONDS over folders made before are refused
# unless DEMO_FORCE=--force (which replaces that demo data; files demo-data did not write are never touched).
DEMO_SONGS ?= 48
DEMO_SECONDS ?= 15
DEMO_FORCE ?=
demo-data: $(VENV)/.installed
	$(BIN)/mst-single demo-data data/demo-adaptive --style adaptive --songs $(DEMO_SONGS) --seconds $(DEMO_SECONDS) --seed 0 $(DEMO_FORCE)
	$(BIN)/mst-single demo-data data/demo-per-song --style per-song --songs $(DEMO_SONGS) --seconds $(DEMO_SECONDS) --seed 0 $(DEMO_FORCE)
	$(BIN)/mst-single check-data data/demo-adaptive
	$(BIN)/mst-single check-data data/demo-per-song

# After `make demo`: rerun the committed e01 smoke results from scratch into $(REPRO) and compare them
# with the committed results.csv (`ablate --check`: lists the rows that differ; exit 1 on a real difference).
REPRO ?= /tmp/vocal-mst-e01-rerun
reproduce: $(VENV)/.installed
	$(BIN)/mst-single ablate experiments/e01-approach1-vs-approach2 --data $(DATA) --budget smoke --check --out $(REPRO)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# `make bench` on this machine's CPU -> bench/results.json; `make bench DEVICE=cuda` -> bench/results-gpu.json
DEVICE ?= cpu
BENCH_OUT ?= $(if $(filter cuda%,$(DEVICE)),bench/results-gpu.json,bench/results.json)
bench: $(VENV)/.installed
	$(BIN)/python -m mst_single.bench --device $(DEVICE) --out $(BENCH_OUT) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# --- Upstream Diff-MST with our patch series (see README "Upstream"); CI needs none of this ---
UPSTREAM ?= Diff-MST
UPSTREAM_VENV ?= .venv-upstream
UPSTREAM_PY = $(abspath $(UPSTREAM_VENV))/bin/python
APPROACH ?= approach2
# upstream-fit: upstream's own model (Approach 2) on 12 demo songs, cheap enough for 2 CPU cores:
# 1.5 s segments at 48 kHz (CNN14 needs >= 128 hops of 512), batch 1, one thread (patches/README.md)
FIT_DATA ?= /tmp/up-demo
FIT_DIR ?= /tmp/upstream-fit
FIT_STEPS ?= 300
FIT_MAX_TIME ?= 00:01:25:00
.PHONY: patches-check patches-standalone upstream upstream-install upstream-test upstream-fit

patches-check: $(VENV)/.installed
	$(BIN)/python scripts/patches.py check

# each patch on a fresh tree at the pin with only its dependencies: its tests fail without it, pass
# with it (needs the upstream checkout and .venv-upstream)
patches-standalone: $(VENV)/.installed
	$(BIN)/python scripts/patches.py check --standalone --upstream $(UPSTREAM) --python $(UPSTREAM_PY)

upstream: $(VENV)/.installed
	git submodule update --init $(UPSTREAM)
	$(BIN)/python scripts/patches.py apply --upstream $(UPSTREAM)

# mst itself is not installed: main.py and the tests run from the tree (an installed copy would
# shadow the trees that patches-standalone tests)
upstream-install:
	test -x $(UPSTREAM_VENV)/bin/python || $(PYTHON) -m venv $(UPSTREAM_VENV)
	$(UPSTREAM_VENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(UPSTREAM_VENV)/bin/python -m pip install -q --disable-pip-version-check -r $(UPSTREAM)/requirements-vocal.txt

# the tests the series adds, with upstream's own pytest settings (none), not this repo's pyproject.toml
upstream-test: $(VENV)/.installed
	$(BIN)/python scripts/patches.py test --upstream $(UPSTREAM) --python $(UPSTREAM_PY)

upstream-fit: $(VENV)/.installed
	test -d $(FIT_DATA)/raw || $(BIN)/mst-single demo-data $(FIT_DATA) --songs 12 --seconds 12 --seed 0
	cd $(UPSTREAM) && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 $(UPSTREAM_PY) main.py fit \
	  -c configs/vocal.yaml -c configs/data/vocal.yaml -c configs/models/vocal-$(APPROACH).yaml \
	  --data.init_args.root $(abspath $(FIT_DATA)) --data.init_args.segment_seconds 1.5 \
	  --data.init_args.batch_size 1 --data.init_args.num_workers 0 --data.init_args.train_segments_per_epoch 100 \
	  --trainer.max_steps $(FIT_STEPS) --trainer.max_time $(FIT_MAX_TIME) --trainer.log_every_n_steps 1 \
	  --trainer.enable_progress_bar false --trainer.default_root_dir $(FIT_DIR) \
	  --trainer.logger.init_args.save_dir $(FIT_DIR)
	$(BIN)/python scripts/patches.py fit-report $(FIT_DIR) --out patches/upstream-fit
