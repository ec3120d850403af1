"""`mlflow run . -e main --env-manager uv -P env_manager=uv` from an empty env root.

MLflow builds one environment from python_env.yaml (Python 3.11.7 and every package from the
hashed requirements.lock), runs main in it, and main hands the same manager to its children:
they must find that environment already built and run in it, so exactly ONE env dir appears
under MLFLOW_ENV_ROOT and every run carries ``mlflow.project.env``. MLflow's `virtualenv`
manager (pyenv + venv + pip) is exercised by the README test's bare `mlflow run . -e main`
(tests/integration/test_readme.py), from an empty HOME.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from mlflow import MlflowClient

from steps import config
from tests.support import MLFLOW_RUN, copy_project, project_env, run_cmd

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.envmanager]
STEPS = ("load_data", "preprocess", "train", "register")
ENV_TIMEOUT_S = 1800
LOG_TIME = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) INFO (\S+): (.*)$")


def manager_path() -> str:
    """uv and mlflow from this venv first on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    assert shutil.which("uv", path=path), "uv is not installed (it is in requirements-dev.lock)"
    return path


def log_times(stderr: str) -> list[tuple[datetime, str, str]]:
    """(time, logger, message) of every MLflow INFO line."""
    found = []
    for line in stderr.splitlines():
        match = LOG_TIME.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y/%m/%d %H:%M:%S")
            found.append((stamp, match.group(2), match.group(3)))
    return found


def env_creation_seconds(stderr: str) -> float:
    """From MLflow's first environment log line to the first command it runs (1 s resolution)."""
    lines = log_times(stderr)
    start = next(t for t, logger, _ in lines if logger == "mlflow.utils.virtualenv")
    end = next(t for t, _, msg in lines if msg.startswith("=== Running command"))
    return (end - start).total_seconds()


def env_dirs(env_root: Path) -> list[Path]:
    return sorted(p for p in env_root.iterdir() if p.is_dir()) if env_root.exists() else []


def test_main_runs_in_one_managed_environment(tmp_path):
    manager = "uv"
    project = copy_project(tmp_path / "project")
    env_root = tmp_path / "envs"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = project_env(uri, MLFLOW_ENV_ROOT=str(env_root), PATH=manager_path(), PIPELINE_VERBOSE="1")
    env.pop("VIRTUAL_ENV", None)  # the pipeline must not lean on the test's own venv

    started = time.perf_counter()
    result = run_cmd(
        [*MLFLOW_RUN, ".", "-e", "main", "--env-manager", manager, "-P", f"env_manager={manager}"],
        cwd=project,
        env=env,
        timeout=ENV_TIMEOUT_S,
    )
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    creation = env_creation_seconds(result.stderr)
    print(f"\n[{manager}] env creation {creation:.0f} s, whole `mlflow run -e main` {wall:.0f} s")

    # one environment, built once by the launcher and found again by each child
    (env_dir,) = env_dirs(env_root)
    assert result.stderr.count(f"Environment {env_dir} already exists") == len(STEPS)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    (parent,) = client.search_runs([experiment.experiment_id], f"tags.`{config.TAG_STEP}` = 'main'")
    launcher = client.get_run(parent.data.tags["pipeline.launcher_run_id"])
    assert launcher.data.tags["mlflow.project.env"] == manager
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert {run.data.tags[config.TAG_STEP] for run in children} == set(STEPS)
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.project.env"] == manager
    assert parent.data.params["env_manager"] == manager
    champion = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert champion.run_id == parent.data.tags["pipeline.train.run_id"]
