"""Step ``predict``: batch predictions for a file of raw housing rows.

In: ``--input`` a CSV or Parquet file (local path, ``file://``/``http(s)://`` URL, or any
MLflow artifact URI such as ``runs:/<id>/path``) with the nine raw feature columns
(``config.FEATURES``; other columns are carried through); ``--model-uri`` a registry URI.
Out: ``--output`` (CSV or Parquet, by extension) = the valid input rows, their 0-based input
``row`` number and ``predicted_median_house_value`` in dollars; rows failing validation go
beside it, in its format (``<output stem>.rejected.parquet`` / ``.rejected.csv``), with a
``reason`` (written even when empty). Both are logged as artifacts of this step's MLflow run,
tagged with the model name/version (params: model_uri, input, output, engine, …).

``--engine spark`` scores on Spark instead (``steps.batch.sparkscore``, ``--spark-master``): the
input may also be a directory or any URI Spark reads, the output (Parquet only) and
``<output stem>.rejected.parquet`` are Parquet directories written by Spark. They are not
copied into the run (they can be any size); the tags ``predict.output`` and
``predict.rejected_output`` say where they are. Same metrics, and the same output contract
on both engines (``steps.batch.output_contract``): same files, columns, column order and dtypes.

Validation applies the same rules as the online API (``steps.data.schema`` bounds, known
``ocean_proximity`` values, finite numbers, ``total_bedrooms`` may be missing), vectorised,
in both engines (``steps.data.schema.rejection_reasons``). A missing/unreadable file or missing
columns (engine=spark: or no Java/PySpark) -> one error line, exit 1, run FAILED. The local
engine: ``steps.batch.localscore``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from steps import config
from steps.batch import localscore, sparkscore
from steps.infra.errors import StepError
from steps.tracking import steprun
from steps.tracking.loading import (
    DEFAULT_MODEL_URI,
    ModelLoadError,
    ModelRef,
    resolve_model_version,
)

STEP = "predict"
ENGINES: tuple[str, ...] = ("local", "spark")
DEFAULT_ENGINE = "local"


# --- command ------------------------------------------------------------------------------
@click.command(help="Predict a CSV/Parquet file of raw rows with a registered model.")
@click.option("--input", "input_uri", required=True, help="CSV/Parquet path or URI.")
@click.option(
    "--output",
    required=True,
    help="Predictions file (.csv or .parquet); engine=spark: a Parquet directory.",
)
@click.option("--model-uri", default=DEFAULT_MODEL_URI, show_default=True)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=localscore.DEFAULT_CHUNK_ROWS,
    show_default=True,
)
@click.option(
    "--jobs",
    type=click.IntRange(min=0),
    default=localscore.DEFAULT_JOBS,
    show_default=True,
    help="Chunks predicted in parallel (threads); 0 = one per CPU.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default=DEFAULT_ENGINE,
    show_default=True,
    help="local: pandas in this process; spark: MLflow's spark_udf on --spark-master.",
)
@click.option(
    "--spark-master",
    default=sparkscore.DEFAULT_MASTER,
    show_default=True,
    help="engine=spark: local[N] or a cluster's master URL.",
)
@click.option(
    "--spark-env-manager",
    type=click.Choice(sparkscore.ENV_MANAGERS),
    default=sparkscore.DEFAULT_SPARK_ENV_MANAGER,
    show_default=True,
    help="engine=spark: how executors get the model's packages (spark_udf's env_manager).",
)
@steprun.as_step(STEP)
def cli(
    input_uri: str,
    output: str,
    model_uri: str,
    chunk_rows: int,
    jobs: int,
    engine: str,
    spark_master: str,
    spark_env_manager: str,
) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if engine == "spark":
        predict_on_spark(input_uri, output, model_uri, spark_master, spark_env_manager)
    else:
        predict_locally(input_uri, output, model_uri, chunk_rows, jobs)


def log_model_ref(ref: ModelRef) -> None:
    import mlflow

    mlflow.set_tags(
        {
            config.TAG_PREDICT_MODEL_NAME: ref.name,
            config.TAG_PREDICT_MODEL_VERSION: ref.version,
            config.TAG_PREDICT_MODEL_RUN_ID: ref.run_id or "",
        }
    )


def log_counts(rows_in: int, predicted: int, rejected: int, predict_seconds: float) -> None:
    import mlflow

    mlflow.log_metrics(
        {
            "rows_in": rows_in,
            "rows_predicted": predicted,
            "rows_rejected": rejected,
            "predict_seconds": predict_seconds,
        }
    )


def predict_locally(
    input_uri: str, output: str, model_uri: str, chunk_rows: int, jobs: int
) -> None:
    import mlflow

    out_path = Path(output)
    localscore.table_format(output)  # fail on a bad output name before the expensive work
    df = localscore.read_table(input_uri)
    pipeline, ref = localscore.load_model(model_uri)
    log_model_ref(ref)
    valid, rejected = localscore.split_valid(df)
    steprun.echo(
        STEP,
        f"{len(df)} rows: {len(valid)} valid, {len(rejected)} rejected; "
        f"model {ref.name} v{ref.version}",
    )
    started = time.perf_counter()
    progress = len(valid) > chunk_rows
    jobs = jobs or os.cpu_count() or 1
    predictions = localscore.predict_frame(pipeline, valid, chunk_rows, progress, jobs)
    predict_seconds = time.perf_counter() - started
    localscore.write_table(localscore.with_predictions(valid, predictions), out_path)
    mlflow.log_artifact(str(out_path), artifact_path=STEP)
    log_counts(len(df), len(valid), len(rejected), predict_seconds)
    bad_path = localscore.rejected_path(out_path)  # written even if empty, as on Spark
    localscore.write_table(rejected, bad_path)
    mlflow.log_artifact(str(bad_path), artifact_path=STEP)
    if len(rejected):
        steprun.echo(STEP, f"{len(rejected)} rejected rows (with reasons) in {bad_path}")
    steprun.echo(STEP, f"wrote {len(valid)} predictions to {out_path}")


def predict_on_spark(
    input_uri: str, output: str, model_uri: str, master: str, env_manager: str
) -> None:
    """Everything that can be checked without a JVM is, first: JVM start-up costs ~10 s."""
    import mlflow

    kind = sparkscore.check_before_start(input_uri, output, os.environ)
    try:
        ref = resolve_model_version(model_uri)
    except ModelLoadError as exc:
        raise StepError(str(exc)) from exc
    log_model_ref(ref)
    rejected_output = sparkscore.rejected_location(output)
    mlflow.set_tags(
        {config.TAG_PREDICT_OUTPUT: output, config.TAG_PREDICT_REJECTED_OUTPUT: rejected_output}
    )
    steprun.echo(STEP, f"starting Spark on {master}; model {ref.name} v{ref.version}")
    counts, predict_seconds = sparkscore.run_in_session(
        master, input_uri, kind, f"models:/{ref.name}/{ref.version}", output, env_manager
    )
    log_counts(counts.rows_in, counts.rows_predicted, counts.rows_rejected, predict_seconds)
    steprun.echo(
        STEP,
        f"{counts.rows_in} rows: {counts.rows_predicted} valid, "
        f"{counts.rows_rejected} rejected; model {ref.name} v{ref.version}",
    )
    if counts.rows_rejected:
        steprun.echo(
            STEP, f"{counts.rows_rejected} rejected rows (with reasons) in {rejected_output}"
        )
    steprun.echo(STEP, f"wrote {counts.rows_predicted} predictions to {output}")


if __name__ == "__main__":
    cli()
