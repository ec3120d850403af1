"""serve's inference log (steps.serving.inferencelog): the schema, rotation, rename on close,
a full queue that drops and counts, sampling, and the app writing it under the id it answers
in ``x-request-id``. Real Parquet files in a temp dir, read back with pandas."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from steps import config
from steps.serving import api, metrics
from steps.serving.inferencelog import (
    InferenceLog,
    InferenceLogError,
    Limits,
    check_settings,
    open_log,
    request_id,
)
from steps.serving.rowschema import HousingRow
from tests.support import v2_request
from tests.unit.serving.app import MAX_BODY, MAX_ROWS, REF, good_row

ROW = HousingRow(**good_row())
NO_BEDROOMS = HousingRow(**(good_row() | {"total_bedrooms": None}))
# A writer that never drains on its own: the test decides when (drain / close).
MANUAL = Limits(drain_interval_s=3600)


def record(log: InferenceLog, rid: str, rows: list[HousingRow]) -> None:
    predictions = np.arange(len(rows), dtype=np.float64) + 100_000.0
    log.record(rid, "/predict", config.MODEL_NAME, "7", rows, predictions)


def closed_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*/requests-*.parquet"))


def counter(name: str) -> float:
    from prometheus_client import REGISTRY

    metrics.instruments()  # registered on first use
    return REGISTRY.get_sample_value(name) or 0.0


# --- schema -------------------------------------------------------------------------------
def test_one_row_per_input_row_with_the_schema_pandas_reads(tmp_path):
    log = InferenceLog(tmp_path, model_alias="champion", limits=MANUAL)
    record(log, "req-1", [ROW, NO_BEDROOMS])
    record(log, "req-2", [ROW])
    log.close()
    df = pd.read_parquet(tmp_path).sort_values(["request_id", "row"], ignore_index=True)
    assert list(df.columns) == [
        "request_id",
        "row",
        "ts",
        "endpoint",
        "model_name",
        "model_version",
        "model_alias",
        *config.FEATURES,
        "prediction",
        "shadow_version",
        "shadow_prediction",
        "shadow_alias",
    ]
    assert df["request_id"].tolist() == ["req-1", "req-1", "req-2"]
    assert df["row"].tolist() == [0, 1, 0]
    assert df["prediction"].tolist() == [100_000.0, 100_001.0, 100_000.0]
    assert (df["model_name"] == config.MODEL_NAME).all() and (df["model_version"] == "7").all()
    assert (df["model_alias"] == "champion").all() and (df["endpoint"] == "/predict").all()
    assert df["total_bedrooms"].isna().tolist() == [False, True, False]
    assert df.loc[0, "median_income"] == ROW.median_income
    assert (df["ocean_proximity"] == "NEAR BAY").all()
    assert df[["shadow_version", "shadow_prediction", "shadow_alias"]].isna().all().all()
    dtypes = df.dtypes.astype(str).to_dict()
    assert dtypes["ts"] == "datetime64[us, UTC]"
    assert abs(pd.Timestamp.now(tz="UTC") - df["ts"].min()) < pd.Timedelta(minutes=1)
    assert dtypes["row"] == "int32"
    for column in (*config.NUMERIC_FEATURES, "prediction", "shadow_prediction"):
        assert dtypes[column] == "float64", column


def test_a_pinned_version_has_no_alias(tmp_path):
    log = InferenceLog(tmp_path, model_alias=None, limits=MANUAL)
    record(log, "r", [ROW])
    log.close()
    assert pd.read_parquet(tmp_path)["model_alias"].isna().all()


# --- files ----------------------------------------------------------------------------------
def test_files_rotate_by_rows_and_are_named_by_day_pid_time_and_seq(tmp_path):
    limits = Limits(row_group_rows=1, max_file_rows=3, drain_interval_s=3600)
    log = InferenceLog(tmp_path, limits=limits)
    for i in range(8):
        record(log, f"r{i}", [ROW])  # a row group each: files of 3, 3, and 2 at close
    log.drain()
    log.close()
    files = closed_files(tmp_path)
    assert [len(pd.read_parquet(f)) for f in files] == [3, 3, 2]
    pid = log.files.pid
    for seq, f in enumerate(files):
        day, name = f.parent.name, f.name
        assert pd.Timestamp(day).date() == pd.Timestamp.now(tz="UTC").date()
        assert name.startswith(f"requests-{pid}-") and name.endswith(f"-{seq:06d}.parquet")
    assert len(pd.read_parquet(tmp_path)) == 8


def test_many_requests_become_row_groups_of_the_set_size_without_a_row_lost(tmp_path):
    import pyarrow.parquet as pq

    log = InferenceLog(tmp_path, limits=Limits(row_group_rows=300, drain_interval_s=3600))
    for i in range(1_000):  # more than a conversion slice (inferencelog.CONVERT_REQUESTS)
        record(log, f"r{i}", [ROW])
    log.close()
    (only,) = closed_files(tmp_path)
    groups = pq.ParquetFile(only).metadata
    assert [groups.row_group(g).num_rows for g in range(groups.num_row_groups)] == [300] * 3 + [100]
    assert sorted(pd.read_parquet(only)["request_id"]) == sorted(f"r{i}" for i in range(1_000))


def test_a_file_is_closed_once_old_enough_without_close(tmp_path):
    log = InferenceLog(tmp_path, limits=Limits(max_file_seconds=0.2, drain_interval_s=0.02))
    try:
        record(log, "r", [ROW])
        deadline = time.monotonic() + 10
        while not closed_files(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(pd.read_parquet(tmp_path)) == 1
    finally:
        log.close()


def test_readers_see_closed_files_only_until_the_open_one_is_renamed(tmp_path):
    limits = Limits(row_group_rows=1, max_file_rows=2, drain_interval_s=3600)
    log = InferenceLog(tmp_path, limits=limits)
    record(log, "closed", [ROW, ROW])  # fills file 0: closed
    record(log, "open", [ROW])  # written to file 1, still open
    log.drain()
    hidden = list(tmp_path.glob("*/.requests-*.parquet.tmp"))
    assert len(hidden) == 1 and len(closed_files(tmp_path)) == 1
    assert set(pd.read_parquet(tmp_path)["request_id"]) == {"closed"}
    log.close()
    assert not list(tmp_path.glob("*/.*.tmp"))
    assert sorted(pd.read_parquet(tmp_path)["request_id"]) == ["closed", "closed", "open"]


def test_close_flushes_what_is_queued_and_is_idempotent(tmp_path):
    log = InferenceLog(tmp_path, limits=MANUAL)
    record(log, "r", [ROW, ROW, ROW])
    assert not closed_files(tmp_path)  # queued, not yet written
    log.close()
    log.close()
    assert len(pd.read_parquet(tmp_path)) == 3 and log.written_rows == 3
    assert not log._thread.is_alive()


# --- queue ----------------------------------------------------------------------------------
def test_a_full_queue_drops_and_counts_without_blocking(tmp_path):
    log = InferenceLog(tmp_path, limits=MANUAL, queue_size=2)
    dropped_before = counter("housing_api_inference_log_dropped_total")
    started = time.perf_counter()
    for i in range(5):
        record(log, f"r{i}", [ROW, ROW])  # 2 fit, 3 requests (6 rows) dropped
    assert time.perf_counter() - started < 0.5
    assert log.dropped_rows == 6
    assert counter("housing_api_inference_log_dropped_total") - dropped_before == 6
    written_before = counter("housing_api_inference_log_written_total")
    log.close()
    assert sorted(set(pd.read_parquet(tmp_path)["request_id"])) == ["r0", "r1"]
    assert counter("housing_api_inference_log_written_total") - written_before == 4


# --- sampling -------------------------------------------------------------------------------
def test_sampling_keeps_whole_requests_at_about_the_rate(tmp_path):
    random.seed(7)
    log = InferenceLog(tmp_path, sample_rate=0.25, limits=MANUAL)
    for i in range(400):
        record(log, f"r{i}", [ROW, ROW, ROW])
    log.close()
    per_request = pd.read_parquet(tmp_path).groupby("request_id")["row"].agg(sorted)
    assert 60 <= len(per_request) <= 140  # 100 expected
    assert all(rows == [0, 1, 2] for rows in per_request)


def test_no_log_when_off_or_never_sampled(tmp_path):
    assert open_log(None, 1.0, "champion") is None
    assert open_log(tmp_path, 0.0, "champion") is None


# --- settings and ids -------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_a_sample_rate_outside_0_1_is_refused(tmp_path, rate):
    with pytest.raises(InferenceLogError, match="--log-sample-rate"):
        check_settings(str(tmp_path), rate)


@pytest.mark.parametrize("off", ["", "none", "OFF"])
def test_the_off_switch(off):
    assert check_settings(off, 1.0) is None


def test_the_log_dir_is_created(tmp_path):
    assert check_settings(str(tmp_path / "a" / "b"), 0.5) == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()


def test_serve_refuses_a_bad_sample_rate_in_one_line_before_serving(tmp_path, monkeypatch):
    from steps import serve

    monkeypatch.setattr(serve, "run_server", lambda **_: pytest.fail("served"))
    result = CliRunner().invoke(serve.cli, ["--log-dir", str(tmp_path), "--log-sample-rate", "1.5"])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "--log-sample-rate" in result.output


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [("abc-123_X.y:z", True), ("", False), (None, False), ("a b", False), ("x" * 129, False)],
)
def test_request_ids_are_kept_when_sane_else_new(incoming, kept):
    rid = request_id(incoming)
    if kept:
        assert rid == incoming
    else:
        assert len(rid) == 32 and int(rid, 16) >= 0
        assert rid != request_id(incoming)


# --- the app ------------------------------------------------------------------------------
JSON = {"content-type": "application/json"}
PREDICTIONS = [
    ("/predict", lambda row: {"data": [row]}),
    ("/invocations", lambda row: {"dataframe_records": [row]}),
]


@pytest.mark.parametrize("lane", [True, False], ids=["hot-lane", "fastapi"])
def test_the_app_answers_x_request_id_and_logs_under_it(pipeline, tmp_path, lane):
    log = InferenceLog(tmp_path, model_alias="champion", limits=MANUAL)
    app = api.create_app(api.ServedModel(pipeline, REF), MAX_ROWS, MAX_BODY, inference_log=log)
    if not lane:
        app.hot_lane = None
    answered: dict[str, list[float]] = {}
    with TestClient(app) as client:
        for path, body in PREDICTIONS:
            for sent in ("client-id-1", None):
                headers = JSON | ({"x-request-id": sent} if sent else {})
                r = client.post(path, content=json.dumps(body(good_row())), headers=headers)
                assert r.status_code == 200
                rid = r.headers["x-request-id"]
                assert rid == sent if sent else len(rid) == 32
                answered[f"{path} {rid}"] = r.json()["predictions"]
        bad = client.post("/predict", json={"data": [{"bad": 1}]})
        assert bad.status_code == 422 and len(bad.headers["x-request-id"]) == 32
    # leaving the client shut the app down: the lifespan closed the log
    df = pd.read_parquet(tmp_path)
    logged = {
        f"{endpoint} {rid}": group["prediction"].tolist()
        for (endpoint, rid), group in df.groupby(["endpoint", "request_id"])
    }
    assert logged == answered
    assert (df["model_version"] == REF.version).all()


def test_v2_infer_answers_x_request_id_and_logs_under_it(pipeline, tmp_path):
    log = InferenceLog(tmp_path, limits=MANUAL)
    app = api.create_app(api.ServedModel(pipeline, REF), MAX_ROWS, MAX_BODY, inference_log=log)
    row = good_row()
    inputs = v2_request(pd.DataFrame([row]))["inputs"]
    with TestClient(app) as client:
        r = client.post(
            f"/v2/models/{REF.name}/infer", json={"inputs": inputs}, headers={"x-request-id": "v2"}
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == "v2"
    df = pd.read_parquet(tmp_path)
    assert df["request_id"].tolist() == ["v2"]
    assert df["endpoint"].tolist() == [api.V2_INFER_PATH]
    assert df["prediction"].tolist() == r.json()["outputs"][0]["data"]
