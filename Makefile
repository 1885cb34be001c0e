# TES AI — every command a developer, CI or operator needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/dev.lock

.PHONY: up test test-fast test-slow test-containers lint bench install lock services clean docker-engine node-image

# The web console (web/ → src/tesai/console/dist, served by the API at "/").
WEB_INDEX := src/tesai/console/dist/index.html
WEB_DEPS := web/node_modules/.package-lock.json
WEB_SRC := $(shell find web/src web/index.html web/vite.config.ts web/tsconfig.json web/package.json -type f 2>/dev/null)

.PHONY: web web-if-missing web-test chromium

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

## A Docker Engine answering here: installs Debian's docker.io when dockerd is missing (apt-get,
## as root) and starts dockerd in the background when none answers (scripts/docker_engine.sh).
docker-engine:
	scripts/docker_engine.sh

## The node image tesai/ray-node:<Ray version> (src/tesai/agent/node_image.py), built with no
## registry: a Debian root filesystem (mmdebstrap), wheels pip downloads on this host, docker build
## --network none (deploy/node-image/Dockerfile). Seconds when nothing changed.
node-image: $(BIN)/uv
	PYTHON=$(BIN)/python scripts/build_node_image.sh

## Run TES AI on this machine: embedded PostgreSQL, in-process cache and tasks, a local agent.
up: install web-if-missing
	$(BIN)/tesai up

$(WEB_DEPS): web/package-lock.json
	cd web && npm ci --no-audit --no-fund
	touch $(WEB_DEPS)

$(WEB_INDEX): $(WEB_DEPS) $(WEB_SRC)
	cd web && npm run build

## Build the web console (only when its sources changed or it was never built).
web: $(WEB_INDEX)

web-if-missing:
	@test -f $(WEB_INDEX) || { command -v npm >/dev/null && $(MAKE) --no-print-directory web; } \
		|| echo "Web console not built (needs Node.js 22+, or 20 with an npm engine warning: make web); the API runs without it."

web-test: $(WEB_DEPS)
	cd web && npm run test

## Debian's chromium for the browser tests (never a downloaded browser).
chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)

## Every test (real PostgreSQL, Redis, RabbitMQ at 127.0.0.1; see tests/conftest.py).
test: install chromium web web-test
	@command -v prometheus >/dev/null || (apt-get update -qq && apt-get install -y -qq prometheus)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not containers" --durations=25

test-fast: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not containers"

test-slow: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "slow and not containers"

## Cluster nodes in containers on a real Docker Engine (issue 17): the engine, the node image,
## then the tests marked containers.
test-containers: install docker-engine node-image
	$(BIN)/python -m pytest -q -p no:cacheprovider -m containers

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
