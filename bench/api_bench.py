"""Benchmark the prediction API against ``mlflow models serve`` on the same registered model.

Starts both servers on loopback ports, loads each with ``wrk`` (8 connections, 10 s) with
single-row and 1,000-row POSTs, and times ``steps.predict`` on 1,000,000 rows resampled from
housing.csv. Prints req/s, p50 and p99 for each, the throughput ratio and the batch seconds;
``--json`` prints one JSON document instead.

    python bench/api_bench.py                       # temp tracking store + demo model
    python bench/api_bench.py --tracking-uri sqlite:////abs/mlflow.db --json

Needs ``wrk`` (``apt-get install -y wrk``). Also the home of the demo-model helpers the tests
use: a pipeline fitted on a sample of the real CSV, logged and registered exactly like the
train and register steps do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: make `steps` importable
    sys.path.insert(0, str(PROJECT_ROOT))

from steps import config, models  # noqa: E402
from steps.serve import DEFAULT_MODEL_URI  # noqa: E402

DEFAULT_CSV = PROJECT_ROOT.parent / "shared" / "data" / "housing.csv"
LOOPBACK = "127.0.0.1"
DEMO_TAGS = {
    "train_run_id": "",  # filled with the logging run's id
    "git_commit": "0000000000000000000000000000000000000000",
    config.TAG_DVC_MD5: "demo-md5",
    "test_rmse": "0.0",
}


# --- demo model (shared with tests) --------------------------------------------------------
def housing_sample(csv: Path = DEFAULT_CSV, n_rows: int | None = 2_000, seed: int = 0):
    """(X, y) from the real CSV: raw feature columns and dollars, ``n_rows`` sampled."""
    df = pd.read_csv(csv)
    if n_rows is not None and n_rows < len(df):
        df = df.sample(n_rows, random_state=seed)
    return df.loc[:, list(config.FEATURES)].reset_index(drop=True), df[config.TARGET].to_numpy()


def demo_pipeline(X: pd.DataFrame, y: np.ndarray, **hyperparams: Any):
    """Pipeline(preprocess, model) fitted like the train step, default model kind."""
    from sklearn.pipeline import Pipeline

    from steps import features

    params = {**models.DEFAULT_HYPERPARAMS, **hyperparams}
    pipeline = Pipeline(
        [
            ("preprocess", features.build_preprocessor()),
            ("model", models.build_estimator(models.DEFAULT_MODEL_KIND, **params)),
        ]
    )
    return pipeline.fit(X, y)


def register_demo_model(tracking_uri: str, pipeline: Any, X: pd.DataFrame) -> str:
    """Log ``pipeline`` like the train step and register it like the register step.

    Returns the new version number; alias ``champion`` points at it.
    """
    import mlflow
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
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
    mlflow.MlflowClient().set_registered_model_alias(
        config.MODEL_NAME, config.CHAMPION_ALIAS, version.version
    )
    return str(version.version)
