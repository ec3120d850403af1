"""tests.support.resample_housing: the larger tables bench/cost_curve.py runs the pipeline on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steps import config
from steps.data import contract, schema
from tests.support import (
    RESAMPLE_COORD_JITTER,
    RESAMPLE_REL_JITTER,
    housing_csv,
    resample_housing,
)


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    return schema.validate_raw(pd.read_csv(housing_csv()))


@pytest.mark.parametrize("factor", [0.5, 1, 3])
def test_row_count_columns_and_dtypes(real, factor):
    out = resample_housing(real, factor, seed=1)
    assert len(out) == round(len(real) * factor)
    assert list(out.columns) == list(real.columns)
    assert out.dtypes.equals(real.dtypes)


def test_rows_keep_their_category_and_missing_values(real):
    out = resample_housing(real, 2, seed=2)
    source = real.loc[out.index]
    assert (out[config.CATEGORICAL_FEATURE].to_numpy() == source[config.CATEGORICAL_FEATURE]).all()
    for column in (*config.NUMERIC_FEATURES, config.TARGET):
        assert (out[column].isna().to_numpy() == source[column].isna().to_numpy()).all(), column


def test_jitter_is_bounded_and_present(real):
    out = resample_housing(real, 2, seed=3)
    source = real.loc[out.index]
    for column in (*config.NUMERIC_FEATURES, config.TARGET):
        new, old = out[column].to_numpy(), source[column].to_numpy()
        known = ~np.isnan(old)
        if column in ("longitude", "latitude"):
            bound = np.full(known.sum(), RESAMPLE_COORD_JITTER)
        else:
            # + 0.5: counts and prices are rounded to whole numbers after the jitter
            bound = RESAMPLE_REL_JITTER * np.abs(old[known]) + 0.5
        assert (np.abs(new[known] - old[known]) <= bound + 1e-9).all(), column
        # jittered, not copied (ages of a few years mostly round back to themselves)
        assert (new[known] != old[known]).mean() > 0.1, column
        assert real[column].min() <= np.nanmin(new) and np.nanmax(new) <= real[column].max()


def test_output_passes_the_schema_and_the_table_rules(real):
    out = resample_housing(real, 2, seed=4)
    frame = schema.validate_raw(out.reset_index(drop=True))
    assert not contract.check(frame, None).verdict.failures
    assert not frame.duplicated().any()


def test_seed_makes_it_repeatable(real):
    pd.testing.assert_frame_equal(resample_housing(real, 1, seed=5), resample_housing(real, 1, 5))
    assert not resample_housing(real, 1, seed=5).equals(resample_housing(real, 1, seed=6))
