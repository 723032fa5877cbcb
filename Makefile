# Veil: `make demo` protects a sample photo end to end; `make test` runs the tests. Both set up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup weights demo test test-fast lint bench clean run compose-check

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools<81" wheel
	# The local CPU build first: any other torch spec pulls GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[core,api,dev]'
	# MTCNN's pretrained weights (core/detectors/mtcnn.py) ship in the facenet-pytorch wheel, whose requirements
	# pin an old torch and torchvision (GBs of CUDA): installed without dependencies; only its data files are read.
	$(BIN)/pip install -q --no-deps 'facenet-pytorch>=2.5'
	touch $(STAMP)

setup: $(STAMP) weights

weights: $(STAMP)
	$(BIN)/veil weights

demo: setup
	$(BIN)/veil demo

# Everything (what CI runs): datasets when present, the whole stack, Chromium.
test: setup
	$(BIN)/python -m pytest

# The unit tier, a minute or two: tiny models, Redis only; no S3 server, workers, browser, dataset or slow test.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not dataset and not stack and not browser"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy core service api worker scripts benchmarks

# The whole service on loopback (Redis, MiniStack S3, API, gpu + io workers); Ctrl-C stops it.
# No shipped StarGAN weights yet? make run RUN_ARGS=--tiny-forger
RUN_ARGS ?=
run: setup
	$(BIN)/python scripts/run_stack.py $(RUN_ARGS)

# docker-compose.yml and the Dockerfiles without a Docker engine (docker compose config from PyPI, the
# compose-spec schema, structure); with a Docker CLI around, its own `docker compose config` too.
compose-check: $(STAMP)
	$(BIN)/python -m pytest -q tests/worker/test_worker_docker.py
	@if command -v docker >/dev/null 2>&1; then docker compose -f docker-compose.yml config -q && echo "docker compose config: ok"; fi

bench: setup
	$(BIN)/python benchmarks/protect.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
