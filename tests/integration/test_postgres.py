"""The pipeline against a tracking server backed by PostgreSQL, with proxied artifacts.

Needs ``PG_TEST_URI`` (``.ci/postgres.sh`` prints one): a role that may CREATE DATABASE. Each
test session works in its own throwaway database, created here and dropped at the end, so
reruns start clean. Skipped when ``PG_TEST_URI`` is unset.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from mlflow import MlflowClient

from steps import config
from tests.integration.test_faults import (
    STEPS,
    all_runs,
    latest_parent,
    run_concurrent_mains,
)
from tests.support import copy_project, run_main, start_mlflow_server, stop

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(
        not os.environ.get("PG_TEST_URI"),
        reason="PG_TEST_URI is unset (run .ci/postgres.sh and export what it prints)",
    ),
]


def with_database(uri: str, name: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"/{name}"))


def sqlalchemy_uri(uri: str) -> str:
    """The backend-store URI for `mlflow server`: name the driver we install (psycopg2);
    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed."""
    return "postgresql+psycopg2://" + uri.split("://", 1)[1]


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new, uniquely named database on the PG_TEST_URI server; dropped on exit."""
    import psycopg2

    admin_uri = os.environ["PG_TEST_URI"]
    name = f"mlflow_test_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(admin_uri)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield with_database(admin_uri, name)
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    with fresh_database() as uri:
        yield uri


@pytest.fixture(scope="session")
def pg_server(pg_database, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`mlflow server` on the PostgreSQL store, artifacts proxied (--serve-artifacts)."""
    artifacts = tmp_path_factory.mktemp("pg-artifacts")
    proc, url = start_mlflow_server(sqlalchemy_uri(pg_database), artifacts)
    try:
        yield url, artifacts
    finally:
        stop(proc)


def test_pipeline_on_postgres_with_proxied_artifacts(tmp_path, pg_server):
    url, artifacts = pg_server
    project = copy_project(tmp_path / "project")
    pipeline = run_main(project, url, "-P", "n_estimators=60")
    assert f"{url}/#/experiments/" in pipeline.stdout

    client = MlflowClient(url)
    parent = latest_parent(client)
    assert parent.info.status == "FINISHED"
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    for step in STEPS:
        run = client.get_run(parent.data.tags[f"pipeline.{step}.run_id"])
        assert run.info.status == "FINISHED", step
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    version = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert version.run_id == parent.data.tags["pipeline.train.run_id"]
    # artifacts went through the server into its --artifacts-destination, not the client disk
    assert any(artifacts.rglob("MLmodel"))
    assert any(artifacts.rglob("housing.csv"))
    assert not (project / "mlruns").exists()

    # the warm rerun reuses every step but register, as on SQLite
    run_main(project, url, "-P", "n_estimators=60")
    second = latest_parent(client)
    for step in ("load_data", "preprocess", "train"):
        assert second.data.tags[f"pipeline.{step}.reused"] == "true"
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]


def test_four_concurrent_mains_on_postgres(tmp_path):
    # a database of its own: the registry must hold exactly these four versions
    with fresh_database() as uri:
        proc, url = start_mlflow_server(sqlalchemy_uri(uri), tmp_path / "artifacts")
        try:
            run_concurrent_mains(tmp_path, url, n=4)
        finally:
            stop(proc)
