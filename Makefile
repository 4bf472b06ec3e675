# nexus-streams developer commands. `make test` and `make demo` install what they need themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ASYNCAPI := scripts/asyncapi
ASYNCAPI_STAMP := $(ASYNCAPI)/node_modules/.installed
STACK := bash scripts/stack.sh
# the local stack's environment for the command that follows (stops there if it fails to start)
WITH_STACK := set -e; stack_env=$$($(STACK) up); eval "$$stack_env";
PYTEST_ARGS ?=

.PHONY: help install asyncapi-install stack-up stack-down stack-reset stack-status demo test test-unit test-integration lint topics-gen worker clean bench

help:
	@echo "make demo          install, start the local stack, run a worker, send one command"
	@echo "make test          install, start the local stack, run unit and integration tests"
	@echo "make test-unit     unit tests only (no services)"
	@echo "make lint          ruff and mypy, as CI runs them"
	@echo "make stack-up | stack-down | stack-status   local Kafka (KRaft) + Redis on 127.0.0.1"
	@echo "make stack-reset   stop the local stack and delete its data (every topic and key)"
	@echo "make worker        run a worker against the local stack"
	@echo "make topics-gen    regenerate topics/ from the pydantic models"
	@echo "make asyncapi-install   the AsyncAPI parser (npm ci in scripts/asyncapi) for tests/test_asyncapi.py"

# setup.py and the C source too: a changed extension is rebuilt
$(STAMP): pyproject.toml setup.py nexus_streams/domain/_pathcore.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# the official AsyncAPI parser, as pinned by the lock file; install scripts are not run (the only
# one is a dependency's usage report)
$(ASYNCAPI_STAMP): $(ASYNCAPI)/package.json $(ASYNCAPI)/package-lock.json
	cd $(ASYNCAPI) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(ASYNCAPI_STAMP)

asyncapi-install: $(ASYNCAPI_STAMP)

stack-up:
	@$(STACK) up

stack-reset:
	@$(STACK) reset

stack-down:
	@$(STACK) down

stack-status:
	@$(STACK) status

demo: install
	@$(WITH_STACK) $(VENV)/bin/nexus-streams demo

worker: install
	@$(WITH_STACK) $(VENV)/bin/nexus-streams worker

test: install asyncapi-install
	@bash scripts/prometheus.sh install
	@$(WITH_STACK) $(PY) -m pytest $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest tests/unit tests/test_architecture.py $(PYTEST_ARGS)

test-integration: install
	@bash scripts/prometheus.sh install
	@$(WITH_STACK) $(PY) -m pytest tests/integration $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check nexus_streams tests scripts $(wildcard bench)
	$(VENV)/bin/mypy
	$(if $(wildcard bench/*.py),$(VENV)/bin/mypy $(wildcard bench/*.py))

bench: install
	$(PY) bench/graph.py

topics-gen: install
	$(PY) scripts/gen_topics.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .nexus-data
