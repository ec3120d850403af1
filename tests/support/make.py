"""Make targets in a copy of the project that shares this venv."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from steps import config
from tests.support.processes import kill_session, restore_sigint
from tests.support.projects import copy_project, project_env

# The venv running these tests: a copy's ``.venv`` links to it (no 60-s build per copy).
VENV = Path(sys.executable).parents[1]


def project_with_venv(dest: Path) -> Path:
    """A copy of the project whose ``.venv`` is this test run's venv, up to date for Make."""
    project = copy_project(dest)
    (project / ".venv").symlink_to(VENV, target_is_directory=True)
    # The copy's venv is the installed one by construction: date its locks no later than the
    # install stamp, so `make` does not reinstall into a venv other test runs are using.
    installed = (VENV / "bin" / ".installed").stat().st_mtime_ns
    # The same for the interpreter hook: a copy must not point the shared venv's .pth at
    # itself (a temp dir that is gone after the test).
    for dated in ("requirements.lock", "requirements-dev.lock", "steps/infra/starthook.py"):
        os.utime(project / dated, ns=(installed, installed))
    bin_dir = project.resolve() / ".venv" / "bin"
    stamps = [str(bin_dir / name) for name in (".installed", ".start-hook", ".store-template")]
    up_to_date = subprocess.run(["make", "-q", *stamps], cwd=project, env=make_env(""), check=False)
    assert up_to_date.returncode == 0, f"`make setup` would rebuild {VENV}: run it there first"
    return project


def make_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    """A user's shell for `make`: only this store, no flags of a make the tests run under."""
    env = project_env(tracking_uri, **extra)
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VERBOSE", config.VERBOSE_ENV):
        env.pop(name, None)
    return env


def start_make(project: Path, target: str, env: dict[str, str], *args: str) -> subprocess.Popen:
    """`make <target>` in its own session (its pid is the session's and the group's id)."""
    log = (project.parent / f"make-{target}.log").open("wb")
    with log:
        return subprocess.Popen(
            ["make", target, *args],
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=restore_sigint,
        )


def end_make(make: subprocess.Popen) -> None:
    """Whatever a `make` started with start_make left running in its session ends, make too."""
    kill_session(make.pid)
    if make.poll() is None:
        make.kill()
        make.wait()


def make_output(project: Path, target: str) -> str:
    return (project.parent / f"make-{target}.log").read_text(errors="replace")


def run_make(
    project: Path, target: str, env: dict[str, str], *args: str, timeout: float = 900
) -> tuple[int, str]:
    """`make <target>` to its end (start_make): its exit code and output. Whatever it left
    running in its session is ended too."""
    make = start_make(project, target, env, *args)
    try:
        code = make.wait(timeout=timeout)
    finally:
        end_make(make)
    return code, make_output(project, target)


def wait_for_run(tracking_uri: str, step: str, proc: subprocess.Popen, timeout: float = 900):
    """Block until a run of ``step`` is RUNNING in the store (the step has opened its run and
    tagged it), or fail if ``proc`` exits first. Returns that run."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    if tracking_uri.startswith("sqlite:///"):
        # polling a store that does not exist yet creates its schema, racing the pipeline
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        assert path.exists(), f"create {path} before starting the pipeline"

    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode} before {step} ran")
        experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
        if experiment is not None:
            found = client.search_runs(
                [experiment.experiment_id],
                f"tags.`{config.TAG_STEP}` = '{step}' and attributes.status = 'RUNNING'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1,
            )
            if found:
                return found[0]
        time.sleep(0.2)
    raise TimeoutError(f"no RUNNING {step} run after {timeout} s")
