"""Fixtures only; the helpers behind them live in ``tests/support/`` (one module per concern,
shared with bench/) and the services the suite starts in ``tests/services.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests import services
from tests.support import (
    copy_project,
    free_port,
    start_mlflow_server,
    stop,
    stop_step_servers,
    synthetic_housing,
)

# `make test` hands whole files to its workers (pytest-xdist --dist loadfile, in collection
# order with --no-loadscope-reorder); the longest go first so that the workers finish near
# the same time. Ranked by `--durations` of a full run; files not listed keep their order.
_SESSION_STARTED = pytest.StashKey[float]()
LONGEST_FIRST = (
    "test_readme.py",
    "test_containers.py",
    "test_ci_paths.py",
    "test_pipeline.py",
    "test_bad_data_matrix.py",
    "test_registry.py",
    "test_faults.py",
    "test_auth.py",
    "test_postgres.py",
    "test_git_url.py",
    "test_spark_predict.py",
    "test_interrupt_make.py",
    "test_serving.py",
    "test_reload.py",
    "test_api_fuzz.py",
    "test_env_managers.py",
    "test_flat_layout_compat.py",
    "test_interrupts.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable for the rest


def _mlflow_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}


def _restore_mlflow_environment(saved: dict[str, str]) -> None:
    for name in set(_mlflow_environment()) - set(saved):
        del os.environ[name]
    os.environ.update(saved)


# mlflow.set_experiment and set_tracking_uri export MLFLOW_EXPERIMENT_ID/MLFLOW_TRACKING_URI
# for subprocesses. A test that calls them in-process would hand its experiment to every later
# `mlflow run` of the same worker (which then refuses --experiment-name, or looks for an
# experiment its store does not have): whatever a test or a module set, it takes back.
@pytest.fixture(autouse=True, scope="module")
def _module_keeps_mlflow_environment() -> Iterator[None]:
    saved = _mlflow_environment()
    yield
    _restore_mlflow_environment(saved)


@pytest.fixture(autouse=True)
def _test_keeps_mlflow_environment() -> Iterator[None]:
    saved = _mlflow_environment()
    yield
    _restore_mlflow_environment(saved)


# main leaves a step server behind for the next run (steps.infra.forkserver); the suite ends
# the ones it started: a test's own (its clone's interpreter, or a TMPDIR of its own) after the
# test, the shared one once every worker is done (in the xdist controller, or the only process).
def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SESSION_STARTED] = time.time()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        stop_step_servers(None, since=session.config.stash.get(_SESSION_STARTED, time.time()))


@pytest.fixture(autouse=True)
def _test_stops_its_step_servers(request: pytest.FixtureRequest) -> Iterator[None]:
    own = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if own is not None:
        stop_step_servers(own)


def pytest_configure(config: pytest.Config) -> None:
    # PySpark (and every `mlflow run` child the Spark tests start) takes Java from JAVA_HOME:
    # the suite's own runtime from the lock, whatever Java the machine has or lacks.
    os.environ["JAVA_HOME"] = str(services.java_home())


@pytest.fixture
def raw_frame() -> pd.DataFrame:
    return synthetic_housing()


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture
def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    proc, url = start_mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts")
    try:
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def uv_cache() -> Path:
    """uv's package cache for the clean-shell clones (tests/cleanshell.py): the one `make
    setup` of this checkout filled (`uv cache dir`), so that no clone downloads the ~1 GB of
    the locks again. The cold path is that `make setup` itself, on CI's fresh machine."""
    uv = shutil.which("uv", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert uv, "uv is not installed (it is in requirements-dev.lock)"
    found = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, check=True)
    return Path(found.stdout.strip())


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """An admin URI of a PostgreSQL server (a role that may CREATE DATABASE): ``PG_TEST_URI``
    if set, else a server of this session's own (tests/services.py), stopped at the end."""
    if os.environ.get("PG_TEST_URI"):
        yield os.environ["PG_TEST_URI"]
        return
    with services.postgres_server(free_port()) as uri:
        yield uri
