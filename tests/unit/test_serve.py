"""The online API (steps.serving.api, steps.serving.rowschema, steps.serving.batching) and the
batch validation/IO
core (steps.predict).

The app is the real one (``create_app``) around a small real pipeline fitted on a sample of
housing.csv; FastAPI's TestClient drives it in-process. Nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from steps import config, predict
from steps.data import schema
from steps.infra.errors import StepError
from steps.serving import api, batching, rowschema
from steps.tracking import loading
from tests.support import demo_pipeline, housing_csv, housing_sample

MAX_ROWS = 50
MAX_BODY = 40_000
REF = loading.ModelRef(
    name=config.MODEL_NAME,
    version="7",
    uri=loading.DEFAULT_MODEL_URI,
    run_id="run-of-the-version",
    tags={
        "train_run_id": "train-run-123",
        "git_commit": "abc123",
        config.TAG_DVC_MD5: "md5-xyz",
        "test_rmse": "45000.0",
    },
)


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample() -> tuple[pd.DataFrame, np.ndarray]:
    return housing_sample(housing_csv(), n_rows=1_500, seed=1)


@pytest.fixture(scope="module")
def pipeline(sample):
    X, y = sample
    return demo_pipeline(X, y, n_estimators=40)


@pytest.fixture(scope="module")
def client(pipeline) -> TestClient:
    app = api.create_app(api.ServedModel(pipeline, REF), MAX_ROWS, MAX_BODY)
    with TestClient(app) as c:
        yield c


def records(X: pd.DataFrame) -> list[dict]:
    """DataFrame rows as JSON-ready dicts (NaN -> null)."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in X.to_dict("records")
    ]


def good_row() -> dict:
    return {
        "longitude": -122.23,
        "latitude": 37.88,
        "housing_median_age": 41.0,
        "total_rooms": 880.0,
        "total_bedrooms": 129.0,
        "population": 322.0,
        "households": 126.0,
        "median_income": 8.3252,
        "ocean_proximity": "NEAR BAY",
    }


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
def v2_request(X: pd.DataFrame, nested: bool = False) -> dict:
    """One tensor per column; ``nested``: MLServer's pandas codec ([[v], ...], shape [n, 1])."""
    inputs = []
    for column in X.columns:
        values = [None if isinstance(v, float) and math.isnan(v) else v for v in X[column]]
        numeric = column != config.CATEGORICAL_FEATURE
        inputs.append(
            {
                "name": column,
                "datatype": "FP64" if numeric else "BYTES",
                "shape": [len(values), 1] if nested else [len(values)],
                "data": [[v] for v in values] if nested else values,
            }
        )
    body = {"id": "req-1", "inputs": inputs}
    return {**body, "parameters": {"content_type": "pd"}} if nested else body


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


def test_raw_row_array_predicts_exactly_like_the_training_frame(pipeline, sample):
    """The API scores rows as a raw-value array, not a DataFrame: same numbers to the bit,
    missing bedrooms included."""
    X = sample[0].head(200)
    assert X["total_bedrooms"].isna().any()
    rows = [rowschema.HousingRow(**r) for r in records(X)]
    array = rowschema.rows_to_array(rows)
    assert array.shape == (200, len(config.FEATURES))
    np.testing.assert_array_equal(pipeline.predict(array), pipeline.predict(X))
    np.testing.assert_array_equal(
        batching.predict_rows(batching.scorer(pipeline), rows[:1]), pipeline.predict(X[:1])
    )


def test_raw_row_array_must_have_every_column(pipeline):
    with pytest.raises(ValueError, match="9 columns"):
        pipeline.predict(rowschema.rows_to_array([rowschema.PROBE_ROW])[:, :8])


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


# --- schema agreement ---------------------------------------------------------------------
def test_row_fields_and_bounds_come_from_config_and_schema():
    fields = rowschema.HousingRow.model_fields
    assert tuple(fields) == config.FEATURES
    for name in config.NUMERIC_FEATURES:
        col = schema.NUMERIC_BY_NAME[name]
        bounds = {type(m).__name__: m for m in fields[name].metadata}
        assert ("Ge" in bounds) == (col.minimum is not None)
        assert ("Le" in bounds) == (col.maximum is not None)
        assert fields[name].is_required() == (not col.nullable)


BATCH_CASES = [
    {},
    {"latitude": 50.0},
    {"longitude": -130.0},
    {"population": -1.0},
    {"total_bedrooms": None},
    {"total_bedrooms": -1.0},
    {"median_income": None},
    {"median_income": float("inf")},
    {"ocean_proximity": "MARS"},
    {"ocean_proximity": None},
    {"households": "many"},
]


@pytest.mark.parametrize("change", BATCH_CASES, ids=lambda c: ",".join(c) or "valid")
def test_batch_validation_agrees_with_the_api(change):
    """A row the API accepts is a row steps.predict accepts, and vice versa."""
    row = good_row() | change
    api_ok = True
    try:
        rowschema.HousingRow.model_validate_json(json.dumps(row))
    except ValueError:
        api_ok = False
    frame = pd.DataFrame([row])
    assert (predict.rejection_reasons(frame).iloc[0] == "") == api_ok


# --- micro-batching -----------------------------------------------------------------------
def test_microbatcher_gives_each_request_its_own_rows():
    calls: list[int] = []

    def fake_predict(pipeline, rows):  # a stand-in model: identity on a number per row
        calls.append(len(rows))
        return np.array([float(r) for r in rows])

    async def main():
        batcher = batching.MicroBatcher(fake_predict)
        requests = [[1], [2, 3], [4], [5, 6, 7]]
        return await asyncio.gather(*(batcher.submit("model", r) for r in requests))

    results = asyncio.run(main())
    assert [r.tolist() for r in results] == [[1.0], [2.0, 3.0], [4.0], [5.0, 6.0, 7.0]]
    assert calls == [7]  # one predict for the four concurrent requests


def test_microbatcher_isolates_a_failing_request():
    def picky_predict(pipeline, rows):
        if "bad" in rows:
            raise ValueError("bad row")
        return np.zeros(len(rows))

    async def main():
        batcher = batching.MicroBatcher(picky_predict)
        futures = [batcher.submit("m", ["ok"]), batcher.submit("m", ["bad"])]
        futures.append(batcher.submit("m", ["ok", "ok"]))
        return await asyncio.gather(*futures, return_exceptions=True)

    ok1, bad, ok2 = asyncio.run(main())
    assert ok1.tolist() == [0.0] and ok2.tolist() == [0.0, 0.0]
    assert isinstance(bad, ValueError)


def test_microbatcher_answers_each_request_with_the_model_it_started_with():
    """A swap while requests are queued: each is predicted by its own model, one batch each."""
    calls: list[tuple[str, int]] = []

    def predict(pipeline, rows):
        calls.append((pipeline, len(rows)))
        return np.array([1.0 if pipeline == "old" else 2.0] * len(rows))

    async def main():
        batcher = batching.MicroBatcher(predict)
        models = ["old", "old", "new", "old", "new"]
        return await asyncio.gather(*(batcher.submit(m, [0, 0]) for m in models))

    results = asyncio.run(main())
    assert [r.tolist() for r in results] == [[1.0] * 2, [1.0] * 2, [2.0] * 2, [1.0] * 2, [2.0] * 2]
    assert sorted(calls) == [("new", 4), ("old", 6)]


def test_microbatcher_answers_the_others_when_a_request_went_away():
    def predict(pipeline, rows):
        return np.array([float(r) for r in rows])

    async def main():
        batcher = batching.MicroBatcher(predict)
        gone = batcher.submit("m", [1])
        stays = [batcher.submit("m", [2]), batcher.submit("m", [3, 4])]
        gone.cancel()  # the client disconnected before the batch ran
        return await asyncio.wait_for(asyncio.gather(*stays), timeout=5)

    assert [r.tolist() for r in asyncio.run(main())] == [[2.0], [3.0, 4.0]]


def test_the_scorer_runs_a_pipelines_steps_and_skips_passthrough():
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 3)), rng.normal(size=50)
    pipeline = Pipeline(
        [("scale", StandardScaler()), ("skip", "passthrough"), ("fit", LinearRegression())]
    ).fit(X, y)
    np.testing.assert_array_equal(batching.scorer(pipeline)(X), pipeline.predict(X))
    model = LinearRegression().fit(X, y)  # not a Pipeline: its own predict
    np.testing.assert_array_equal(batching.scorer(model)(X), model.predict(X))


# --- model loading ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("models:/Name@champion", ("Name", None, "champion")),
        ("models:/Name/3", ("Name", "3", None)),
        ("models:/A@b@c", ("A@b", None, "c")),
    ],
)
def test_parse_registry_uri(uri, parsed):
    assert loading.parse_registry_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["runs:/abc/model", "models:/Name", "models:/Name/latest", "x"])
def test_parse_registry_uri_rejects_non_registry_uris(uri):
    with pytest.raises(loading.ModelLoadError, match="models:/NAME@ALIAS"):
        loading.parse_registry_uri(uri)


def test_skops_model_loads_with_the_code_trusted_types(tmp_path, pipeline, sample):
    import mlflow.sklearn

    from steps import models

    path = tmp_path / "model"
    mlflow.sklearn.save_model(
        pipeline,
        path,
        serialization_format="skops",
        skops_trusted_types=list(models.SKOPS_TRUSTED_TYPES),
    )
    loaded = loading.load_skops_pipeline(path)
    X = sample[0].head(20)
    np.testing.assert_array_equal(loaded.predict(X), pipeline.predict(X))
    with pytest.raises(loading.ModelLoadError, match="Untrusted types"):
        loading.load_skops_pipeline(path, trusted_types=())


def test_pickled_model_is_refused(tmp_path, pipeline):
    import mlflow.sklearn

    path = tmp_path / "model"
    mlflow.sklearn.save_model(pipeline, path, serialization_format="cloudpickle")
    with pytest.raises(loading.ModelLoadError, match="only skops is served"):
        loading.load_skops_pipeline(path)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(loading.ModelLoadError, match="no MLmodel"):
        loading.load_skops_pipeline(tmp_path)


# --- batch core (steps.predict) -----------------------------------------------------------
def test_split_valid_reports_every_reason_and_keeps_row_numbers(sample):
    df = sample[0].head(6).astype({"latitude": object}).reset_index(drop=True)
    df.loc[1, "latitude"] = "abc"
    df.loc[2, "ocean_proximity"] = "MARS"
    df.loc[3, ["population", "households"]] = [-1.0, np.nan]
    df.loc[4, "total_bedrooms"] = np.nan  # allowed
    valid, rejected = predict.split_valid(df)
    assert valid[predict.ROW_COLUMN].tolist() == [0, 4, 5]
    assert rejected[predict.ROW_COLUMN].tolist() == [1, 2, 3]
    assert rejected[predict.REASON_COLUMN].tolist() == [
        "latitude: not a number",
        "ocean_proximity: unknown value",
        "population: below 0; households: missing",
    ]
    assert valid["latitude"].dtype == np.float64


@pytest.mark.parametrize("jobs", [1, 3])
def test_predict_frame_in_chunks_equals_one_predict(pipeline, sample, jobs):
    valid, _ = predict.split_valid(sample[0].head(101))
    np.testing.assert_array_equal(
        predict.predict_frame(pipeline, valid, chunk_rows=10, progress=False, jobs=jobs),
        pipeline.predict(sample[0].head(101)),
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.csv", "csv"), ("a.CSV", "csv"), ("a.csv.gz", "csv"), ("s3://b/a.parquet", "parquet")],
)
def test_table_format(name, kind):
    assert predict.table_format(name) == kind


def test_table_format_rejects_unknown_extensions():
    with pytest.raises(StepError, match=r"expected \.csv or \.parquet"):
        predict.table_format("a.xlsx")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_then_read_round_trip(tmp_path, sample, suffix):
    df = sample[0].head(10)
    path = tmp_path / f"t{suffix}"
    predict.write_table(df, path)
    pd.testing.assert_frame_equal(predict.read_table(str(path)), df, check_dtype=False)
    assert len(predict.read_table(path.as_uri())) == 10


def test_read_table_errors_are_one_line(tmp_path):
    with pytest.raises(StepError, match="no such file"):
        predict.read_table(str(tmp_path / "missing.csv"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(StepError, match="cannot read as parquet") as exc:
        predict.read_table(str(tmp_path / "bad.parquet"))
    assert "\n" not in str(exc.value)
    (tmp_path / "cols.csv").write_text("longitude,latitude\n1,2\n")
    with pytest.raises(StepError, match=r"missing column.*housing_median_age"):
        predict.read_table(str(tmp_path / "cols.csv"))


def test_rejected_path():
    assert predict.rejected_path(Path("out/p.parquet")) == Path("out/p.rejected.csv")
    assert predict.rejected_path(Path("p.csv.gz")) == Path("p.rejected.csv")


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
