"""monitor's drift core (steps.monitoring.drift) on real rows of housing.csv against the
profile the data contract keeps for it: random windows are ``ok``, a unit change in one
column is ``drift`` naming that column only, predictions are judged per served version, and
the per-feature numbers are the contract's own."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steps import config
from steps.data import contract, schema
from steps.monitoring import drift
from tests.support import housing_csv


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return schema.validate_raw(pd.read_csv(housing_csv()))


@pytest.fixture(scope="module")
def profile(table) -> dict:
    return contract.profile(table)


@pytest.fixture(scope="module")
def scored(table, pipeline) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Every row with the small real model's prediction (version "7"), and as the reference
    its predictions on 2,000 rows it was not fitted on."""
    rows = table[list(config.FEATURES)].assign(
        model_version="7", prediction=pipeline.predict(table[list(config.FEATURES)])
    )
    held_out = table.sample(2_000, random_state=11)[list(config.FEATURES)]
    return rows, {"7": pipeline.predict(held_out)}


def window(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return rows.sample(n, random_state=seed).copy()


@pytest.mark.parametrize("seed", range(5))
def test_random_windows_of_real_rows_are_ok(scored, profile, seed):
    rows, reference = scored
    judged = drift.judge(window(rows, 1_000, seed), profile, reference)
    assert judged.verdict == "ok", judged
    assert judged.drifted_features == [] and judged.drifted_versions == []
    assert judged.versions == {"7": 1_000}


@pytest.mark.parametrize(
    ("column", "change"),
    [("median_income", lambda v: v * 10), ("total_rooms", lambda v: v / 1000)],
    ids=["income-x10", "rooms-per-thousand"],
)
def test_a_unit_change_in_one_column_is_drift_naming_that_column_only(
    scored, profile, column, change
):
    rows, reference = scored
    shifted = window(rows, 1_000, 0)
    shifted[column] = change(shifted[column])
    judged = drift.judge(shifted, profile, reference)
    assert judged.verdict == "drift"
    assert judged.drifted_features == [column]


def test_drifted_predictions_of_one_version_are_drift_without_a_feature(scored, profile):
    rows, reference = scored
    both = window(rows, 2_000, 1)
    both.loc[both.index[1_000:], "model_version"] = "8"
    both.loc[both.index[1_000:], "prediction"] *= 1.5  # v8 overprices everything
    reference = reference | {"8": reference["7"]}
    judged = drift.judge(both, profile, reference)
    assert judged.versions == {"7": 1_000, "8": 1_000}
    assert judged.drifted_features == [] and judged.drifted_versions == ["8"]
    assert judged.verdict == "drift"


def test_a_version_without_test_predictions_is_not_judged(scored, profile):
    rows, _ = scored
    judged = drift.judge(window(rows, 600, 2), profile, {})
    assert judged.predictions == {} and judged.verdict == "ok"


def test_the_numbers_are_the_data_contracts(table, profile, scored):
    rows, reference = scored
    picked = table.sample(800, random_state=5)
    judged = drift.judge(rows.loc[picked.index], profile, reference)
    stats = contract.drift_statistics(picked, contract.profile(picked), profile)["columns"]
    for name in config.FEATURES:
        assert judged.features[name].psi.value == stats[name]["psi"]
        assert judged.features[name].missing_rate_change.value == pytest.approx(
            stats[name]["missing_rate_change"]
        )


def test_too_few_rows_cannot_be_judged(scored, profile):
    rows, reference = scored
    with pytest.raises(drift.WindowError, match=r"499 served rows.*at least 500"):
        drift.judge(window(rows, 499, 0), profile, reference)


def test_thresholds_shrink_with_the_window_down_to_the_contracts():
    small = drift.psi_threshold(10, 200, 20_640)
    large = drift.psi_threshold(10, 5_000, 20_640)
    assert small > 0.1 and large == drift.RULES.psi_floor == schema.DRIFT_RULES.feature_psi.fail
    assert drift.missing_threshold(0.01, 200, 20_640) > drift.RULES.missing_floor
    assert drift.missing_threshold(0.0, 200, 20_640) == drift.RULES.missing_floor


def test_bedrooms_going_missing_is_drift_naming_that_column_only(scored, profile):
    rows, reference = scored
    broken = window(rows, 1_000, 3)
    broken.loc[broken.index[:100], "total_bedrooms"] = np.nan  # an export that drops 10%
    judged = drift.judge(broken, profile, reference)
    assert judged.drifted_features == ["total_bedrooms"]
    found = judged.features["total_bedrooms"]
    assert found.missing_rate_change.broken and not found.psi.broken
