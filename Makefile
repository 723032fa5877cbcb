# Veil: `make demo` protects a sample photo end to end; `make test` runs the tests. Both set up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup weights demo test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools<81" wheel
	# The local CPU build first: any other torch spec pulls GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[core,api,dev]'
	touch $(STAMP)

setup: $(STAMP) weights

weights: $(STAMP)
	$(BIN)/veil weights

demo: setup
	$(BIN)/veil demo

test: setup
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy core api benchmarks

bench: setup
	$(BIN)/python benchmarks/protect.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
