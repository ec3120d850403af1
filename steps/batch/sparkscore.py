"""Batch scoring on Spark: ``predict --engine spark``'s library (predict's command does the
MLflow logging; this module does not log).

In: a CSV or Parquet file or directory (a local path or any URI Spark reads: ``file://``,
``hdfs://``, ``s3a://``, …) of raw housing rows, and a registered model version. Out: a
Parquet directory with ``row`` (0-based input position), the input columns (extra columns
carried through; features as the model's types) and ``predicted_median_house_value`` in
dollars, and a Parquet directory ``<output stem>.rejected.parquet`` with the rows that fail
validation, their raw values and a ``reason``: the same files, columns, dtypes, rules and
messages as the local engine (``steps.batch.output_contract``;
``steps.data.schema.rejection_reasons`` applied to each pandas batch inside Spark). A CSV
input is read as text; the pass that counts the rows of each input chunk also finds each
column's contract type, applied when checking.

The model is scored by MLflow's own ``mlflow.pyfunc.spark_udf``: raw rows in, the logged
pipeline unchanged, dollars out. PySpark is imported lazily, only on this path: nothing the
pipeline (``make run``) imports pulls it in.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steps import config
from steps.batch import output_contract
from steps.data import schema
from steps.infra.errors import StepError, one_line

DEFAULT_MASTER = "local[*]"
# `local`: the executors' Python already has the model's packages (local mode, or a cluster
# image built from requirements.lock); uv/virtualenv/conda: MLflow builds the model's env
# on each executor from the logged requirements.
ENV_MANAGERS: tuple[str, ...] = ("local", "uv", "virtualenv", "conda")
DEFAULT_SPARK_ENV_MANAGER = "local"
APP_NAME = "california-housing-predict"
# Typed copies of the features travel beside the raw values until rows are split: rejected
# rows keep what the input said, valid rows get what the model expects.
TYPED_PREFIX = "__typed_"
# Where each row comes from (Spark's file metadata), for numbering rows: see check_rows.
FILE_COLUMN = "__file"
BLOCK_COLUMN = "__block_start"
COUNT_COLUMN = "__rows"
JAVA_HINT = (
    "install a Java 17 or 21 runtime (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) "
    "or point JAVA_HOME at one"
)
OWN_COLUMNS = (config.ROW_COLUMN, config.REASON_COLUMN, config.PREDICTION_COLUMN)


@dataclass(frozen=True)
class Counts:
    rows_in: int
    rows_predicted: int
    rows_rejected: int


# --- pure core ----------------------------------------------------------------------------
def java_problem(environ: Mapping[str, str]) -> str | None:
    """None if a ``java`` can be found the way PySpark looks for it, else the line to print.

    Checked before the JVM starts: PySpark's own failure is a Java gateway traceback.
    """
    home = environ.get("JAVA_HOME")
    if home:
        if os.access(Path(home) / "bin" / "java", os.X_OK):
            return None
        return f"JAVA_HOME={home} has no bin/java: {JAVA_HINT}"
    if shutil.which("java", path=environ.get("PATH", "")):
        return None
    return (
        f"engine=spark needs Java, and none was found (no JAVA_HOME, no java on PATH): {JAVA_HINT}"
    )


def input_format(uri: str) -> str:
    """'csv' or 'parquet': by the name's extension, else (a local directory) by its files'."""
    kind = config.table_format_by_name(uri)
    if kind:
        return kind
    path = config.local_path(uri)
    if path is not None and path.is_dir():
        kinds = {config.TABLE_SUFFIXES.get(f.suffix.lower()) for f in path.rglob("*")} - {None}
        if len(kinds) == 1:
            return kinds.pop()
    raise StepError(
        f"{uri}: cannot tell CSV from Parquet; name it .csv/.parquet or hold such files in it"
    )


def rejected_location(output: str) -> str:
    """``out.parquet`` -> ``out.rejected.parquet``, beside it (paths and URIs alike): the
    contract's naming (``steps.batch.output_contract.rejected_location``)."""
    return output_contract.rejected_location(output)


def check_output(output: str) -> None:
    if config.table_format_by_name(output) == "csv":
        raise StepError(f"{output}: engine=spark writes a Parquet directory; name it .parquet")


def check_columns(columns: list[str], source: str) -> None:
    missing = [c for c in config.FEATURES if c not in columns]
    if missing:
        raise StepError(f"{source}: missing column(s): {', '.join(missing)}")
    taken = [c for c in OWN_COLUMNS if c in columns]
    if taken:
        raise StepError(
            f"{source}: column(s) {', '.join(taken)} are written by predict; rename them"
        )


def typed(name: str) -> str:
    return f"{TYPED_PREFIX}{name}"


def check_batch(
    batch: pd.DataFrame,
    rows: np.ndarray,
    csv: bool,
    dtypes: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One pandas batch of raw rows -> the same rows with ``row`` (their input positions,
    given), ``reason`` (empty: valid) and the features typed for the model as ``typed(name)``.

    CSV fields arrive as text: the local engine's missing-value tokens become missing first,
    then the columns get their contract ``dtypes`` (``csv_dtypes``: found over the whole input).
    """
    if csv:
        batch = output_contract.missing_as_null(batch)
    reasons = schema.rejection_reasons(batch)
    model_typed = schema.with_model_dtypes(batch.loc[:, list(config.FEATURES)])
    if dtypes:
        batch = batch.assign(
            **{name: output_contract.as_dtype(batch[name], dtype) for name, dtype in dtypes.items()}
        )
    return batch.assign(
        **{
            config.ROW_COLUMN: np.asarray(rows, dtype=np.int64),
            config.REASON_COLUMN: reasons.astype(object),
        },
        **{typed(name): model_typed[name] for name in config.FEATURES},
    )


def check_partition(
    batches: Iterator[pd.DataFrame],
    offsets: Mapping[tuple[str, int], int],
    csv: bool,
    dtypes: Mapping[str, str] | None = None,
) -> Iterator[pd.DataFrame]:
    """``check_batch`` over a partition's batches; each row's number is its chunk's offset
    (``chunk_offsets``, by the ``FILE_COLUMN``/``BLOCK_COLUMN`` every row carries) plus the
    rows of that chunk seen before it. A partition may hold several chunks (small files are
    packed together) and a batch may cross from one to the next."""
    seen: dict[tuple[str, int], int] = {}
    for batch in batches:
        batch = batch.reset_index(drop=True)
        rows = np.empty(len(batch), dtype=np.int64)
        for key, index in batch.groupby([FILE_COLUMN, BLOCK_COLUMN], sort=False).indices.items():
            key = (str(key[0]), int(key[1]))
            first = offsets[key] + seen.get(key, 0)
            rows[index] = np.arange(first, first + len(index))
            seen[key] = seen.get(key, 0) + len(index)
        yield check_batch(batch.drop(columns=[FILE_COLUMN, BLOCK_COLUMN]), rows, csv, dtypes)


def kind_columns(i: int) -> tuple[str, str]:
    """The summary's columns for input column ``i``: its contract kind, any value missing."""
    return f"__kind_{i}", f"__missing_{i}"


def summarize_partition(
    batches: Iterator[pd.DataFrame], columns: list[str], csv: bool
) -> Iterator[pd.DataFrame]:
    """Per batch, per input chunk (``FILE_COLUMN``, ``BLOCK_COLUMN``): its rows and, for a CSV
    input, each column's (kind, any missing) (``output_contract.text_kind``) in the batch."""
    keys = [FILE_COLUMN, BLOCK_COLUMN]
    for batch in batches:
        summary = batch.groupby(keys, sort=False).size().rename(COUNT_COLUMN).reset_index()
        if csv:
            text = output_contract.missing_as_null(batch.loc[:, columns])
            for i, name in enumerate(columns):
                kind, missing = output_contract.text_kind(text[name])
                summary[kind_columns(i)[0]] = np.int32(kind)
                summary[kind_columns(i)[1]] = missing
        yield summary


def csv_dtypes(columns: list[str], summary: list[Mapping[str, Any]]) -> dict[str, str]:
    """Each CSV column's contract dtype from the summary's rows (``summarize_partition``)."""
    dtypes = {}
    for i, name in enumerate(columns):
        kind, missing = kind_columns(i)
        combined = output_contract.combine((int(r[kind]), bool(r[missing])) for r in summary)
        dtypes[name] = output_contract.dtype_for(*combined)
    return dtypes


def chunk_offsets(counts: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """Rows per input chunk (file, start byte) -> the input position of the chunk's first row:
    files in name order, each from its first byte on."""
    offsets, total = {}, 0
    for chunk in sorted(counts):
        offsets[chunk] = total
        total += counts[chunk]
    return offsets


# --- Spark --------------------------------------------------------------------------------
def check_can_start(environ: Mapping[str, str]) -> None:
    """PySpark installed and a Java runtime present, or one StepError line saying what to do."""
    if importlib.util.find_spec("pyspark") is None:
        raise StepError(
            "engine=spark needs PySpark: make spark-setup (installs requirements-spark.lock)"
        )
    problem = java_problem(environ)
    if problem:
        raise StepError(problem)


def check_input_exists(uri: str) -> None:
    """Local inputs are checked before the JVM starts; remote ones when Spark reads them."""
    path = config.local_path(uri)
    if path is not None and not path.exists():
        raise StepError(f"{uri}: no such file or directory")


def check_before_start(input_uri: str, output: str, environ: Mapping[str, str]) -> str:
    """Everything that can be checked without a JVM, first (JVM start-up costs ~10 s); the
    input's format."""
    check_output(output)
    check_can_start(environ)
    check_input_exists(input_uri)
    return input_format(input_uri)


def start_session(master: str, workdir: Path) -> Any:
    """A SparkSession on ``master`` whose Python workers can import the project's code.

    Local-mode workers run ``python3`` from PATH unless told otherwise, which need not be
    this venv (then: ``No module named 'pandas'``): they get this interpreter. A cluster's
    executors have their own Python (``PYSPARK_PYTHON`` / ``spark.pyspark.python``).
    ``workdir`` holds the zipped ``steps`` package shipped to them while the session runs.
    """
    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(master)
        .appName(APP_NAME)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.addPyFile(str(steps_archive(workdir / "steps.zip")))
    return spark


def steps_archive(target: Path) -> Path:
    """The ``steps`` package zipped with its subpackages, shipped to the executors (the batch
    check imports ``steps.data.schema``, which imports ``steps.config``)."""
    package = Path(__file__).resolve().parent.parent  # steps/batch/ → steps/
    with zipfile.ZipFile(target, "w") as archive:
        for source in sorted(package.rglob("*.py")):
            archive.write(source, f"steps/{source.relative_to(package).as_posix()}")
    return target


def read_input(spark: Any, uri: str, kind: str) -> Any:
    """The input as a DataFrame; CSV as text, so a bad value is a reason, not a parse error."""
    from pyspark.errors import AnalysisException

    try:
        if kind == "csv":
            # The quote/escape pair of pandas' writer, so quoted fields read back the same.
            df = spark.read.options(header=True, escape='"', multiLine=False).csv(uri)
        else:
            df = spark.read.parquet(uri)
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc):
            raise StepError(f"{uri}: no such file or directory") from exc
        raise StepError(f"{uri}: cannot read as {kind}: {one_line(exc)}") from exc
    check_columns(df.columns, uri)
    return df


def check_rows(raw: Any, csv: bool) -> Any:
    """Every input row with ``row``, ``reason`` and the typed features (``check_batch``).

    ``row`` is the position in the input read file by file in name order, as if one table:
    Spark's partitions do not follow that order (it packs small files together, largest
    first), so rows are numbered by their chunk, (file, start byte of the split), whose sizes
    a counting pass over the input finds first. The same pass finds a CSV input's column
    types (``steps.batch.output_contract``: one rule over each whole column, as the local engine).
    """
    from pyspark.sql import functions as sf
    from pyspark.sql import types as st

    keyed = raw.select(
        "*",
        sf.col("_metadata.file_path").alias(FILE_COLUMN),
        sf.col("_metadata.file_block_start").alias(BLOCK_COLUMN),
    )
    columns = list(raw.columns)
    keys = [
        st.StructField(FILE_COLUMN, st.StringType(), True),
        st.StructField(BLOCK_COLUMN, st.LongType(), True),
        st.StructField(COUNT_COLUMN, st.LongType(), False),
    ]
    aggregates = [sf.sum(COUNT_COLUMN).alias(COUNT_COLUMN)]
    if csv:
        for i in range(len(columns)):
            kind, missing = kind_columns(i)
            keys += [
                st.StructField(kind, st.IntegerType(), False),
                st.StructField(missing, st.BooleanType(), False),
            ]
            aggregates += [sf.max(kind).alias(kind), sf.max(missing).alias(missing)]

    def summarize(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from summarize_partition(batches, columns, csv)

    # Parquet: counting alone, in the JVM; CSV: the batches go through Python for the types.
    counted = (
        keyed.mapInPandas(summarize, st.StructType(keys)).groupBy(FILE_COLUMN, BLOCK_COLUMN)
        if csv
        else keyed.withColumn(COUNT_COLUMN, sf.lit(1)).groupBy(FILE_COLUMN, BLOCK_COLUMN)
    )
    summary = [r.asDict() for r in counted.agg(*aggregates).collect()]
    offsets = chunk_offsets(
        {(r[FILE_COLUMN], int(r[BLOCK_COLUMN])): int(r[COUNT_COLUMN]) for r in summary}
    )
    dtypes = csv_dtypes(columns, summary) if csv else None
    spark_types = {
        output_contract.INT64: st.LongType(),
        output_contract.FLOAT64: st.DoubleType(),
        output_contract.STRING: st.StringType(),
    }

    def check(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from check_partition(batches, offsets, csv, dtypes)

    fields = [
        *(
            st.StructField(f.name, spark_types[dtypes[f.name]], True) if dtypes else f
            for f in raw.schema.fields
        ),
        st.StructField(config.ROW_COLUMN, st.LongType(), False),
        st.StructField(config.REASON_COLUMN, st.StringType(), False),
        *(
            st.StructField(
                typed(name),
                st.StringType() if name == config.CATEGORICAL_FEATURE else st.DoubleType(),
                True,
            )
            for name in config.FEATURES
        ),
    ]
    return keyed.mapInPandas(check, st.StructType(fields))


def split_checked(checked: Any, inputs: list[str]) -> tuple[Any, Any]:
    """(valid rows, features typed for the model; rejected rows as read, with ``reason``)."""
    from pyspark.sql import functions as sf

    is_valid = sf.col(config.REASON_COLUMN) == ""
    valid = checked.where(is_valid).select(
        config.ROW_COLUMN,
        *(sf.col(typed(c)).alias(c) if c in config.FEATURES else sf.col(c) for c in inputs),
    )
    rejected = checked.where(~is_valid).select(config.ROW_COLUMN, *inputs, config.REASON_COLUMN)
    return valid, rejected


def score(spark: Any, valid: Any, model_uri: str, env_manager: str) -> Any:
    """``valid`` plus the prediction column, from MLflow's spark_udf over the raw features."""
    import mlflow.pyfunc
    from pyspark.sql import functions as sf

    predict = mlflow.pyfunc.spark_udf(
        spark, model_uri=model_uri, result_type="double", env_manager=env_manager
    )
    return valid.withColumn(config.PREDICTION_COLUMN, predict(sf.struct(*config.FEATURES)))


def run(
    spark: Any, input_uri: str, kind: str, model_uri: str, output: str, env_manager: str
) -> Counts:
    """Read, check, score and write both outputs; returns the row counts.

    The checked rows are kept (memory, spilling to disk) so the input is read and checked
    once for the two outputs.
    """
    from pyspark import StorageLevel

    raw = read_input(spark, input_uri, kind)
    checked = check_rows(raw, csv=kind == "csv").persist(StorageLevel.MEMORY_AND_DISK)
    try:
        valid, rejected = split_checked(checked, raw.columns)
        score(spark, valid, model_uri, env_manager).write.mode("overwrite").parquet(output)
        rejected.write.mode("overwrite").parquet(rejected_location(output))
        n_valid, n_rejected = valid.count(), rejected.count()
    finally:
        checked.unpersist()
    return Counts(rows_in=n_valid + n_rejected, rows_predicted=n_valid, rows_rejected=n_rejected)


def run_in_session(
    master: str, input_uri: str, kind: str, model_uri: str, output: str, env_manager: str
) -> tuple[Counts, float]:
    """``run`` on a session started for it on ``master`` and stopped after, whatever happens;
    (the row counts, the seconds reading, scoring and writing took: the JVM's start-up not
    counted)."""
    with tempfile.TemporaryDirectory(prefix="predict-spark-") as tmp:
        spark = start_session(master, Path(tmp))
        try:
            started = time.perf_counter()
            counts = run(spark, input_uri, kind, model_uri, output, env_manager)
            seconds = time.perf_counter() - started
        finally:
            spark.stop()
    return counts, seconds
