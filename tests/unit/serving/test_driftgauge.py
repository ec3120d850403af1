"""The drift gauges (steps.serving.driftgauge): real rows of housing.csv logged through a
real inference log, judged against the contract's profile of the file, on /metrics' gauges;
then the same rows with median_income x10: only that feature's gauge says drift."""

from __future__ import annotations

import numpy as np
import pandas as pd

from steps import config
from steps.data import contract, schema
from steps.serving import driftgauge, metrics
from steps.serving.inferencelog import InferenceLog, Limits
from steps.serving.rowschema import HousingRow
from tests.support import housing_csv


def gauge(name: str, feature: str | None = None) -> float:
    from prometheus_client import REGISTRY

    metrics.instruments()
    labels = {"feature": feature} if feature else {}
    return REGISTRY.get_sample_value(name, labels)


def log_rows(log: InferenceLog, frame: pd.DataFrame) -> None:
    values = frame.astype(object).where(frame.notna(), None).to_dict("records")
    rows = [HousingRow(**row) for row in values]
    for start in range(0, len(rows), 50):
        chunk = rows[start : start + 50]
        log.record(f"r{start}", "/predict", config.MODEL_NAME, "7", chunk, np.zeros(len(chunk)))
    log.drain(final=True)  # the rows become a table, handed to the gauge


def test_gauges_follow_the_recent_rows(tmp_path):
    table = schema.validate_raw(pd.read_csv(housing_csv()))
    profile = contract.profile(table)
    log = InferenceLog(tmp_path, limits=Limits(drain_interval_s=3600))
    watched = driftgauge.start(log, profile)
    watched.recent_rows = 600
    window = table.sample(600, random_state=8)[list(config.FEATURES)]
    log_rows(log, window)
    assert watched.judge() == 600
    assert gauge("housing_api_drift_window_rows") == 600
    for name in config.FEATURES:
        assert gauge("housing_api_feature_drift", name) == 0, name
        assert 0 <= gauge("housing_api_feature_psi", name) < 0.1
    log_rows(log, window.assign(median_income=window["median_income"] * 10))
    assert watched.judge() == 600 and watched.rows == 600  # the older rows dropped out
    drifted = [n for n in config.FEATURES if gauge("housing_api_feature_drift", n) == 1]
    assert drifted == ["median_income"]
    assert gauge("housing_api_feature_psi", "median_income") > 1
    watched.close()
    log.close()


def test_no_reference_no_gauge(tmp_path):
    log = InferenceLog(tmp_path, limits=Limits(drain_interval_s=3600))
    assert driftgauge.start(log, None) is None and log.on_table is None
    assert driftgauge.start(None, {"columns": {}}) is None
    log.close()
