"""What ``predict`` writes, whichever engine scores (``--engine local``: ``steps.batch.localscore``;
``--engine spark``: ``steps.batch.sparkscore``). Same input, same files, same columns in the
same order, same dtypes, same values (predictions to floating-point noise).

Predictions, ``--output`` (one row per valid input row):

* ``row``: int64, the row's 0-based position in the input;
* the input's columns, in the input's order: the nine features as the model takes them
  (float64 numbers, a missing ``total_bedrooms`` = null; ``ocean_proximity`` a string), every
  other column carried through with its input type (below);
* ``predicted_median_house_value``: float64, dollars.

Rejected rows, ``rejected_location(output)`` (one row per row failing validation): ``row``
(int64), the input's columns with their input types (a bad value kept as read: ``north`` in
``latitude`` makes the column a string), ``reason`` (string). Written on every run, empty when
no row is rejected, so a stale one never survives a rerun.

Input types: a Parquet input's own types. A CSV input's columns are text, typed here by one
rule per whole column, the same on both engines (the local engine applies it to the whole
file, the Spark engine to each batch and combines the batches' results): the missing-value
tokens (``config.CSV_MISSING_VALUES``) are null; int64 if every value is an integer and none
is missing; float64 if every present value is a number (integers with missing ones included);
a string otherwise, or if every value is missing. "Is a number" is Arrow's cast from text (what
its CSV reader parses: ``007``, ``1e3``, ``inf``; not `` 5`` or ``1,000``), fast on either engine.

Files: the rejects follow the output's format, beside it: ``<stem>.rejected.parquet`` for a
Parquet output (``.parquet``/``.pq``, or no extension: a Spark directory),
``<stem>.rejected.csv`` for a CSV one (engine=local only: Spark writes Parquet). Spark writes
each as a directory of part files, which ``pandas.read_parquet``/``pyarrow`` read as one table,
with the same schema as the local engine's single file; strings are Arrow ``string`` in both.
Spark's rows come in partition order: sort by ``row`` to compare.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from steps import config

REJECTED_INFIX = ".rejected"

# What a CSV column's present values are; two parts of a column combine to the larger.
NO_VALUE, INTEGER, NUMBER, TEXT = 0, 1, 2, 3
INT64, FLOAT64, STRING = "int64", "float64", "str"


def rejected_location(output: str) -> str:
    """The rejects beside ``output``, in its format: ``out.parquet`` -> ``out.rejected.parquet``,
    ``out.csv.gz`` -> ``out.rejected.csv``, ``s3a://b/out`` -> ``s3a://b/out.rejected.parquet``
    (paths and URIs alike)."""
    base = output.rstrip("/")
    head, _, name = base.rpartition("/")
    kind = config.table_format_by_name(name) or "parquet"
    for suffix in reversed(Path(name).suffixes):
        name = name.removesuffix(suffix)
    rejected = f"{name}{REJECTED_INFIX}.{kind}"
    return f"{head}/{rejected}" if head else rejected


def missing_as_null(text: pd.DataFrame) -> pd.DataFrame:
    """CSV fields read as text: the missing-value tokens become null."""
    return text.mask(text.isin(config.CSV_MISSING_VALUES))


def _text_array(values: pd.Series) -> Any:
    import pyarrow as pa

    return pa.array(values.astype("str"), type=pa.string(), from_pandas=True)


def _numbers(text: Any, dtype: str, index: pd.Index) -> pd.Series | None:
    """``text`` (an Arrow string array) cast to ``dtype`` by Arrow (C++, like its CSV reader;
    nulls stay null, NaN in float64), or None if some present value is not such a number."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        numbers = pc.cast(text, pa.int64() if dtype == INT64 else pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return pd.Series(numbers.to_numpy(zero_copy_only=False), index=index)


def _parse(values: pd.Series) -> tuple[int, bool, pd.Series | None]:
    """(kind of the present values, any value missing, the values as numbers if they are)."""
    text = _text_array(values)
    missing = text.null_count > 0
    if text.null_count == len(text):
        return NO_VALUE, missing, None
    integers = _numbers(text, INT64, values.index)
    if integers is not None:
        return INTEGER, missing, integers
    floats = _numbers(text, FLOAT64, values.index)
    return (TEXT, missing, None) if floats is None else (NUMBER, missing, floats)


def text_kind(values: pd.Series) -> tuple[int, bool]:
    """(kind, any missing) of one part of a CSV column; parts combine by ``max`` of each."""
    kind, missing, _ = _parse(values)
    return kind, missing


def dtype_for(kind: int, missing: bool) -> str:
    """The contract's dtype of a CSV column from its combined (kind, any missing)."""
    if kind == INTEGER and not missing:
        return INT64
    if kind in (INTEGER, NUMBER):
        return FLOAT64
    return STRING


def as_dtype(values: pd.Series, dtype: str) -> pd.Series:
    """A CSV column's text (missing values null) as ``dtype`` (``dtype_for``)."""
    if dtype == STRING:
        return values.astype("str")
    numbers = _numbers(_text_array(values), dtype, values.index)
    if numbers is None:  # cannot happen: the dtype was found on these very values
        raise ValueError(f"{values.name}: not all {dtype}")
    return numbers.astype(dtype)


def typed_text_columns(text: pd.DataFrame) -> pd.DataFrame:
    """A whole CSV table's text (missing values null), each column typed by the rule."""
    typed = {}
    for name in text.columns:
        kind, missing, numbers = _parse(text[name])
        dtype = dtype_for(kind, missing)
        typed[name] = text[name].astype("str") if numbers is None else numbers.astype(dtype)
    return pd.DataFrame(typed, index=text.index)


def combine(kinds: Iterable[tuple[int, bool]]) -> tuple[int, bool]:
    """The (kind, any missing) of a column from its parts'."""
    parts = list(kinds)
    return max((k for k, _ in parts), default=NO_VALUE), any(m for _, m in parts)


def with_string_columns(table: Any) -> Any:
    """An Arrow table with ``large_string`` columns as ``string`` (what Spark writes)."""
    import pyarrow as pa

    fields = [
        field.with_type(pa.string()) if pa.types.is_large_string(field.type) else field
        for field in table.schema
    ]
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))
