"""Request bodies of the inference protocols other clients speak, turned into our rows.

In: the parsed JSON body of ``POST /invocations`` (MLflow's scoring protocol: one of
``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``) or of
``POST /v2/models/{name}/infer`` (the Open Inference Protocol of KServe, Triton and MLServer:
one tensor per column). Out: one dict per row, which serve validates exactly as it validates
/predict's rows; and the V2 model metadata. Pure: no I/O, no MLflow.
"""

from __future__ import annotations

import math
from typing import Any

from steps import config

INVOCATION_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class PayloadError(ValueError):
    """A body in none of the protocol's input forms; the message names the problem."""


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


# --- Open Inference Protocol (V2: KServe, Triton, MLServer) ----------------------------------
V2_NUMERIC_TYPES = frozenset(
    {"FP64", "FP32", "FP16"} | {f"{s}INT{bits}" for s in ("", "U") for bits in (8, 16, 32, 64)}
)
V2_OUTPUT = "predicted_median_house_value"


def v2_metadata(name: str, version: str) -> dict[str, Any]:
    """``GET /v2/models/{name}``: one input tensor per raw column, one FP64 output."""
    inputs = [{"name": c, "datatype": "FP64", "shape": [-1]} for c in config.NUMERIC_FEATURES]
    inputs.append({"name": config.CATEGORICAL_FEATURE, "datatype": "BYTES", "shape": [-1]})
    return {
        "name": name,
        "versions": [version],
        "platform": "mlflow-sklearn",
        "inputs": inputs,
        "outputs": [{"name": V2_OUTPUT, "datatype": "FP64", "shape": [-1]}],
    }


def v2_rows(payload: Any) -> list[dict[str, Any]]:
    """A V2 infer request -> one dict per row.

    Each input tensor is one column (``shape`` ``[n]`` or ``[n, 1]``, ``data`` flat, or
    nested one level as the pandas codec of MLServer sends it); numerics in any FP/INT
    datatype, ``ocean_proximity`` as ``BYTES``. Values are validated afterwards exactly as
    /predict's rows are.
    """
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise PayloadError("the body needs an 'inputs' list with one tensor per column")
    columns: dict[str, list[Any]] = {}
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise PayloadError("every input needs a 'name', 'shape', 'datatype' and 'data'")
        name, shape, data = tensor["name"], tensor.get("shape"), tensor.get("data")
        datatype = tensor.get("datatype")
        if name in columns:
            raise PayloadError(f"input {name!r} is given twice")
        if name == config.CATEGORICAL_FEATURE:
            expected, allowed = "BYTES", {"BYTES"}
        else:
            expected, allowed = "a numeric type", V2_NUMERIC_TYPES
        if not isinstance(datatype, str) or datatype not in allowed:
            raise PayloadError(f"input {name!r} has datatype {datatype!r}; expected {expected}")
        if not isinstance(data, list):
            raise PayloadError(f"input {name!r} needs a 'data' list")
        if not isinstance(shape, list) or not shape or any(n != 1 for n in shape[1:]):
            raise PayloadError(
                f"input {name!r}: shape {shape!r}; one column per input, [n] or [n, 1]"
            )
        flat = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in data]
        if shape[0] != len(flat):
            raise PayloadError(f"input {name!r}: shape {shape!r} does not match {len(flat)} values")
        columns[name] = flat
    lengths = {len(values) for values in columns.values()}
    if len(lengths) != 1:
        raise PayloadError("every input needs the same number of values")
    n = lengths.pop()
    return [{name: values[i] for name, values in columns.items()} for i in range(n)]
