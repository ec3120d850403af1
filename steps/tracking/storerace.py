"""A known tracking-store race (two writers creating the same row), retried."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

UNIQUE_RACE_MARKERS = ("UniqueViolation", "UNIQUE constraint failed", "duplicate key")
UNIQUE_RACE_ATTEMPTS = 4


def with_unique_race_retry(write: Callable[[], Any]) -> Any:
    """Call ``write`` (an MLflow call that creates a row), retrying a known store race.

    The tracking store gets-or-creates some rows without a lock — a logged dataset by
    (experiment, name, digest), a registry alias by (model, alias) — so two pipelines doing
    the same write at the same moment make one insert fail on the unique key. The retry
    finds (or updates) the row the other one created.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(1, UNIQUE_RACE_ATTEMPTS + 1):
        try:
            return write()
        except MlflowException as exc:
            if attempt == UNIQUE_RACE_ATTEMPTS or not any(
                marker in str(exc) for marker in UNIQUE_RACE_MARKERS
            ):
                raise
            time.sleep(0.2 * attempt)
    return None
