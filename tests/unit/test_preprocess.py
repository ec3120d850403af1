"""preprocess's pure core: split shape, stratification, reproducibility, parameter checks."""

from __future__ import annotations

import pytest

from steps import config
from steps.infra.errors import StepError
from steps.preprocess import income_category, split_data
from tests.support import synthetic_housing


def test_split_sizes_are_disjoint_and_reproducible(raw_frame):
    train, test = split_data(raw_frame, 0.2, 42, "income_stratified")
    assert len(test) == 60 and len(train) == 240
    assert not set(train.index) & set(test.index)
    again, _ = split_data(raw_frame, 0.2, 42, "income_stratified")
    assert list(again.index) == list(train.index)
    other, _ = split_data(raw_frame, 0.2, 7, "income_stratified")
    assert list(other.index) != list(train.index)


def test_stratified_split_keeps_income_category_shares():
    df = synthetic_housing(2000, seed=1)
    _, test = split_data(df, 0.2, 42, "income_stratified")
    full = income_category(df["median_income"]).value_counts(normalize=True)
    part = income_category(test["median_income"]).value_counts(normalize=True)
    assert (full - part).abs().max() < 0.005


def test_income_category_bins():
    import pandas as pd

    cats = income_category(pd.Series([0.0, 1.5, 1.6, 3.1, 4.6, 6.1, 15.0]))
    assert list(cats) == [0, 0, 1, 2, 3, 4, 4]


@pytest.mark.parametrize(
    ("test_size", "strategy", "message"),
    [(0.0, "random", "test_size"), (1.5, "random", "test_size"), (0.2, "by_zip", "split_strategy")],
)
def test_bad_split_parameters(raw_frame, test_size, strategy, message):
    with pytest.raises(StepError, match=message):
        split_data(raw_frame, test_size, 42, strategy)


def test_random_strategy_is_in_config():
    assert set(config.SPLIT_STRATEGIES) == {"income_stratified", "random"}
