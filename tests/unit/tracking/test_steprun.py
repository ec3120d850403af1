"""A step's MLflow run (steps.tracking.steprun): the parts that need no tracking store
(the interrupt paths: tests/unit/test_interrupts.py)."""

from __future__ import annotations

import pytest

from steps.tracking import steprun


def test_only_generated_run_names_are_replaced_by_the_step_name():
    from steps.tracking.steprun import is_generated_name

    assert is_generated_name("skittish-eel-6")
    assert is_generated_name("silent-pug-522")
    assert is_generated_name(None)
    assert not is_generated_name("three_rows-workspace")
    assert not is_generated_name("nightly-retrain")
    assert not is_generated_name("main · lightgbm · v5@champion")


def test_a_refused_request_ends_the_step_with_one_line_other_errors_return(capsys):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    steprun.exit_on_tracking_error("train", ValueError("not ours to explain"))
    refused = MlflowException(
        "API request to endpoint /api/2.0/mlflow/runs/create failed with error code 403 != 200.",
        error_code=PERMISSION_DENIED,
    )
    with pytest.raises(SystemExit) as exited:
        steprun.exit_on_tracking_error("train", refused)
    assert exited.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: train: tracking server refused runs/create")
