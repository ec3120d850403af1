"""POST /feedback (steps.serving.feedback) on the real app with a real inference log, its
request index and the feedback log in a temp dir: 200 writes one row per actual, 422 for a
wrong shape or count, 404 for an id never logged or past retention, and nothing written for
any of those. Two indexes on one directory stand for two workers."""

from __future__ import annotations

import json
import time

import pandas as pd
from fastapi.testclient import TestClient

from steps.serving import api, feedback
from steps.serving.inferencelog import InferenceLog, Limits
from steps.serving.requestindex import RequestIndex
from tests.unit.serving.app import MAX_BODY, MAX_ROWS, REF, good_row

FAST = Limits(drain_interval_s=0.02)


def app_on(pipeline, directory, retention_s: float = 3600.0):
    log = InferenceLog(directory, limits=FAST, index=RequestIndex(directory, retention_s))
    answers = feedback.Feedback(
        RequestIndex(directory, retention_s),  # another connection: as another worker's
        feedback.FeedbackLog(directory / feedback.DIR_NAME, limits=FAST),
        MAX_ROWS,
        index_wait_s=0.3,
    )
    return api.create_app(
        api.ServedModel(pipeline, REF), MAX_ROWS, MAX_BODY, inference_log=log, feedback=answers
    )


def predict(client: TestClient, rows: int, rid: str) -> None:
    body = json.dumps({"data": [good_row()] * rows})
    r = client.post("/predict", content=body, headers={"x-request-id": rid})
    assert r.status_code == 200


def test_feedback_for_a_logged_request_is_written_one_row_per_actual(pipeline, tmp_path):
    with TestClient(app_on(pipeline, tmp_path)) as client:
        predict(client, 2, "req-a")
        # asked at once: the index has it within a drain, found on the second look
        r = client.post("/feedback", json={"request_id": "req-a", "actuals": [150000, 2.5e5]})
        assert r.status_code == 200, r.text
        assert r.json() == {"request_id": "req-a", "rows": 2}
    written = pd.read_parquet(tmp_path / feedback.DIR_NAME)
    assert written["request_id"].tolist() == ["req-a", "req-a"]
    assert written["row"].tolist() == [0, 1]
    assert written["actual"].tolist() == [150000.0, 250000.0]
    assert str(written["ts"].dtype) == "datetime64[us, UTC]"
    # the requests themselves still read alone from the log directory
    assert set(pd.read_parquet(tmp_path).columns) >= {"prediction", "request_id"}


def test_wrong_shapes_counts_and_unknown_ids_write_nothing(pipeline, tmp_path):
    with TestClient(app_on(pipeline, tmp_path)) as client:
        predict(client, 3, "req-b")
        time.sleep(0.1)
        cases = [
            ({"request_id": "req-b"}, 422, "actuals"),
            ({"request_id": "req-b", "actuals": [1.0, 2.0]}, 422, "had 3 row(s); got 2"),
            ({"request_id": "req-b", "actuals": [1, 2, -3]}, 422, "greater than or equal"),
            ({"request_id": "req-b", "actuals": [1, 2, 3], "extra": 1}, 422, "extra"),
            ({"request_id": "bad id!", "actuals": [1, 2, 3]}, 422, "pattern"),
            ({"request_id": "never-answered", "actuals": [1, 2, 3]}, 404, "unknown request id"),
        ]
        for body, status, words in cases:
            r = client.post("/feedback", json=body)
            assert r.status_code == status, (body, r.text)
            assert words in r.text, (body, r.text)
        assert client.post("/feedback", content=b"{not json").status_code == 422
    assert (
        not (tmp_path / feedback.DIR_NAME).exists()
        or pd.read_parquet(tmp_path / feedback.DIR_NAME).empty
    )


def test_an_id_past_retention_is_404(pipeline, tmp_path):
    # written by a worker that keeps ids for an hour; judged by workers that keep them 60 s
    RequestIndex(tmp_path, retention_s=3600).add(
        [("old", time.time() - 61, 1), ("new", time.time() - 59, 1)]
    )
    assert RequestIndex(tmp_path, retention_s=60).rows_of("new") == 1  # another worker sees it
    with TestClient(app_on(pipeline, tmp_path, retention_s=60)) as client:
        r = client.post("/feedback", json={"request_id": "old", "actuals": [1.0]})
        assert r.status_code == 404 and "more than" in r.json()["detail"]
        assert (
            client.post("/feedback", json={"request_id": "new", "actuals": [1.0]}).status_code
            == 200
        )


def test_no_log_no_feedback(pipeline):
    app = api.create_app(api.ServedModel(pipeline, REF), MAX_ROWS, MAX_BODY)
    with TestClient(app) as client:
        r = client.post("/feedback", json={"request_id": "x", "actuals": [1.0]})
        assert r.status_code == 404
        assert "no inference log" in r.json()["detail"]


def test_writers_prune_ids_past_retention(tmp_path):
    RequestIndex(tmp_path, retention_s=60).add(
        [("old", time.time() - 61, 1), ("new", time.time(), 2)]
    )
    kept_long = RequestIndex(tmp_path, retention_s=3600)
    assert kept_long.rows_of("old") is None and kept_long.rows_of("new") == 2
