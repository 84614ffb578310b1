# Mosaic Federation Gateway — entry points. See README.md and docs/harness.md.
SHELL := /bin/bash
UV ?= uv
GATEWAYS ?= 1
RUN := $(UV) run --frozen
PYTEST_ARGS ?=

.PHONY: help env up down status test test-fast lint fmt bench demo stepca clean

help:
	@echo "make up        start $(GATEWAYS) gateway(s) natively (GATEWAYS=2 for two)"
	@echo "make down      stop everything 'make up' started"
	@echo "make status    what 'make up' started, and whether it answers"
	@echo "make demo      two gateways and the whole federation story, narrated"
	@echo "make test      env + lint + type check + the whole suite (real Postgres, real nginx)"
	@echo "make test-fast the unit tests only"
	@echo "make lint      ruff + mypy --strict (make fmt: format and fix)"
	@echo "make bench     benchmarks (reported as ratios; not part of make test)"
	@echo "make stepca    build the step-ca binaries from Debian's Go sources"
	@echo "make env       create the Python env (uv sync); every target does it first"
	@echo "make clean     make down, then remove .devstack and .cache"

env: .venv/.synced

.venv/.synced: pyproject.toml uv.lock shared/pyproject.toml services/*/pyproject.toml deploy/pyproject.toml
	$(UV) sync --frozen --all-packages
	@touch $@

up: env
	$(RUN) python -m devstack up --gateways $(GATEWAYS)

down: env
	$(RUN) python -m devstack down

status: env
	$(RUN) python -m devstack status --gateways $(GATEWAYS)

lint: env
	$(RUN) ruff format --check .
	$(RUN) ruff check .
	$(RUN) mypy shared/src services/*/src deploy/src tests

fmt: env
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

stepca:
	bash deploy/step-ca/build.sh

test: env lint stepca
	$(RUN) pytest $(PYTEST_ARGS)

test-fast: env
	$(RUN) pytest tests/unit $(PYTEST_ARGS)

bench: env
	$(RUN) python -m tests.bench

demo: env
	$(RUN) python -m devstack demo

clean: down
	rm -rf .devstack .cache
