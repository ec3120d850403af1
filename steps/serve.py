"""Online prediction API: raw housing rows in, dollar predictions out.

``python -m steps.serve`` loads the registered model version an alias names (default
``models:/CaliforniaHousingRegressor@champion``) from the MLflow registry at start-up and
serves it with FastAPI/uvicorn on 127.0.0.1:8000; every ``reload_interval`` seconds each
worker looks at the alias again and swaps a new version in once it has loaded
(``steps.follower``). Every prediction answer names its version (``x-model-version``).

* ``POST /predict`` ``{"data": [row, ...]}`` -> ``{"predictions": [...], "model_name",
  "model_version"}``; a row holds the nine raw feature columns of ``config.FEATURES``.
* ``POST /invocations``: MLflow's scoring protocol (``dataframe_split``,
  ``dataframe_records``, ``instances`` or ``inputs``) -> ``{"predictions": [...]}``, as
  ``mlflow models serve`` answers; the rows go through /predict's validation and batcher.
* ``GET /metrics``: Prometheus metrics of all workers (``steps.metrics``).
* ``GET /health`` and ``GET /ping`` (process up), ``GET /ready`` (model loaded, else 503),
  ``GET /version`` (name, version, run id, dataset md5, git commit from the version's tags),
  ``/docs``.

With API keys (``--api-keys-file`` / ``SERVE_API_KEYS``, ``steps.apikeys``) every endpoint but
the health probes and ``/docs`` answers 401 without a valid key.

Errors: invalid body -> 422 with field-level ``detail``; more rows than ``max_rows`` or a body
larger than ``max_body_bytes`` -> 413. Validation errors are never 500s.

The model is read with ``skops.io.load`` and the explicit ``models.SKOPS_TRUSTED_TYPES``, not
through ``mlflow.sklearn``: MLflow only loads sklearn models with
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``, a blanket opt-in this server does not need.

Why the request path looks the way it does (measured, see docs/api.md): a single-row
``Pipeline.predict`` costs ~1-2 ms, mostly fixed per-call overhead, so concurrent requests are
micro-batched into one predict call; the body is validated by pydantic-core straight from the
JSON bytes (no per-request FastAPI body machinery); OpenMP is limited to one thread because
spinning worker threads on a shared 2-core box cost far more than they save on tiny batches.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import click
import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from steps import apikeys, config, metrics, schema
from steps.follower import DEFAULT_RELOAD_INTERVAL_S, ModelFollower
from steps.loading import (
    DEFAULT_MODEL_URI,
    ModelLoadError,
    ModelRef,
    download_model,
    load_skops_pipeline,
    parse_registry_uri,
    resolve_model_version,
)
from steps.protocols import V2_OUTPUT, invocation_rows, v2_metadata, v2_rows

# --- defaults (the MLproject `serve` entry point and `make serve` mirror these) -------------
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Two processes measured ~1.35x the single-row throughput of one on the 2-core box.
DEFAULT_WORKERS = 2
DEFAULT_MAX_ROWS = 10_000
# A compact row is ~190 bytes of JSON: 4 MiB fits DEFAULT_MAX_ROWS rows, even pretty-printed.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

# Version tags written by the register step that /version reports.
WORKER_SETTINGS_ENV = "STEPS_SERVE_WORKER_SETTINGS"


# --- request / response schema --------------------------------------------------------------
def _bounded(name: str, description: str, example: float) -> Any:
    """A float field whose bounds come from the raw-table schema (one source of truth)."""
    col = schema.NUMERIC_BY_NAME[name]
    return Field(
        ge=col.minimum,
        le=col.maximum,
        description=description,
        examples=[example],
        **({"default": None} if col.nullable else {}),
    )


OceanProximity = Literal[*config.OCEAN_PROXIMITY_VALUES]


class HousingRow(BaseModel):
    """One census block group, the nine raw feature columns of housing.csv.

    Strict: numbers must be JSON numbers (not strings or booleans) and finite; unknown keys
    are rejected so a misspelt column cannot silently become a missing value.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    longitude: float = _bounded("longitude", "Degrees east (California).", -122.23)
    latitude: float = _bounded("latitude", "Degrees north (California).", 37.88)
    housing_median_age: float = _bounded("housing_median_age", "Median age, years.", 41.0)
    total_rooms: float = _bounded("total_rooms", "Rooms in the block group.", 880.0)
    total_bedrooms: float | None = _bounded(
        "total_bedrooms", "Bedrooms in the block group; null or omitted = unknown.", 129.0
    )
    population: float = _bounded("population", "People in the block group.", 322.0)
    households: float = _bounded("households", "Households in the block group.", 126.0)
    median_income: float = _bounded(
        "median_income", "Median household income, tens of thousands of dollars.", 8.3252
    )
    ocean_proximity: OceanProximity = Field(description="Location relative to the ocean.")


class PredictResponse(BaseModel):
    predictions: list[float] = Field(description="Predicted median house value, dollars.")
    model_name: str
    model_version: str


class VersionInfo(BaseModel):
    model_name: str
    model_version: str
    model_uri: str
    run_id: str | None
    dataset_dvc_md5: str | None
    git_commit: str | None
    test_rmse: str | None


def version_info(ref: ModelRef) -> VersionInfo:
    """What /version reports: the pinned version and the lineage its register step tagged."""
    return VersionInfo(
        model_name=ref.name,
        model_version=ref.version,
        model_uri=ref.uri,
        run_id=ref.tags.get(config.VERSION_TAG_TRAIN_RUN) or ref.run_id,
        dataset_dvc_md5=ref.tags.get(config.TAG_DVC_MD5),
        git_commit=ref.tags.get(config.VERSION_TAG_GIT_COMMIT),
        test_rmse=ref.tags.get(config.VERSION_TAG_TEST_RMSE),
    )


def request_model(max_rows: int) -> type[BaseModel]:
    """The POST /predict body model; ``max_rows`` is a runtime setting, hence a factory."""
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        data=(
            Annotated[list[HousingRow], Field(min_length=1, max_length=max_rows)],
            ...,
        ),
    )


# --- model loading ------------------------------------------------------------------------
@dataclass(frozen=True)
class ServedModel:
    """A loaded pipeline and the registry version it came from."""

    pipeline: Any
    ref: ModelRef


def tune_process_for_serving() -> None:
    """Per-process settings that keep request latency low and predictable.

    * One OpenMP/BLAS thread (HGB, LightGBM, numpy): on batches of a few rows thread
      start-up and spin-waiting cost more than they save, and fight the event loop for the
      two cores. threadpoolctl limits libraries already loaded, hence after the model.
    * ``gc.freeze()``: moves the ~1M objects of the imports and the model out of the
      collector's view, so full collections no longer walk them (they were p99 spikes).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    gc.collect()
    gc.freeze()


# --- prediction core ----------------------------------------------------------------------
_NUMERIC = list(config.NUMERIC_FEATURES)


def rows_to_frame(rows: Sequence[HousingRow]) -> pd.DataFrame:
    """Validated rows -> the raw-feature DataFrame the pipeline was trained on.

    Columns in ``config.FEATURES`` order, numerics float64 (None -> NaN), the category as
    pandas' str dtype: the dtypes ``pd.read_csv`` gives the training data. One array per
    column then one DataFrame call is ~2x cheaper than building from a 2-D array + assigning.
    """
    columns: dict[str, np.ndarray] = {
        name: np.array([getattr(r, name) for r in rows], dtype=np.float64) for name in _NUMERIC
    }
    columns[config.CATEGORICAL_FEATURE] = np.array([r.ocean_proximity for r in rows], dtype=object)
    return pd.DataFrame(columns, copy=False)


def predict_rows(pipeline: Any, rows: Sequence[HousingRow]) -> np.ndarray:
    """Dollar predictions for validated rows, float64, one per row."""
    return np.asarray(pipeline.predict(rows_to_frame(rows)), dtype=np.float64).reshape(-1)


class MicroBatcher:
    """Coalesce the rows of concurrent requests into one ``predict`` call.

    A request appends its rows and awaits a future; the first one in schedules a flush with
    ``call_soon``, which asyncio runs only after every callback already ready, i.e. after
    the other requests that arrived in the same event-loop tick have queued their rows.
    No timer, so a lone request never waits. Predict runs on the loop thread: it is
    CPU-bound and GIL-heavy, and while it runs new requests pile up for the next batch.
    Each request names the pipeline it started with: after a model swap, requests already
    in flight are still answered by the model their response will name.
    """

    def __init__(self, predict: Callable[[Any, Sequence[HousingRow]], np.ndarray]) -> None:
        self._predict = predict
        self._pending: list[tuple[Any, Sequence[HousingRow], asyncio.Future[np.ndarray]]] = []

    def submit(self, pipeline: Any, rows: Sequence[HousingRow]) -> Awaitable[np.ndarray]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((pipeline, rows, future))
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        groups: dict[int, list[tuple[Any, Sequence[HousingRow], asyncio.Future[np.ndarray]]]]
        groups = {}
        for item in pending:
            groups.setdefault(id(item[0]), []).append(item)
        for batch in groups.values():
            self._flush_group(batch)

    def _flush_group(
        self, batch: list[tuple[Any, Sequence[HousingRow], asyncio.Future[np.ndarray]]]
    ) -> None:
        if len(batch) == 1:
            self._run_one(*batch[0])
            return
        pipeline = batch[0][0]
        try:
            predictions = self._predict(pipeline, [row for _, rows, _ in batch for row in rows])
        except Exception:
            # Isolate the failure: rerun each request alone so only the culprit fails.
            for item in batch:
                self._run_one(*item)
            return
        start = 0
        for _, rows, future in batch:
            if not future.done():  # a cancelled (disconnected) request has no reader
                future.set_result(predictions[start : start + len(rows)])
            start += len(rows)

    def _run_one(
        self, pipeline: Any, rows: Sequence[HousingRow], future: asyncio.Future[np.ndarray]
    ) -> None:
        try:
            result = self._predict(pipeline, rows)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)


# --- HTTP layer ---------------------------------------------------------------------------
def error_detail(exc: ValidationError, root: str = "data") -> list[dict[str, Any]]:
    """pydantic errors -> FastAPI-style ``detail`` items that always serialise as JSON.

    ``loc`` is prefixed with "body" like FastAPI's own 422s. The offending ``input`` is echoed
    only when it is a JSON scalar: NaN/inf would break JSON encoding (the classic 500 of
    FastAPI's default handler) and echoing whole lists would return the request body.
    """
    detail = []
    for err in exc.errors(include_url=False, include_context=False):
        loc = list(err["loc"])
        if loc and loc[0] == "data":
            loc[0] = root  # /invocations names the field its client sent
        item: dict[str, Any] = {
            "type": err["type"],
            "loc": ["body", *loc],
            "msg": err["msg"],
        }
        value = err.get("input")
        if isinstance(value, float) and not math.isfinite(value):
            item["input"] = str(value)
        elif value is None or isinstance(value, str | int | float | bool):
            item["input"] = value
        detail.append(item)
    return detail


def json_response(
    payload: dict[str, Any], status_code: int = 200, served: ServedModel | None = None
) -> Response:
    """``served``: the model that made the answer, named in ``x-model-name`` and
    ``x-model-version`` whatever the protocol's body says (the alias may move under load)."""
    # json.dumps of plain lists/dicts is ~3x cheaper than FastAPI's jsonable_encoder path.
    headers = (
        {"x-model-name": served.ref.name, "x-model-version": served.ref.version}
        if served is not None
        else None
    )
    return Response(
        json.dumps(payload),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


class BodySizeLimit:
    """Pure ASGI middleware: 413 for bodies over ``max_bytes`` before the app reads them.

    A declared Content-Length is checked up front (the HTTP server never delivers more than
    it declares); a chunked body is buffered up to the limit and replayed.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if int(declared) > self.max_bytes:
                await self._reject(send)
                return
            await self.app(scope, receive, send)
            return
        if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            await self.app(scope, receive, send)
            return
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._reject(send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Callable) -> None:
        body = json.dumps({"detail": f"request body exceeds {self.max_bytes} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _install_openapi(app: FastAPI, request_schema: type[BaseModel]) -> None:
    """Document the request bodies that /predict and /invocations validate by hand.

    The endpoint reads raw bytes (so FastAPI does not parse and validate twice), hence
    FastAPI cannot infer the schema; add it, with its nested models, to the generated spec.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
        body = request_schema.model_json_schema(ref_template="#/components/schemas/{model}")
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        components.update(body.pop("$defs", {}))
        components["PredictRequest"] = body
        spec["paths"]["/predict"]["post"]["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}
            },
        }
        rows = {"type": "array", "items": {"$ref": "#/components/schemas/HousingRow"}}
        columns = {"type": "object", "additionalProperties": {"type": "array"}}
        formats = {
            "dataframe_split": {
                "type": "object",
                "properties": {
                    "columns": {"type": "array", "items": {"type": "string"}},
                    "data": {"type": "array", "items": {"type": "array"}},
                },
                "required": ["columns", "data"],
            },
            "dataframe_records": rows,
            "instances": {"anyOf": [rows, columns]},
            "inputs": {"anyOf": [rows, columns]},
        }
        spec["paths"]["/invocations"]["post"]["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"type": "object", "properties": {k: v}, "required": [k]}
                            for k, v in formats.items()
                        ]
                    }
                }
            },
        }
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    model: ServedModel | None,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    api_keys: apikeys.KeyStore | None = None,
) -> FastAPI:
    """The ASGI app serving ``model`` (None: not ready, /predict and /ready answer 503).
    ``app.state.model`` is what a follower swaps; ``app.state.follower`` (if any) is
    reported by /ready."""
    request_schema = request_model(max_rows)
    app = FastAPI(
        title="California housing price API",
        version="1.0",
        description="Median house value (dollars) of California census block groups.",
    )
    app.state.model = model
    app.state.follower = None
    if model is not None:
        metrics.serving(model.ref.name, model.ref.version)

    def predict_and_count(pipeline: Any, rows: Sequence[HousingRow]) -> np.ndarray:
        predictions = predict_rows(pipeline, rows)
        metrics.observe_predictions(predictions)
        return predictions

    batcher = MicroBatcher(predict_and_count)

    def not_ready() -> Response:
        return json_response({"detail": "model not loaded"}, 503)

    def rows_or_error(
        validate: Callable[[], Any],
        root: str = "data",
        respond: Callable[[int, Any], Response] = lambda status, detail: json_response(
            {"detail": detail}, status
        ),
    ) -> Any:
        """The validated rows, or the 413/422 answer: one validation path for every protocol
        (``respond`` shapes the error body the protocol's clients expect)."""
        try:
            return validate().data
        except ValidationError as exc:
            if any(e["type"] == "too_long" and e["loc"] == ("data",) for e in exc.errors()):
                return respond(413, f"too many rows: the maximum per request is {max_rows}")
            return respond(422, error_detail(exc, root))

    def v2_error(status: int, detail: Any) -> Response:
        # the Open Inference Protocol answers errors as {"error": "<message>"}
        if isinstance(detail, str):
            return json_response({"error": detail}, status)
        message = "; ".join(f"{'.'.join(map(str, d['loc'][1:]))}: {d['msg']}" for d in detail)
        return json_response({"error": message, "detail": detail}, 400)

    def v2_model(model_name: str) -> ServedModel | Response:
        served: ServedModel | None = app.state.model
        if served is None:
            return json_response({"error": "model not loaded"}, 503)
        if model_name != served.ref.name:
            return json_response({"error": f"unknown model {model_name!r}"}, 404)
        return served

    @app.get("/health", summary="Process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ping", summary="Process is up (MLflow scoring-server clients probe this)")
    async def ping() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/metrics",
        summary="Prometheus metrics of every worker (text format)",
        response_class=Response,
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)

    @app.get("/ready", summary="Model is loaded", responses={503: {"description": "Not ready"}})
    async def ready() -> Response:
        served: ServedModel | None = app.state.model
        if served is None:
            return json_response({"detail": "model not loaded"}, 503)
        return json_response(
            {
                "status": "ready",
                "model_name": served.ref.name,
                "model_version": served.ref.version,
                "reload": app.state.follower.status() if app.state.follower else None,
            }
        )

    @app.get("/version", response_model=VersionInfo, summary="Served model and its lineage")
    async def version() -> Response:
        served: ServedModel | None = app.state.model
        if served is None:
            return json_response({"detail": "model not loaded"}, 503)
        return json_response(version_info(served.ref).model_dump())

    @app.post(
        "/predict",
        response_model=PredictResponse,
        summary="Predict median house values for raw rows",
        responses={
            413: {"description": f"More than {max_rows} rows or more than {max_body_bytes} bytes"},
            422: {"description": "Invalid body; `detail` lists each bad field"},
            503: {"description": "Model not loaded"},
        },
    )
    async def predict(request: Request) -> Response:
        served: ServedModel | None = app.state.model
        if served is None:
            return not_ready()
        raw = await request.body()
        rows = rows_or_error(lambda: request_schema.model_validate_json(raw))
        if isinstance(rows, Response):
            return rows
        predictions = await batcher.submit(served.pipeline, rows)
        return json_response(
            {
                "predictions": predictions.tolist(),
                "model_name": served.ref.name,
                "model_version": served.ref.version,
            },
            served=served,
        )

    @app.post(
        "/invocations",
        summary="MLflow's scoring protocol, as `mlflow models serve` answers it",
        responses={
            413: {"description": f"More than {max_rows} rows or more than {max_body_bytes} bytes"},
            415: {"description": "Not application/json"},
            422: {"description": "Not one of MLflow's input formats, or invalid rows"},
            503: {"description": "Model not loaded"},
        },
    )
    async def invocations(request: Request) -> Response:
        served: ServedModel | None = app.state.model
        if served is None:
            return not_ready()
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            detail = f"send application/json (MLflow's JSON formats), not {content_type!r}"
            return json_response({"detail": detail}, 415)
        try:
            root, records = invocation_rows(json.loads(await request.body()))
        except (ValueError, RecursionError) as exc:  # bad JSON or none of the formats
            item = {"type": "invalid_payload", "loc": ["body"], "msg": str(exc)[:300]}
            return json_response({"detail": [item]}, 422)
        rows = rows_or_error(lambda: request_schema.model_validate({"data": records}), root)
        if isinstance(rows, Response):
            return rows
        predictions = await batcher.submit(served.pipeline, rows)
        return json_response({"predictions": predictions.tolist()}, served=served)

    # --- Open Inference Protocol (V2): KServe, Triton and MLServer clients ---------------------
    @app.get("/v2/health/live", summary="V2: process is up")
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="V2: model loaded", responses={503: {}})
    async def v2_ready() -> Response:
        ready = app.state.model is not None
        return json_response({"ready": ready}, 200 if ready else 503)

    @app.get("/v2/models/{model_name}", summary="V2: model metadata", responses={404: {}, 503: {}})
    async def v2_model_metadata(model_name: str) -> Response:
        served = v2_model(model_name)
        if isinstance(served, Response):
            return served
        return json_response(v2_metadata(served.ref.name, served.ref.version))

    @app.get("/v2/models/{model_name}/ready", summary="V2: model ready", responses={404: {}})
    async def v2_model_ready(model_name: str) -> Response:
        served = v2_model(model_name)
        if isinstance(served, Response):
            return served
        return json_response({"name": served.ref.name, "ready": True})

    @app.post(
        "/v2/models/{model_name}/infer",
        summary="V2: predict; one input tensor per raw column",
        responses={
            400: {"description": "Not a V2 request of our columns, or invalid values"},
            404: {"description": "Unknown model"},
            413: {"description": f"More than {max_rows} rows or more than {max_body_bytes} bytes"},
            503: {"description": "Model not loaded"},
        },
    )
    async def v2_infer(model_name: str, request: Request) -> Response:
        served = v2_model(model_name)
        if isinstance(served, Response):
            return served
        try:
            payload = json.loads(await request.body())
            records = v2_rows(payload)
        except (ValueError, RecursionError) as exc:  # bad JSON or not a V2 request
            return json_response({"error": str(exc)[:300]}, 400)
        rows = rows_or_error(
            lambda: request_schema.model_validate({"data": records}), "rows", v2_error
        )
        if isinstance(rows, Response):
            return rows
        predictions = (await batcher.submit(served.pipeline, rows)).tolist()
        answer: dict[str, Any] = {
            "model_name": served.ref.name,
            "model_version": served.ref.version,
            "outputs": [
                {
                    "name": V2_OUTPUT,
                    "datatype": "FP64",
                    "shape": [len(predictions)],
                    "data": predictions,
                }
            ],
        }
        if isinstance(payload.get("id"), str):
            answer["id"] = payload["id"]
        return json_response(answer, served=served)

    _install_openapi(app, request_schema)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    if api_keys is not None:  # before the body is read; the metrics count its 401s
        app.add_middleware(apikeys.APIKeyAuth, keys=api_keys)
    app.add_middleware(metrics.RequestMetrics)  # outermost: 413s from the limit count too
    return app


# --- processes ----------------------------------------------------------------------------
PROBE_ROW = HousingRow(
    **{
        name: field.examples[0]
        for name, field in HousingRow.model_fields.items()
        if field.examples is not None
    },
    ocean_proximity="NEAR BAY",
)


def load_checked(ref: ModelRef) -> Any:
    """Download and load a pinned version, and predict one row with it: a version that does
    not load or predict a finite number is never served (follower: never swapped in)."""
    with tempfile.TemporaryDirectory(prefix="serve-model-") as tmp:
        pipeline = load_skops_pipeline(download_model(ref, Path(tmp)))
    try:
        probe = predict_rows(pipeline, [PROBE_ROW])
    except Exception as exc:
        raise ModelLoadError(f"v{ref.version} cannot predict: {exc}") from exc
    if probe.shape != (1,) or not np.isfinite(probe).all():
        raise ModelLoadError(f"v{ref.version} predicts {probe!r} for a valid row")
    return pipeline


def follow(app: FastAPI, model_uri: str, interval_s: float) -> ModelFollower | None:
    """Start following ``model_uri``'s alias for ``app`` (None: a pinned version or 0 s)."""
    if interval_s <= 0 or parse_registry_uri(model_uri)[2] is None:
        return None

    def swap(pipeline: Any, ref: ModelRef) -> None:
        previous = app.state.model.ref.version
        app.state.model = ServedModel(pipeline, ref)  # one assignment: requests see old or new
        metrics.serving(ref.name, ref.version, previous)

    def report(event: str, ref: ModelRef | None, error: str | None) -> None:
        metrics.model_event(event)
        if event == "loaded" and ref is not None:
            click.echo(f"[serve] {model_uri} moved: now serving v{ref.version}", err=True)
        elif error:
            click.echo(f"[serve] still serving v{app.state.model.ref.version}: {error}", err=True)

    follower = ModelFollower(
        model_uri,
        app.state.model.ref,
        interval_s,
        resolve=resolve_model_version,
        load=load_checked,
        swap=swap,
        on_event=report,
    )
    follower.start()
    return follower


def serving_app(
    model: ServedModel, model_uri: str, reload_interval: float, max_rows: int, max_body_bytes: int
) -> FastAPI:
    """The app for ``model``, following ``model_uri`` every ``reload_interval`` seconds."""
    app = create_app(model, max_rows, max_body_bytes, apikeys.from_environment())
    app.state.follower = follow(app, model_uri, reload_interval)
    return app


def worker_app() -> FastAPI:
    """uvicorn app factory for ``--workers`` > 1: runs in each worker process.

    The parent already resolved, downloaded and test-loaded the model; a worker starts from
    that local copy, so all workers start on the same version. Each then follows the alias
    on its own (same registry, same interval), so they converge on the version it names.
    """
    settings = json.loads(os.environ[WORKER_SETTINGS_ENV])
    pipeline = load_skops_pipeline(Path(settings["model_dir"]))
    tune_process_for_serving()
    return serving_app(
        ServedModel(pipeline=pipeline, ref=ModelRef(**settings["ref"])),
        settings["model_uri"],
        settings["reload_interval"],
        settings["max_rows"],
        settings["max_body_bytes"],
    )


def run_server(
    model_uri: str,
    host: str,
    port: int,
    workers: int,
    max_rows: int,
    max_body_bytes: int,
    access_log: bool,
    reload_interval: float,
) -> None:
    """Load the model (errors surface here, before any port is bound), then serve."""
    import uvicorn

    with tempfile.TemporaryDirectory(prefix="serve-model-") as tmp:
        # every worker writes its samples here; /metrics in any of them adds them up
        os.environ[metrics.MULTIPROC_ENV] = str(Path(tmp) / "metrics")
        (Path(tmp) / "metrics").mkdir()
        ref = resolve_model_version(model_uri)
        model_dir = download_model(ref, Path(tmp))
        pipeline = load_skops_pipeline(model_dir)
        follows = f", following the alias every {reload_interval:g} s" if reload_interval else ""
        click.echo(
            f"[serve] {ref.name} v{ref.version} ({model_uri}) on http://{host}:{port}, "
            f"{workers} worker(s){follows}",
            err=True,
        )
        options = {"host": host, "port": port, "access_log": access_log, "log_level": "info"}
        if workers == 1:
            tune_process_for_serving()
            app = serving_app(
                ServedModel(pipeline, ref), model_uri, reload_interval, max_rows, max_body_bytes
            )
            uvicorn.run(app, **options)
            return
        del pipeline  # the parent only supervises
        os.environ[WORKER_SETTINGS_ENV] = json.dumps(
            {
                "model_dir": str(model_dir),
                "ref": asdict(ref),
                "model_uri": model_uri,
                "reload_interval": reload_interval,
                "max_rows": max_rows,
                "max_body_bytes": max_body_bytes,
            }
        )
        # Inherited by the workers before their OpenMP runtime starts.
        os.environ["OMP_NUM_THREADS"] = "1"
        uvicorn.run(f"{__spec__.name}:worker_app", factory=True, workers=workers, **options)


# --- command ------------------------------------------------------------------------------
@click.command(
    help="Serve a registered model over HTTP: POST /predict, GET /health /ready /version, /docs."
)
@click.option(
    "--model-uri",
    default=DEFAULT_MODEL_URI,
    show_default=True,
    help="models:/NAME@ALIAS or models:/NAME/VERSION",
)
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Interface to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=DEFAULT_WORKERS,
    show_default=True,
    help="Server processes, each with its own copy of the model.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_ROWS,
    show_default=True,
    help="Most rows per /predict request (more: 413).",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BODY_BYTES,
    show_default=True,
    help="Largest request body (larger: 413).",
)
@click.option("--access-log", type=bool, default=False, show_default=True)
@click.option(
    "--reload-interval",
    type=click.FloatRange(min=0),
    default=DEFAULT_RELOAD_INTERVAL_S,
    show_default=True,
    help="Seconds between checks of the alias; a moved alias is loaded and swapped in "
    "without a restart (0: serve the start-up version only).",
)
@click.option(
    "--api-keys-file",
    default="",
    envvar=apikeys.FILE_ENV,
    help="API keys, one a line: required on all but the health endpoints (docs/api.md).",
)
def cli(api_keys_file: str, **options: Any) -> None:
    import mlflow

    if api_keys_file:  # the workers inherit it
        os.environ[apikeys.FILE_ENV] = api_keys_file

    # mlflow draws a progress bar per downloaded file: noise in a server log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(config.tracking_uri())
    try:
        apikeys.from_environment()  # a bad key file fails here, before any port is bound
        run_server(**options)
    except (ModelLoadError, apikeys.KeyFileError) as exc:
        click.echo(f"error: serve: {exc}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    cli()
