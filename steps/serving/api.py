"""The prediction API as an ASGI app: FastAPI for every endpoint, plus a lean lane for the
hot ones.

In: a ``ServedModel`` (a loaded pipeline and its registry version; None = not ready) and the
request limits. Out: ``create_app(...)``, the app uvicorn serves:

* ``POST /predict`` ``{"data": [row, ...]}`` -> ``{"predictions": [...], "model_name",
  "model_version"}``; ``POST /invocations`` (MLflow's scoring protocol, answered like
  ``mlflow models serve``); ``POST /v2/models/{name}/infer`` and the rest of the Open
  Inference Protocol (V2). Every protocol's rows go through the same validation
  (``steps.serving.rowschema``) and the same batcher (``steps.serving.batching``); every
  prediction answer
  names its model in ``x-model-name``/``x-model-version`` and its request in ``x-request-id``
  (the client's, if sane, else a new one), and with an inference log
  (``steps.serving.inferencelog``) its rows go there under that id. With a shadow alias
  (``steps.serving.shadow``) its version, ``state.shadow``, answers the canary share of
  request ids, and the log's writer scores the other requests' rows with it.
* ``POST /feedback`` ``{"request_id", "actuals"}``: the actual values of an answered
  request's rows, logged beside the inference log (``steps.serving.feedback``); rows
  that fail validation are logged too (``steps.serving.rejectlog``).
* ``GET /metrics`` (``steps.serving.metrics``), ``/health``, ``/ping``, ``/ready``, ``/version``,
  ``/docs``.

With API keys (``--api-keys-file`` / ``SERVE_API_KEYS``, ``steps.serving.apikeys``) every
endpoint but
the health probes and ``/docs`` answers 401 without a valid key, the hot lane included.

Errors: invalid body -> 422 with field-level ``detail`` (V2: 400 with ``error``); more rows
than ``max_rows`` or a body over ``max_body_bytes`` -> 413; no model -> 503. Never a 500 for
bad input.

Why two paths (measured, see docs/api.md): FastAPI's routing, its exception and exit-stack
middlewares and the Request object cost as much per single-row request as scoring the row.
``HousingAPI`` hands ``POST /predict`` and ``/invocations`` to ``HotLane`` before any of that:
it answers from the raw ASGI messages with the same handler functions the FastAPI routes
call. The routes stay for /docs and as the reference the tests compare the lane against.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from steps.serving import apikeys, metrics, rejectlog, shadow
from steps.serving.batching import MicroBatcher, Scorer, predict_rows, scorer
from steps.serving.feedback import Feedback
from steps.serving.inferencelog import REQUEST_ID_HEADER, InferenceLog, request_id
from steps.serving.protocols import V2_OUTPUT, invocation_rows, v2_metadata, v2_rows
from steps.serving.rejectlog import RejectLog
from steps.serving.rowschema import (
    DEFAULT_MAX_ROWS,
    HousingRow,
    PredictResponse,
    VersionInfo,
    error_detail,
    request_model,
    version_info,
)
from steps.tracking.loading import ModelRef

# A compact row is ~190 bytes of JSON: 4 MiB fits DEFAULT_MAX_ROWS rows, even pretty-printed.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

# (status, body, headers): what a handler answers, whichever path carries it.
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
JSON_HEADER = (b"content-type", b"application/json")
V2_INFER_PATH = "/v2/models/{model_name}/infer"


@dataclass(frozen=True)
class ServedModel:
    """A loaded pipeline, the registry version it came from, and its ``Scorer``: made once
    here, so every request of this version goes through the same function."""

    pipeline: Any
    ref: ModelRef
    score: Scorer = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "score", scorer(self.pipeline))


def answer(payload: dict[str, Any], status: int = 200, served: ServedModel | None = None) -> Answer:
    """A JSON answer; ``served``: the model that made it, named in ``x-model-name`` and
    ``x-model-version`` whatever the protocol's body says (the alias may move under load)."""
    # json.dumps of plain lists/dicts is ~3x cheaper than FastAPI's jsonable_encoder path.
    headers = [JSON_HEADER]
    if served is not None:
        headers += [
            (b"x-model-name", served.ref.name.encode()),
            (b"x-model-version", served.ref.version.encode()),
        ]
    return status, json.dumps(payload).encode(), headers


def with_request_id(reply: Answer, rid: str) -> Answer:
    """``reply`` with the request's id in ``x-request-id``."""
    status, body, headers = reply
    return status, body, [*headers, (REQUEST_ID_HEADER, rid.encode())]


def to_response(reply: Answer) -> Response:
    status, body, headers = reply
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


def json_response(payload: dict[str, Any], status: int = 200) -> Response:
    return to_response(answer(payload, status))


def header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class ClientGoneError(Exception):
    """The client disconnected before its body arrived: nobody to answer."""


async def read_body(scope: dict, receive: Callable, max_bytes: int) -> bytes | None:
    """The request body, or None when it is larger than ``max_bytes``: a declared
    Content-Length is checked before reading (the server never delivers more than it
    declares), a chunked body while it arrives."""
    declared = header(scope, b"content-length")
    if declared is not None and int(declared) > max_bytes:
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def too_large(max_bytes: int) -> Answer:
    return answer({"detail": f"request body exceeds {max_bytes} bytes"}, 413)


async def send_answer(send: Callable, reply: Answer) -> None:
    status, body, headers = reply
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Pure ASGI middleware: 413 for bodies over ``max_bytes`` before the app reads them.

    A body within a declared Content-Length passes straight through; a chunked one is read
    up to the limit and replayed to the app.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        chunked = (header(scope, b"transfer-encoding") or b"").lower() == b"chunked"
        if (declared is None and not chunked) or (
            declared is not None and int(declared) <= self.max_bytes
        ):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.max_bytes)
        except ClientGoneError:
            return
        if body is None:
            await send_answer(send, too_large(self.max_bytes))
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


# (body, content type, request id) -> answer
Handler = Callable[[bytes, str, str], Awaitable[Answer]]


class HotLane:
    """``POST`` to a path in ``handlers``, read, answered and counted straight from the ASGI
    messages with the handler its FastAPI route also calls, its id in ``x-request-id``. An
    unexpected exception is a logged 500, as Starlette's error middleware would answer it."""

    def __init__(self, handlers: dict[str, Handler], max_bytes: int) -> None:
        self.handlers = handlers
        self.max_bytes = max_bytes

    def handler_for(self, scope: dict) -> Handler | None:
        if scope["type"] == "http" and scope["method"] == "POST":
            return self.handlers.get(scope["path"])
        return None

    async def serve(self, handler: Handler, scope: dict, receive: Callable, send: Callable) -> None:
        started = time.perf_counter()
        path = scope["path"]
        rid = request_id(header(scope, REQUEST_ID_HEADER))
        try:
            reply = with_request_id(await self._answer(handler, scope, receive, rid), rid)
        except ClientGoneError:  # nginx's 499, "client closed request": nobody to answer
            metrics.record_request(path, "POST", 499, time.perf_counter() - started)
            return
        try:
            await send_answer(send, reply)
        finally:
            metrics.record_request(path, "POST", reply[0], time.perf_counter() - started)

    async def _answer(self, handler: Handler, scope: dict, receive: Callable, rid: str) -> Answer:
        body = await read_body(scope, receive, self.max_bytes)
        if body is None:
            return too_large(self.max_bytes)
        content_type = (header(scope, b"content-type") or b"").decode("latin-1")
        try:
            return await handler(body, content_type, rid)
        except Exception:
            logging.getLogger("uvicorn.error").exception("POST %s failed", scope["path"])
            return answer({"detail": "internal error"}, 500)


class HousingAPI(FastAPI):
    """FastAPI, except that the hot POST paths (``hot_lane``; None = off) skip Starlette's
    middleware stack and FastAPI's routing, and that with ``api_keys`` every request but the
    open ones (``steps.serving.apikeys``) needs a valid key first, whichever path answers it."""

    hot_lane: HotLane | None = None
    handlers: Handlers | None = None
    api_keys: apikeys.KeyStore | None = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.api_keys is not None and not apikeys.admits(scope, self.api_keys):
            started = time.perf_counter()
            await apikeys.refuse(send)
            hot = self.hot_lane is not None and scope["path"] in self.hot_lane.handlers
            endpoint = scope["path"] if hot else "other"  # not routed: no route template
            metrics.record_request(endpoint, scope["method"], 401, time.perf_counter() - started)
            return
        handler = self.hot_lane.handler_for(scope) if self.hot_lane is not None else None
        if handler is None:
            await super().__call__(scope, receive, send)
        else:
            await self.hot_lane.serve(handler, scope, receive, send)


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


def predict_and_count(score: Scorer, rows: Sequence[HousingRow]) -> np.ndarray:
    """Score the rows and count the predictions in the metrics."""
    predictions = predict_rows(score, rows)
    metrics.observe_predictions(predictions)
    return predictions


def detail_error(status: int, detail: Any) -> Answer:
    """An error the way /predict and /invocations answer it: ``{"detail": ...}``."""
    return answer({"detail": detail}, status)


def v2_error(status: int, detail: Any) -> Answer:
    """An error the way the Open Inference Protocol answers it: ``{"error": "<message>"}``."""
    if isinstance(detail, str):
        return answer({"error": detail}, status)
    message = "; ".join(f"{'.'.join(map(str, d['loc'][1:]))}: {d['msg']}" for d in detail)
    return answer({"error": message, "detail": detail}, 400)


class Handlers:
    """Every protocol's request handling, bytes in and an ``Answer`` out, over one app's state
    (``state.model``: the served model, swapped by a follower; None: not ready). The FastAPI
    routes and the hot lane both call these, so each protocol has one code path. Each
    prediction goes to ``inference_log`` (None: none) under the request id it is given (none:
    a new one)."""

    def __init__(
        self,
        state: Any,
        max_rows: int = DEFAULT_MAX_ROWS,
        inference_log: InferenceLog | None = None,
        feedback: Feedback | None = None,
        rejects: RejectLog | None = None,
        shadow_alias: str | None = None,
        canary_percent: int = 0,
    ) -> None:
        self.state = state
        self.shadow_alias = shadow_alias
        self.canary_percent = canary_percent if shadow_alias else 0
        self.inference_log = inference_log
        self.feedback_log = feedback
        self.rejects = rejects
        self.max_rows = max_rows
        self.request_schema = request_model(max_rows)
        self.batcher = MicroBatcher(predict_and_count)
        self.not_ready = answer({"detail": "model not loaded"}, 503)

    @property
    def served(self) -> ServedModel | None:
        return self.state.model

    def answering(self, rid: str) -> tuple[ServedModel | None, bool]:
        """(the model that answers request ``rid``, whether it is a canary): the shadow
        alias' version for the canary share of ids (``steps.serving.shadow``) once it is
        loaded, else the served model (None: not ready)."""
        served = self.state.model
        if self.canary_percent and served is not None:
            challenger = self.state.shadow
            if challenger is not None and shadow.answers_canary(rid, self.canary_percent):
                return challenger, True
        return served, False

    async def score(
        self,
        served: ServedModel,
        rows: list[HousingRow],
        rid: str,
        endpoint: str,
        canary: bool = False,
    ) -> np.ndarray:
        """The rows' predictions (micro-batched), logged under ``rid`` if there is a log,
        with the shadow model (if any) to score them off the response path."""
        predictions = await self.batcher.submit(served.score, rows)
        if canary:
            metrics.canary_request(self.shadow_alias or "", served.ref.version)
        if self.inference_log is not None:
            ref = served.ref
            job = None
            challenger = self.state.shadow if self.shadow_alias and not canary else None
            if challenger is not None:
                job = shadow.ShadowJob(self.shadow_alias, challenger)
            self.inference_log.record(
                rid or request_id(None),
                endpoint,
                ref.name,
                ref.version,
                rows,
                predictions,
                alias=self.shadow_alias if canary else None,
                shadow=job,
            )
        return predictions

    def rows_or_error(
        self,
        validate: Callable[[], Any],
        root: str = "data",
        respond: Callable[[int, Any], Answer] = detail_error,
        rid: str = "",
        endpoint: str = "",
    ) -> list[HousingRow] | Answer:
        """The validated rows, or the 413/422 answer: one validation path for every protocol
        (``respond`` shapes the error body the protocol's clients expect). A rejection goes
        to the rejected-rows log (if any) under ``rid``."""
        try:
            return validate().data
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False)
            if self.rejects is not None:
                self.rejects.record_rejected(rid, endpoint, rejectlog.reasons(errors))
            if any(e["type"] == "too_long" and e["loc"] == ("data",) for e in errors):
                return respond(413, f"too many rows: the maximum per request is {self.max_rows}")
            return respond(422, error_detail(exc, root))

    async def predict(self, raw: bytes, content_type: str, rid: str = "") -> Answer:
        """``POST /predict``: ``{"data": [row, ...]}`` → predictions with the model's name."""
        served, canary = self.answering(rid)
        if served is None:
            return self.not_ready
        rows = self.rows_or_error(
            lambda: self.request_schema.model_validate_json(raw), rid=rid, endpoint="/predict"
        )
        if isinstance(rows, tuple):
            return rows
        predictions = await self.score(served, rows, rid, "/predict", canary)
        reply = {
            "predictions": predictions.tolist(),
            "model_name": served.ref.name,
            "model_version": served.ref.version,
        }
        return answer(reply, served=served)

    async def invocations(self, raw: bytes, content_type: str, rid: str = "") -> Answer:
        """``POST /invocations``: MLflow's JSON input formats, answered as MLflow does."""
        served, canary = self.answering(rid)
        if served is None:
            return self.not_ready
        content_type = content_type.split(";")[0].strip().lower()
        if content_type != "application/json":
            detail = f"send application/json (MLflow's JSON formats), not {content_type!r}"
            return answer({"detail": detail}, 415)
        try:
            root, records = invocation_rows(json.loads(raw))
        except (ValueError, RecursionError) as exc:  # bad JSON or none of the formats
            item = {"type": "invalid_payload", "loc": ["body"], "msg": str(exc)[:300]}
            return answer({"detail": [item]}, 422)
        rows = self.rows_or_error(
            lambda: self.request_schema.model_validate({"data": records}),
            root,
            rid=rid,
            endpoint="/invocations",
        )
        if isinstance(rows, tuple):
            return rows
        predictions = await self.score(served, rows, rid, "/invocations", canary)
        return answer({"predictions": predictions.tolist()}, served=served)

    async def feedback(self, raw: bytes) -> Answer:
        """``POST /feedback``: a request's actual values (``steps.serving.feedback``)."""
        if self.feedback_log is None:
            # not a passing outage: this server is configured to take none (so not a 5xx)
            return answer({"detail": "no inference log (--log-dir none): no feedback"}, 404)
        status, payload = await self.feedback_log.answer(raw)
        return answer(payload, status)

    def v2_model(self, model_name: str, served: ServedModel | None = None) -> ServedModel | Answer:
        """The served model (or ``served``) if it is the one a V2 path names, else the
        503/404 answer."""
        served = served or self.served
        if served is None:
            return answer({"error": "model not loaded"}, 503)
        if model_name != served.ref.name:
            return answer({"error": f"unknown model {model_name!r}"}, 404)
        return served

    async def v2_infer(self, model_name: str, raw: bytes, rid: str = "") -> Answer:
        """``POST /v2/models/{name}/infer``: one input tensor per raw column."""
        answering, canary = self.answering(rid)
        served = self.v2_model(model_name, answering)
        if isinstance(served, tuple):
            return served
        try:
            payload = json.loads(raw)
            records = v2_rows(payload)
        except (ValueError, RecursionError) as exc:  # bad JSON or not a V2 request
            return answer({"error": str(exc)[:300]}, 400)
        rows = self.rows_or_error(
            lambda: self.request_schema.model_validate({"data": records}),
            "rows",
            v2_error,
            rid,
            V2_INFER_PATH,
        )
        if isinstance(rows, tuple):
            return rows
        predictions = (await self.score(served, rows, rid, V2_INFER_PATH, canary)).tolist()
        output = {"name": V2_OUTPUT, "datatype": "FP64", "shape": [len(predictions)]}
        reply: dict[str, Any] = {
            "model_name": served.ref.name,
            "model_version": served.ref.version,
            "outputs": [{**output, "data": predictions}],
        }
        if isinstance(payload.get("id"), str):
            reply["id"] = payload["id"]
        return answer(reply, served=served)


def shadow_status(app: HousingAPI, handlers: Handlers) -> dict[str, Any]:
    """/ready's view of the shadow alias: its version (None: not loaded yet), the canary
    share and its follower's status."""
    challenger = app.state.shadow
    follower = app.state.shadow_follower
    return {
        "alias": handlers.shadow_alias,
        "model_version": challenger.ref.version if challenger is not None else None,
        "canary_percent": handlers.canary_percent,
        "reload": follower.status() if follower else None,
    }


def add_probe_routes(app: HousingAPI, handlers: Handlers) -> None:
    """/health, /ping, /metrics, /ready, /version."""

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
        served = handlers.served
        if served is None:
            return to_response(handlers.not_ready)
        body = {
            "status": "ready",
            "model_name": served.ref.name,
            "model_version": served.ref.version,
            "reload": app.state.follower.status() if app.state.follower else None,
        }
        if handlers.shadow_alias:
            body["shadow"] = shadow_status(app, handlers)
        return json_response(body)

    @app.get("/version", response_model=VersionInfo, summary="Served model and its lineage")
    async def version() -> Response:
        served = handlers.served
        if served is None:
            return to_response(handlers.not_ready)
        return json_response(version_info(served.ref).model_dump())


def add_prediction_routes(app: HousingAPI, handlers: Handlers, too_big: str) -> None:
    """POST /predict and MLflow's POST /invocations."""

    @app.post(
        "/predict",
        response_model=PredictResponse,
        summary="Predict median house values for raw rows",
        responses={
            413: {"description": too_big},
            422: {"description": "Invalid body; `detail` lists each bad field"},
            503: {"description": "Model not loaded"},
        },
    )
    async def predict(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        rid = request_id(request.headers.get("x-request-id"))
        reply = await handlers.predict(await request.body(), content_type, rid)
        return to_response(with_request_id(reply, rid))

    @app.post(
        "/invocations",
        summary="MLflow's scoring protocol, as `mlflow models serve` answers it",
        responses={
            413: {"description": too_big},
            415: {"description": "Not application/json"},
            422: {"description": "Not one of MLflow's input formats, or invalid rows"},
            503: {"description": "Model not loaded"},
        },
    )
    async def invocations(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        rid = request_id(request.headers.get("x-request-id"))
        reply = await handlers.invocations(await request.body(), content_type, rid)
        return to_response(with_request_id(reply, rid))


def add_feedback_route(app: HousingAPI, handlers: Handlers) -> None:
    """POST /feedback: actual values for an answered request's rows."""

    @app.post(
        "/feedback",
        summary="Actual values for the rows of an answered request (by its x-request-id)",
        responses={
            404: {
                "description": "Unknown request id, answered longer ago than retention, "
                "or no inference log on this server"
            },
            422: {"description": "Not {request_id, actuals}, or not one actual per row"},
            503: {"description": "The feedback queue is full"},
        },
    )
    async def feedback(request: Request) -> Response:
        return to_response(await handlers.feedback(await request.body()))


def add_v2_routes(app: HousingAPI, handlers: Handlers, too_big: str) -> None:
    """The Open Inference Protocol (V2): KServe, Triton and MLServer clients."""

    @app.get("/v2/health/live", summary="V2: process is up")
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="V2: model loaded", responses={503: {}})
    async def v2_ready() -> Response:
        ready = handlers.served is not None
        return json_response({"ready": ready}, 200 if ready else 503)

    @app.get("/v2/models/{model_name}", summary="V2: model metadata", responses={404: {}, 503: {}})
    async def v2_model_metadata(model_name: str) -> Response:
        served = handlers.v2_model(model_name)
        if isinstance(served, tuple):
            return to_response(served)
        return json_response(v2_metadata(served.ref.name, served.ref.version))

    @app.get("/v2/models/{model_name}/ready", summary="V2: model ready", responses={404: {}})
    async def v2_model_ready(model_name: str) -> Response:
        served = handlers.v2_model(model_name)
        if isinstance(served, tuple):
            return to_response(served)
        return json_response({"name": served.ref.name, "ready": True})

    @app.post(
        V2_INFER_PATH,
        summary="V2: predict; one input tensor per raw column",
        responses={
            400: {"description": "Not a V2 request of our columns, or invalid values"},
            404: {"description": "Unknown model"},
            413: {"description": too_big},
            503: {"description": "Model not loaded"},
        },
    )
    async def v2_infer(model_name: str, request: Request) -> Response:
        rid = request_id(request.headers.get("x-request-id"))
        reply = await handlers.v2_infer(model_name, await request.body(), rid)
        return to_response(with_request_id(reply, rid))


def create_app(
    model: ServedModel | None,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    api_keys: apikeys.KeyStore | None = None,
    inference_log: InferenceLog | None = None,
    feedback: Feedback | None = None,
    rejects: RejectLog | None = None,
    shadow_alias: str | None = None,
    canary_percent: int = 0,
) -> HousingAPI:
    """The ASGI app serving ``model`` (None: not ready, predictions and /ready answer 503);
    ``api_keys``: the keys every request but the health probes and /docs must present;
    ``inference_log``: where predictions are logged (None: nowhere), closed (flushed) when
    the app shuts down. ``app.state.model`` is what a follower swaps; ``app.state.follower``
    (if any) is reported by /ready. ``shadow_alias`` (None: none): the alias whose version,
    ``app.state.shadow`` (swapped by its own follower, ``app.state.shadow_follower``), scores
    the logged requests in the log's writer and answers ``canary_percent`` % of requests.
    ``app.handlers``: the protocol handlers behind the routes."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if inference_log is not None:  # a worker's exit: its last rows reach a closed file
            inference_log.close()
        if feedback is not None:
            feedback.close()
        if rejects is not None:
            rejects.close()

    app = HousingAPI(
        title="California housing price API",
        version="1.0",
        description="Median house value (dollars) of California census block groups.",
        lifespan=lifespan,
    )
    app.state.model = model
    app.state.follower = None
    app.state.shadow = None
    app.state.shadow_follower = None
    app.api_keys = api_keys
    if model is not None:
        metrics.serving(model.ref.name, model.ref.version)
    handlers = Handlers(
        app.state, max_rows, inference_log, feedback, rejects, shadow_alias, canary_percent
    )
    app.handlers = handlers
    too_big = f"More than {max_rows} rows or more than {max_body_bytes} bytes"
    add_probe_routes(app, handlers)
    add_prediction_routes(app, handlers, too_big)
    add_v2_routes(app, handlers, too_big)
    add_feedback_route(app, handlers)
    _install_openapi(app, handlers.request_schema)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(metrics.RequestMetrics)  # 413s from the limit count too
    app.hot_lane = HotLane(
        {"/predict": handlers.predict, "/invocations": handlers.invocations}, max_body_bytes
    )
    return app
