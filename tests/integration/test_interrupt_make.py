"""Ctrl-C on the Make targets the README tells users to stop that way: `make run` and
`make serve`, run for real in a copy of the project, each in its own session.

A terminal's Ctrl-C is SIGINT to the foreground process group: here, make's. Under
`make run`, main is a worker of the fork server in a process group of its own (the signal
reaches it only through the process MLflow started, which forwards it) and under
`make serve` uvicorn's two workers are spawned processes: these tests check that the
interrupt still stops all of them, and that no run is left RUNNING.

The copy's ``.venv`` is a symlink to the venv running these tests (no 60-s build per copy);
its lock files are dated so that Make finds ``.venv`` set up and builds nothing in it
(tests/support/make.py, ``project_with_venv``).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from steps.infra import storetemplate
from tests.support import (
    demo_pipeline,
    end_make,
    free_port,
    housing_sample,
    make_env,
    make_output,
    project_with_venv,
    register_demo_model,
    run_processes,
    session_processes,
    start_make,
    tracking,
    wait_for_run,
    wait_http,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# From Ctrl-C to make's exit, and to the last process of its session gone.
STOP_DEADLINE_S = 30


# --- helpers ---------------------------------------------------------------------------------
def ctrl_c(make: subprocess.Popen, project: Path) -> tuple[int, float, list[str]]:
    """SIGINT to make's process group, as a terminal's Ctrl-C. Returns make's exit code, the
    seconds until the run's processes were gone (its session's, and the steps the step server
    ran for it), and what was still running at the deadline."""
    signalled = time.monotonic()
    os.killpg(make.pid, signal.SIGINT)
    code = make.wait(timeout=STOP_DEADLINE_S)
    while run_processes(make.pid, project) and time.monotonic() - signalled < STOP_DEADLINE_S:
        time.sleep(0.1)
    left = []
    for proc in run_processes(make.pid, project):
        with contextlib.suppress(psutil.Error):
            left.append(" ".join(proc.cmdline()))
    return code, time.monotonic() - signalled, left


def all_runs(client: MlflowClient) -> list:
    experiments = client.search_experiments(view_type=ViewType.ALL)
    return client.search_runs(
        [e.experiment_id for e in experiments], run_view_type=ViewType.ALL, max_results=1000
    )


def running(client: MlflowClient) -> list[str]:
    return [r.info.run_name for r in all_runs(client) if r.info.status == "RUNNING"]


@contextlib.contextmanager
def stalled_download() -> Iterator[tuple[str, threading.Event]]:
    """A data URL whose server sends the headers and two bytes, then nothing until the test
    ends: load_data stays in its download for as long as the test needs. Yields the URL and
    an event set once the download has begun."""
    begun, release = threading.Event(), threading.Event()

    class Stalled(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"\x1f\x8b")  # a .tgz's first bytes
            self.wfile.flush()
            begun.set()
            release.wait(120)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalled)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/housing.tgz", begun
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def wait_for(event: threading.Event, proc: subprocess.Popen, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not event.wait(0.1):
        assert proc.poll() is None, f"{proc.args} exited {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"


# --- make run --------------------------------------------------------------------------------
def test_ctrl_c_on_make_run_stops_the_pipeline_and_kills_the_working_step(tmp_path):
    project = project_with_venv(tmp_path / "project")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # What `make run` does first, done here so that the store can be watched from the start
    # (two processes creating one SQLite schema at once break it).
    assert storetemplate.place(uri)
    with stalled_download() as (url, download_begun):
        make = start_make(project, "run", make_env(uri, HOUSING_DATA_URL=url))
        try:
            working = wait_for_run(uri, "load_data", make, timeout=60)
            wait_for(download_begun, make, "download", timeout=30)
            code, seconds, left = ctrl_c(make, project)
        finally:
            end_make(make)
    output = make_output(project, "run")
    print(f"\nmake run: Ctrl-C → exit {code}, session empty after {seconds:.1f} s")
    assert code != 0, output[-3000:]
    assert not left, left
    assert "error: main: interrupted" in output, output[-3000:]

    client = MlflowClient(uri)
    assert not running(client), running(client)
    assert client.get_run(working.info.run_id).info.status == "KILLED"
    runs = {r.info.run_id: r for r in all_runs(client)}
    parent_id = working.data.tags["mlflow.parentRunId"]
    assert runs.pop(parent_id).info.status in ("KILLED", "FAILED")
    # the steps main had started ahead of their turn were waiting for load_data: KILLED too
    assert {r.info.status for r in runs.values()} == {"KILLED"}, {
        r.info.run_name: r.info.status for r in runs.values()
    }
    assert not list(client.search_registered_models())


# --- make serve ------------------------------------------------------------------------------
def uvicorn_workers(make: subprocess.Popen) -> list[psutil.Process]:
    """The processes uvicorn's supervisor spawned (multiprocessing's spawn_main)."""
    found = []
    for proc in session_processes(make.pid):
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(proc.cmdline()):
                found.append(proc)
    return found


STARTED = "Application startup complete."  # what each uvicorn worker logs once it serves


def test_ctrl_c_on_make_serve_stops_both_workers_and_ends_the_run(tmp_path):
    project = project_with_venv(tmp_path / "project")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    X, y = housing_sample(n_rows=1_000, seed=5)
    with tracking(uri):
        register_demo_model(
            uri, demo_pipeline(X, y, n_estimators=20), X, artifact_root=tmp_path / "artifacts"
        )
    port = free_port()
    make = start_make(project, "serve", make_env(uri), f"SERVE_PORT={port}")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", make, timeout=80)
        # Both workers serving, as when a user stops a server they have used: one still
        # starting keeps uvicorn's supervisor waiting for its answer to a health ping (up to
        # steps.serving.server.WORKER_HEALTHCHECK_TIMEOUT_S), and the supervisor handles
        # signals only then.
        deadline = time.monotonic() + 60
        while make_output(project, "serve").count(STARTED) < 2:
            assert make.poll() is None, make_output(project, "serve")[-3000:]
            assert time.monotonic() < deadline, make_output(project, "serve")[-3000:]
            time.sleep(0.2)
        workers = uvicorn_workers(make)
        assert len(workers) == 2, [w.cmdline() for w in workers]
        client = MlflowClient(uri)
        assert len(running(client)) == 1  # the run `mlflow run -e serve` opened
        code, seconds, left = ctrl_c(make, project)
    finally:
        end_make(make)
    output = make_output(project, "serve")
    print(f"\nmake serve: Ctrl-C → exit {code}, session empty after {seconds:.1f} s")
    assert code != 0, output[-3000:]
    assert not [w.pid for w in workers if w.is_running() and w.status() != "zombie"], output[-3000:]
    assert not left, left
    assert not running(client), running(client)
