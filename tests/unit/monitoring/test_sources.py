"""What monitor reads (steps.monitoring.sources): the window's bounds, the inference log's
rows in a window (real files written by the real log), feedback files, and a batch file as
predict writes it (its rejected rows beside it)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from steps import config
from steps.batch import localscore
from steps.infra.errors import StepError
from steps.monitoring import sources
from steps.serving.inferencelog import InferenceLog, Limits
from steps.serving.rowschema import HousingRow
from tests.unit.serving.app import good_row


def test_window_bounds():
    now = pd.Timestamp("2026-03-02T12:00:00Z")
    assert sources.window("", "", now) == (now - sources.DEFAULT_WINDOW, now)
    start, end = sources.window("2026-03-01T10:00", "2026-03-01T13:00+02:00")
    assert (start, end) == (pd.Timestamp("2026-03-01T10:00Z"), pd.Timestamp("2026-03-01T11:00Z"))
    with pytest.raises(StepError, match="is not before"):
        sources.window("2026-03-01T10:00", "2026-03-01T09:00")
    with pytest.raises(StepError, match="--since 'yesterday' is not an ISO-8601 time"):
        sources.window("yesterday", "")


def test_the_logs_rows_in_a_window(tmp_path):
    log = InferenceLog(tmp_path, limits=Limits(drain_interval_s=3600))
    row = HousingRow(**good_row())
    log.record("early", "/predict", config.MODEL_NAME, "3", [row, row], np.zeros(2))
    time.sleep(0.05)
    middle = pd.Timestamp.now(tz="UTC")
    time.sleep(0.05)
    log.record("late", "/predict", config.MODEL_NAME, "4", [row], np.ones(1))
    log.close()
    end = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=1)
    early = sources.read_log_window(tmp_path, middle - pd.Timedelta(hours=1), middle)
    late = sources.read_log_window(tmp_path, middle, end)
    assert early["request_id"].tolist() == ["early", "early"]
    assert late["request_id"].tolist() == ["late"] and late["model_version"].tolist() == ["4"]
    assert sources.read_log_window(tmp_path, end, end + pd.Timedelta(hours=1)).empty
    with pytest.raises(StepError, match="no such directory"):
        sources.read_log_window(tmp_path / "nope", middle, end)


def test_feedback_from_a_file_wins_over_the_logs(tmp_path):
    logged = tmp_path / "log" / "_feedback" / "2026-01-01"
    logged.mkdir(parents=True)
    pd.DataFrame(
        {
            "request_id": ["a"],
            "row": [0],
            "ts": [pd.Timestamp("2026-01-01", tz="UTC")],
            "actual": [1.0],
        }
    ).to_parquet(logged / "feedback-1-x-000000.parquet")
    extra = tmp_path / "more.csv"
    pd.DataFrame({"request_id": ["a"], "row": [0], "actual": [2.0]}).to_csv(extra, index=False)
    found = sources.read_feedback_files(tmp_path / "log", str(extra))
    assert found.sort_values("ts")["actual"].tolist() == [1.0, 2.0]
    pd.DataFrame({"request_id": ["a"]}).to_csv(extra, index=False)
    with pytest.raises(StepError, match="missing column"):
        sources.read_feedback_files(None, str(extra))


def test_a_batch_as_predict_writes_it(tmp_path, sample, pipeline):
    X, y = sample
    rows = X.head(30).assign(**{config.TARGET: y[:30]})
    out = tmp_path / "preds.parquet"
    valid = rows.assign(**{config.PREDICTION_COLUMN: pipeline.predict(X.head(30))})
    localscore.write_table(valid.assign(**{config.ROW_COLUMN: range(30)}), out)
    rejected = X.head(2).assign(
        **{
            config.ROW_COLUMN: [30, 31],
            config.REASON_COLUMN: [
                "latitude: not a number",
                "ocean_proximity: unknown value; latitude: above 42.1",
            ],
        }
    )
    localscore.write_table(rejected, localscore.rejected_path(out))
    batch = sources.read_batch(str(out))
    assert len(batch.rows) == 30 and batch.rejected == 2
    assert batch.reasons.to_dict() == {"latitude": 2, "ocean_proximity": 1}
    np.testing.assert_allclose(batch.rows["prediction"], valid[config.PREDICTION_COLUMN])
    np.testing.assert_allclose(batch.rows["actual"], y[:30])
