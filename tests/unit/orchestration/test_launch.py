"""Starting a step as MLflow Projects does (steps.orchestration.launch)."""

from __future__ import annotations

import inspect

from steps.orchestration.launch import project_run_args


def test_launch_arguments_fit_mlflows_run_helper():
    """main starts steps through the private ``mlflow.projects._run``; an MLflow upgrade that
    changes it must fail here, not in the middle of a pipeline."""
    import mlflow.projects

    helper = inspect.signature(mlflow.projects._run)
    args = project_run_args("train", {"upstream_run_id": "abc"}, "local", "1")
    helper.bind(**args)  # raises TypeError on a missing, renamed or unknown argument
    assert set(args) == set(helper.parameters)
    # the waiting is done by ``mlflow.projects.run`` itself, after ``_run`` has returned
    source = inspect.getsource(mlflow.projects.run)
    assert "if synchronous:\n        _wait_for(submitted_run_obj)" in source
