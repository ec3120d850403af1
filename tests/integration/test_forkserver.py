"""steps.infra.forkserver with real processes: a step started as MLflow starts it runs in a fork of
the server, keeps its exit code, output and signals, and runs itself when there is no server."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from steps import config
from steps.infra import forkserver
from steps.orchestration import upstream_wait
from tests.support import (
    copy_project,
    mlflow_run_local,
    project_env,
    step_servers,
    stop_step_servers,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fork server runs on Linux only"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real fork server (what `make run` starts beside the launcher)."""
    path = tmp_path_factory.mktemp("fork") / "socket"
    proc = subprocess.Popen(
        [sys.executable, "-m", "steps.infra.forkserver", "serve", str(path)],
        cwd=config.PROJECT_ROOT,
    )
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield path
    proc.terminate()
    proc.wait(timeout=30)


def step_process(module: str, args: list[str], env: dict[str, str], cwd=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd or config.PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def imported_modules(stderr: str) -> set[str]:
    """The modules a process imported itself (``PYTHONPROFILEIMPORTTIME``'s lines on stderr):
    a step handed to the fork server never imports its libraries in the started process."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }


# the step's own libraries, imported by the process that runs the step
STEP_LIBRARY = "pandas"


def test_served_module_names_only_the_pipeline_steps():
    assert forkserver.served_module(["python", "-m", "steps.train", "--x", "1"]) == "steps.train"
    assert forkserver.served_module(["python", "-m", "steps.serve"]) is None
    assert forkserver.served_module(["python", "-c", "pass"]) is None


def test_a_served_step_keeps_its_output_and_exit_code(server, tmp_path):
    env = project_env(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        PYTHONPROFILEIMPORTTIME="1",
        **{config.FORKSERVER_ENV: str(server)},
    )
    ok = step_process("steps.train", ["--help"], env)
    out, err = ok.communicate(timeout=120)
    assert ok.returncode == 0, err
    assert "--upstream-run-id" in out
    # the help came from the fork: the started process never imported the step's libraries
    assert "steps.infra.forkserver" in imported_modules(err)
    assert STEP_LIBRARY not in imported_modules(err)
    bad = step_process("steps.train", ["--model-kind", "no-such-kind"], env)
    out, err = bad.communicate(timeout=120)
    assert bad.returncode == 2  # click's usage error, passed through
    assert "no-such-kind" in err
    assert STEP_LIBRARY not in imported_modules(err)


def test_without_a_server_the_step_runs_itself(tmp_path):
    env = project_env(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        PYTHONPROFILEIMPORTTIME="1",
        **{config.FORKSERVER_ENV: str(tmp_path / "nobody-listens")},
    )
    proc = step_process("steps.register", ["--help"], env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "--upstream-run-id" in out
    # it tried the server, then ran the step in this very process
    assert {"steps.infra.forkserver", STEP_LIBRARY} <= imported_modules(err)


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
        ready = tmp_path / f"never-opened{upstream_wait.READY_SUFFIX}"
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the step never reached its gate"
            time.sleep(0.1)
        (run,) = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
        started = psutil.Process(proc.pid)
        worker = step_worker(server, proc.pid)
        assert started.memory_info().rss < worker.memory_info().rss / 3
        getattr(proc, "terminate" if how == "SIGTERM" else "kill")()
        _, err = proc.communicate(timeout=60)
        _, alive = psutil.wait_procs([worker], timeout=60)
        assert not alive, "the forked step outlived the process MLflow started"
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


def step_worker(socket_path: Path, started_pid: int) -> psutil.Process:
    """The worker running the step started as ``started_pid``: a child of the heavy server
    (the light server's fork) writing to the started process's stdout and stderr."""
    light = psutil.Process(server_pid(socket_path))
    heavy = [p for p in light.children() if p.cmdline() == light.cmdline()]
    assert len(heavy) == 1, f"the heavy server is not the light one's fork: {light.children()}"

    def streams(pid: int) -> list[str]:
        return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (1, 2)]

    workers = [w for w in heavy[0].children() if streams(w.pid) == streams(started_pid)]
    assert len(workers) == 1, f"no worker of the heavy server runs the step: {heavy[0].children()}"
    return workers[0]


def server_pid(socket_path: Path) -> int:
    """The light server: its fork (the heavy server) and their workers share its command
    line, so it is the one whose parent is not one of them."""
    same = {
        p.pid: p.info["ppid"]
        for p in psutil.process_iter(["cmdline", "ppid"])
        if str(socket_path) in (p.info["cmdline"] or [])
    }
    roots = [pid for pid, ppid in same.items() if ppid not in same]
    assert len(roots) == 1, f"fork server process not found: {same}"
    return roots[0]


# --- the step server: one per interpreter, kept for the next run -----------------------------
# a module main imports before it runs: in the started process only when main ran there
MAIN_LIBRARY = "steps.orchestration.pipeline"


def bare_main(project: Path, env: dict[str, str], *args: str) -> tuple[str, set[str]]:
    """``python -m steps.main`` as `mlflow run` starts it (no server named): its output and
    the modules the started process imported itself."""
    proc = step_process("steps.main", list(args), env, cwd=project)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    return out, imported_modules(err)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A TMPDIR of the test's own, short enough for a Unix socket path: its step server is
    not the suite's."""
    path = Path(tempfile.mkdtemp(prefix="steps-", dir="/tmp"))
    yield path
    stop_step_servers(path)
    shutil.rmtree(path, ignore_errors=True)


def serving_pids(runtime_dir: Path) -> set[int]:
    """The step servers under ``runtime_dir``: each one's first process, which leads the
    session it was started in (its fork serving the heavy steps does not)."""
    leaders = set()
    for proc in step_servers(runtime_dir):
        with contextlib.suppress(ProcessLookupError):
            if os.getsid(proc.pid) == proc.pid:
                leaders.add(proc.pid)
    return leaders


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_main_starts_the_step_server_and_the_next_main_is_served_by_it(tmp_path, runtime_dir):
    """The first main starts its interpreter's step server and is its first request; the
    server outlives it and serves the next main (which imports none of main's libraries
    itself), even from another work tree, with that tree's code as it is on disk; once idle,
    it ends."""
    project = copy_project(tmp_path / "project")
    env = project_env(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        TMPDIR=str(runtime_dir),
        PYTHONPROFILEIMPORTTIME="1",
        # verbose main shares its terminal with its steps, never with the server it leaves
        # behind: reading main's output to its end must not wait for the server
        **{config.STEP_SERVER_IDLE_ENV: "3", config.VERBOSE_ENV: "1"},
    )
    out, imported = bare_main(project, env, "--help")
    assert "--use-cache" in out
    assert MAIN_LIBRARY not in imported and "steps.infra.forkserver" in imported
    (server,) = serving_pids(runtime_dir)

    clone = copy_project(tmp_path / "clone")  # another work tree, the same interpreter
    main_py = clone / "steps" / "main.py"
    main_py.write_text(main_py.read_text().replace("reusing finished steps", "edited on disk"))
    out, imported = bare_main(clone, env, "--help")
    assert "edited on disk" in out
    assert MAIN_LIBRARY not in imported
    assert serving_pids(runtime_dir) == {server}

    wait_until(lambda: not psutil.pid_exists(server), "the idle step server did not end")
    assert not list((runtime_dir / f"housing-steps-{os.getuid()}").glob("*.sock"))


def test_new_packages_end_the_step_server_and_the_step_runs_itself(tmp_path, runtime_dir):
    """A directory on the interpreter's path changed (packages installed) under a server:
    it refuses the request, which runs in its own process, and ends; the next main starts a
    fresh one. ``stop`` ends it too."""
    project = copy_project(tmp_path / "project")
    site = tmp_path / "site"
    site.mkdir()
    env = project_env(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        TMPDIR=str(runtime_dir),
        PYTHONPATH=str(site),
        PYTHONPROFILEIMPORTTIME="1",
    )
    _, imported = bare_main(project, env, "--help")
    assert MAIN_LIBRARY not in imported
    (first,) = serving_pids(runtime_dir)

    (site / "newly_installed").mkdir()
    _, imported = bare_main(project, env, "--help")
    assert MAIN_LIBRARY in imported  # refused: main ran in the started process
    wait_until(lambda: not psutil.pid_exists(first), "the stale step server did not end")

    _, imported = bare_main(project, env, "--help")
    assert MAIN_LIBRARY not in imported
    (second,) = serving_pids(runtime_dir)
    assert second != first
    stopped = subprocess.run(
        [sys.executable, "-m", "steps.infra.forkserver", "stop"], env=env, check=False
    )
    assert stopped.returncode == 0
    wait_until(lambda: not psutil.pid_exists(second), "stop did not end the step server")


def test_the_launcher_of_main_starts_the_step_server_as_it_starts(tmp_path, runtime_dir):
    """`mlflow run . -e main --env-manager local`: MLflow's launcher itself starts the step
    server (the venv's start hook), so its imports overlap the launcher's; the launcher holds
    it, and main is served by it. (Were it main's to start, main's process would hold it.)"""
    project = copy_project(tmp_path / "project")
    env = project_env(f"sqlite:///{tmp_path / 'mlflow.db'}", TMPDIR=str(runtime_dir))
    launcher = subprocess.Popen(
        # main refuses the parameter: no step runs
        mlflow_run_local("main", "-P", "split_strategy=no-such-strategy"),
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and "no-such-strategy" in out, out[-3000:]
    (server,) = serving_pids(runtime_dir)
    holder = psutil.Process(server).cmdline()[5]
    assert int(holder) == launcher.pid
