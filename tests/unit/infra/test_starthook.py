"""steps.infra.starthook: the venv's interpreters print an uncaught tracking-server refusal as one
line (MLflow's own `mlflow run` launcher included), and leave every other error alone; a launch
of this project freezes its heap at exit, and one of main in this interpreter starts the step
server (that part with real processes: tests/integration/test_forkserver.py)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from steps import config
from steps.infra import starthook

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
    pth = Path(sysconfig.get_paths()["purelib"]) / starthook.PTH_NAME
    assert pth.read_text() == starthook.pth_line(starthook.__file__)
    assert str(config.PROJECT_ROOT / "steps" / "infra" / "starthook.py") in pth.read_text()


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
    assert Path(starthook.project_root(starthook.__file__)) == config.PROJECT_ROOT
    assert Path(starthook.__file__).relative_to(config.PROJECT_ROOT).parts[:-1] == (
        starthook.PACKAGE_PATH
    )


def test_make_setup_replaced_the_refusal_only_hook_of_older_set_ups():
    site = Path(sysconfig.get_paths()["purelib"])
    assert not any((site / name).exists() for name in starthook.LEGACY_PTH_NAMES)


ROOT = str(config.PROJECT_ROOT)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["py", "/v/bin/mlflow", "run", ROOT, "-e", "main", "--env-manager", "local"],
            "main local",
        ),
        (
            ["py", "-m", "mlflow", "run", ROOT, "--entry-point=train", "--env-manager=local"],
            "train local",
        ),
        (["py", "-m", "mlflow", "run", "-emain", "--build-image", "-P", "x=/", ROOT], "main None"),
        (["py", "-X", "importtime", "-m", "mlflow", "run", ROOT, "-P", "a=b"], "main None"),
        (["py", "-m", "mlflow", "run", "/", "-e", "main", "--env-manager", "local"], None),
        (["py", "-m", "mlflow", "run", "https://github.com/x/y", "-e", "main"], None),
        (["py", "-m", "mlflow", "ui", ROOT], None),
        (["py", "-m", "steps.main", ROOT], None),
        (["py", "-c", "import mlflow", ROOT], None),
    ],
)
def test_a_launch_is_mlflow_run_of_a_directory_holding_this_project(argv, expected):
    launch = starthook.launch_of(argv)
    if expected is None:
        assert launch is None
    else:
        assert launch is not None and launch.project == ROOT
        assert f"{launch.entry_point} {launch.env_manager}" == expected
        assert launch.served == (expected == "main local")


# Stands in for MLflow's console script: run the exit hooks registered so far (the start
# hook's among them), then report what they left.
PROBE = "import atexit, gc\natexit._run_exitfuncs()\nprint(gc.get_freeze_count())\n"


@pytest.mark.parametrize(("project", "frozen"), [(ROOT, True), ("/", False)])
def test_a_launch_of_this_project_freezes_the_heap_at_exit(tmp_path, project, frozen):
    """The launcher skips CPython's final collections over MLflow's imports, as our step
    processes do; an `mlflow run` of another project keeps Python's own exit."""
    script = tmp_path / "mlflow"
    script.write_text(PROBE)
    result = subprocess.run(
        [sys.executable, str(script), "run", project, "-e", "train"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (int(result.stdout) > 0) == frozen
