"""serve's processes: the model loaded and checked, the app made and tuned for latency in each
process, its alias followed, and uvicorn run with one or more workers.

In: the model URI (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), where to bind, the
number of workers, the app's limits, the reload interval, the inference log's directory
(None: off) and sample rate, and the shadow alias (None: off) with its canary percentage;
``MLFLOW_TRACKING_URI`` and the API keys (``steps.serving.apikeys``) from the environment.
Out: a running server (it returns when uvicorn stops); a model that does not resolve, load
or predict is a ``ModelLoadError`` before any port is bound.
Written: nothing to MLflow. Environment for the workers: ``STEPS_SERVE_WORKER_SETTINGS``
(the parent's local model copy and the app's settings), the metrics' multiprocess directory
(``steps.serving.metrics``) and ``OMP_NUM_THREADS=1``; one line per start and model swap on
stderr; each worker's inference log files (``steps.serving.inferencelog``), feedback
(``steps.serving.feedback``) and rejected rows (``steps.serving.rejectlog``); the drift of
the logged rows against the served version's reference data on /metrics
(``steps.serving.driftgauge``; the reference is looked up once, at start-up). The endpoints:
``steps.serving.api``; alias following: ``steps.serving.follower``.

Shadow (``--shadow-alias``): each worker follows ``models:/NAME@<shadow alias>`` with a
second follower, loading with the same checked skops loader; an alias that does not exist
(yet) is only a failed check: the worker serves the champion and picks the shadow up when
the alias appears. Scoring and canary: ``steps.serving.shadow``.
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

from steps.serving import apikeys, driftgauge, feedback, inferencelog, metrics, rejectlog
from steps.serving.api import ServedModel, create_app
from steps.serving.batching import predict_rows, scorer
from steps.serving.follower import ModelFollower
from steps.serving.rowschema import PROBE_ROW
from steps.tracking.loading import (
    ModelLoadError,
    ModelRef,
    download_model,
    load_skops_pipeline,
    parse_registry_uri,
    resolve_model_version,
)

WORKER_SETTINGS_ENV = "STEPS_SERVE_WORKER_SETTINGS"
# uvicorn's httptools protocol with one socket write per response (steps.serving.wire).
HTTP_PROTOCOL = "steps.serving.wire:OneWriteHttpToolsProtocol"
# uvicorn's supervisor kills a worker that does not answer its ping within this many seconds.
# A spawned worker answers only once it has imported this module (~2 s of CPU); on a loaded
# 2-core machine that took longer than uvicorn's 5 s default, and the supervisor killed and
# respawned starting workers in a loop, and killed serving ones mid-request.
WORKER_HEALTHCHECK_TIMEOUT_S = 60


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


def follow_shadow(
    app: FastAPI, model_uri: str, shadow_alias: str | None, interval_s: float
) -> ModelFollower | None:
    """Load ``shadow_alias``'s version of ``model_uri``'s model into ``app.state.shadow`` if
    the alias exists, and keep following it every ``interval_s`` (0: once). None: no shadow."""
    if not shadow_alias:
        return None
    uri = f"models:/{parse_registry_uri(model_uri)[0]}@{shadow_alias}"
    last_error: list[str | None] = [None]

    def swap(pipeline: Any, ref: ModelRef) -> None:
        app.state.shadow = ServedModel(pipeline, ref)  # one assignment, like the champion's
        gc.freeze()

    def report(event: str, ref: ModelRef | None, error: str | None) -> None:
        if event == "loaded" and ref is not None:
            click.echo(f"[serve] shadow {uri}: now v{ref.version}", err=True)
        elif error and error != last_error[0]:  # an absent alias: once, not every check
            click.echo(f"[serve] shadow {uri}: {error}", err=True)
        last_error[0] = error

    follower = ModelFollower(
        uri,
        None,
        interval_s,
        resolve=resolve_model_version,
        load=load_checked,
        swap=swap,
        on_event=report,
    )
    follower.check()
    if interval_s > 0:
        follower.start()
    return follower


def serving_app(
    model: ServedModel,
    model_uri: str,
    reload_interval: float,
    max_rows: int,
    max_body_bytes: int,
    log_dir: Path | None = None,
    log_sample_rate: float = inferencelog.DEFAULT_SAMPLE_RATE,
    drift_profile: dict | None = None,
    shadow_alias: str | None = None,
    canary_percent: int = 0,
    drift_interval: float = driftgauge.INTERVAL_S,
) -> FastAPI:
    """The app for ``model``, following ``model_uri`` every ``reload_interval`` seconds and
    logging its predictions under ``log_dir`` (None: not at all), this process's own files;
    the logged rows' drift against ``drift_profile`` (None: none) on /metrics, every
    ``drift_interval`` seconds;
    ``shadow_alias`` (None: none) followed the same way, scoring the logged requests and
    answering ``canary_percent`` % of them."""
    alias = parse_registry_uri(model_uri)[2]
    log = inferencelog.open_log(log_dir, log_sample_rate, alias)
    driftgauge.start(log, drift_profile, drift_interval)
    answers = feedback.open_feedback(log_dir, max_rows)
    rejects = rejectlog.open_rejects(log_dir)
    keys = apikeys.from_environment()
    app = create_app(
        model, max_rows, max_body_bytes, keys, log, answers, rejects, shadow_alias, canary_percent
    )
    app.state.follower = follow(app, model_uri, reload_interval)
    app.state.shadow_follower = follow_shadow(app, model_uri, shadow_alias, reload_interval)
    return app


def worker_app() -> FastAPI:
    """uvicorn app factory for ``--workers`` > 1: runs in each worker process.

    The parent already resolved, downloaded and test-loaded the model; a worker starts from
    that local copy, so all workers start on the same version. Each then follows the alias
    on its own (same registry, same interval), so they converge on the version it names.
    """
    settings = json.loads(os.environ[WORKER_SETTINGS_ENV])
    pipeline = load_skops_pipeline(Path(settings.pop("model_dir")))
    ref = ModelRef(**settings.pop("ref"))
    log_dir = settings.pop("log_dir")
    app = serving_app(
        ServedModel(pipeline=pipeline, ref=ref),
        log_dir=Path(log_dir) if log_dir else None,
        **settings,
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
    log_dir: Path | None = None,
    log_sample_rate: float = inferencelog.DEFAULT_SAMPLE_RATE,
    shadow_alias: str | None = None,
    canary_percent: int = 0,
    drift_interval: float = driftgauge.INTERVAL_S,
) -> None:
    """Load the model (errors surface here, before any port is bound), then serve;
    ``log_dir``: the inference log's checked directory (None: off); ``shadow_alias``
    (checked, None: off) and ``canary_percent``: see ``follow_shadow``; ``drift_interval``:
    seconds between the drift gauges' judgements (``steps.serving.driftgauge``)."""
    import uvicorn

    with tempfile.TemporaryDirectory(prefix="serve-model-") as tmp:
        # every worker writes its samples here; /metrics in any of them adds them up
        os.environ[metrics.MULTIPROC_ENV] = str(Path(tmp) / "metrics")
        (Path(tmp) / "metrics").mkdir()
        ref = resolve_model_version(model_uri)
        model_dir = download_model(ref, Path(tmp))
        pipeline = load_skops_pipeline(model_dir)
        profile = driftgauge.reference_profile(ref) if log_dir else None
        follows = f", following the alias every {reload_interval:g} s" if reload_interval else ""
        logs = f"; logging {log_sample_rate:g} of requests to {log_dir}" if log_dir else ""
        if shadow_alias:
            logs += f"; shadow @{shadow_alias}, answering {canary_percent}% of requests"
        click.echo(
            f"[serve] {ref.name} v{ref.version} ({model_uri}) on http://{host}:{port}, "
            f"{workers} worker(s){follows}{logs}",
            err=True,
        )
        options = {"host": host, "port": port, "access_log": access_log, "log_level": "info"}
        options["http"] = HTTP_PROTOCOL
        app_settings = {
            "model_uri": model_uri,
            "reload_interval": reload_interval,
            "max_rows": max_rows,
            "max_body_bytes": max_body_bytes,
            "log_sample_rate": log_sample_rate,
            "drift_profile": profile,
            "shadow_alias": shadow_alias,
            "canary_percent": canary_percent,
            "drift_interval": drift_interval,
        }
        if workers == 1:
            app = serving_app(ServedModel(pipeline, ref), log_dir=log_dir, **app_settings)
            tune_process_for_serving()
            uvicorn.run(app, **options)
            return
        del pipeline  # the parent only supervises
        os.environ[WORKER_SETTINGS_ENV] = json.dumps(
            {
                "model_dir": str(model_dir),
                "ref": asdict(ref),
                "log_dir": str(log_dir) if log_dir else "",
                **app_settings,
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
