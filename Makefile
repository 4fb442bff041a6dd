# Two commands do all the set-up on a fresh machine with Python 3.11+ and make:
#   make demo   creates .venv, installs, starts an embedded PostgreSQL 16, migrates, shows a job's life
#   make test   lint (ruff, mypy --strict) and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv demo test test-proxy lint format bench wheel layer clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/cira-db demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the suite again, with repository tests going through pgbouncer (TLS verify-full, transaction pooling)
test-proxy: $(STAMP)
	CIRA_DB_TEST_VIA_PGBOUNCER=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

wheel: $(STAMP)
	$(BIN)/python -m build --wheel --no-isolation --outdir dist

# Lambda layers, one zip per runtime and architecture: dist/layers/cira-db-<version>-python3.X-<arch>.zip
layer: $(STAMP)
	$(BIN)/python tools/build_layer.py --out dist/layers

clean:
	rm -rf $(VENV) dist build .mypy_cache .pytest_cache .ruff_cache
