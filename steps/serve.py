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
``--max-body-bytes``, ``--access-log``, ``--reload-interval``, ``--api-keys-file``,
``--log-dir``, ``--log-sample-rate``, ``--shadow-alias``, ``--canary-percent``;
``MLFLOW_TRACKING_URI``.
Out: an HTTP server (no MLflow run of its own beyond the one ``mlflow run`` makes); a model
that does not load is a one-line error and exit 1, before any port is bound. The processes
(loading, workers, alias following): ``steps.serving.server``. Every prediction answer carries
an ``x-request-id``; the requests are logged, one Parquet row per input row, under
``--log-dir`` (default ``logs/inference``; ``''`` or ``none``: off), a ``--log-sample-rate``
share of them (``steps.serving.inferencelog``), with the rows the API rejects
(``steps.serving.rejectlog``) and the actuals clients send back to ``POST /feedback``
(``steps.serving.feedback``) beside them; the logged rows' drift per feature is on
``/metrics`` (``steps.serving.driftgauge``). A bad log setting is a one-line error and exit 1,
before any port is bound. ``--shadow-alias challenger``: the version that alias names scores
every logged request off the response path (the log's ``shadow_*`` columns and
``housing_api_shadow_*`` on ``/metrics``); ``--canary-percent N``: it answers N% of the
requests (chosen by request id), the answer naming its version (``steps.serving.shadow``).

The model is read with ``skops.io.load`` and the explicit ``models.SKOPS_TRUSTED_TYPES``
(``steps.tracking.loading``), not through ``mlflow.sklearn``: MLflow only loads sklearn models with
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``, a blanket opt-in this server does not need.
"""

from __future__ import annotations

import os
from typing import Any

import click

from steps import config
from steps.serving import apikeys, driftgauge, inferencelog, shadow
from steps.serving.api import DEFAULT_MAX_BODY_BYTES
from steps.serving.follower import DEFAULT_RELOAD_INTERVAL_S
from steps.serving.rowschema import DEFAULT_MAX_ROWS
from steps.serving.server import run_server
from steps.tracking.loading import DEFAULT_MODEL_URI, ModelLoadError, parse_registry_uri

# --- defaults (the MLproject `serve` entry point and `make serve` mirror these) -------------
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Two processes measured ~1.35x the single-row throughput of one on the 2-core box.
DEFAULT_WORKERS = 2


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
@click.option(
    "--log-dir",
    default=inferencelog.DEFAULT_LOG_DIR,
    show_default=True,
    help="Inference log directory: one Parquet row per predicted row ('' or none: no log).",
)
@click.option(
    "--log-sample-rate",
    type=float,
    default=inferencelog.DEFAULT_SAMPLE_RATE,
    show_default=True,
    help="Share of requests logged, 0 to 1 (1: every request; 0: none).",
)
@click.option(
    "--shadow-alias",
    default=shadow.DEFAULT_SHADOW_ALIAS,
    show_default=True,
    help="A second alias (e.g. challenger) whose version scores every logged request off "
    "the response path, followed like the served one ('': none).",
)
@click.option(
    "--canary-percent",
    type=click.IntRange(0, 100),
    default=shadow.DEFAULT_CANARY_PERCENT,
    show_default=True,
    help="Percent of requests (by request id) answered by the --shadow-alias version.",
)
@click.option(
    "--drift-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=driftgauge.INTERVAL_S,
    show_default=True,
    help="Seconds between judgements of the logged rows' drift (the gauges on /metrics).",
)
def cli(
    api_keys_file: str,
    log_dir: str,
    log_sample_rate: float,
    shadow_alias: str,
    canary_percent: int,
    **options: Any,
) -> None:
    import mlflow

    if api_keys_file:  # the workers inherit it
        os.environ[apikeys.FILE_ENV] = api_keys_file

    # mlflow draws a progress bar per downloaded file: noise in a server log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(config.tracking_uri())
    try:
        # a bad key file or log setting fails here, before any port is bound
        apikeys.from_environment()
        directory = inferencelog.check_settings(log_dir, log_sample_rate)
        served_alias = parse_registry_uri(options["model_uri"])[2]
        alias = shadow.check_settings(
            shadow_alias,
            canary_percent,
            served_alias,
            directory is not None and log_sample_rate > 0,
        )
        run_server(
            **options,
            log_dir=directory,
            log_sample_rate=log_sample_rate,
            shadow_alias=alias,
            canary_percent=canary_percent,
        )
    except (
        ModelLoadError,
        apikeys.KeyFileError,
        inferencelog.InferenceLogError,
        shadow.ShadowSettingsError,
    ) as exc:
        click.echo(f"error: serve: {exc}", err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    cli()
