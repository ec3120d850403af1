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
SERVE_PORT ?= 8000
PIPELINE_EXPERIMENT ?= california_housing_price
GIT_URL ?= $(shell git remote get-url origin 2>/dev/null)
GIT_VERSION ?= $(shell git rev-parse HEAD 2>/dev/null)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup run steps run-from-git serve test test-unit test-integration test-git-url \
	test-envmanagers bench lint format server server-postgres ui clean

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(BIN)/.installed ## create .venv with the pinned dependencies

run: setup ## run the whole pipeline: mlflow run . -e main (data: HOUSING_DATA_URL or DVC)
	$(BIN)/mlflow run . -e main --env-manager local

steps: setup ## run the entry points one by one; each takes the latest finished upstream run
	$(BIN)/mlflow run . -e load_data --env-manager local --experiment-name $(PIPELINE_EXPERIMENT)
	$(BIN)/mlflow run . -e preprocess --env-manager local --experiment-name $(PIPELINE_EXPERIMENT)
	$(BIN)/mlflow run . -e train --env-manager local --experiment-name $(PIPELINE_EXPERIMENT)
	$(BIN)/mlflow run . -e register --env-manager local --experiment-name $(PIPELINE_EXPERIMENT)

run-from-git: setup ## main from GIT_URL (default origin; subfolder: URL#dir) at GIT_VERSION (default HEAD)
	$(BIN)/mlflow run '$(GIT_URL)' -e main --version $(GIT_VERSION) --env-manager local

serve: setup ## online API for models:/CaliforniaHousingRegressor@champion on 127.0.0.1:$(SERVE_PORT)
	$(BIN)/mlflow run . -e serve --env-manager local -P port=$(SERVE_PORT)

test: setup lint ## lint, then every test (unit + integration)
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected" && exit 1; exit $$rc

test-unit: setup ## fast unit tests only
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: setup ## integration tests (real mlflow run, servers, DVC)
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-git-url: setup ## mlflow run against git:// URLs served by git daemon (incl. repo#subdir)
	$(BIN)/pytest tests/integration/test_git_url.py $(PYTEST_ARGS)

test-envmanagers: setup ## main under --env-manager uv and virtualenv (slow: builds envs from PyPI)
	$(BIN)/pytest tests/integration -m envmanager $(PYTEST_ARGS)

bench: setup ## benchmarks (pipeline, model quality, API; the API bench needs `wrk`): prints numbers
	$(BIN)/python bench/pipeline_bench.py
	$(BIN)/python bench/model_quality.py
	$(BIN)/python bench/api_bench.py

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

.PHONY: screenshots
screenshots: setup ## regenerate docs/img/*.png from a real run (headless Debian chromium)
	@test -x /usr/bin/chromium || { echo "error: screenshots: /usr/bin/chromium not found: apt-get install chromium" >&2; exit 1; }
	$(BIN)/python docs/screenshots.py
