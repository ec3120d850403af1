"""The declared schema of the raw housing table and the checks derived from it.

In: a DataFrame as read from housing.csv. Out: the same frame with the declared dtypes, or a
``SchemaError`` whose message is one line naming the column and the problem. The same
declarations give the serving API its field bounds and batch scoring its per-row rejection
reasons (``rejection_reasons``, used by both predict engines), so they never disagree.
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


# --- row by row: batch scoring (both engines) and the API apply the same rules --------
def rejection_reasons(df: pd.DataFrame) -> pd.Series:
    """Per row, '' if it is valid, else '; '-joined reasons (``column: problem``).

    The API's rules, vectorised: numbers finite and within the declared bounds,
    ``total_bedrooms`` alone may be missing, ``ocean_proximity`` a known value. Both batch
    engines call this (the Spark one on each pandas batch), so they reject the same rows.
    """
    reasons = pd.Series("", index=df.index, dtype=object)

    def flag(mask: pd.Series | np.ndarray, message: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            reasons[mask] = reasons[mask] + message + "; "

    for name in config.NUMERIC_FEATURES:
        col = NUMERIC_BY_NAME[name]
        raw = df[name]
        values = pd.to_numeric(raw, errors="coerce").astype("float64")
        present = raw.notna().to_numpy()
        flag(present & values.isna().to_numpy(), f"{name}: not a number")
        if not col.nullable:
            flag(~present, f"{name}: missing")
        flag(np.isinf(values.to_numpy()), f"{name}: not finite")
        if col.minimum is not None:
            flag((values < col.minimum).to_numpy(), f"{name}: below {col.minimum}")
        if col.maximum is not None:
            flag((values > col.maximum).to_numpy(), f"{name}: above {col.maximum}")
    category = df[config.CATEGORICAL_FEATURE]
    flag(category.isna(), f"{config.CATEGORICAL_FEATURE}: missing")
    known = category.isin(config.OCEAN_PROXIMITY_VALUES) | category.isna()
    flag(~known, f"{config.CATEGORICAL_FEATURE}: unknown value")
    return reasons.str.removesuffix("; ")


def with_model_dtypes(valid: pd.DataFrame) -> pd.DataFrame:
    """Valid rows with the dtypes the model was trained on: float64 numerics (a missing
    ``total_bedrooms`` = NaN) and a str category; other columns untouched."""
    out = valid.copy()
    for name in config.NUMERIC_FEATURES:
        out[name] = pd.to_numeric(out[name], errors="coerce").astype("float64")
    out[config.CATEGORICAL_FEATURE] = out[config.CATEGORICAL_FEATURE].astype("str")
    return out


# --- the data contract: rules on the whole table and on the change from a reference --------
# Checked by steps/data/contract.py. Every threshold is declared here, once; docs/reliability.md
# gives the measurements each one is calibrated on (bench/contract_calibration.py prints them).
@dataclass(frozen=True)
class TableRules:
    """Absolute rules: they hold for any version, with or without a reference."""

    # A statewide table of census blocks; the versioned file has 20,640 rows. Fewer than this
    # is a broken export, not a new version (preprocess/train need only ~50, see their guards).
    min_rows: int = 1_000
    # Exact duplicate rows leak test rows into training; the versioned file has none.
    max_duplicate_fraction: float = 0.01
    # Share of the most frequent value in a non-nullable feature; the versioned file's
    # highest is 0.44 (ocean_proximity), the highest numeric one 0.06 (housing_median_age).
    max_top_value_share: float = 0.95


@dataclass(frozen=True)
class Band:
    """A statistic above ``warn`` is a warning on the run; above ``fail`` it stops load_data."""

    warn: float
    fail: float


@dataclass(frozen=True)
class DriftRules:
    """Comparison with the reference version (the champion's data, else the last load)."""

    # Rows lost, 1 - rows_new / rows_ref. Census blocks do not disappear: a smaller version
    # is a truncated export unless it only dropped a few bad rows. Cutting the versioned file
    # at 95% (PSI of every column still < 0.02) is stopped here and nowhere else.
    row_count_drop: Band = Band(warn=0.01, fail=0.03)
    # Rows gained, rows_new / rows_ref - 1. A few percent more blocks is a normal new
    # version; a doubled table (+100%) is a bad join (duplicate_rows catches it too).
    row_count_growth: Band = Band(warn=0.10, fail=0.50)
    # Population stability index over the reference's deciles (categories for
    # ocean_proximity), per feature column.
    feature_psi: Band = Band(warn=0.02, fail=0.10)
    # The same for the target: its distribution is what the model learns.
    target_psi: Band = Band(warn=0.02, fail=0.10)
    # |missing_rate_new - missing_rate_ref|, per column, as a fraction of rows.
    missing_rate_change: Band = Band(warn=0.005, fail=0.02)


TABLE_RULES = TableRules()
DRIFT_RULES = DriftRules()


def features_and_target(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """A raw table split into the nine feature columns and the target (dollars)."""
    return df.loc[:, list(config.FEATURES)], df[config.TARGET]
