"""steps.forkserver with real processes: a step started as MLflow starts it runs in a fork of
the server, keeps its exit code, output and signals, and runs itself when there is no server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from steps import config, forkserver, runtime
from tests.support import project_env

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fork server runs on Linux only"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real fork server (what `make run` starts beside the launcher)."""
    path = tmp_path_factory.mktemp("fork") / "socket"
    proc = subprocess.Popen(
        [sys.executable, "-m", "steps.forkserver", "serve", str(path)], cwd=config.PROJECT_ROOT
    )
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield path
    proc.terminate()
    proc.wait(timeout=30)


def step_process(module: str, args: list[str], env: dict[str, str], **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=config.PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_served_module_names_only_the_pipeline_steps():
    assert forkserver.served_module(["python", "-m", "steps.train", "--x", "1"]) == "steps.train"
    assert forkserver.served_module(["python", "-m", "steps.serve"]) is None
    assert forkserver.served_module(["python", "-c", "pass"]) is None


def test_a_served_step_keeps_its_output_and_exit_code(server, tmp_path):
    env = project_env(f"sqlite:///{tmp_path / 'mlflow.db'}", **{config.FORKSERVER_ENV: str(server)})
    ok = step_process("steps.train", ["--help"], env)
    out, err = ok.communicate(timeout=120)
    assert ok.returncode == 0, err
    assert "--upstream-run-id" in out
    bad = step_process("steps.train", ["--model-kind", "no-such-kind"], env)
    out, err = bad.communicate(timeout=120)
    assert bad.returncode == 2  # click's usage error, passed through
    assert "no-such-kind" in err


def test_without_a_server_the_step_runs_itself(tmp_path):
    env = project_env(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        **{config.FORKSERVER_ENV: str(tmp_path / "nobody-listens")},
    )
    proc = step_process("steps.register", ["--help"], env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "--upstream-run-id" in out


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopping_the_started_process_stops_the_forked_step(server, tmp_path, how):
    """The step waits at its gate (as main leaves it); the process MLflow started is small
    (the libraries live in the fork), and stopping it ends the step's run KILLED."""
    from mlflow import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(config.EXPERIMENT_NAME)
    env = project_env(
        tracking_uri,
        MLFLOW_EXPERIMENT_ID=experiment_id,
        **{
            config.FORKSERVER_ENV: str(server),
            config.START_AFTER_ENV: str(tmp_path / "never-opened"),
            config.MAIN_PID_ENV: str(os.getpid()),
        },
    )
    proc = step_process("steps.preprocess", [], env)
    try:
        # the step touches <gate>.ready once its run is open, then waits at the gate
        ready = tmp_path / f"never-opened{runtime.READY_SUFFIX}"
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the step never reached its gate"
            time.sleep(0.1)
        (run,) = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
        started = psutil.Process(proc.pid)
        forked = [p for p in psutil.Process(server_pid(server)).children() if p.is_running()]
        assert forked, "no worker forked by the server"
        assert started.memory_info().rss < forked[0].memory_info().rss / 3
        getattr(proc, "terminate" if how == "SIGTERM" else "kill")()
        _, err = proc.communicate(timeout=60)
        deadline = time.monotonic() + 60
        while client.get_run(run.info.run_id).info.status == "RUNNING":
            assert time.monotonic() < deadline, "the forked step kept running"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    if how == "SIGTERM":
        assert proc.returncode == 130
        assert "error: preprocess: interrupted" in err


def server_pid(socket_path: Path) -> int:
    for proc in psutil.process_iter(["cmdline"]):
        if str(socket_path) in (proc.info["cmdline"] or []):
            return proc.pid
    raise AssertionError("fork server process not found")
