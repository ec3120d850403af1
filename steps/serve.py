"""Entry point ``serve``: the online prediction API for a registered model, as processes.

``python -m steps.serve`` loads the registered model version an alias names (default
``models:/CaliforniaHousingRegressor@champion``) from the MLflow registry at start-up and
serves it with uvicorn on 127.0.0.1:8000 (``--workers`` processes); every ``reload_interval``
seconds each worker looks at the alias again and swaps a new version in once it has loaded
and scored a probe row (``steps.serving.follower``). The endpoints are
``steps.serving.api``'s: ``/predict``,
MLflow's ``/invocations``, the Open Inference Protocol's ``/v2/...``, ``/metrics``,
``/health``, ``/ping``, ``/ready``, ``/version``, ``/docs``; with API keys
(``--api-keys-file`` / ``SERVE_API_KEYS``, ``steps.serving.apikeys``) all but the health probes and
``/docs`` answer 401 without a valid key.

In: ``--model-uri``, ``--host``, ``--port``, ``--workers``, ``--max-rows``,
``--max-body-bytes``, ``--access-log``, ``--reload-interval``, ``--api-keys-file``;
``MLFLOW_TRACKING_URI``.
Out: an HTTP server (no MLflow run of its own beyond the one ``mlflow run`` makes); a model
that does not load is a one-line error and exit 1, before any port is bound.

The model is read with ``skops.io.load`` and the explicit ``models.SKOPS_TRUSTED_TYPES``
(``steps.tracking.loading``), not through ``mlflow.sklearn``: MLflow only loads sklearn models with
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``, a blanket opt-in this server does not need.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import numpy as np
from fastapi import FastAPI

from steps import config
from steps.serving import apikeys, metrics
from steps.serving.api import DEFAULT_MAX_BODY_BYTES, ServedModel, create_app
from steps.serving.batching import predict_rows, scorer
from steps.serving.follower import DEFAULT_RELOAD_INTERVAL_S, ModelFollower
from steps.serving.rowschema import DEFAULT_MAX_ROWS, PROBE_ROW
from steps.tracking.loading import (
    DEFAULT_MODEL_URI,
    ModelLoadError,
    ModelRef,
    download_model,
    load_skops_pipeline,
    parse_registry_uri,
    resolve_model_version,
)

# --- defaults (the MLproject `serve` entry point and `make serve` mirror these) -------------
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Two processes measured ~1.35x the single-row throughput of one on the 2-core box.
DEFAULT_WORKERS = 2

WORKER_SETTINGS_ENV = "STEPS_SERVE_WORKER_SETTINGS"
# uvicorn's httptools protocol with one socket write per response (steps.serving.wire).
HTTP_PROTOCOL = "steps.serving.wire:OneWriteHttpToolsProtocol"
# uvicorn's supervisor kills a worker that does not answer its ping within this many seconds.
# A spawned worker answers only once it has imported this module (~2 s of CPU); on a loaded
# 2-core machine that took longer than uvicorn's 5 s default, and the supervisor killed and
# respawned starting workers in a loop, and killed serving ones mid-request.
WORKER_HEALTHCHECK_TIMEOUT_S = 60


# --- processes ----------------------------------------------------------------------------
def tune_process_for_serving() -> None:
    """Per-process settings that keep request latency low and predictable.

    * One OpenMP/BLAS thread (HGB, LightGBM, numpy): on batches of a few rows thread
      start-up and spin-waiting cost more than they save, and fight the event loop for the
      two cores. threadpoolctl limits libraries already loaded, hence after the model.
    * ``gc.freeze()``: moves the ~1M objects of the imports and the model out of the
      collector's view, so full collections no longer walk them (they were p99 spikes).
      Called once the app exists: the follower's first registry look imports MLflow's store
      and SQLAlchemy, whose objects a later full collection walked otherwise (80-100 ms
      stalls).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    gc.collect()
    gc.freeze()


def load_checked(ref: ModelRef) -> Any:
    """Download and load a pinned version, and predict one row with it: a version that does
    not load or predict a finite number is never served (follower: never swapped in)."""
    with tempfile.TemporaryDirectory(prefix="serve-model-") as tmp:
        pipeline = load_skops_pipeline(download_model(ref, Path(tmp)))
    try:
        probe = predict_rows(scorer(pipeline), [PROBE_ROW])
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
        app.state.model = ServedModel(pipeline, ref)  # one assignment: requests see old or new
        gc.freeze()  # the new model's objects, as at start-up (a collection here would stall)

    def report(event: str, ref: ModelRef | None, error: str | None) -> None:
        metrics.model_event(event)
        if event == "loaded" and ref is not None:
            # after the load is counted: whoever sees the new version in /metrics sees its load
            metrics.serving(ref.name, ref.version)
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
    # The first look at the registry in a process sets up MLflow's client and store (~2 s of
    # CPU, most of it holding the GIL): done now, before the worker takes requests, it does
    # not stall the requests in flight 30 s later; it also catches an alias moved during start-up.
    follower.check()
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
    app = serving_app(
        ServedModel(pipeline=pipeline, ref=ModelRef(**settings["ref"])),
        settings["model_uri"],
        settings["reload_interval"],
        settings["max_rows"],
        settings["max_body_bytes"],
    )
    tune_process_for_serving()
    return app


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
        options["http"] = HTTP_PROTOCOL
        if workers == 1:
            app = serving_app(
                ServedModel(pipeline, ref), model_uri, reload_interval, max_rows, max_body_bytes
            )
            tune_process_for_serving()
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
        uvicorn.run(
            f"{__spec__.name}:worker_app",
            factory=True,
            workers=workers,
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_TIMEOUT_S,
            **options,
        )


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
