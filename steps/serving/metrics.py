"""Prometheus metrics of the prediction API, shared by all its worker processes.

In: ``PROMETHEUS_MULTIPROC_DIR`` (``serve`` sets it to a fresh temp dir before any worker
imports prometheus-client: each process writes its samples there, and ``GET /metrics`` from
any worker adds them all up). Out: the metrics below, in Prometheus' text format.

- ``housing_api_requests_total{endpoint,method,status}``, ``housing_api_request_duration_
  seconds{endpoint}``: every HTTP request, by route template (``other`` for unknown paths);
- ``housing_api_predicted_rows_total``, ``housing_api_batch_rows`` (rows per predict call,
  after micro-batching), ``housing_api_prediction_dollars`` (predicted values: a cheap drift
  signal);
- ``housing_api_model_info{name,version}`` = 1 for the version each worker serves (0 once
  replaced), ``housing_api_model_loads_total{result}`` (``loaded``, ``failed``,
  ``unreachable``: the alias follower's outcomes);
- ``housing_api_inference_log_written_total``, ``housing_api_inference_log_dropped_total``:
  rows the inference log wrote, and dropped because its queue was full
  (``steps.serving.inferencelog``);
- ``housing_api_shadow_predictions_total{alias,version}``, ``housing_api_shadow_abs_difference_
  dollars{alias,version}``: rows the shadow model scored and how far its predictions were
  from the answers (``steps.serving.shadow``, scored in the inference log's writer);
  ``housing_api_canary_requests_total{alias,version}``: requests the shadow alias answered;
- ``housing_api_feature_psi{feature}``, ``housing_api_feature_missing_rate_change{feature}``,
  ``housing_api_feature_drift{feature}``, ``housing_api_drift_window_rows``: drift of the
  workers' recent rows (``steps.serving.driftgauge``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import cache, lru_cache
from typing import Any

import numpy as np

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
DOLLAR_BUCKETS = tuple(range(50_000, 550_001, 50_000))
DIFFERENCE_BUCKETS = (1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 200_000)


@cache
def instruments() -> dict[str, Any]:
    """Created on first use, after ``MULTIPROC_ENV`` is set (prometheus-client picks its
    storage when the metric is made)."""
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "requests": Counter(
            "housing_api_requests", "HTTP requests", ["endpoint", "method", "status"]
        ),
        "latency": Histogram(
            "housing_api_request_duration_seconds",
            "Time from request to response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
        ),
        "rows": Counter("housing_api_predicted_rows", "Rows predicted"),
        "batch": Histogram(
            "housing_api_batch_rows", "Rows per predict call (after batching)", buckets=ROW_BUCKETS
        ),
        "dollars": Histogram(
            "housing_api_prediction_dollars", "Predicted values", buckets=DOLLAR_BUCKETS
        ),
        "model": Gauge(
            "housing_api_model_info",
            "1 for the model version this worker serves",
            ["name", "version"],
            multiprocess_mode="liveall",
        ),
        "loads": Counter("housing_api_model_loads", "Alias follower outcomes", ["result"]),
        "log_dropped": Counter(
            "housing_api_inference_log_dropped", "Inference log rows dropped (queue full)"
        ),
        "log_written": Counter("housing_api_inference_log_written", "Inference log rows written"),
        "shadow_rows": Counter(
            "housing_api_shadow_predictions",
            "Rows the shadow model scored",
            ["alias", "version"],
        ),
        "shadow_difference": Histogram(
            "housing_api_shadow_abs_difference_dollars",
            "Absolute difference between the shadow model's prediction and the answer",
            ["alias", "version"],
            buckets=DIFFERENCE_BUCKETS,
        ),
        "canary": Counter(
            "housing_api_canary_requests",
            "Requests answered by the shadow alias (canary)",
            ["alias", "version"],
        ),
        # drift gauges (steps.serving.driftgauge): the highest of the live workers' values
        "feature_psi": Gauge(
            "housing_api_feature_psi",
            "PSI of the recent rows against the reference data, per feature",
            ["feature"],
            multiprocess_mode="livemax",
        ),
        "feature_missing": Gauge(
            "housing_api_feature_missing_rate_change",
            "Missing-rate change of the recent rows against the reference data, per feature",
            ["feature"],
            multiprocess_mode="livemax",
        ),
        "feature_drift": Gauge(
            "housing_api_feature_drift",
            "1 when the feature's recent rows are over monitor's drift threshold",
            ["feature"],
            multiprocess_mode="livemax",
        ),
        "drift_rows": Gauge(
            "housing_api_drift_window_rows",
            "Recent rows the drift gauges judged",
            multiprocess_mode="livemax",
        ),
    }


def exposition() -> bytes:
    """All processes' metrics, in the text format (``GET /metrics``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:  # one process without a shared dir: its own samples
        from prometheus_client import REGISTRY

        registry = REGISTRY
    return generate_latest(registry)


# Predicted values observed per predict call: a large batch is sampled evenly (each observation
# costs a few microseconds; the distribution, not every value, is the drift signal).
MAX_OBSERVED_VALUES = 64


def observe_predictions(predictions: np.ndarray) -> None:
    m = instruments()
    m["rows"].inc(len(predictions))
    m["batch"].observe(len(predictions))
    step = max(1, len(predictions) // MAX_OBSERVED_VALUES)
    dollars = m["dollars"]
    for value in predictions[::step].tolist():
        dollars.observe(value)


_shown: dict[str, str] = {}  # model name -> the version this process last marked as served


def serving(name: str, version: str) -> None:
    """Mark ``version`` as the one this process serves (and the one before it as replaced)."""
    model = instruments()["model"]
    previous = _shown.get(name)
    if previous is not None and previous != version:
        model.labels(name, previous).set(0)
    model.labels(name, version).set(1)
    _shown[name] = version


def model_event(result: str) -> None:
    instruments()["loads"].labels(result).inc()


@lru_cache(maxsize=1024)
def _request_series(endpoint: str, method: str, status: str) -> tuple[Any, Any]:
    # labels() takes a lock and builds a key per call: worth caching on the hot path
    m = instruments()
    return m["requests"].labels(endpoint, method, status), m["latency"].labels(endpoint)


def record_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    """Count one answered HTTP request and its latency under its route template."""
    count, latency = _request_series(endpoint, method, str(status))
    count.inc()
    latency.observe(seconds)


class RequestMetrics:
    """Pure ASGI middleware: count and time every HTTP request by its route template."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_see(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            record_request(endpoint, scope["method"], status, time.perf_counter() - started)


def observe_shadow(alias: str, version: str, shadow: np.ndarray, answered: np.ndarray) -> None:
    """Rows a shadow version scored, and its distance to the answers (sampled like
    ``observe_predictions``); NaN (a shadow that failed) is not a distance."""
    m = instruments()
    m["shadow_rows"].labels(alias, version).inc(len(shadow))
    difference = np.abs(shadow - answered)
    step = max(1, len(difference) // MAX_OBSERVED_VALUES)
    series = m["shadow_difference"].labels(alias, version)
    for value in difference[::step].tolist():
        if value == value:
            series.observe(value)


@lru_cache(maxsize=64)
def _canary_series(alias: str, version: str) -> Any:
    return instruments()["canary"].labels(alias, version)


def canary_request(alias: str, version: str) -> None:
    """One request the shadow alias answered (on the request path: a cached series)."""
    _canary_series(alias, version).inc()


def inference_log_dropped(rows: int) -> None:
    """Rows the inference log dropped: its queue was full (``steps.serving.inferencelog``)."""
    instruments()["log_dropped"].inc(rows)


def inference_log_written(rows: int) -> None:
    """Rows the inference log wrote to Parquet."""
    instruments()["log_written"].inc(rows)


def feature_drift(feature: str, psi: float, missing_change: float, drifted: bool) -> None:
    """One feature's drift over a worker's recent rows (``steps.serving.driftgauge``)."""
    m = instruments()
    m["feature_psi"].labels(feature).set(psi)
    m["feature_missing"].labels(feature).set(missing_change)
    m["feature_drift"].labels(feature).set(1.0 if drifted else 0.0)


def drift_window(rows: int) -> None:
    instruments()["drift_rows"].set(rows)
