"""Predicting in tests: batch predictions (``steps.predict``, both engines: its environment, its
command, messy rows) and the Open Inference Protocol (V2) request of some rows."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from steps import config
from tests.support.data import PROJECT_ROOT


def predict_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    """The environment of a ``python -m steps.predict`` child: this venv first on PATH, the
    project importable, only the given tracking store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PYTHONPATH": str(PROJECT_ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
    }
    return env | extra


def run_predict(
    tracking_uri: str, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m steps.predict <args>``, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "steps.predict", *args],
        cwd=cwd,
        env=env or predict_env(tracking_uri),
        capture_output=True,
        text=True,
        timeout=600,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def messy_rows(X: pd.DataFrame) -> pd.DataFrame:
    """``X`` as text, with an extra ``block_id`` column and rows every rule rejects or lets
    through: each kind of bad value once, plus an allowed missing ``total_bedrooms`` spelled
    ``NA`` (a CSV missing-value token)."""
    df = X.astype(object).reset_index(drop=True)
    df.insert(0, "block_id", [f"b{i:05d}, CA" for i in range(len(df))])  # a comma: quoted
    cases = {
        3: ("latitude", "north"),
        5: ("ocean_proximity", "MARS"),
        8: ("total_bedrooms", "NA"),
        13: ("median_income", None),
        21: ("median_income", "inf"),
        34: ("population", -1.0),
        55: ("longitude", -130.0),
    }
    for row, (column, value) in cases.items():
        df.loc[row, column] = value
    return df


# One raw row as a client sends it (the first row of the California housing data).
SAMPLE_ROW = {
    "longitude": -122.23,
    "latitude": 37.88,
    "housing_median_age": 41,
    "total_rooms": 880,
    "total_bedrooms": 129,
    "population": 322,
    "households": 126,
    "median_income": 8.3252,
    "ocean_proximity": "NEAR BAY",
}


def v2_request(X: pd.DataFrame, nested: bool = False) -> dict:
    """One tensor per column; ``nested``: MLServer's pandas codec ([[v], ...], shape [n, 1])."""
    inputs = []
    for column in X.columns:
        values = [None if isinstance(v, float) and math.isnan(v) else v for v in X[column]]
        numeric = column != config.CATEGORICAL_FEATURE
        inputs.append(
            {
                "name": column,
                "datatype": "FP64" if numeric else "BYTES",
                "shape": [len(values), 1] if nested else [len(values)],
                "data": [[v] for v in values] if nested else values,
            }
        )
    body = {"id": "req-1", "inputs": inputs}
    return {**body, "parameters": {"content_type": "pd"}} if nested else body
