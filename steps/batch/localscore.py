"""Batch scoring in this process: ``predict --engine local``'s library (predict's command does
the MLflow logging; this module logs nothing).

In: a CSV or Parquet file (local path, ``file://``/``http(s)://`` URL, or any MLflow artifact
URI, downloaded first) of raw housing rows, and a registry URI (``steps.tracking.loading``).
Out: the rows split into valid ones (the model's dtypes, input ``row`` number) and rejected
ones (with a ``reason``, ``steps.data.schema.rejection_reasons``: the online API's rules,
vectorised), predictions for the valid rows computed chunk by chunk on threads, and tables
written as CSV or Parquet by extension, per the output contract both engines share
(``steps.batch.output_contract``: columns, dtypes, the rejects beside the output in its format).
A CSV input is read as text and typed by the contract's rule. Every failure to read, load or
name a table is a one-line ``StepError``. The Spark engine: ``steps.batch.sparkscore``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from steps import config
from steps.batch import output_contract, sparkscore
from steps.data import schema
from steps.infra.errors import StepError
from steps.tracking.loading import ModelLoadError, ModelRef, load_version

DEFAULT_CHUNK_ROWS = 50_000
# 0 = one prediction thread per CPU (the model itself predicts single-threaded).
DEFAULT_JOBS = 0
PROGRESS_LABEL = "predict"  # the progress bar reads as predict's, whoever scores


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
    df.insert(0, config.ROW_COLUMN, np.arange(len(df)))
    reasons = schema.rejection_reasons(df)
    bad = (reasons != "").to_numpy()
    rejected = df.loc[bad].assign(**{config.REASON_COLUMN: reasons[bad]})
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

    bar = tqdm(
        total=len(features), unit="row", unit_scale=True, disable=not progress, desc=PROGRESS_LABEL
    )
    with bar, ThreadPoolExecutor(max_workers=jobs) as pool:
        for done in pool.map(run, chunks(len(features), chunk_rows)):
            bar.update(done)
    return out


def with_predictions(valid: pd.DataFrame, predictions: np.ndarray) -> pd.DataFrame:
    return valid.assign(**{config.PREDICTION_COLUMN: predictions})


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
                # As text: the contract types each column by one rule on both engines.
                df = pd.read_csv(
                    path or location,
                    engine="pyarrow",
                    dtype="str",
                    na_values=list(config.CSV_MISSING_VALUES),
                    keep_default_na=False,
                )
            else:
                df = pd.read_parquet(path or location)
        except Exception as exc:  # parser, permission, decoding, network errors alike
            raise StepError(f"{uri}: cannot read as {kind}: {_one_line(exc)}") from exc
    check_columns(df, uri)
    return output_contract.typed_text_columns(df) if kind == "csv" else df


def write_table(df: pd.DataFrame, path: Path) -> None:
    """CSV or Parquet by extension, via pyarrow (pandas' CSV writer is ~5x slower); strings
    as Arrow ``string``, as Spark writes them (``steps.batch.output_contract``)."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    path.parent.mkdir(parents=True, exist_ok=True)
    table = output_contract.with_string_columns(pa.Table.from_pandas(df, preserve_index=False))
    if table_format(str(path)) == "csv":
        pyarrow.csv.write_csv(table, path)
    else:
        pyarrow.parquet.write_table(table, path)


def rejected_path(output: Path) -> Path:
    """``p.parquet`` -> ``p.rejected.parquet``, ``p.csv`` -> ``p.rejected.csv``: the contract's."""
    return output.with_name(output_contract.rejected_location(output.name))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def load_model(model_uri: str) -> tuple[Any, ModelRef]:
    try:
        return load_version(model_uri)
    except ModelLoadError as exc:
        raise StepError(str(exc)) from exc
