"""main's parent run: in the pipeline's experiment, named and shown as the pipeline's row.

In: the tracking store (``mlflow``'s active URI), ``MLFLOW_RUN_ID`` (the run the ``mlflow
run`` launcher created, if any) and, at the end, the load_data and train runs. Out: the
parent run, started (or adopted from the launcher); its name and the link to it.
Written (MLflow): the experiment ``california_housing_price`` when absent (artifacts next
to a local SQLite database) and its tag ``mlflow.experimentKind=custom_model_development``
(the UI's classic ML view); a launcher run in another experiment gets the tag pointing to
the parent recreated here, and the parent its params and ``mlflow.*`` tags; the parent's
dataset inputs and model outputs copied from its children; a dead launcher's run KILLED.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from steps import config
from steps.infra import processes
from steps.tracking import steprun, storerace

STEP = "main"  # the parent run is main's: its step tag, its name, its log lines
EXPERIMENT_KIND = "custom_model_development"


def parent_run_name(model_kind: str, version: str | None, alias: str | None) -> str:
    return f"{STEP} · {model_kind} · v{version}@{alias}"


def ensure_experiment() -> str:
    """The pipeline's experiment id, created (artifacts next to a local database) if absent."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(config.EXPERIMENT_NAME)
    if experiment is not None:
        return experiment.experiment_id
    uri = mlflow.get_tracking_uri()
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
    try:
        return mlflow.create_experiment(
            config.EXPERIMENT_NAME,
            artifact_location=location,
            tags={config.TAG_EXPERIMENT_KIND: EXPERIMENT_KIND},
        )
    except mlflow.exceptions.MlflowException:
        # Another pipeline created it between our lookup and our create.
        return mlflow.get_experiment_by_name(config.EXPERIMENT_NAME).experiment_id


def tag_experiment_kind(client: Any, experiment_id: str) -> None:
    """Without this tag the MLflow 3 UI opens the experiment on its GenAI overview page."""
    experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(config.TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, config.TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)


def open_parent_run() -> Any:
    """Start (or adopt) the parent run inside the pipeline's experiment.

    ``mlflow run . -e main`` creates the parent before this code runs, in Default unless the
    user named an experiment. A run cannot move between experiments, so in that case the
    parent is recreated in ``california_housing_price`` and the launcher run is tagged with a
    pointer to it.
    """
    import mlflow

    client = mlflow.MlflowClient()
    launcher_id = os.environ.get("MLFLOW_RUN_ID")
    launcher = client.get_run(launcher_id) if launcher_id else None
    if launcher is not None and launcher.info.experiment_id != config.DEFAULT_EXPERIMENT_ID:
        return mlflow.start_run(run_id=launcher_id)

    experiment_id = ensure_experiment()
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        os.environ.pop(var, None)
    copied = {}
    if launcher is not None:
        copied = {k: v for k, v in launcher.data.tags.items() if k.startswith("mlflow.")}
        copied.pop(config.TAG_MLFLOW_RUN_NAME, None)
        copied[config.TAG_LAUNCHER_RUN] = launcher_id
    run = mlflow.start_run(experiment_id=experiment_id, tags=copied)
    if launcher is not None:
        mlflow.log_params(launcher.data.params)
        client.set_tag(launcher_id, config.TAG_MOVED_TO_RUN, run.info.run_id)
        steprun.echo(STEP, f"pipeline runs are grouped in experiment {config.EXPERIMENT_NAME!r}")
    return run


def end_orphaned_launcher_run(launcher_id: str | None, launcher_pid: int) -> None:
    """If the `mlflow run` that started us is dead, nobody else will end its run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not launcher_id or processes.parent_pid() == launcher_pid:
        return
    client = mlflow.MlflowClient()
    with contextlib.suppress(MlflowException):
        if client.get_run(launcher_id).info.status == "RUNNING":
            client.set_terminated(launcher_id, "KILLED")


def show_data_and_model(client: Any, parent_id: str, load_run: Any, train_run: Any) -> None:
    """Give the parent run the raw dataset and the trained model its children logged, so the
    runs table's Dataset and Models columns show them on the pipeline's row too."""
    datasets = [
        d for d in load_run.inputs.dataset_inputs if d.dataset.name == config.RAW_DATASET_NAME
    ]
    if datasets:
        storerace.with_unique_race_retry(lambda: client.log_inputs(parent_id, datasets=datasets))
    models = train_run.outputs.model_outputs if train_run.outputs else []
    if models:
        client.log_outputs(parent_id, models=list(models))


def where_to_look(tracking: str, experiment_id: str, run_id: str) -> str:
    if tracking.startswith(("http://", "https://")):
        return f"{tracking.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return (
        f"make ui, then http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id} "
        f"(store: {tracking})"
    )
