"""What the serving tests share: the served version's registry facts, the app's limits, and
request rows as JSON-ready dicts (fixtures: ``conftest.py``)."""

from __future__ import annotations

import math

import pandas as pd

from steps import config
from steps.tracking import loading

MAX_ROWS = 50
MAX_BODY = 40_000
REF = loading.ModelRef(
    name=config.MODEL_NAME,
    version="7",
    uri=loading.DEFAULT_MODEL_URI,
    run_id="run-of-the-version",
    tags={
        "train_run_id": "train-run-123",
        "git_commit": "abc123",
        config.TAG_DVC_MD5: "md5-xyz",
        "test_rmse": "45000.0",
    },
)


def records(X: pd.DataFrame) -> list[dict]:
    """DataFrame rows as JSON-ready dicts (NaN -> null)."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in X.to_dict("records")
    ]


def good_row() -> dict:
    return {
        "longitude": -122.23,
        "latitude": 37.88,
        "housing_median_age": 41.0,
        "total_rooms": 880.0,
        "total_bedrooms": 129.0,
        "population": 322.0,
        "households": 126.0,
        "median_income": 8.3252,
        "ocean_proximity": "NEAR BAY",
    }
