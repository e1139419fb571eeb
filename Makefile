# `make demo` and `make test` work on a fresh machine: each creates .venv and installs into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/demo
# CPU threads for torch: CI has 2 cores.
export OMP_NUM_THREADS ?= 2
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: demo test test-all bench install clean

$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/mst-single demo-data $(DATA) --songs 24 --seconds 20 --seed 0
	$(BIN)/mst-single check-data $(DATA)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python -m mst_single.bench --out bench/results.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
