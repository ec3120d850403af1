"""The declared schema of the raw housing table and the checks derived from it.

In: a DataFrame as read from housing.csv. Out: the same frame with the declared dtypes, or a
``SchemaError`` whose message is one line naming the column and the problem. The same
declarations give the serving API its field bounds, so the two never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from steps import config


class SchemaError(ValueError):
    """The table breaks a declared rule; the message names the column."""


@dataclass(frozen=True)
class NumericColumn:
    name: str
    nullable: bool = False
    # For a whole table: a nullable column may still not be mostly empty.
    max_missing_fraction: float = 0.0
    minimum: float | None = None
    maximum: float | None = None


# Bounds are physical (counts are non-negative, California's bounding box), not statistical:
# they reject impossible rows, never merely unusual ones.
NUMERIC_COLUMNS: tuple[NumericColumn, ...] = (
    NumericColumn("longitude", minimum=-124.5, maximum=-114.0),
    NumericColumn("latitude", minimum=32.5, maximum=42.1),
    NumericColumn("housing_median_age", minimum=0),
    NumericColumn("total_rooms", minimum=0),
    # 1% missing in the versioned file; far more means a broken export, not a new version.
    NumericColumn("total_bedrooms", nullable=True, max_missing_fraction=0.05, minimum=0),
    NumericColumn("population", minimum=0),
    NumericColumn("households", minimum=0),
    NumericColumn("median_income", minimum=0),
    NumericColumn(config.TARGET, minimum=0),
)
NUMERIC_BY_NAME = {c.name: c for c in NUMERIC_COLUMNS}


def validate_raw(df: pd.DataFrame) -> pd.DataFrame:
    """Check columns, types, nulls, ranges and categories; return a float-typed copy."""
    if df.empty:
        raise SchemaError("no data rows (the file has a header only or is empty)")
    duplicated = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if duplicated:
        raise SchemaError(f"duplicated column(s): {', '.join(duplicated)}")
    missing = [c for c in config.RAW_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(f"missing column(s): {', '.join(missing)}")
    extra = [c for c in df.columns if c not in config.RAW_COLUMNS]
    if extra:
        raise SchemaError(f"unexpected column(s): {', '.join(map(str, extra))}")

    out = df.loc[:, list(config.RAW_COLUMNS)].copy()
    for col in NUMERIC_COLUMNS:
        values = pd.to_numeric(out[col.name], errors="coerce")
        bad = values.isna() & out[col.name].notna()
        if bad.any():
            first = out.loc[bad, col.name].iloc[0]
            raise SchemaError(
                f"column {col.name!r} is not numeric ({int(bad.sum())} bad values, e.g. {first!r})"
            )
        values = values.astype("float64")
        missing = int(values.isna().sum())
        if not col.nullable and missing:
            raise SchemaError(f"column {col.name!r} has {missing} missing values")
        if missing > col.max_missing_fraction * len(values) and col.nullable:
            raise SchemaError(
                f"column {col.name!r} has {missing} missing values "
                f"(more than {col.max_missing_fraction:.0%} of rows)"
            )
        finite = values.dropna()
        if not np.isfinite(finite).all():
            raise SchemaError(f"column {col.name!r} has infinite values")
        if col.minimum is not None and (finite < col.minimum).any():
            raise SchemaError(
                f"column {col.name!r} has {int((finite < col.minimum).sum())} values "
                f"below {col.minimum}"
            )
        if col.maximum is not None and (finite > col.maximum).any():
            raise SchemaError(
                f"column {col.name!r} has {int((finite > col.maximum).sum())} values "
                f"above {col.maximum}"
            )
        out[col.name] = values

    cat = out[config.CATEGORICAL_FEATURE]
    unknown = sorted(set(cat.dropna().astype(str)) - set(config.OCEAN_PROXIMITY_VALUES))
    if unknown or cat.isna().any():
        what = f"unknown values {unknown}" if unknown else f"{int(cat.isna().sum())} missing"
        raise SchemaError(f"column {config.CATEGORICAL_FEATURE!r} has {what}")
    out[config.CATEGORICAL_FEATURE] = cat.astype(str)
    return out
