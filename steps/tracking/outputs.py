"""Reading what a step run logged: one reader per step output, for every step that consumes it.

* preprocess: ``splits/train.parquet``, ``splits/test.parquet`` and
  ``preprocessor/preprocessor.skops`` (``read_preprocess_outputs``: train and tune); the
  splits a given train run was fitted on (``read_train_splits``: register's gate, promote).
* train: ``gate/test_predictions.parquet`` (``read_gate_predictions``: register's gate;
  ``test_predictions``: the logged model's column, monitor's reference for predictions).

Reads artifacts only; writes nothing. Imports nothing heavy at module level.
"""

from __future__ import annotations

import tempfile
from typing import Any

from steps import config
from steps.infra.errors import StepError, one_line


# --- preprocess ------------------------------------------------------------------------------
def read_preprocess_outputs(run_id: str) -> tuple[Any, Any, Any]:
    """A preprocess run's train/test splits and its fitted preprocessor (skops, trusted types)."""
    import mlflow
    import pandas as pd
    import skops.io

    from steps import models

    with tempfile.TemporaryDirectory() as tmp:
        root = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=tmp)
        splits = f"{root}/{config.SPLITS_ARTIFACT_DIR}"
        train = pd.read_parquet(f"{splits}/{config.TRAIN_SPLIT_FILE}")
        test = pd.read_parquet(f"{splits}/{config.TEST_SPLIT_FILE}")
        preprocessor = skops.io.load(
            f"{root}/{config.PREPROCESSOR_ARTIFACT}/{config.PREPROCESSOR_FILE}",
            trusted=list(models.SKOPS_TRUSTED_TYPES),
        )
    return train, test, preprocessor


# --- train (and the preprocess splits a train run was fitted on) -----------------------------
def read_gate_predictions(train_run_id: str) -> Any:
    """The test rows a train run scored, with its and the baseline's predictions."""
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="registry-predictions-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=train_run_id, artifact_path=config.GATE_PREDICTIONS_FILE, dst_path=tmp
            )
            return pd.read_parquet(path)
        except (MlflowException, OSError) as exc:
            raise StepError(
                f"train run {train_run_id} has no {config.GATE_PREDICTIONS_FILE} "
                f"({one_line(exc, 120)}): rerun train"
            ) from exc


def read_train_splits(train_run_id: str, *names: str) -> list[Any]:
    """The preprocess splits (``train.parquet``/``test.parquet``) a train run was fitted on."""
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        train_run = client.get_run(train_run_id)
    except MlflowException as exc:
        raise StepError(f"train run {train_run_id} not found") from exc
    preprocess_id = train_run.data.tags.get(config.TAG_UPSTREAM)
    if not preprocess_id:
        raise StepError(f"train run {train_run_id} has no {config.TAG_UPSTREAM} tag")
    frames = []
    with tempfile.TemporaryDirectory(prefix="registry-splits-") as tmp:
        for name in names:
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=preprocess_id,
                    artifact_path=f"{config.SPLITS_ARTIFACT_DIR}/{name}",
                    dst_path=tmp,
                )
                frames.append(pd.read_parquet(path))
            except (MlflowException, OSError) as exc:
                raise StepError(
                    f"{config.SPLITS_ARTIFACT_DIR}/{name} of preprocess run {preprocess_id} "
                    f"is unavailable: {one_line(exc, 160)}"
                ) from exc
    return frames


def test_predictions(train_run_id: str) -> Any:
    """What a train run's logged model predicted for its own test rows (dollars, numpy)."""
    table = read_gate_predictions(train_run_id)
    return table[config.GATE_CANDIDATE_COLUMN].to_numpy(dtype="float64")
