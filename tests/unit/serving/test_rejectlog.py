"""Rows the API rejected (steps.serving.rejectlog), written by the real app beside the
inference log: one row per bad row and reason, -1 for a body refused as a whole, under the
id the 422 answered; answered requests never land there."""

from __future__ import annotations

import json

import pandas as pd
from fastapi.testclient import TestClient

from steps.serving import api, rejectlog
from steps.serving.inferencelog import Limits
from tests.unit.serving.app import MAX_BODY, MAX_ROWS, REF, good_row


def test_rejected_rows_are_logged_with_their_position_and_field(pipeline, tmp_path):
    rejects = rejectlog.RejectLog(tmp_path / rejectlog.DIR_NAME, limits=Limits(3600))
    app = api.create_app(api.ServedModel(pipeline, REF), MAX_ROWS, MAX_BODY, rejects=rejects)
    rows = [good_row(), good_row() | {"ocean_proximity": "MARS"}, good_row()]
    with TestClient(app) as client:
        assert client.post("/predict", json={"data": [good_row()]}).status_code == 200
        bad = client.post("/predict", json={"data": rows}, headers={"x-request-id": "bad-1"})
        assert bad.status_code == 422 and bad.headers["x-request-id"] == "bad-1"
        body = json.dumps({"dataframe_records": [rows[1] | {"latitude": 99.0}]})
        sent = client.post(
            "/invocations", content=body, headers={"content-type": "application/json"}
        )
        assert sent.status_code == 422
        assert client.post("/predict", content=b"{not json").status_code == 422
    found = pd.read_parquet(tmp_path / rejectlog.DIR_NAME).sort_values(["ts", "reason"])
    assert found["row"].tolist() == [1, 0, 0, -1]
    assert found["request_id"].iloc[0] == "bad-1"
    assert found["endpoint"].tolist() == ["/predict", "/invocations", "/invocations", "/predict"]
    fields = [reason.split(":")[0] for reason in found["reason"]]
    assert fields[:3] == ["ocean_proximity", "latitude", "ocean_proximity"]
