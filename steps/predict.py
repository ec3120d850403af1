"""Step ``predict``: batch predictions for a file of raw housing rows.

In: ``--input`` a CSV or Parquet file (local path, ``file://``/``http(s)://`` URL, or any
MLflow artifact URI such as ``runs:/<id>/path``) with the nine raw feature columns
(``config.FEATURES``; other columns are carried through); ``--model-uri`` a registry URI.
Out: ``--output`` (CSV or Parquet, by extension) = the valid input rows, their 0-based input
``row`` number and ``predicted_median_house_value`` in dollars; rows failing validation go to
``<output stem>.rejected.csv`` with a ``reason``. Both are logged as artifacts of this step's
MLflow run, tagged with the model name/version (params: model_uri, input, output, engine, …).

``--engine spark`` scores on Spark instead (``steps.batch.sparkscore``, ``--spark-master``): the
input may also be a directory or any URI Spark reads, the output and
``<output stem>.rejected.parquet`` are Parquet directories written by Spark. They are not
copied into the run (they can be any size); the tags ``predict.output`` and
``predict.rejected_output`` say where they are. Same columns, same metrics.

Validation applies the same rules as the online API (``steps.data.schema`` bounds, known
``ocean_proximity`` values, finite numbers, ``total_bedrooms`` may be missing), vectorised,
in both engines (``steps.data.schema.rejection_reasons``). A missing/unreadable file or missing
columns (engine=spark: or no Java/PySpark) -> one error line, exit 1, run FAILED.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click
import numpy as np
import pandas as pd

from steps import config
from steps.batch import sparkscore
from steps.data import schema
from steps.data.schema import rejection_reasons
from steps.infra.errors import StepError
from steps.tracking import steprun
from steps.tracking.loading import (
    DEFAULT_MODEL_URI,
    ModelLoadError,
    ModelRef,
    load_version,
    resolve_model_version,
)

STEP = "predict"
DEFAULT_CHUNK_ROWS = 50_000
# 0 = one prediction thread per CPU (the model itself predicts single-threaded).
DEFAULT_JOBS = 0
ENGINES: tuple[str, ...] = ("local", "spark")
DEFAULT_ENGINE = "local"
PREDICTION_COLUMN = config.PREDICTION_COLUMN
ROW_COLUMN = config.ROW_COLUMN
REASON_COLUMN = config.REASON_COLUMN
# Model facts recorded on the run (tags: searchable; params come from the command line).


# --- pure core ----------------------------------------------------------------------------
def table_format(path_or_uri: str) -> str:
    """'csv' or 'parquet' from the file extension (a compressed '.csv.gz' counts as csv)."""
    kind = config.table_format_by_name(path_or_uri)
    if kind is None:
        raise StepError(f"{path_or_uri}: unknown file type; expected .csv or .parquet")
    return kind


def check_columns(df: pd.DataFrame, source: str) -> None:
    sparkscore.check_columns(list(df.columns), source)


def split_valid(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(valid rows, rejected rows + ``reason``), both with the input ``row`` number.

    Valid rows get the model's dtypes: float64 numerics (missing bedrooms = NaN), str
    category — what the training data had.
    """
    df = df.reset_index(drop=True)
    df.insert(0, ROW_COLUMN, np.arange(len(df)))
    reasons = rejection_reasons(df)
    bad = (reasons != "").to_numpy()
    rejected = df.loc[bad].assign(**{REASON_COLUMN: reasons[bad]})
    return schema.with_model_dtypes(df.loc[~bad]), rejected


def chunks(n_rows: int, size: int) -> Iterator[slice]:
    for start in range(0, n_rows, size):
        yield slice(start, min(start + size, n_rows))


def predict_frame(
    pipeline: Any, valid: pd.DataFrame, chunk_rows: int, progress: bool, jobs: int = 1
) -> np.ndarray:
    """Predictions for ``valid``, chunk by chunk, ``jobs`` chunks at a time.

    Chunks bound memory and make the progress bar move. Threads, not processes: the
    heavy parts (LightGBM's C++ predict, numpy) release the GIL, and threads share the
    one loaded model.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    features = valid.loc[:, list(config.FEATURES)]
    out = np.empty(len(features), dtype=np.float64)

    def run(part: slice) -> int:
        out[part] = pipeline.predict(features.iloc[part])
        return part.stop - part.start

    bar = tqdm(total=len(features), unit="row", unit_scale=True, disable=not progress, desc=STEP)
    with bar, ThreadPoolExecutor(max_workers=jobs) as pool:
        for done in pool.map(run, chunks(len(features), chunk_rows)):
            bar.update(done)
    return out


def with_predictions(valid: pd.DataFrame, predictions: np.ndarray) -> pd.DataFrame:
    return valid.assign(**{PREDICTION_COLUMN: predictions})


# --- I/O ----------------------------------------------------------------------------------
def local_copy(uri: str, tmp: Path) -> str:
    """A readable location for ``uri``: paths and URLs as they are, artifact URIs downloaded."""
    scheme = urlparse(uri).scheme
    if scheme in ("", "file", "http", "https") or len(scheme) == 1:  # 1 letter: Windows drive
        return uri
    import mlflow

    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
    except Exception as exc:  # mlflow raises a variety of errors for a bad URI
        raise StepError(f"cannot download {uri}: {exc}") from exc


def read_table(uri: str) -> pd.DataFrame:
    """Read a CSV or Parquet input; every failure becomes a one-line ``StepError``."""
    kind = table_format(uri)
    with tempfile.TemporaryDirectory(prefix="predict-input-") as tmp:
        location = local_copy(uri, Path(tmp))
        path = config.local_path(location)
        if path is not None and not path.is_file():
            raise StepError(f"{uri}: no such file")
        try:
            if kind == "csv":
                # pyarrow's reader is multi-threaded C++: ~5x the default engine on 1M rows.
                df = pd.read_csv(
                    path or location,
                    engine="pyarrow",
                    na_values=list(config.CSV_MISSING_VALUES),
                    keep_default_na=False,
                )
            else:
                df = pd.read_parquet(path or location)
        except Exception as exc:  # parser, permission, decoding, network errors alike
            raise StepError(f"{uri}: cannot read as {kind}: {_one_line(exc)}") from exc
    check_columns(df, uri)
    return df


def write_table(df: pd.DataFrame, path: Path) -> None:
    """CSV or Parquet by extension, via pyarrow (pandas' CSV writer is ~5x slower)."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    if table_format(str(path)) == "csv":
        pyarrow.csv.write_csv(table, path)
    else:
        pyarrow.parquet.write_table(table, path)


def rejected_path(output: Path) -> Path:
    name = output.name
    for suffix in reversed(output.suffixes):
        name = name.removesuffix(suffix)
    return output.with_name(f"{name}.rejected.csv")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def load_model(model_uri: str) -> tuple[Any, ModelRef]:
    try:
        return load_version(model_uri)
    except ModelLoadError as exc:
        raise StepError(str(exc)) from exc


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
    "--chunk-rows", type=click.IntRange(min=1), default=DEFAULT_CHUNK_ROWS, show_default=True
)
@click.option(
    "--jobs",
    type=click.IntRange(min=0),
    default=DEFAULT_JOBS,
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


def predict_locally(
    input_uri: str, output: str, model_uri: str, chunk_rows: int, jobs: int
) -> None:
    import mlflow

    out_path = Path(output)
    table_format(output)  # fail on a bad output name before the expensive work
    df = read_table(input_uri)
    pipeline, ref = load_model(model_uri)
    log_model_ref(ref)
    valid, rejected = split_valid(df)
    steprun.echo(
        STEP,
        f"{len(df)} rows: {len(valid)} valid, {len(rejected)} rejected; "
        f"model {ref.name} v{ref.version}",
    )
    started = time.perf_counter()
    progress = len(valid) > chunk_rows
    predictions = predict_frame(pipeline, valid, chunk_rows, progress, jobs or os.cpu_count() or 1)
    predict_seconds = time.perf_counter() - started
    write_table(with_predictions(valid, predictions), out_path)
    mlflow.log_artifact(str(out_path), artifact_path=STEP)
    mlflow.log_metrics(
        {
            "rows_in": len(df),
            "rows_predicted": len(valid),
            "rows_rejected": len(rejected),
            "predict_seconds": predict_seconds,
        }
    )
    if len(rejected):
        bad_path = rejected_path(out_path)
        write_table(rejected, bad_path)
        mlflow.log_artifact(str(bad_path), artifact_path=STEP)
        steprun.echo(STEP, f"{len(rejected)} rejected rows (with reasons) in {bad_path}")
    steprun.echo(STEP, f"wrote {len(valid)} predictions to {out_path}")


def predict_on_spark(
    input_uri: str, output: str, model_uri: str, master: str, env_manager: str
) -> None:
    """Everything that can be checked without a JVM is, first: JVM start-up costs ~10 s."""
    import mlflow

    sparkscore.check_output(output)
    sparkscore.check_can_start(os.environ)
    sparkscore.check_input_exists(input_uri)
    kind = sparkscore.input_format(input_uri)
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
    with tempfile.TemporaryDirectory(prefix="predict-spark-") as tmp:
        spark = sparkscore.start_session(master, Path(tmp))
        try:
            started = time.perf_counter()
            counts = sparkscore.run(
                spark, input_uri, kind, f"models:/{ref.name}/{ref.version}", output, env_manager
            )
            predict_seconds = time.perf_counter() - started
        finally:
            spark.stop()
    mlflow.log_metrics(
        {
            "rows_in": counts.rows_in,
            "rows_predicted": counts.rows_predicted,
            "rows_rejected": counts.rows_rejected,
            "predict_seconds": predict_seconds,
        }
    )
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
