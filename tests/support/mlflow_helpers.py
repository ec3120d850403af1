"""MLflow lookups and a demo model logged and registered like the train and register steps do."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steps import config, models
from tests.support.data import PROJECT_ROOT


def latest_run(client, step: str):
    """The most recently started run of a pipeline step in the pipeline's experiment."""
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    return client.search_runs(
        [experiment.experiment_id],
        f"tags.`{config.TAG_STEP}` = '{step}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]


def assert_nothing_moved(client, champion: str) -> None:
    """After a refused run: no run left RUNNING anywhere and the champion alias unchanged."""
    from mlflow.entities import ViewType

    running = client.search_runs(
        [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)],
        "attributes.status = 'RUNNING'",
        run_view_type=ViewType.ALL,
    )
    assert not running, [r.info.run_id for r in running]
    alias = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert str(alias.version) == champion


DEMO_TAGS = {
    "train_run_id": "",  # filled with the logging run's id
    "git_commit": "0000000000000000000000000000000000000000",
    config.TAG_DVC_MD5: "demo-md5",
    "test_rmse": "0.0",
}


def demo_pipeline(X: pd.DataFrame, y: np.ndarray, **hyperparams: Any):
    """Pipeline(preprocess, model) fitted like the train step, default model kind."""
    from steps import features
    from steps.models import build_pipeline

    estimator = models.build_estimator(models.DEFAULT_MODEL_KIND, **hyperparams)
    return build_pipeline(features.build_preprocessor(), estimator).fit(X, y)


def register_demo_model(
    tracking_uri: str,
    pipeline: Any,
    X: pd.DataFrame,
    artifact_root: Path | None = None,
    alias: str | None = config.CHAMPION_ALIAS,
) -> str:
    """Log ``pipeline`` like the train step and register it like the register step.

    Sets the process's tracking URI to ``tracking_uri``. ``artifact_root``: where a newly
    created experiment keeps artifacts (default: mlflow's ./mlruns of the working dir).
    Returns the new version number; ``alias`` (default ``champion``; None: none) points at it.
    """
    import mlflow
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(config.EXPERIMENT_NAME) is None:
        mlflow.create_experiment(
            config.EXPERIMENT_NAME,
            artifact_location=artifact_root.resolve().as_uri() if artifact_root else None,
        )
    mlflow.set_experiment(config.EXPERIMENT_NAME)
    example = X.head(5).copy()
    example.iloc[0, example.columns.get_loc("total_bedrooms")] = np.nan
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            pipeline,
            name=config.MODEL_ARTIFACT,
            serialization_format="skops",
            skops_trusted_types=list(models.SKOPS_TRUSTED_TYPES),
            code_paths=[str(PROJECT_ROOT / "steps")],
            signature=infer_signature(X, pipeline.predict(X)),
            input_example=example,
        )
    tags = {**DEMO_TAGS, "train_run_id": run.info.run_id}
    version = mlflow.register_model(info.model_uri, config.MODEL_NAME, tags=tags)
    if alias is not None:
        mlflow.MlflowClient().set_registered_model_alias(config.MODEL_NAME, alias, version.version)
    return str(version.version)


@contextlib.contextmanager
def tracking(uri: str) -> Iterator[None]:
    """Point this process at ``uri``, then restore the previous store (mlflow's and
    ``MLFLOW_TRACKING_URI``, which mlflow.set_tracking_uri also sets)."""
    import mlflow

    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def log_demo_reference(train_run_id: str, table: pd.DataFrame, test: pd.DataFrame, pipeline) -> str:
    """What load_data and train log that ``monitor`` judges a demo version against: a
    FINISHED load_data run of the demo data version (``DEMO_TAGS``' md5) with the data
    contract's profile of ``table`` (raw columns), and the train run's
    ``gate/test_predictions.parquet`` for the raw rows ``test``. Returns the load_data run id.
    """
    import tempfile

    import mlflow

    from steps.data import contract
    from steps.ml import gate

    tags = {config.TAG_STEP: "load_data", config.TAG_DVC_MD5: DEMO_TAGS[config.TAG_DVC_MD5]}
    with mlflow.start_run(tags=tags) as run:
        mlflow.log_dict(contract.profile(table), contract.PROFILE_PATH)
    predicted = pipeline.predict(test.loc[:, list(config.FEATURES)])
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=train_run_id):
        path = Path(tmp) / Path(config.GATE_PREDICTIONS_FILE).name
        gate.prediction_table(test, predicted, predicted).to_parquet(path)
        mlflow.log_artifact(str(path), str(Path(config.GATE_PREDICTIONS_FILE).parent))
    return run.info.run_id
