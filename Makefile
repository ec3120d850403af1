# Everything a user or CI does goes through these targets. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
# `mlflow run --env-manager local` runs each entry point's `python` from PATH, and main's
# children do the same: the venv must come first on PATH, not only in the command we call.
export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(VENV)
# uv trusts the OS certificate store (as pip does), so TLS-inspecting proxies keep working.
export UV_SYSTEM_CERTS ?= 1
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
# mlflow refuses to deserialise any sklearn model (skops included) without this opt-in;
# our own server loads with explicit skops trusted types instead.
export MLFLOW_ALLOW_PICKLE_DESERIALIZATION ?= true
# Fail in seconds, not minutes, when the tracking server is gone (mlflow: 7 retries, backoff 2).
# The `mlflow run` launcher reads these before main starts, so they are set here too.
export MLFLOW_HTTP_REQUEST_MAX_RETRIES ?= 4
export MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR ?= 1
export MLFLOW_HTTP_REQUEST_TIMEOUT ?= 30
# `mlflow server` otherwise starts seven job-runner processes (MLflow's GenAI jobs; no part of
# this project): about 1.5 GB of memory and 20 s of CPU for nothing.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION ?= false
# Quiet by default: MLflow's INFO lines and per-file progress bars only with VERBOSE=1
# (each step's full output is always kept as the artifact logs/<step>.log of its run).
ifeq ($(VERBOSE),1)
export PIPELINE_VERBOSE := 1
else
export MLFLOW_LOGGING_LEVEL ?= WARNING
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR ?= false
endif
MLFLOW_PORT ?= 5000
# empty: mlflow server's own default (4 workers) for `make server` / `make server-postgres`
MLFLOW_WORKERS ?=
# empty: serve's own default port (steps/serve.py DEFAULT_PORT)
SERVE_PORT ?=
PIPELINE_EXPERIMENT ?= california_housing_price
GIT_URL ?= $(shell git remote get-url origin 2>/dev/null)
GIT_VERSION ?= $(shell git rev-parse HEAD 2>/dev/null)
PYTEST_ARGS ?=
# `make test` runs test files in this many pytest-xdist workers (one file stays on one worker).
# Two on two cores: the suite keeps them busy (a third made pytest slower: 1,317 s against 1,276 s).
PYTEST_WORKERS ?= 2
INPUT ?=
OUTPUT ?= predictions.parquet
# empty: predict's own defaults (engine local; engine=spark: master local[*])
ENGINE ?=
SPARK_MASTER ?=
# a path made absolute (`mlflow run` runs the step elsewhere); a URI (s3a://, hdfs://…) as is
location = $(if $(findstring ://,$(1)),$(1),$(abspath $(1)))
# `make server AUTH=1`: basic auth (steps.infra.authserver); server-postgres has it unless AUTH=0.
AUTH ?=
# '<role> <username> <password>' lines for `make accounts`, kept outside the repository.
ACCOUNTS_FILE ?=
# On an auth server the `mlflow run` launcher creates a run before our code runs, and turns
# a refusal into a traceback: check the account first (nothing to check on a local store).
PREFLIGHT = python -m steps.infra.accounts check --experiment-name $(PIPELINE_EXPERIMENT)

.DEFAULT_GOAL := help
.PHONY: help setup spark-setup data test-prerequisites lock run steps run-from-git serve predict test coverage test-unit test-integration test-git-url \
	test-envmanagers image bench lint format server server-postgres accounts serve-readonly ui clean

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-18s %s\n", $$1, $$2}'

# The locks pin every package with its hashes. uv installs them several times faster than
# pip; it comes from the lock itself (hash-checked) when it is not already on PATH.
$(BIN)/.installed: requirements.lock requirements-dev.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if ! command -v uv >/dev/null; then \
	  echo "installing uv into .venv (from requirements-dev.lock)"; \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
	    --require-hashes -r <(sed -n '/^uv==/,/^[^ ]/{/^uv==/p;/^ /p}' requirements-dev.lock); \
	fi
	@echo "installing the locked dependencies into .venv (uv pip install --require-hashes)"
	@uv pip install --quiet --compile-bytecode --require-hashes --python $(BIN)/python \
	  -r requirements-dev.lock
	@touch $@

# The interpreter hook (.pth) names the hook file's path: reinstalled when that file changes
# (a venv set up before the hook moved would otherwise point at a file that is gone).
$(BIN)/.start-hook: $(BIN)/.installed steps/infra/starthook.py
	@$(BIN)/python -m steps.infra.starthook install
	@touch $@

# The empty tracking store `make run` starts a new ./mlflow.db from (steps.infra.storetemplate).
$(BIN)/.store-template: $(BIN)/.installed
	@$(BIN)/python -m steps.infra.storetemplate build
	@touch $@

setup: $(BIN)/.installed $(BIN)/.start-hook $(BIN)/.store-template ## create .venv with the locked dependencies (requirements-dev.lock)

# PySpark (~450 MB) only for Spark scoring and the tests; `make run` never needs it.
$(BIN)/.spark-installed: $(BIN)/.installed requirements-spark.lock
	@echo "installing PySpark into .venv (requirements-spark.lock)"
	@uv pip install --quiet --compile-bytecode --require-hashes --python $(BIN)/python \
	  -r requirements-spark.lock
	@touch $@

spark-setup: $(BIN)/.spark-installed ## add PySpark to .venv (predict -P engine=spark; needs a Java runtime)

data: setup ## fetch data/housing.csv as load_data does (DVC, else HOUSING_DATA_URL or the public URL), md5-checked
	@python -m steps.data.fetch >/dev/null

lock: ## re-resolve requirements*.in into the hashed requirements*.lock files
	uv pip compile --quiet --universal --generate-hashes --python-version 3.11 \
	  requirements.in -o requirements.lock
	uv pip compile --quiet --universal --generate-hashes --python-version 3.11 \
	  requirements-dev.in -o requirements-dev.lock
	uv pip compile --quiet --universal --generate-hashes --python-version 3.11 \
	  requirements-docs.in -o requirements-docs.lock
	uv pip compile --quiet --universal --generate-hashes --python-version 3.11 \
	  requirements-spark.in -o requirements-spark.lock

# The launcher starts the step server (steps.infra.forkserver, through the venv's start hook
# steps.infra.starthook), whose imports overlap its own; main's steps start as forks of it. A new
# ./mlflow.db starts as a copy of the empty store built by `make setup` (steps.infra.storetemplate).
run: setup ## run the whole pipeline: mlflow run . -e main (data: HOUSING_DATA_URL or DVC)
	@python -m steps.infra.storetemplate place
	@$(PREFLIGHT)
	mlflow run . -e main --env-manager local --experiment-name $(PIPELINE_EXPERIMENT)

steps: setup ## run the entry points one by one; each takes the latest finished upstream run
	@$(PREFLIGHT)
	mlflow run . -e load_data --env-manager local --experiment-name $(PIPELINE_EXPERIMENT)
	mlflow run . -e preprocess --env-manager local --experiment-name $(PIPELINE_EXPERIMENT)
	mlflow run . -e train --env-manager local --experiment-name $(PIPELINE_EXPERIMENT)
	mlflow run . -e register --env-manager local --experiment-name $(PIPELINE_EXPERIMENT)

run-from-git: setup ## main from GIT_URL (default origin; subfolder: URL#dir) at GIT_VERSION (default HEAD)
	@$(PREFLIGHT)
	mlflow run '$(GIT_URL)' -e main --version $(GIT_VERSION) --env-manager local \
	  --experiment-name $(PIPELINE_EXPERIMENT)

serve: setup ## online API for models:/CaliforniaHousingRegressor@champion on 127.0.0.1:8000 (SERVE_PORT=… to move it)
	@$(PREFLIGHT)
	mlflow run . -e serve --env-manager local --experiment-name $(PIPELINE_EXPERIMENT) \
	  $(if $(SERVE_PORT),-P port=$(SERVE_PORT))

# `mlflow run -e serve` creates a run: an account with read access only starts serve directly.
serve-readonly: setup ## the same API without an MLflow run: what a read-only (serving) account can start
	python -m steps.serve $(if $(SERVE_PORT),--port $(SERVE_PORT))

predict: setup $(if $(filter spark,$(ENGINE)),spark-setup) ## batch predictions with the champion: make predict INPUT=rows.csv [OUTPUT=…] [ENGINE=spark SPARK_MASTER=…]
	@test -n "$(INPUT)" || { echo "error: predict: give the rows to score: make predict INPUT=file.csv" >&2; exit 2; }
	@$(PREFLIGHT)
	mlflow run . -e predict --env-manager local --experiment-name $(PIPELINE_EXPERIMENT) \
	  -P input=$(call location,$(INPUT)) -P output=$(call location,$(OUTPUT)) \
	  $(if $(ENGINE),-P engine=$(ENGINE)) $(if $(SPARK_MASTER),-P 'spark_master=$(SPARK_MASTER)')

# The image (k8s/Dockerfile): the pipeline's steps in docker (k8s/MLproject), the Kubernetes
# Jobs and the prediction server. Needs no .venv: Docker (.ci/docker.sh installs and starts
# Debian's engine when none answers; root) and, without BASE_IMAGE, a base made from Debian's
# packages (k8s/debian_base.sh: debootstrap + docker import, built once). The build context is
# exactly the files k8s/Dockerfile.dockerignore lets through; RUN steps use the host's network
# (dockerd here runs without a bridge).
IMAGE ?= california-housing-price
# empty: the Debian bookworm base made here; else any image with python3.11 (python:3.11.7-slim)
BASE_IMAGE ?=
IMAGE_FILES = $(shell sed -n 's,^!,,p' k8s/Dockerfile.dockerignore | sed 's,/\*\*$$,,') k8s/Dockerfile
IMAGE_TAG = $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(if $(shell git status --porcelain 2>/dev/null),-dirty)
image: ## build $(IMAGE):latest and :<commit> (k8s/Dockerfile; Debian base made here unless BASE_IMAGE=…)
	@$(if $(BASE_IMAGE),,DOCKER_NEEDS=debootstrap) .ci/docker.sh >/dev/null
	@start=$$(date +%s); \
	base='$(BASE_IMAGE)'; [ -n "$$base" ] || base="$$(k8s/debian_base.sh)" || exit; \
	tar -c --exclude=__pycache__ $(IMAGE_FILES) | docker build --network host -f k8s/Dockerfile \
	  --build-arg BASE_IMAGE="$$base" --build-arg SOURCE_COMMIT=$(IMAGE_TAG) \
	  -t $(IMAGE):latest -t $(IMAGE):$(IMAGE_TAG) - || exit; \
	echo "built $(IMAGE):latest = $(IMAGE):$(IMAGE_TAG) on $$base in $$(( $$(date +%s) - start )) s," \
	  "$$(docker image inspect --format '{{.Size}}' $(IMAGE):latest | awk '{printf "%.0f MB", $$1/1e6}')"

# What the suite cannot install into .venv itself: checked first, one line each. The bare
# `mlflow run . -e main` of the README builds its env with pyenv's Python of python_env.yaml.
PYENV_PYTHON = $(shell sed -n 's/^python: *"\{0,1\}\([0-9.]*\)"\{0,1\}.*/\1/p' python_env.yaml)
test-prerequisites:
	@command -v git >/dev/null || { echo "error: make test needs git (Debian: apt-get install git)" >&2; exit 1; }
	@command -v pyenv >/dev/null || { echo "error: make test needs pyenv on PATH (the README's bare \`mlflow run . -e main\` takes Python $(PYENV_PYTHON) from it): https://github.com/pyenv/pyenv#installation" >&2; exit 1; }
	@pyenv versions --bare | grep -qx '$(PYENV_PYTHON)' || { echo "error: make test needs Python $(PYENV_PYTHON) in pyenv (pinned by python_env.yaml): pyenv install $(PYENV_PYTHON)" >&2; exit 1; }

# PostgreSQL and Java come from wheels in the dev lock (tests/services.py), the data from
# HOUSING_DATA_URL or the public URL (make data): nothing else to install or start.
# Exit code 5 (nothing collected: a PYTEST_ARGS that selects nothing) is a failure too.
PYTEST_ALL = pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: test-prerequisites setup spark-setup lint data ## lint, then every unit and integration test (both cores)
	$(PYTEST_ALL) $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected" && exit 1; exit $$rc

# Coverage traces every Python process the suite starts (each `mlflow run` step included),
# which costs about a quarter more CPU: its own target, not part of `make test`.
coverage: test-prerequisites setup spark-setup data ## make test's suite with line coverage of steps/ (subprocesses included)
	$(PYTEST_ALL) --cov --cov-report=term-missing:skip-covered $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected" && exit 1; exit $$rc

test-unit: setup data ## fast unit tests only
	pytest tests/unit $(PYTEST_ARGS)

test-integration: setup spark-setup data ## integration tests (real mlflow run, servers, DVC)
	pytest tests/integration $(PYTEST_ARGS)

test-git-url: setup data ## mlflow run against git:// URLs served by git daemon (incl. repo#subdir)
	pytest tests/integration/test_git_url.py $(PYTEST_ARGS)

test-envmanagers: setup data ## only the env-manager test: main under --env-manager uv from an empty env root
	pytest tests/integration -m envmanager $(PYTEST_ARGS)

bench: setup data ## benchmarks (pipeline, model quality, tuning, API; the API bench needs `wrk`): prints numbers
	python bench/pipeline_bench.py
	python bench/model_quality.py
	python bench/tune_bench.py
	python bench/api_bench.py

lint: setup ## ruff lint + format check
	ruff check .
	ruff format --check .

format: setup ## apply ruff formatting and fixes
	ruff format .
	ruff check --fix .

# AUTH=1: MLflow's basic-auth app (steps.infra.authserver), users and grants in ./basic_auth.db;
# needs MLFLOW_AUTH_ADMIN_PASSWORD and MLFLOW_FLASK_SERVER_SECRET_KEY (or *_FILE, outside the repo).
server: setup ## tracking server on 127.0.0.1:$(MLFLOW_PORT) (SQLite + ./mlruns, absolute paths; AUTH=1: basic auth)
	$(if $(filter 1,$(AUTH)),python -m steps.infra.authserver --auth-database-uri sqlite:///$(CURDIR)/basic_auth.db --,mlflow server) \
	  --host 127.0.0.1 --port $(MLFLOW_PORT) $(if $(MLFLOW_WORKERS),--workers $(MLFLOW_WORKERS)) \
	  --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlruns

# The shared server: basic auth (unless AUTH=0), secrets as for `make server AUTH=1`.
# Accounts: `make accounts`. PG_URI=postgresql://user:password@host:port/db: a PostgreSQL of
# your own (the database must exist); users and grants in PG_AUTH_URI, by default the database
# mlflow_auth of the same server. Without PG_URI, .ci/postgres.sh makes both on this machine
# (Debian's PostgreSQL; root). Both are read from the environment (a command-line variable is
# exported too), so the recipe Make prints holds no password.
server-postgres: setup ## shared tracking server: PostgreSQL (PG_URI=…, else .ci/postgres.sh; root) + proxied artifacts + basic auth
	if [ -n "$${PG_URI:-}" ]; then \
	  pg_uri="$$PG_URI" base="$${PG_URI%%\?*}"; \
	  auth_uri="$${PG_AUTH_URI:-$${base%/*}/mlflow_auth$${PG_URI:$${#base}}}"; \
	else \
	  pg_uri="$$(.ci/postgres.sh)" && \
	  auth_uri="$${PG_AUTH_URI:-$$(PG_DB=mlflow_auth .ci/postgres.sh)}" || exit; \
	fi; \
	$(if $(filter 0,$(AUTH)),mlflow server,python -m steps.infra.authserver \
	  --auth-database-uri "$${auth_uri/postgresql:/postgresql+psycopg2:}" --) \
	  --host 127.0.0.1 --port $(MLFLOW_PORT) $(if $(MLFLOW_WORKERS),--workers $(MLFLOW_WORKERS)) \
	  --backend-store-uri "$${pg_uri/postgresql:/postgresql+psycopg2:}" \
	  --artifacts-destination $(CURDIR)/mlartifacts --serve-artifacts

accounts: setup ## as admin (MLFLOW_TRACKING_USERNAME/PASSWORD): make accounts ACCOUNTS_FILE=… (idempotent)
	@test -n "$(ACCOUNTS_FILE)" || { echo "error: accounts: give the accounts file: make accounts ACCOUNTS_FILE=/path/outside/the/repo" >&2; exit 2; }
	python -m steps.infra.accounts apply --accounts-file $(abspath $(ACCOUNTS_FILE))

ui: setup ## MLflow UI on 127.0.0.1:$(MLFLOW_PORT) over the local store
	mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port $(MLFLOW_PORT)

clean: ## remove local tracking data and caches (keeps .venv and data/)
	rm -rf mlruns mlflow.db .pytest_cache .ruff_cache

.PHONY: screenshots
screenshots: setup ## regenerate docs/img/*.png from a real run (headless Debian chromium)
	@test -x /usr/bin/chromium || { echo "error: screenshots: /usr/bin/chromium not found: apt-get install chromium" >&2; exit 1; }
	@uv pip install --quiet --require-hashes --python $(BIN)/python -r requirements-docs.lock
	$(BIN)/python docs/screenshots.py
