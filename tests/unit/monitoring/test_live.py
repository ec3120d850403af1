"""Live accuracy (steps.monitoring.live): served rows joined with feedback on (request id,
row), the latest answer winning, and RMSE/MAE per served version against numpy's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steps import config
from steps.monitoring import live


def test_rmse_and_mae_per_version_with_the_latest_feedback(sample, pipeline):
    X, y = sample
    X, y = X.head(300), y[:300]
    predictions = pipeline.predict(X)
    served = X.assign(
        request_id=[f"r{i // 3}" for i in range(300)],  # 100 requests of 3 rows
        row=[i % 3 for i in range(300)],
        model_version=["3"] * 150 + ["4"] * 150,
        prediction=predictions,
    )
    answered = served.iloc[::2]  # feedback for every other row
    feedback = pd.DataFrame(
        {
            "request_id": answered["request_id"],
            "row": answered["row"],
            "actual": y[::2],
            "ts": pd.Timestamp("2026-01-02", tz="UTC"),
        }
    )
    stale = feedback.head(10).assign(actual=1.0, ts=pd.Timestamp("2026-01-01", tz="UTC"))
    joined = live.with_actuals(served, pd.concat([stale, feedback]))
    assert len(joined) == 300 and joined["actual"].notna().sum() == 150
    table = live.accuracy(joined)
    for version, part in ((str(v), slice(a, a + 150)) for v, a in ((3, 0), (4, 150))):
        known = np.zeros(300, bool)
        known[::2] = True
        mask = np.zeros(300, bool)
        mask[part] = True
        error = predictions[mask & known] - y[mask & known]
        assert table.loc[version, "rows"] == 150
        assert table.loc[version, "rows_with_actuals"] == 75
        assert np.isclose(table.loc[version, "rmse"], np.sqrt(np.mean(error**2)))
        assert np.isclose(table.loc[version, "mae"], np.mean(np.abs(error)))
    error = predictions[::2] - y[::2]
    assert np.isclose(table.loc["all", "rmse"], np.sqrt(np.mean(error**2)))
    assert set(served.columns) - set(joined.columns) == set()
    assert config.FEATURES[0] in joined.columns


def test_no_feedback_no_accuracy(sample, pipeline):
    X, _ = sample
    served = X.head(10).assign(
        request_id="r", row=range(10), model_version="3", prediction=pipeline.predict(X.head(10))
    )
    empty = pd.DataFrame(columns=list(live.FEEDBACK_COLUMNS))
    table = live.accuracy(live.with_actuals(served, empty))
    assert table.loc["3", "rows_with_actuals"] == 0 and np.isnan(table.loc["3", "rmse"])


def shadow_rows() -> pd.DataFrame:
    """Six logged rows answered by v1: four scored by shadow v2 (three with actuals), one
    by a failed shadow (no prediction), one before any shadow; actuals for rows 0-2 and 5."""
    return pd.DataFrame(
        {
            "request_id": ["a", "a", "b", "c", "d", "e"],
            "row": [0, 1, 0, 0, 0, 0],
            "model_version": ["1"] * 6,
            "prediction": [100.0, 200.0, 300.0, 400.0, 500.0, 600.0],
            "shadow_version": ["2", "2", "2", "2", "2", None],
            "shadow_prediction": [110.0, 190.0, 330.0, 400.0, np.nan, np.nan],
            live.ACTUAL_COLUMN: [100.0, 210.0, 320.0, np.nan, 450.0, 600.0],
        }
    )


def test_shadow_comparison_is_both_versions_on_the_same_rows():
    table = live.shadow_comparison(shadow_rows())
    assert list(table.index) == ["2"]
    row = table.loc["2"]
    assert row["answered_versions"] == "1"
    assert row["rows"] == 4  # the failed shadow's row and the unshadowed row are not compared
    assert row["mean_abs_difference"] == (10 + 10 + 30 + 0) / 4
    assert row["rows_with_actuals"] == 3
    # shadow errors 10, -20, 10; answered errors 0, -10, -20 on the same three rows
    assert row["shadow_rmse"] == pytest.approx(np.sqrt((100 + 400 + 100) / 3))
    assert row["answered_rmse"] == pytest.approx(np.sqrt((0 + 100 + 400) / 3))
    assert row["shadow_mae"] == pytest.approx(40 / 3)
    assert row["answered_mae"] == pytest.approx(10.0)


def test_no_shadow_rows_no_comparison():
    rows = shadow_rows()
    assert live.shadow_comparison(rows.drop(columns=["shadow_version"])).empty
    assert live.shadow_comparison(rows.assign(shadow_prediction=np.nan)).empty
    no_actuals = live.shadow_comparison(rows.drop(columns=[live.ACTUAL_COLUMN])).loc["2"]
    assert no_actuals["rows_with_actuals"] == 0 and np.isnan(no_actuals["shadow_rmse"])
