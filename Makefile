# Two commands do all the set-up on a fresh machine with Python 3.11+ and make:
#   make demo   creates .venv, installs, starts an embedded PostgreSQL 16, migrates, shows a job's life
#   make test   lint (ruff, mypy --strict) and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all venv demo test test-proxy mutate lint format bench wheel layer clean images

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
	$(BIN)/ruff check src tests benchmarks tools examples images
	$(BIN)/ruff format --check src tests benchmarks tools examples images
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks tools examples images
	$(BIN)/ruff check --fix src tests benchmarks tools examples images

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the suite again, every connection a deployment makes going through pgbouncer (TLS verify-full,
# transaction pooling); migrations stay direct, as in production
test-proxy: $(STAMP)
	CIRA_DB_TEST_VIA_PGBOUNCER=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# local PostgreSQL 15/16/18 and pgbouncer images, built offline from files this machine has (docs/containers.md)
images: $(STAMP)
	$(BIN)/python images/build.py

# each guard of tools/mutation_guards.toml removed in turn: a named test must fail (docs/testing.md)
mutate: $(STAMP)
	$(BIN)/python tools/mutate.py

# the bench extra (pgqueuer, procrastinate, SQLAlchemy: section 11's peers) first
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python benchmarks/run.py

wheel: $(STAMP)
	$(BIN)/python -m build --wheel --no-isolation --outdir dist

# Lambda layers, one zip per runtime and architecture: dist/layers/cira-db-<version>-python3.X-<arch>.zip
layer: $(STAMP)
	$(BIN)/python tools/build_layer.py --out dist/layers

clean:
	rm -rf $(VENV) .venv-3.1[0-9] .venv-lowest dist build .mypy_cache .pytest_cache .ruff_cache
