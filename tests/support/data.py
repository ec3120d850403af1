"""Data for the tests: synthetic, real (fetched like ``make data``) and resampled rows."""

from __future__ import annotations

import functools
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from steps import config
from steps.tracking import provenance

PROJECT_ROOT = config.PROJECT_ROOT


def synthetic_housing(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """A small raw table with the real columns and plausible, target-correlated values."""
    rng = np.random.default_rng(seed)
    households = rng.integers(50, 2000, n).astype(float)
    rooms = households * rng.uniform(3, 8, n)
    income = rng.uniform(0.5, 15, n)
    lon = rng.uniform(-124, -114.5, n)
    lat = rng.uniform(32.6, 41.9, n)
    df = pd.DataFrame(
        {
            "longitude": lon,
            "latitude": lat,
            "housing_median_age": rng.integers(1, 52, n).astype(float),
            "total_rooms": rooms,
            "total_bedrooms": rooms * rng.uniform(0.15, 0.3, n),
            "population": households * rng.uniform(1.5, 4, n),
            "households": households,
            "median_income": income,
            config.TARGET: 40_000 * income + 5_000 * (lat - 32) + rng.normal(0, 20_000, n),
            "ocean_proximity": rng.choice(config.OCEAN_PROXIMITY_VALUES, n),
        }
    )
    df[config.TARGET] = df[config.TARGET].clip(15_000, 500_001)
    df.loc[df.sample(frac=0.05, random_state=seed).index, "total_bedrooms"] = np.nan
    return df.loc[:, list(config.RAW_COLUMNS)]


# Jitter of resample_housing: counts and money move by up to ±2% of their value, coordinates
# by up to ±0.01 degrees (~1 km) — enough that no two drawn copies of a row stay identical
# (load_data refuses >1% duplicate rows), small enough to keep the geography and the prices.
RESAMPLE_REL_JITTER = 0.02


RESAMPLE_COORD_JITTER = 0.01


_COORDINATES = ("longitude", "latitude")


# Decimals kept when written: as in housing.csv (counts and prices are whole numbers).
_RESAMPLE_DECIMALS = {"longitude": 4, "latitude": 4, "median_income": 4}


def resample_housing(df: pd.DataFrame, factor: float, seed: int = 0) -> pd.DataFrame:
    """A larger (or smaller) table like ``df``: ``round(len(df) * factor)`` rows drawn with
    replacement, each numeric value jittered (coordinates additively, the rest
    multiplicatively) and kept inside both the schema's declared range and the range the
    column has in ``df``; ``ocean_proximity`` and missing values are kept as drawn.

    Each row keeps the index label of the row it was drawn from (write it with
    ``index=False``). Used by bench/cost_curve.py to measure how the pipeline grows.
    """
    from steps.data import schema

    rng = np.random.default_rng(seed)
    n = round(len(df) * factor)
    out = df.iloc[rng.integers(0, len(df), n)].copy()
    for column in schema.NUMERIC_COLUMNS:
        values = out[column.name].to_numpy(dtype=np.float64)
        if column.name in _COORDINATES:
            jittered = values + rng.uniform(-RESAMPLE_COORD_JITTER, RESAMPLE_COORD_JITTER, n)
        else:
            jittered = values * (1 + rng.uniform(-RESAMPLE_REL_JITTER, RESAMPLE_REL_JITTER, n))
        low = max(df[column.name].min(), -np.inf if column.minimum is None else column.minimum)
        high = min(df[column.name].max(), np.inf if column.maximum is None else column.maximum)
        jittered = np.round(np.clip(jittered, low, high), _RESAMPLE_DECIMALS.get(column.name, 0))
        out[column.name] = jittered  # NaN stays NaN through jitter, clip and round
    return out


@functools.cache
def housing_csv() -> Path:
    """The real CSV, as the project gets it: ``data/housing.csv`` of this clone, fetched on
    first use from ``$HOUSING_DATA_URL`` (else the public URL) or DVC and checked against
    ``data.dvc`` (steps.data.fetch). A fetch that fails is an error, not a skip."""
    from steps.data.fetch import fetch

    return fetch(PROJECT_ROOT)


@functools.cache
def housing_tgz() -> Path:
    """The real CSV packed as the public download serves it (a .tgz holding housing.csv),
    built once per clone beside DVC's temp files (ignored by git, so not in project copies)."""
    csv = housing_csv()
    version = provenance.expected_md5(PROJECT_ROOT).removesuffix(".dir")
    target = PROJECT_ROOT / ".dvc" / "tmp" / f"housing-{version}.tgz"
    if not target.exists():
        partial = target.with_suffix(f".{os.getpid()}.partial")
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(csv, arcname=config.RAW_FILE_NAME)
        partial.replace(target)  # atomic: a concurrent worker sees no half-written archive
    return target


def housing_sample(csv: Path | None = None, n_rows: int | None = 2_000, seed: int = 0):
    """(X, y) from the real CSV: raw feature columns and dollars, ``n_rows`` sampled."""
    df = pd.read_csv(csv or housing_csv())
    if n_rows is not None and n_rows < len(df):
        df = df.sample(n_rows, random_state=seed)
    return df.loc[:, list(config.FEATURES)].reset_index(drop=True), df[config.TARGET].to_numpy()
