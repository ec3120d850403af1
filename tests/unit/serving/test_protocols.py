"""Other clients' protocols through the real app (steps.serving.protocols): MLflow's
/invocations and the Open Inference Protocol (V2)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from steps import config
from tests.support import v2_request
from tests.unit.serving.app import MAX_ROWS, REF, good_row, records


# --- MLflow's scoring protocol -------------------------------------------------------------
def invocation_bodies(X: pd.DataFrame) -> dict[str, dict]:
    """The same rows in each of MLflow's JSON input formats."""
    rows = records(X)
    columns = {c: [r[c] for r in rows] for c in X.columns}
    return {
        "dataframe_split": {"dataframe_split": X.to_dict(orient="split")},
        "dataframe_records": {"dataframe_records": rows},
        "instances": {"instances": rows},
        "inputs-columns": {"inputs": columns},
    }


@pytest.mark.parametrize(
    "form", ["dataframe_split", "dataframe_records", "instances", "inputs-columns"]
)
def test_invocations_accept_every_mlflow_format(client, pipeline, sample, form):
    X = sample[0].head(20).copy()
    X.loc[X.index[:3], "total_bedrooms"] = np.nan
    body = invocation_bodies(X)[form]
    # pandas' NaN travels as the bare token NaN, as MLflow's client sends it
    r = client.post(
        "/invocations",
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert list(r.json()) == ["predictions"]
    np.testing.assert_allclose(r.json()["predictions"], pipeline.predict(X), rtol=1e-12)


def test_invocations_validate_rows_like_predict(client):
    row = {**good_row(), "latitude": 99.0}
    r = client.post("/invocations", json={"dataframe_records": [good_row(), row]})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "dataframe_records", 1, "latitude"]
    predict_error = client.post("/predict", json={"data": [good_row(), row]}).json()["detail"]
    assert error["msg"] == predict_error[0]["msg"]
    too_many = {"dataframe_records": [good_row()] * (MAX_ROWS + 1)}
    assert client.post("/invocations", json=too_many).status_code == 413


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([good_row()], "JSON object"),
        ({"rows": [good_row()]}, "exactly one of"),
        ({"dataframe_records": [], "instances": []}, "exactly one of"),
        ({"dataframe_split": {"columns": ["longitude"]}}, "'data' list"),
        ({"dataframe_split": {"columns": ["a", "b"], "data": [[1]]}}, "needs 2 values"),
        ({"inputs": {"longitude": [1.0, 2.0], "latitude": [3.0]}}, "same length"),
        ({"dataframe_records": {"longitude": 1.0}}, "list of rows"),
        ({"instances": [good_row()], "params": {"x": 1}}, "no params"),
    ],
)
def test_invocations_bad_payload_is_422_naming_the_problem(client, body, message):
    r = client.post("/invocations", json=body)
    assert r.status_code == 422
    assert message in r.json()["detail"][0]["msg"]


def test_invocations_need_json(client):
    r = client.post("/invocations", content=b"a,b\n1,2\n", headers={"Content-Type": "text/csv"})
    assert r.status_code == 415
    assert "application/json" in r.json()["detail"]
    assert client.get("/ping").status_code == 200


# --- Open Inference Protocol (V2) ---------------------------------------------------------
@pytest.mark.parametrize("nested", [False, True])
def test_v2_infer_equals_pipeline_predict(client, pipeline, sample, nested):
    X = sample[0].head(12).copy()
    X.loc[X.index[:2], "total_bedrooms"] = np.nan
    r = client.post(f"/v2/models/{config.MODEL_NAME}/infer", json=v2_request(X, nested))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["model_version"], body["id"]) == (
        config.MODEL_NAME,
        REF.version,
        "req-1",
    )
    (output,) = body["outputs"]
    assert (output["datatype"], output["shape"]) == ("FP64", [12])
    np.testing.assert_allclose(output["data"], pipeline.predict(X), rtol=1e-12)


def test_v2_metadata_and_health(client):
    meta = client.get(f"/v2/models/{config.MODEL_NAME}").json()
    assert meta["versions"] == [REF.version]
    assert [i["name"] for i in meta["inputs"]] == list(config.FEATURES)
    types = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert types[config.CATEGORICAL_FEATURE] == "BYTES"
    assert {types[c] for c in config.NUMERIC_FEATURES} == {"FP64"}
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{config.MODEL_NAME}/ready").status_code == 200
    unknown = client.get("/v2/models/other")
    assert unknown.status_code == 404
    assert "other" in unknown.json()["error"]


def test_v2_errors_name_the_problem(client, sample):
    # the protocol's own published example request, for a model that is not ours
    published = {
        "id": "42",
        "inputs": [
            {"name": "input0", "shape": [2, 2], "datatype": "UINT32", "data": [1, 2, 3, 4]},
            {"name": "input1", "shape": [3], "datatype": "BOOL", "data": [True]},
        ],
        "outputs": [{"name": "output0"}],
    }
    url = f"/v2/models/{config.MODEL_NAME}/infer"
    r = client.post(url, json=published)
    assert r.status_code == 400
    assert "input0" in r.json()["error"] and "shape" in r.json()["error"]
    X = sample[0].head(2).copy()
    bad = v2_request(X)
    bad["inputs"][1]["data"][1] = 99.0  # latitude of the second row
    r = client.post(url, json=bad)
    assert r.status_code == 400
    assert r.json()["error"].startswith("rows.1.latitude: Input should be less than or equal")
    wrong_type = v2_request(X)
    wrong_type["inputs"][-1]["datatype"] = "FP64"
    assert "expected BYTES" in client.post(url, json=wrong_type).json()["error"]
    too_many = v2_request(sample[0].head(MAX_ROWS + 1))
    assert client.post(url, json=too_many).status_code == 413
