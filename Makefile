# TES AI — every command a developer, CI or operator needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/dev.lock

.PHONY: up test test-fast test-slow lint bench install lock services clean

$(BIN)/uv:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv

$(STAMP): $(BIN)/uv $(LOCK) pyproject.toml
	$(BIN)/uv pip sync -q -p $(BIN)/python $(LOCK)
	$(BIN)/uv pip install -q -p $(BIN)/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## Regenerate the lock file after changing dependencies in pyproject.toml.
lock: $(BIN)/uv
	$(BIN)/uv pip compile -q pyproject.toml --extra dev --python-version 3.11 -o $(LOCK)

## Run TES AI on this machine: embedded PostgreSQL, in-process cache and tasks, a local agent.
up: install
	$(BIN)/tesai up

## Every test (real PostgreSQL, Redis, RabbitMQ at 127.0.0.1; see tests/conftest.py).
test: install
	@command -v prometheus >/dev/null || (apt-get update -qq && apt-get install -y -qq prometheus)
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

test-slow: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

## Every benchmark under bench/ (bench/_*.py are shared helpers); figures: docs/benchmarks.md.
bench: install
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
