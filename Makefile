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
	$(BIN)/mst-single demo-data $(DATA) --songs 24 --seconds 20 --seed 0
	$(BIN)/mst-single check-data $(DATA)
	$(BIN)/mst-single ablate experiments/e01-approach1-vs-approach2 --data $(DATA) --budget smoke

# The demo data that needs a network (README "Demo data"): 48 songs x 15 s per style, ~2-3 s a song
# on one core. adaptive: settings follow the take; per-song: settings independent of the take.
DEMO_SONGS ?= 48
DEMO_SECONDS ?= 15
demo-data: $(VENV)/.installed
	$(BIN)/mst-single demo-data data/demo-adaptive --style adaptive --songs $(DEMO_SONGS) --seconds $(DEMO_SECONDS) --seed 0
	$(BIN)/mst-single demo-data data/demo-per-song --style per-song --songs $(DEMO_SONGS) --seconds $(DEMO_SECONDS) --seed 0
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
APPROACH ?= approach1
UPSTREAM_TESTS = tests/test_torchaudio_optional.py tests/test_mono_reference.py tests/test_controller_tokens.py \
	tests/test_panner_off.py tests/test_compressor_latency.py tests/test_sample_rate.py tests/test_vocal_losses.py \
	tests/test_vocal_data.py tests/test_no_mix_encoder.py tests/test_vocal_system.py
.PHONY: patches-check patches-refresh upstream upstream-install upstream-test upstream-fit

patches-check: $(VENV)/.installed
	$(BIN)/python scripts/patches.py check

patches-refresh: $(VENV)/.installed
	$(BIN)/python scripts/patches.py refresh

upstream: $(VENV)/.installed
	git submodule update --init $(UPSTREAM)
	$(BIN)/python scripts/patches.py apply --upstream $(UPSTREAM)

upstream-install:
	test -x $(UPSTREAM_VENV)/bin/python || $(PYTHON) -m venv $(UPSTREAM_VENV)
	$(UPSTREAM_VENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(UPSTREAM_VENV)/bin/python -m pip install -q --disable-pip-version-check -r $(UPSTREAM)/requirements-vocal.txt
	$(UPSTREAM_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -e $(UPSTREAM)

upstream-test:
	cd $(UPSTREAM) && $(abspath $(UPSTREAM_VENV))/bin/python -m pytest -q $(UPSTREAM_TESTS)

upstream-fit:
	cd $(UPSTREAM) && $(abspath $(UPSTREAM_VENV))/bin/python main.py fit -c configs/vocal.yaml \
	  -c configs/data/vocal.yaml -c configs/models/vocal-$(APPROACH).yaml --data.init_args.root $(abspath $(DATA))
