"""Request bodies of the inference protocols other clients speak, turned into our rows.

In: the parsed JSON body of ``POST /invocations`` (MLflow's scoring protocol: one of
``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``). Out: the name of the
format used and one dict per row, which serve validates exactly as it validates /predict's
rows. Pure: no I/O, no MLflow.
"""

from __future__ import annotations

import math
from typing import Any

INVOCATION_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class PayloadError(ValueError):
    """An /invocations body in none of MLflow's JSON input formats."""


def _missing_as_none(row: Any) -> Any:
    # MLflow's clients send pandas' NaN (as the non-standard JSON token NaN) for a missing value
    if not isinstance(row, dict):
        return row
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def invocation_rows(payload: Any) -> tuple[str, list[Any]]:
    """An /invocations body -> (the format it used, one dict per row).

    The formats of ``mlflow models serve``: ``dataframe_split`` (``columns`` + ``data``),
    ``dataframe_records`` (a list of rows), ``instances`` or ``inputs`` (a list of rows or
    one list per column). The rows are validated afterwards exactly as /predict's are.
    """
    if not isinstance(payload, dict):
        raise PayloadError(f"the body must be a JSON object with one of {INVOCATION_FORMATS}")
    if payload.get("params"):
        raise PayloadError("this model takes no params")
    keys = [key for key in payload if key != "params"]
    if len(keys) != 1 or keys[0] not in INVOCATION_FORMATS:
        raise PayloadError(f"give exactly one of {INVOCATION_FORMATS}, got {keys}")
    key = keys[0]
    value = payload[key]
    if key == "dataframe_split":
        columns = value.get("columns") if isinstance(value, dict) else None
        data = value.get("data") if isinstance(value, dict) else None
        if not isinstance(columns, list) or not isinstance(data, list):
            raise PayloadError("dataframe_split needs a 'columns' list and a 'data' list")
        if not all(isinstance(row, list) and len(row) == len(columns) for row in data):
            raise PayloadError(f"dataframe_split: every row of 'data' needs {len(columns)} values")
        rows: list[Any] = [dict(zip(columns, row, strict=True)) for row in data]
    elif key != "dataframe_records" and isinstance(value, dict):
        lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise PayloadError(f"{key}: give one list per column, all of the same length")
        rows = [{column: v[i] for column, v in value.items()} for i in range(lengths.pop())]
    elif isinstance(value, list):
        rows = value
    else:
        raise PayloadError(f"{key} must be a list of rows")
    return key, [_missing_as_none(row) for row in rows]
