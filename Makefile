# Everything a user or CI does goes through these targets. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
# mlflow refuses to deserialise any sklearn model (skops included) without this opt-in;
# our own server loads with explicit skops trusted types instead.
export MLFLOW_ALLOW_PICKLE_DESERIALIZATION ?= true
# Fail in seconds, not minutes, when the tracking server is gone (mlflow: 7 retries, backoff 2).
# The `mlflow run` launcher reads these before main starts, so they are set here too.
export MLFLOW_HTTP_REQUEST_MAX_RETRIES ?= 4
export MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR ?= 1
export MLFLOW_HTTP_REQUEST_TIMEOUT ?= 30
MLFLOW_PORT ?= 5000
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup run test test-unit test-integration lint format server server-postgres ui clean

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(BIN)/.installed ## create .venv with the pinned dependencies

run: setup ## run the whole pipeline: mlflow run . -e main (data: $$HOUSING_DATA_URL or DVC)
	$(BIN)/mlflow run . -e main --env-manager local

test: setup lint ## lint, then every test (unit + integration)
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected" && exit 1; exit $$rc

test-unit: setup ## fast unit tests only
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: setup ## integration tests (real mlflow run, servers, DVC)
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

lint: setup ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup ## apply ruff formatting and fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

server: setup ## tracking server on 127.0.0.1:$(MLFLOW_PORT) (SQLite + ./mlruns, absolute paths)
	$(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
	  --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlruns

server-postgres: setup ## tracking server on PostgreSQL (.ci/postgres.sh installs/starts it; root) + proxied artifacts
	pg_uri="$$(.ci/postgres.sh)" && \
	$(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
	  --backend-store-uri "$${pg_uri/postgresql:/postgresql+psycopg2:}" \
	  --artifacts-destination $(CURDIR)/mlartifacts --serve-artifacts

ui: setup ## MLflow UI on 127.0.0.1:$(MLFLOW_PORT) over the local store
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port $(MLFLOW_PORT)

clean: ## remove local tracking data and caches (keeps .venv and data/)
	rm -rf mlruns mlflow.db .pytest_cache .ruff_cache
