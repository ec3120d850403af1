"""Benchmark ``predict``'s two engines on the same 1,000,000 rows, in the same run.

Resamples housing.csv's feature rows to ``--rows`` rows (Parquet, 100,000-row groups, so
Spark gets several input splits), registers a demo model in a temp tracking store (unless
``--tracking-uri``), then runs ``python -m steps.predict`` once with ``--engine local`` and
once with ``--engine spark --spark-master local[2]``. Prints, per engine, the wall time of
the whole command (start-up, JVM included), the run's ``predict_seconds`` (local: the model
calls; spark: read, check, score and write, after the JVM is up), rows/s of each, and the
ratio spark / local.

    python bench/spark_bench.py                      # 1,000,000 rows, local[2]
    python bench/spark_bench.py --rows 200000 --master 'local[*]' --json

Needs ``make spark-setup`` and a Java runtime. The demo model comes from
``tests/support/mlflow_helpers.py``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: make `steps` and `tests` importable
    sys.path.insert(0, str(PROJECT_ROOT))

from steps import config  # noqa: E402
from tests.support import (  # noqa: E402
    demo_pipeline,
    housing_csv,
    housing_sample,
    register_demo_model,
    run_predict,
)

ROW_GROUP = 100_000


def timed_predict(tracking_uri: str, workdir: Path, source: Path, engine: list[str]) -> dict:
    """Wall seconds of one predict command and the ``predict_seconds`` its run logged."""
    import mlflow

    out = workdir / f"out-{engine[1]}.parquet"
    started = time.perf_counter()
    result = run_predict(
        tracking_uri, workdir, *engine, "--input", str(source), "--output", str(out)
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise click.ClickException(f"predict {engine} failed: {result.stderr[-2000:]}")
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    (run,) = client.search_runs(
        [exp.experiment_id],
        f"tags.`{config.TAG_STEP}` = 'predict'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    metrics = run.data.metrics
    return {
        "wall_s": round(wall, 2),
        "predict_s": round(metrics["predict_seconds"], 2),
        "rows_in": int(metrics["rows_in"]),
        "rows_predicted": int(metrics["rows_predicted"]),
    }


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--rows", type=click.IntRange(min=1), default=1_000_000, show_default=True)
@click.option("--master", default="local[2]", show_default=True)
@click.option("--tracking-uri", default="", help="Registry to use (empty: temp + demo model).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def main(rows: int, master: str, tracking_uri: str, as_json: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="spark-bench-") as tmp:
        workdir = Path(tmp)
        X, y = housing_sample(housing_csv(), n_rows=None)
        if not tracking_uri:
            tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
            click.echo("fitting and registering a demo model (default hyperparameters)", err=True)
            register_demo_model(tracking_uri, demo_pipeline(X, y), X, workdir / "artifacts")
        source = workdir / "rows.parquet"
        X.sample(rows, replace=True, random_state=0).to_parquet(
            source, index=False, row_group_size=ROW_GROUP
        )
        report: dict = {"rows": rows, "master": master, "loadavg_before": os.getloadavg()[0]}
        for name, engine in (
            ("local", ["--engine", "local"]),
            ("spark", ["--engine", "spark", "--spark-master", master]),
        ):
            click.echo(f"timing engine={name} on {rows} rows", err=True)
            r = timed_predict(tracking_uri, workdir, source, engine)
            r["rows_per_s_wall"] = round(rows / r["wall_s"])
            r["rows_per_s_predict"] = round(rows / r["predict_s"])
            report[name] = r
        report["loadavg_after"] = os.getloadavg()[0]
        report["ratio_wall_spark_over_local"] = round(
            report["spark"]["wall_s"] / report["local"]["wall_s"], 2
        )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{rows} rows, Spark master {master}, output {config.PREDICTION_COLUMN}")
    for name in ("local", "spark"):
        r = report[name]
        click.echo(
            f"{name:6s} wall {r['wall_s']:7.2f} s ({r['rows_per_s_wall']:>9,} rows/s)   "
            f"predict_seconds {r['predict_s']:7.2f} s ({r['rows_per_s_predict']:>9,} rows/s)"
        )
    click.echo(f"spark / local wall time: {report['ratio_wall_spark_over_local']}x")
    click.echo(
        f"load average before/after: {report['loadavg_before']:.1f} / {report['loadavg_after']:.1f}"
    )


if __name__ == "__main__":
    main()
