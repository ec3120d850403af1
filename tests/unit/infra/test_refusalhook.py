"""steps.infra.refusalhook: the venv's interpreters print an uncaught tracking-server refusal as one
line (MLflow's own `mlflow run` launcher included), and leave every other error alone."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from steps import config
from steps.infra import refusalhook

RAISE = """
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import {code}
try:
    raise MlflowException(
        "API request to endpoint /api/2.0/mlflow/runs/create failed with error code 403 != 200.",
        error_code={code},
    )
except MlflowException as exc:
    raise RuntimeError("while starting the run") from exc
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_USERNAME": "serving"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/"
    )


def test_make_setup_installed_the_hook_for_this_project():
    pth = Path(sysconfig.get_paths()["purelib"]) / refusalhook.PTH_NAME
    assert pth.read_text() == refusalhook.pth_line(refusalhook.__file__)
    assert str(config.PROJECT_ROOT / "steps" / "infra" / "refusalhook.py") in pth.read_text()


def test_an_uncaught_refusal_is_one_line_even_behind_another_error():
    result = run_python(RAISE.format(code="PERMISSION_DENIED"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: tracking server refused runs/create for user 'serving' (403 PERMISSION_DENIED): "
        "the account lacks the permission (docs/scaling.md, accounts)"
    ]


def test_other_errors_keep_their_traceback():
    result = run_python(RAISE.format(code="RESOURCE_DOES_NOT_EXIST"))
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: while starting the run" in result.stderr


def test_the_hook_finds_the_project_root_from_its_own_depth():
    """Run from a .pth at start-up, outside any package, the hook climbs to the project root
    itself: as many folders as it sits below it (steps/infra/)."""
    assert Path(refusalhook.project_root(refusalhook.__file__)) == config.PROJECT_ROOT
    assert Path(refusalhook.__file__).relative_to(config.PROJECT_ROOT).parts[:-1] == (
        refusalhook.PACKAGE_PATH
    )
