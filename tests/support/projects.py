"""Copies of the project as fresh git repos, new data versions in them, and ``mlflow run``
argv and environments."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from unittest import mock

from tests.support.data import PROJECT_ROOT, housing_tgz


def copy_project(dest: Path) -> Path:
    """The current work tree (tracked + untracked, minus ignored) as a fresh, clean git repo.

    Tests must see the code as it is now, not as last committed, yet run from a clean tree
    (a dirty tree disables step reuse and marks runs dirty).
    """
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for rel in filter(None, (f.decode() for f in files)):
        src = PROJECT_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.email=t@localhost", "-c", "user.name=tests"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot"], cwd=dest, check=True)
    return dest


def new_data_version(project: Path, payload: bytes, message: str) -> None:
    """What a user does: change data/housing.csv, `dvc add data`, commit data.dvc."""
    (project / "data").mkdir(exist_ok=True)
    (project / "data" / "housing.csv").write_bytes(payload)
    done = run_cmd([sys.executable, "-m", "dvc", "add", "-q", "data"], project, dict(os.environ))
    assert done.returncode == 0, done.stderr
    commit(project, message)


def commit(project: Path, message: str) -> None:
    for args in (
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@localhost", "-c", "user.name=tests", "commit", "-qm", message],
    ):
        done = run_cmd(args, cwd=project, env=dict(os.environ))
        assert done.returncode == 0, done.stderr


def project_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
        "HOUSING_DATA_URL": housing_tgz().as_uri(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
    }
    return env | extra


MLFLOW_RUN = [sys.executable, "-m", "mlflow", "run"]


def mlflow_run_local(entry_point: str, *args: str) -> list[str]:
    """`mlflow run . -e <entry_point> --env-manager local <args>` as an argv list."""
    return [*MLFLOW_RUN, ".", "-e", entry_point, "--env-manager", "local", *args]


def run_cmd(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 900):
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def launched_run_id(output: str) -> str:
    """The run id `mlflow run` reports for the run it launched (its last lines, on stderr)."""
    found = re.findall(r"=== Run \(ID '([0-9a-f]+)'\) (?:succeeded|failed)", output)
    assert found, output[-2000:]
    return found[-1]


def run_main(project: Path, tracking_uri: str, *args: str) -> subprocess.CompletedProcess:
    """`mlflow run . -e main` in ``project`` to the end; asserts it succeeded."""
    result = run_cmd(
        mlflow_run_local("main", *args),
        cwd=project,
        env=project_env(tracking_uri),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def mlflow_kubernetes() -> types.ModuleType:
    """mlflow.projects.kubernetes, whose Job-building functions are pure: when the optional
    `kubernetes` client is not installed it is stubbed for the import only."""
    try:
        return importlib.import_module("mlflow.projects.kubernetes")
    except ImportError:
        pass
    names = ("kubernetes", "kubernetes.config", "kubernetes.config.config_exception")
    stubs = {name: types.ModuleType(name) for name in names}
    stubs["kubernetes.config.config_exception"].ConfigException = type(
        "ConfigException", (Exception,), {}
    )
    with mock.patch.dict(sys.modules, stubs):
        sys.modules.pop("mlflow.projects.kubernetes", None)
        return importlib.import_module("mlflow.projects.kubernetes")


def run_entry_module(cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` from ``cwd`` with only ``cwd``'s SQLite store as MLflow
    state (the project importable): what a scheduler's bare invocation sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'mlflow.db'}"
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def failed_entry_run(cwd: Path, result: subprocess.CompletedProcess, step: str, message: str):
    """What bad input must give (run_entry_module): exit 1, one ``error:`` line starting with
    ``message``, no traceback, and one FAILED run of ``step`` in ``cwd``'s store (returned)."""
    import mlflow

    from steps import config
    from tests.support.mlflow_helpers import tracking
    from tests.support.predicting import error_lines

    assert result.returncode == 1, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr
    with tracking(f"sqlite:///{cwd / 'mlflow.db'}"):
        (run,) = mlflow.search_runs(experiment_names=[config.EXPERIMENT_NAME], output_format="list")
    assert run.info.status == "FAILED" and run.data.tags[config.TAG_STEP] == step
    return run
