"""serve's app (steps.serving.api): probes, /predict, the hot lane, 422/413 answers,
metrics and the version header. The app is the real one; nothing of ours is mocked."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from steps import config
from steps.serving import api
from steps.tracking import loading
from tests.unit.serving.app import MAX_BODY, MAX_ROWS, REF, good_row, records


# --- probes -------------------------------------------------------------------------------
def test_health(client):
    assert client.get("/health").json() == {"status": "ok"}


def test_ready_reports_the_model(client):
    r = client.get("/ready")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ready",
        "model_name": config.MODEL_NAME,
        "model_version": "7",
        "reload": None,
    }


def test_version_comes_from_the_version_tags(client):
    assert client.get("/version").json() == {
        "model_name": config.MODEL_NAME,
        "model_version": "7",
        "model_uri": loading.DEFAULT_MODEL_URI,
        "run_id": "train-run-123",
        "dataset_dvc_md5": "md5-xyz",
        "git_commit": "abc123",
        "test_rmse": "45000.0",
    }


def test_without_a_model_not_ready_and_predict_503_but_healthy():
    with TestClient(api.create_app(None)) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/ready").status_code == 503
        assert c.get("/version").status_code == 503
        assert c.post("/predict", json={"data": [good_row()]}).status_code == 503
        invocation = {"dataframe_records": [good_row()]}
        assert c.post("/invocations", json=invocation).status_code == 503


def test_openapi_documents_the_request_schema(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/PredictRequest"}
    schemas = spec["components"]["schemas"]
    assert schemas["PredictRequest"]["properties"]["data"]["maxItems"] == MAX_ROWS
    row = schemas["HousingRow"]
    assert list(row["properties"]) == list(config.FEATURES)
    assert row["additionalProperties"] is False
    assert client.get("/docs").status_code == 200


# --- predictions --------------------------------------------------------------------------
def test_single_row_equals_pipeline_predict(client, pipeline):
    r = client.post("/predict", json={"data": [good_row()]})
    assert r.status_code == 200
    expected = pipeline.predict(pd.DataFrame([good_row()]))
    assert r.json() == {
        "predictions": expected.tolist(),
        "model_name": config.MODEL_NAME,
        "model_version": "7",
    }


def test_many_rows_with_missing_bedrooms_equal_pipeline_predict(client, pipeline, sample):
    X = sample[0].iloc[:MAX_ROWS].copy()
    X.loc[X.index[:5], "total_bedrooms"] = np.nan
    body = records(X)
    del body[5]["total_bedrooms"]  # omitted = null
    X.loc[X.index[5], "total_bedrooms"] = np.nan
    r = client.post("/predict", json={"data": body})
    assert r.status_code == 200
    assert r.json()["predictions"] == pipeline.predict(X).tolist()


def test_integers_are_accepted_for_floats(client, pipeline):
    row = good_row() | {"housing_median_age": 41, "total_rooms": 880}
    r = client.post("/predict", json={"data": [row]})
    assert r.status_code == 200
    assert r.json()["predictions"] == pipeline.predict(pd.DataFrame([good_row()])).tolist()


LANE_CASES = [
    ("/predict", "application/json", {"data": [good_row()]}),
    (
        "/predict",
        "application/json",
        {"data": [good_row(), {**good_row(), "total_bedrooms": None}]},
    ),
    ("/predict", "application/json", {"data": [{**good_row(), "latitude": "north"}]}),
    ("/predict", "application/json", {"data": [good_row()] * (MAX_ROWS + 1)}),
    ("/predict", "application/json", {"rows": []}),
    ("/invocations", "application/json", {"dataframe_records": [good_row()]}),
    ("/invocations", "application/json", {"instances": [{**good_row(), "population": -1}]}),
    ("/invocations", "text/csv", {"dataframe_records": [good_row()]}),
    ("/invocations", "application/json", {"neither": 1}),
]


@pytest.fixture(scope="module")
def without_lane(pipeline) -> TestClient:
    """The same app with api.HotLane taken out: POSTs reach the FastAPI routes."""
    app = api.create_app(api.ServedModel(pipeline, REF), MAX_ROWS, MAX_BODY)
    app.hot_lane = None
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize(("path", "content_type", "body"), LANE_CASES)
def test_hot_lane_answers_exactly_like_the_fastapi_route(
    client, without_lane, path, content_type, body
):
    """POST /predict and /invocations skip FastAPI's routing (api.HotLane); the routes behind
    it call the same handlers. Same status, body and model headers either way."""
    raw = json.dumps(body)
    headers = {"content-type": content_type}
    lane = client.post(path, content=raw, headers=headers)
    route = without_lane.post(path, content=raw, headers=headers)
    assert lane.status_code == route.status_code
    assert lane.json() == route.json()
    for name in ("content-type", "x-model-name", "x-model-version"):
        assert lane.headers.get(name) == route.headers.get(name)


# --- 422 ----------------------------------------------------------------------------------
def _without(key: str) -> dict:
    row = good_row()
    del row[key]
    return row


# (test id, change to a good row, field the 422 must name, pydantic error type)
BAD_ROWS = [
    ("string", {"latitude": "north"}, "latitude", "float_type"),
    ("numeric-string", {"total_rooms": "880"}, "total_rooms", "float_type"),
    ("bool", {"population": True}, "population", "float_type"),
    ("nan-string", {"median_income": "NaN"}, "median_income", "float_type"),
    ("inf-string", {"median_income": "inf"}, "median_income", "float_type"),
    ("enum", {"ocean_proximity": "MARS"}, "ocean_proximity", "literal_error"),
    ("null-enum", {"ocean_proximity": None}, "ocean_proximity", "literal_error"),
    ("extra-field", {"colour": "red"}, "colour", "extra_forbidden"),
    ("lat-range", {"latitude": 51.5}, "latitude", "less_than_equal"),
    ("lon-range", {"longitude": -0.1}, "longitude", "less_than_equal"),
    ("negative", {"households": -1}, "households", "greater_than_equal"),
    ("negative-nullable", {"total_bedrooms": -5}, "total_bedrooms", "greater_than_equal"),
    ("null-required", {"total_rooms": None}, "total_rooms", "float_type"),
]


@pytest.mark.parametrize(
    ("row", "field", "error_type"),
    [pytest.param(_without("latitude"), "latitude", "missing", id="missing-field")]
    + [pytest.param(good_row() | change, f, t, id=i) for i, change, f, t in BAD_ROWS],
)
def test_bad_field_is_422_naming_the_field(client, row, field, error_type):
    r = client.post("/predict", json={"data": [good_row(), row]})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert {"loc": ["body", "data", 1, field], "type": error_type} in [
        {"loc": d["loc"], "type": d["type"]} for d in detail
    ]
    assert all(d["msg"] for d in detail)


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        pytest.param(b'{"data": []}', ["body", "data"], id="empty-list"),
        pytest.param(b'{"data": {}}', ["body", "data"], id="not-a-list"),
        pytest.param(b"{}", ["body", "data"], id="no-data"),
        pytest.param(b'{"data": [], "x": 1}', ["body", "x"], id="extra-top-level"),
        pytest.param(b"[1, 2]", ["body"], id="not-an-object"),
        pytest.param(b'{"data": [', ["body"], id="invalid-json"),
        pytest.param(b"", ["body"], id="empty-body"),
    ],
)
def test_bad_body_is_422(client, raw, loc):
    r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert loc in [d["loc"] for d in r.json()["detail"]]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_json_numbers_are_422_not_500(client, token):
    body = json.dumps({"data": [good_row()]}).replace("8.3252", token)
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    (item,) = r.json()["detail"]
    assert item["loc"] == ["body", "data", 0, "median_income"]
    assert item["type"] == "finite_number"
    assert isinstance(item["input"], str)  # echoed as text: NaN is not JSON


def test_error_detail_never_echoes_the_whole_body(client):
    r = client.post("/predict", json={"data": "x" * 100})
    assert r.status_code == 422
    assert "input" in r.json()["detail"][0]  # a scalar string is echoed...
    r = client.post("/predict", json={"data": [[1, 2, 3]]})
    assert "input" not in r.json()["detail"][0]  # ...a list is not


# --- 413 ----------------------------------------------------------------------------------
def test_too_many_rows_is_413(client):
    r = client.post("/predict", json={"data": [good_row()] * (MAX_ROWS + 1)})
    assert r.status_code == 413
    assert str(MAX_ROWS) in r.json()["detail"]


def test_exactly_max_rows_is_fine(client):
    assert client.post("/predict", json={"data": [good_row()] * MAX_ROWS}).status_code == 200


def test_body_over_the_byte_limit_is_413(client):
    body = json.dumps({"data": [good_row()], "pad": " " * MAX_BODY})
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert str(MAX_BODY) in r.json()["detail"]


def test_chunked_body_over_the_byte_limit_is_413(client):
    def chunks():
        for _ in range(MAX_BODY // 1000 + 2):
            yield b" " * 1000

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_chunked_body_under_the_limit_is_served(client):
    body = json.dumps({"data": [good_row()]}).encode()
    r = client.post(
        "/predict",
        content=iter([body[:10], body[10:]]),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200


# --- metrics and versions -----------------------------------------------------------------
def sample_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text format (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_metrics_count_requests_rows_and_name_the_served_version(client, sample):
    before = client.get("/metrics").text
    rows = records(sample[0].head(3))
    assert client.post("/predict", json={"data": rows}).status_code == 200
    assert client.post("/predict", json={"data": [{"bad": 1}]}).status_code == 422
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text

    def grew(name: str, **labels: str) -> float:
        return sample_value(after, name, **labels) - sample_value(before, name, **labels)

    ok = {"endpoint": "/predict", "method": "POST"}
    assert grew("housing_api_requests_total", status="200", **ok) == 1
    assert grew("housing_api_requests_total", status="422", **ok) == 1
    assert grew("housing_api_request_duration_seconds_count", endpoint="/predict") == 2
    assert grew("housing_api_predicted_rows_total") == 3
    assert grew("housing_api_batch_rows_count") == 1
    assert grew("housing_api_prediction_dollars_count") == 3
    assert sample_value(after, "housing_api_model_info", version="7") == 1


def test_every_prediction_names_its_version_in_a_header(client, sample):
    row = records(sample[0].head(1))
    answers = [
        client.post("/predict", json={"data": row}),
        client.post("/invocations", json={"dataframe_records": row}),
    ]
    for r in answers:
        assert r.status_code == 200
        assert (r.headers["x-model-name"], r.headers["x-model-version"]) == (config.MODEL_NAME, "7")


def test_the_handlers_answer_without_fastapi(pipeline):
    """The protocol handlers are plain objects over the app's state: bytes in, an answer out."""
    from types import SimpleNamespace

    state = SimpleNamespace(model=api.ServedModel(pipeline, REF))
    handlers = api.Handlers(state, MAX_ROWS)
    body = json.dumps({"data": [good_row()]}).encode()
    status, payload, _ = asyncio.run(handlers.predict(body, "application/json"))
    assert status == 200
    assert json.loads(payload)["model_version"] == REF.version
    state.model = None  # what a follower would swap; None: not ready
    assert asyncio.run(handlers.predict(body, "application/json"))[0] == 503
    assert asyncio.run(handlers.v2_infer(REF.name, b"{}"))[0] == 503
