"""Benchmark the prediction API against ``mlflow models serve`` and against the HTTP floor.

Starts three servers on loopback ports: ours (``steps.serve``), ``mlflow models serve`` on the
same registered version, and the floor, a FastAPI + uvicorn app with the same worker count that
only parses the same JSON body and answers a constant (``bench/json_floor.py``). Loads
each with ``wrk`` (8 connections, 10 s), alternating, with single-row and 1,000-row POSTs, and
times ``steps.predict`` on 1,000,000 rows resampled from housing.csv. Prints req/s, p50, p99,
p99.9 and the slowest request for each, our throughput as a share of the floor and as a
multiple of MLflow's, and the batch seconds; ``--json`` prints one JSON document instead.

    python bench/api_bench.py                       # temp tracking store + demo model
    python bench/api_bench.py --tracking-uri sqlite:////abs/mlflow.db --json
    python bench/api_bench.py --log-dir none       # ours without its inference log
    python bench/api_bench.py --shadow-alias challenger  # + ours with a shadow model

With ``--shadow-alias``, a fourth server, ours with that alias shadowing every logged request
(a second demo version registered under it), runs in the same alternation, and the report
gives its throughput as a share of ours without it: the shadow's cost, measured in one run.

Needs ``wrk`` (``apt-get install -y wrk``). The demo model comes from
``tests/support/mlflow_helpers.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: make `steps` and `tests` importable
    sys.path.insert(0, str(PROJECT_ROOT))

from steps.serve import DEFAULT_WORKERS  # noqa: E402
from steps.serving.inferencelog import DEFAULT_LOG_DIR, DEFAULT_SAMPLE_RATE  # noqa: E402
from steps.tracking.loading import DEFAULT_MODEL_URI  # noqa: E402
from tests.support import (  # noqa: E402
    demo_pipeline,
    free_port,
    housing_sample,
    predict_env,
    register_demo_model,
    wait_http,
)

# the clone's verified copy: `make data` (and `make bench`) fetch it
DEFAULT_CSV = PROJECT_ROOT / "data" / "housing.csv"
LOOPBACK = "127.0.0.1"


# --- servers ------------------------------------------------------------------------------
def child_env(tracking_uri: str, allow_pickle: bool) -> dict[str, str]:
    """A server's environment: ``predict_env``'s, plus mlflow's pickle opt-in if asked."""
    # mlflow's own sklearn loader insists on the opt-in; steps.serve does not need it
    extra = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"} if allow_pickle else {}
    return predict_env(tracking_uri, **extra)


@contextmanager
def server(args: list[str], env: dict[str, str], probe: str, log: Path) -> Iterator[str]:
    """Start a server on a free loopback port, yield its URL, stop it (and its workers)."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*args, "--port", str(port)],
            env=env,
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_http(f"http://{LOOPBACK}:{port}{probe}", proc, timeout=300)
            yield f"http://{LOOPBACK}:{port}"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


# --- load -----------------------------------------------------------------------------------
WRK_SCRIPT = """
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format(
    "WRK_JSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p99_us\\": %d, "
    .. "\\"p999_us\\": %d, \\"max_us\\": %d, \\"non_2xx\\": %d, \\"socket_errors\\": %d}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def wrk(url: str, body: Path, connections: int, seconds: float) -> dict[str, float]:
    """POST ``body`` to ``url`` with wrk; req/s, p50/p99 in ms and error counts."""
    script = body.with_suffix(".lua")
    script.write_text(WRK_SCRIPT.format(body=body))
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    raw = json.loads(re.search(r"WRK_JSON (.*)", out).group(1))
    return {
        "req_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "p999_ms": raw["p999_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "non_2xx": raw["non_2xx"],
        "socket_errors": raw["socket_errors"],
    }


# (server, path, body key): the floor gets our body, so it parses exactly what we parse.
ENDPOINTS = {
    "api": ("/predict", "data"),
    "mlflow": ("/invocations", "dataframe_records"),
    "floor": ("/predict", "data"),
    "api_shadow": ("/predict", "data"),
}


def request_bodies(X: pd.DataFrame, workdir: Path, n_rows: int) -> dict[str, Path]:
    """Request files per server: {"data": ...} for ours and the floor, mlflow's
    {"dataframe_records": ...} for ``mlflow models serve``."""
    rows = json.loads(X.head(n_rows).to_json(orient="records"))
    bodies = {}
    for api, (_, key) in ENDPOINTS.items():
        path = workdir / f"{api}_{n_rows}.json"
        path.write_text(json.dumps({key: rows}))
        bodies[api] = path
    return bodies


def load_test(urls: dict[str, str], X: pd.DataFrame, workdir: Path, opts: dict) -> dict:
    """wrk every server, alternating, single-row then 1,000-row requests."""
    results: dict[str, dict] = {api: {} for api in urls}
    for label, n_rows, connections in scenarios(opts["connections"]):
        bodies = request_bodies(X, workdir, n_rows)
        for api, base in urls.items():
            url = base + ENDPOINTS[api][0]
            wrk(url, bodies[api], connections, 2)  # warm-up: caches, lazy imports
            results[api][label] = wrk(url, bodies[api], connections, opts["seconds"])
    return results


def scenarios(connections: int) -> list[tuple[str, int, int]]:
    """(label, rows per request, connections): the loaded cases, plus a lone 1,000-row client
    (the latency of one big request without 7 others queued beside it on 2 cores)."""
    return [
        ("single_row", 1, connections),
        ("rows_1000", 1_000, connections),
        ("rows_1000_1conn", 1_000, 1),
    ]


def time_batch(tracking_uri: str, model_uri: str, X: pd.DataFrame, workdir: Path, n: int) -> dict:
    """Wall seconds of ``python -m steps.predict`` on ``n`` rows resampled from ``X``."""
    source = workdir / f"batch_{n}.parquet"
    X.sample(n, replace=True, random_state=0).to_parquet(source, index=False)
    args = [sys.executable, "-m", "steps.predict", "--model-uri", model_uri]
    args += ["--input", str(source), "--output", str(workdir / "batch_out.parquet")]
    started = time.perf_counter()
    result = subprocess.run(
        args, env=child_env(tracking_uri, False), cwd=workdir, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"steps.predict failed: {result.stderr[-2000:]}")
    return {"rows": n, "seconds": round(seconds, 2), "rows_per_s": round(n / seconds)}


def check_agreement(urls: dict[str, str], X: pd.DataFrame) -> float:
    """Largest |difference| in dollars between the two servers on 100 rows (expect 0)."""
    rows = json.loads(X.head(100).to_json(orient="records"))
    answers = []
    for api, path, key in (
        ("api", "/predict", "data"),
        ("mlflow", "/invocations", "dataframe_records"),
    ):
        request = urllib.request.Request(
            urls[api] + path,
            data=json.dumps({key: rows}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            answers.append(np.asarray(json.loads(r.read())["predictions"], dtype=float))
    return float(np.max(np.abs(answers[0] - answers[1])))


# --- report -------------------------------------------------------------------------------
def log_counts(url: str) -> dict[str, float]:
    """Rows our inference log wrote and dropped so far, from /metrics (all workers)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    counts = {"written": 0.0, "dropped": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for outcome in counts:
                if sample.name == f"housing_api_inference_log_{outcome}_total":
                    counts[outcome] += sample.value
    return counts


def summary_lines(report: dict) -> list[str]:
    lines = [f"model {report['model_uri']} @ {report['tracking_uri']}"]
    log = report["inference_log"]
    lines.append(
        f"inference log: {report['log_dir']} (sample rate {report['log_sample_rate']}): "
        f"{log['written']:.0f} rows written, {log['dropped']:.0f} dropped (+ buffered)"
    )
    lines.append(
        f"load average before/after: {report['loadavg_before']} / {report['loadavg_after']}"
    )
    for label, _, _ in scenarios(report["connections"]):
        for api in report["load"]:
            r = report["load"][api][label]
            lines.append(
                f"{label:15s} {api:10s} {r['req_per_s']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                f"p99 {r['p99_ms']:6.2f}  p99.9 {r['p999_ms']:6.2f}  max {r['max_ms']:6.1f} ms  "
                f"non-2xx {r['non_2xx']}  errors {r['socket_errors']}"
            )
        lines.append(
            f"{label:15s} ours = {report['of_floor'][label]:.0%} of the floor, "
            f"{report['ratio'][label]:.2f}x mlflow models serve"
        )
        if "shadow_cost" in report:
            lines.append(
                f"{label:15s} with shadow {report['shadow_alias']!r}: "
                f"{report['shadow_cost'][label]:.0%} of ours without it"
            )
    lines.append(f"max |api - mlflow| on 100 rows: {report['max_abs_diff_dollars']}")
    if report.get("batch"):
        b = report["batch"]
        lines.append(f"batch      {b['rows']} rows in {b['seconds']} s ({b['rows_per_s']} rows/s)")
    return lines


@click.command(help=__doc__.split("\n\n")[0])
@click.option(
    "--tracking-uri", default="", help="Registry to use (empty: a temp one + demo model)."
)
@click.option("--model-uri", default=DEFAULT_MODEL_URI, show_default=True)
@click.option(
    "--csv", "csv_path", type=click.Path(exists=True, path_type=Path), default=DEFAULT_CSV
)
@click.option(
    "--workers", type=int, default=DEFAULT_WORKERS, show_default=True, help="steps.serve workers"
)
@click.option("--connections", type=int, default=8, show_default=True)
@click.option("--seconds", type=int, default=10, show_default=True)
@click.option("--batch-rows", type=int, default=1_000_000, show_default=True, help="0: skip")
@click.option(
    "--log-dir",
    default=DEFAULT_LOG_DIR,
    show_default=True,
    help="steps.serve --log-dir (relative: under the bench's temp dir; none: no log)",
)
@click.option("--log-sample-rate", type=float, default=DEFAULT_SAMPLE_RATE, show_default=True)
@click.option(
    "--shadow-alias", default="", help="Also load ours with this alias shadowing (empty: no)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def main(
    tracking_uri,
    model_uri,
    csv_path,
    workers,
    connections,
    seconds,
    batch_rows,
    log_dir,
    log_sample_rate,
    shadow_alias,
    as_json,
):
    if shutil.which("wrk") is None:
        raise click.ClickException("wrk not found: apt-get install -y wrk")
    if shadow_alias and log_dir in ("", "none"):
        raise click.BadParameter(
            "a shadow scores logged requests: keep the log on", param_hint="--log-dir"
        )
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        workdir = Path(tmp)
        X, y = housing_sample(csv_path, n_rows=None)
        if not tracking_uri:
            tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
            click.echo("fitting and registering a demo model (default hyperparameters)", err=True)
            register_demo_model(tracking_uri, demo_pipeline(X, y), X, workdir / "artifacts")
            if shadow_alias:
                # another model (fewer trees) under the alias: a shadow that predicts otherwise
                shadow = demo_pipeline(X, y, n_estimators=100)
                register_demo_model(tracking_uri, shadow, X, workdir / "artifacts", shadow_alias)
        report: dict[str, Any] = {
            "tracking_uri": tracking_uri,
            "model_uri": model_uri,
            "workers": workers,
            "connections": connections,
            "seconds": seconds,
            "cpus": os.cpu_count(),
            "loadavg_before": round(os.getloadavg()[0], 2),
            "log_dir": log_dir,
            "log_sample_rate": log_sample_rate,
        }
        serve_args = [sys.executable, "-m", "steps.serve", "--model-uri", model_uri]
        serve_args += ["--workers", str(workers), "--log-sample-rate", str(log_sample_rate)]
        api_args = [*serve_args, "--log-dir", log_dir]
        mlflow_args = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri]
        mlflow_args += ["--env-manager", "local", "--host", LOOPBACK]
        floor_args = [sys.executable, "-m", "uvicorn", "--app-dir", str(PROJECT_ROOT / "bench")]
        floor_args += ["json_floor:app"]
        floor_args += ["--workers", str(workers), "--host", LOOPBACK, "--no-access-log"]
        # the same settings, its own log (the shadow's predictions go there)
        shadow_args = [*serve_args, "--log-dir", "shadow-log", "--shadow-alias", shadow_alias]
        with contextlib.ExitStack() as stack:
            env = child_env(tracking_uri, False)
            urls = {
                "floor": stack.enter_context(server(floor_args, env, "/docs", workdir / "fl.log")),
                "api": stack.enter_context(server(api_args, env, "/ready", workdir / "api.log")),
            }
            if shadow_alias:
                shadowed = server(shadow_args, env, "/ready", workdir / "shadow.log")
                urls["api_shadow"] = stack.enter_context(shadowed)
            mlflow_env = child_env(tracking_uri, True)
            urls["mlflow"] = stack.enter_context(
                server(mlflow_args, mlflow_env, "/ping", workdir / "mlflow.log")
            )
            report["max_abs_diff_dollars"] = check_agreement(urls, X)
            opts = {"connections": connections, "seconds": seconds}
            report["load"] = load_test(urls, X, workdir, opts)
            report["inference_log"] = log_counts(urls["api"])
        report["ratio"] = {
            label: round(
                report["load"]["api"][label]["req_per_s"]
                / max(report["load"]["mlflow"][label]["req_per_s"], 1e-9),
                2,
            )
            for label, _, _ in scenarios(connections)
        }
        report["of_floor"] = {
            label: round(
                report["load"]["api"][label]["req_per_s"]
                / max(report["load"]["floor"][label]["req_per_s"], 1e-9),
                3,
            )
            for label, _, _ in scenarios(connections)
        }
        if shadow_alias:
            report["shadow_alias"] = shadow_alias
            report["shadow_cost"] = {
                label: round(
                    report["load"]["api_shadow"][label]["req_per_s"]
                    / max(report["load"]["api"][label]["req_per_s"], 1e-9),
                    3,
                )
                for label, _, _ in scenarios(connections)
            }
        if batch_rows:
            report["batch"] = time_batch(tracking_uri, model_uri, X, workdir, batch_rows)
        report["loadavg_after"] = round(os.getloadavg()[0], 2)
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(summary_lines(report)))


if __name__ == "__main__":
    main()
