"""Fixtures of the unit tests that several folders share: a sample of housing.csv and a small
real pipeline fitted on it (the serving, loading and predict tests score with it)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.support import demo_pipeline, housing_csv, housing_sample


@pytest.fixture(scope="module")
def sample() -> tuple[pd.DataFrame, np.ndarray]:
    return housing_sample(housing_csv(), n_rows=1_500, seed=1)


@pytest.fixture(scope="module")
def pipeline(sample):
    X, y = sample
    return demo_pipeline(X, y, n_estimators=40)
