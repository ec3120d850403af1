"""The pipeline, promote and serve against a real ``mlflow server --app-name basic-auth``.

One auth server for the module (``python -m steps.infra.authserver``: SQLite store, SQLite auth
database, proxied artifacts, secrets from files), its accounts made by ``python -m
steps.infra.accounts apply``: ``pipeline``, ``serving``, maintainer ``alice``
(tests/support/servers.py).
What each account may and may not do is asserted against the server's own answers; a
refused request must end in one error line, no traceback, no run left behind, the champion
untouched. The prediction API's keys are checked against the real server process, under load.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from steps import config
from tests.support import (
    AUTH_ADMIN_PASSWORD,
    PROJECT_ROOT,
    SAMPLE_ROW,
    TEST_ACCOUNTS,
    apply_accounts,
    auth_env,
    auth_server_secrets,
    copy_project,
    end_make,
    free_port,
    housing_tgz,
    job_runners,
    make_env,
    mlflow_run_local,
    project_with_venv,
    rest,
    run_cmd,
    run_make,
    start_auth_server,
    start_make,
    stop,
    stop_auth_server,
    wait_http,
    write_accounts,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PASSWORDS = [password for _, _, password in TEST_ACCOUNTS]
API_KEYS = ("first-api-key-0123456789", "second-api-key-0123456789")
ROW = SAMPLE_ROW


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("auth-server")
    (root / "secrets").mkdir()
    proc, url = start_auth_server(
        f"sqlite:///{root / 'mlflow.db'}",
        f"sqlite:///{root / 'basic_auth.db'}",
        root / "artifacts",
        root / "secrets",
    )
    try:
        made = apply_accounts(url, root / "accounts.txt")
        assert made.returncode == 0, made.stderr[-3000:]
        yield url
    finally:
        stop_auth_server(proc)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("auth-project") / "project")


@pytest.fixture(scope="module")
def admin(server) -> Iterator[MlflowClient]:
    with credentials("admin"):
        yield MlflowClient(server)


@contextlib.contextmanager
def credentials(username: str | None) -> Iterator[None]:
    """This process's MLflow credentials for the block (MlflowClient reads them per request)."""
    saved, wanted = dict(os.environ), auth_env(username)
    os.environ.clear()
    os.environ.update(wanted)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_as(username: str | None, args: list[str], cwd: Path, url: str, timeout: float = 900):
    env = auth_env(
        username,
        MLFLOW_TRACKING_URI=url,
        MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true",
        HOUSING_DATA_URL=housing_tgz().as_uri(),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PYTHONUNBUFFERED="1",
    )
    return run_cmd(args, cwd=cwd, env=env, timeout=timeout)


def all_runs(client: MlflowClient) -> list:
    experiments = client.search_experiments(view_type=ViewType.ALL)
    return client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    for password in PASSWORDS:
        assert password not in result.stderr + result.stdout
    return errors[0]


def main_as_pipeline(project: Path, url: str, n_estimators: int):
    result = run_as(
        "pipeline",
        mlflow_run_local(
            "main",
            "--experiment-name",
            config.EXPERIMENT_NAME,
            "-P",
            f"n_estimators={n_estimators}",
        ),
        project,
        url,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def pipelined(server, project) -> subprocess.CompletedProcess:
    """main, run once by the pipeline account: v1 @champion."""
    return main_as_pipeline(project, server, n_estimators=40)


def champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS).version)


# --- refusals -----------------------------------------------------------------------------
def test_anonymous_and_wrong_password_fail_in_one_line_and_create_nothing(server, project, admin):
    before = len(all_runs(admin))

    checked = run_as(
        None, [sys.executable, "-m", "steps.infra.accounts", "check"], PROJECT_ROOT, server
    )
    assert_one_error_line(checked, "users/current", "anonymous", "401 UNAUTHENTICATED")

    step = run_as(None, [sys.executable, "-m", "steps.load_data"], project, server)
    assert_one_error_line(step, "error: load_data:", "anonymous", "401 UNAUTHENTICATED")

    # the driver, with a wrong password: refused before it opens a run
    wrong = run_cmd(
        [sys.executable, "-m", "steps.main"],
        cwd=project,
        env=auth_env(
            "pipeline",
            MLFLOW_TRACKING_URI=server,
            MLFLOW_TRACKING_PASSWORD="not-the-password-1",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        ),
    )
    assert_one_error_line(wrong, "error: main:", "user 'pipeline'", "401 UNAUTHENTICATED")

    # MLflow's own launcher, as a user types it: refused before any step of ours runs
    # (steps.infra.starthook, installed into the venv by make setup)
    launcher = run_as(
        None, mlflow_run_local("main", "--experiment-name", config.EXPERIMENT_NAME), project, server
    )
    assert_one_error_line(launcher, "tracking server refused", "anonymous", "401 UNAUTHENTICATED")
    assert len(all_runs(admin)) == before


def test_pipeline_account_runs_main_and_no_credential_is_recorded(server, pipelined, admin):
    result = pipelined
    assert champion(admin) == "1"
    experiment = admin.get_experiment_by_name(config.EXPERIMENT_NAME)
    runs = all_runs(admin)
    assert {r.info.status for r in runs} == {"FINISHED"}, [r.info.status for r in runs]
    secrets = [*PASSWORDS, "MLFLOW_TRACKING_PASSWORD"]
    for run in runs:
        recorded = json.dumps([run.data.params, run.data.tags])
        assert not [s for s in secrets if s in recorded], run.info.run_name
    parent = admin.search_runs(
        [experiment.experiment_id], f"tags.`{config.TAG_STEP}` = 'main'", max_results=1
    )[0]
    with tempfile.TemporaryDirectory() as tmp:
        for step in ("load_data", "preprocess", "train", "register"):
            run_id = parent.data.tags[f"pipeline.{step}.run_id"]
            log = admin.download_artifacts(run_id, f"logs/{step}.log", tmp)
            text = Path(log).read_text()
            assert not [s for s in secrets if s in text], step
    assert not [s for s in secrets if s in result.stdout + result.stderr]

    # EDIT, not MANAGE: the pipeline may create runs but not delete them
    with credentials("pipeline"), pytest.raises(MlflowException) as refused:
        MlflowClient(server).delete_run(parent.info.run_id)
    assert refused.value.get_http_status_code() == 403


def test_serving_account_reads_but_cannot_register_promote_or_start_runs(
    server, project, admin, pipelined
):
    current = champion(admin)
    version = admin.get_model_version(config.MODEL_NAME, current)
    experiment = admin.get_experiment_by_name(config.EXPERIMENT_NAME)
    with credentials("serving"):
        serving = MlflowClient(server)
        assert champion(serving) == current  # may read the model and follow the alias
        attempts = {
            "register a version": lambda: serving.create_model_version(
                config.MODEL_NAME, version.source, version.run_id
            ),
            "move the alias": lambda: serving.set_registered_model_alias(
                config.MODEL_NAME, config.CHAMPION_ALIAS, current
            ),
            "delete the alias": lambda: serving.delete_registered_model_alias(
                config.MODEL_NAME, config.CHAMPION_ALIAS
            ),
            "create a run": lambda: serving.create_run(experiment.experiment_id),
        }
        for what, attempt in attempts.items():
            with pytest.raises(MlflowException) as refused:
                attempt()
            assert refused.value.get_http_status_code() == 403, what
    runs_before = len(all_runs(admin))

    promote = run_as(
        "serving",
        [sys.executable, "-m", "steps.promote", "--version", current, "--reason", "test"],
        project,
        server,
    )
    assert_one_error_line(promote, "error: promote:", "runs/create", "user 'serving'", "403")
    checked = run_as(
        "serving", [sys.executable, "-m", "steps.infra.accounts", "check"], project, server
    )
    assert_one_error_line(checked, "user 'serving' may not create runs", "needs EDIT, has READ")
    # the read-only account typing `mlflow run . -e main`: the launcher's runs/create is refused
    launcher = run_as(
        "serving",
        mlflow_run_local("main", "--experiment-name", config.EXPERIMENT_NAME),
        project,
        server,
    )
    assert_one_error_line(launcher, "tracking server refused", "user 'serving'", "403")
    assert len(all_runs(admin)) == runs_before
    assert admin.get_model_version(config.MODEL_NAME, current).aliases == version.aliases
    assert champion(admin) == current


# --- serving under auth, API keys, promote and roll back -----------------------------------
def request(url: str, key: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for_version(api: str, key: str, version: str, proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "serve exited"
        if request(f"{api}/version", key)[1].get("model_version") == version:
            return
        time.sleep(0.5)
    raise TimeoutError(f"serve did not move to v{version}")


def answered_with(api: str, key: str, status: int, proc, timeout: float = 30) -> None:
    """Until /version answers ``key`` with ``status`` (the key file is re-read on change)."""
    deadline = time.monotonic() + timeout
    while (got := request(f"{api}/version", key)[0]) != status:
        assert proc.poll() is None, "serve exited"
        assert time.monotonic() < deadline, f"still {got} for a rotated key after {timeout} s"
        time.sleep(0.1)


def test_serve_with_the_serving_account_and_api_keys_follows_a_maintainers_promotion(
    server, project, admin, pipelined, tmp_path
):
    main_as_pipeline(project, server, n_estimators=20)  # a second version to promote
    first = champion(admin)
    target = next(
        v.version
        for v in admin.search_model_versions(f"name = '{config.MODEL_NAME}'")
        if str(v.version) != first
    )
    keys = tmp_path / "keys"
    keys.write_text(f"# rotated by hand\n{API_KEYS[0]}\n")
    port = free_port()
    serve = subprocess.Popen(
        [
            sys.executable, "-m", "steps.serve", "--port", str(port), "--workers", "1",
            "--reload-interval", "1", "--api-keys-file", str(keys),
        ],
        cwd=project,
        env=auth_env("serving", MLFLOW_TRACKING_URI=server),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{api}/health", serve, timeout=180)
        assert request(f"{api}/ready")[0] == 200  # health probes stay open
        status, body = request(f"{api}/predict", None, {"data": [ROW]})
        assert status == 401 and "API key" in body["detail"]
        assert request(f"{api}/metrics", "wrong-key-0123456789abc")[0] == 401
        assert request(f"{api}/predict", API_KEYS[0], {"data": [ROW]})[0] == 200

        # under load: 8 threads, right and wrong keys interleaved, every answer as expected
        answers: list[tuple[bool, int]] = []

        def client(n: int) -> None:
            for i in range(25):
                right = (n + i) % 2 == 0
                key = API_KEYS[0] if right else API_KEYS[0][:-1] + "X"
                answers.append((right, request(f"{api}/predict", key, {"data": [ROW]})[0]))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(answers) == 200
        assert {(right, status) for right, status in answers} == {(True, 200), (False, 401)}

        # rotation: both keys valid, then only the new one, without a restart
        keys.write_text(f"{API_KEYS[0]}\n{API_KEYS[1]}\n")
        answered_with(api, API_KEYS[1], 200, serve)
        assert request(f"{api}/version", API_KEYS[0])[0] == 200  # both valid meanwhile
        keys.write_text(f"{API_KEYS[1]}\n")
        answered_with(api, API_KEYS[0], 401, serve)
        assert request(f"{api}/version", API_KEYS[1])[0] == 200
        key = API_KEYS[1]

        promote = mlflow_run_local(
            "promote", "--experiment-name", config.EXPERIMENT_NAME, "-P", f"version={target}"
        )
        moved = run_as("alice", [*promote, "-P", "reason=maintainer test"], project, server)
        assert moved.returncode == 0, moved.stderr[-3000:]
        assert champion(admin) == str(target)
        wait_for_version(api, key, str(target), serve)

        back = mlflow_run_local(
            "promote", "--experiment-name", config.EXPERIMENT_NAME, "-P", "version=previous"
        )
        rolled = run_as("alice", [*back, "-P", "reason=roll back"], project, server)
        assert rolled.returncode == 0, rolled.stderr[-3000:]
        assert champion(admin) == first
        wait_for_version(api, key, first, serve)
    finally:
        stop(serve)
    log = serve.stderr.read()
    assert not [s for s in (*API_KEYS, *PASSWORDS) if s in log]


# --- the auth database on PostgreSQL ------------------------------------------------------
@pytest.mark.postgres
def test_users_and_grants_live_in_postgresql(tmp_path, postgres_uri):
    import psycopg2

    from tests.integration.test_postgres import fresh_database, sqlalchemy_uri

    (tmp_path / "secrets").mkdir()
    with fresh_database(postgres_uri) as auth_db:
        proc, url = start_auth_server(
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            sqlalchemy_uri(auth_db),
            tmp_path / "artifacts",
            tmp_path / "secrets",
        )
        try:
            for _ in range(2):  # idempotent: the second pass changes nothing and succeeds
                made = apply_accounts(url, tmp_path / "accounts.txt")
                assert made.returncode == 0, made.stderr[-3000:]
            check = [sys.executable, "-m", "steps.infra.accounts", "check"]
            assert run_as("pipeline", check, PROJECT_ROOT, url).returncode == 0
            refused = run_as("serving", check, PROJECT_ROOT, url)
            assert_one_error_line(refused, "user 'serving' may not create runs")
        finally:
            stop_auth_server(proc)
        with psycopg2.connect(auth_db) as conn, conn.cursor() as cur:
            cur.execute("SELECT username FROM users")
            users = {row[0] for row in cur.fetchall()}
    assert users == {"admin", *(user for _, user, _ in TEST_ACCOUNTS)}


# --- make server AUTH=1, make accounts ----------------------------------------------------
def test_make_server_auth_and_make_accounts_in_a_project_copy(tmp_path):
    """What the Makefile promises: the server's stores are ./mlflow.db and ./basic_auth.db
    of the clone it runs in, anonymous requests are refused, `make accounts` gives each role
    its grants."""
    import sqlite3

    project = project_with_venv(tmp_path / "project").resolve()
    (tmp_path / "secrets").mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = make_env(url, **auth_server_secrets(tmp_path / "secrets"))
    server = start_make(project, "server", env, "AUTH=1", f"MLFLOW_PORT={port}", "MLFLOW_WORKERS=1")
    try:
        wait_http(f"{url}/health", server, timeout=300)
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert rest(url, search)[0] == 401

        admin = {
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": AUTH_ADMIN_PASSWORD,
        }
        accounts = write_accounts(tmp_path / "accounts.txt")  # outside the repository
        code, output = run_make(
            project, "accounts", make_env(url, **admin), f"ACCOUNTS_FILE={accounts}", timeout=300
        )
        assert code == 0, output[-3000:]
        assert not [p for p in (*PASSWORDS, AUTH_ADMIN_PASSWORD) if p in output]

        status, found = rest(
            url,
            f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={config.EXPERIMENT_NAME}",
            username="serving",
        )
        assert status == 200, found
        experiment_id = found["experiment"]["experiment_id"]
        create = "/api/2.0/mlflow/runs/create"
        assert rest(url, create, {"experiment_id": experiment_id}, "serving")[0] == 403
        status, made = rest(url, create, {"experiment_id": experiment_id}, "pipeline")
        assert status == 200, made
        assert rest(url, create, {"experiment_id": experiment_id})[0] == 401
        # the server alone: none of MLflow's GenAI job runners (the Makefile turns them off)
        assert not job_runners(server.pid)
    finally:
        end_make(server)

    with contextlib.closing(sqlite3.connect(project / "mlflow.db")) as db:
        runs = db.execute("SELECT run_uuid, artifact_uri FROM runs").fetchall()
    assert runs == [(made["run"]["info"]["run_id"], made["run"]["info"]["artifact_uri"])]
    assert runs[0][1].startswith(str(project / "mlruns"))
    with contextlib.closing(sqlite3.connect(project / "basic_auth.db")) as db:
        users = {row[0] for row in db.execute("SELECT username FROM users")}
    assert users == {"admin", *(user for _, user, _ in TEST_ACCOUNTS)}
