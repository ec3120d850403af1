"""What ``monitor`` reads: a window of the inference log, the feedback that came back, or a
batch file of rows.

In: the log directory (``steps.serving.inferencelog``) and a window ``[since, until)`` in UTC;
feedback files (the log's ``_feedback`` set, ``steps.serving.feedback``, and/or a CSV or
Parquet file with ``request_id``, ``row``, ``actual``); or a rows file (CSV/Parquet, any
location predict reads; predict's output, its predictions and rejected rows included).
Out: DataFrames in the log's columns (``request_id``, ``row``, ``ts``, ``model_version``,
the raw features, ``prediction``; a batch may carry ``actual``) and feedback rows
(``request_id``, ``row``, ``actual``, ``ts``). Reads only; a missing directory, an unreadable
file or missing columns is a one-line ``StepError``. No MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from steps import config
from steps.batch import localscore
from steps.infra.errors import StepError
from steps.monitoring.live import ACTUAL_COLUMN, FEEDBACK_COLUMNS
from steps.serving.feedback import DIR_NAME as FEEDBACK_DIR
from steps.serving.rejectlog import DIR_NAME as REJECTED_DIR

# An empty --since: this long before --until (a daily job judges the last day).
DEFAULT_WINDOW = timedelta(hours=24)
# A log file is dated by its first row and stays open up to 300 s: rows of a window may sit
# in the previous day's directory.
FILE_SPAN = timedelta(minutes=10)
BATCH_REQUEST_ID = "batch"
ACTUAL_NAMES = (ACTUAL_COLUMN, config.TARGET)  # where a batch file's actual values may be


def parse_time(text: str, name: str) -> pd.Timestamp:
    """An ISO-8601 time as UTC (without a zone: UTC); a bad one is a one-line error."""
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise StepError(f"--{name} {text!r} is not an ISO-8601 time") from None
    if pd.isna(stamp):
        raise StepError(f"--{name} {text!r} is not an ISO-8601 time")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def window(
    since: str, until: str, now: pd.Timestamp | None = None
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``[since, until)``: ``until`` defaults to now, ``since`` to ``DEFAULT_WINDOW`` before."""
    end = parse_time(until, "until") if until else (now or pd.Timestamp.now(tz="UTC"))
    start = parse_time(since, "since") if since else end - DEFAULT_WINDOW
    if start >= end:
        raise StepError(
            f"the window is empty: --since {start.isoformat()} is not before "
            f"--until {end.isoformat()}"
        )
    return start, end


def log_files(directory: Path, prefix: str, since: pd.Timestamp, until: pd.Timestamp) -> list[Path]:
    """Closed files of a log file set whose date directory can hold rows of the window."""
    days = pd.date_range((since - FILE_SPAN).normalize(), until.normalize(), freq="D")
    files: list[Path] = []
    for day in days:
        files += sorted((directory / day.strftime("%Y-%m-%d")).glob(f"{prefix}-*.parquet"))
    return files


def _read_set(
    directory: Path, prefix: str, since: pd.Timestamp, until: pd.Timestamp, columns: list[str]
) -> pd.DataFrame:
    """The rows of a log file set (``prefix``) whose ``ts`` is in ``[since, until)``."""
    import pyarrow.dataset as ds

    files = log_files(directory, prefix, since, until)
    if not files:
        return pd.DataFrame(columns=columns)
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    at = ds.field("ts")
    table = dataset.to_table(filter=(at >= since.to_pydatetime()) & (at < until.to_pydatetime()))
    return table.to_pandas()


def read_log_window(log_dir: Path, since: pd.Timestamp, until: pd.Timestamp) -> pd.DataFrame:
    """The inference log's rows answered in ``[since, until)``."""
    if not log_dir.is_dir():
        raise StepError(f"--log-dir {log_dir}: no such directory")
    columns = ["request_id", "row", "ts", "model_version", "prediction", *config.FEATURES]
    columns += ["shadow_version", "shadow_prediction"]
    return _read_set(log_dir, "requests", since, until, columns)


def read_rejected_window(
    log_dir: Path, since: pd.Timestamp, until: pd.Timestamp
) -> tuple[int, pd.Series]:
    """Rows the API rejected in ``[since, until)`` (``steps.serving.rejectlog``): how many
    (a request refused as a whole counts once), and rows per field named in the reasons."""
    columns = ["request_id", "row", "reason"]
    found = _read_set(log_dir / REJECTED_DIR, "rejected", since, until, columns)
    rows = found.drop_duplicates(["request_id", "row"])
    return len(rows), by_field(found["reason"])


def by_field(reasons: pd.Series) -> pd.Series:
    """Rejection reasons (``<field>: <problem>``, '; '-joined) -> rows per field."""
    fields = reasons.astype(str).str.split("; ").explode().str.split(":").str[0]
    return fields[fields != ""].value_counts()


def read_feedback_files(log_dir: Path | None, extra: str) -> pd.DataFrame:
    """Feedback from the log's ``_feedback`` file set and/or a file (``extra``; its rows
    count as arrived after any logged feedback, so they win)."""
    frames = []
    directory = log_dir / FEEDBACK_DIR if log_dir is not None else None
    if directory is not None and directory.is_dir() and any(directory.rglob("*.parquet")):
        frames.append(pd.read_parquet(directory, columns=list(FEEDBACK_COLUMNS)))
    if extra:
        table = read_any(extra)
        missing = [c for c in ("request_id", "row", ACTUAL_COLUMN) if c not in table.columns]
        if missing:
            raise StepError(f"--feedback {extra}: missing column(s) {', '.join(missing)}")
        table = table.loc[:, ["request_id", "row", ACTUAL_COLUMN]].assign(
            ts=pd.Timestamp.max.tz_localize("UTC")
        )
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=list(FEEDBACK_COLUMNS))
    out = pd.concat(frames, ignore_index=True)
    out[ACTUAL_COLUMN] = pd.to_numeric(out[ACTUAL_COLUMN], errors="coerce")
    return out.dropna(subset=[ACTUAL_COLUMN])


def read_any(uri: str) -> pd.DataFrame:
    """A CSV or Parquet file, whatever its columns."""
    kind = localscore.table_format(uri)
    path = config.local_path(uri)
    if path is not None and not path.is_file():
        raise StepError(f"{uri}: no such file")
    try:
        return pd.read_csv(path or uri) if kind == "csv" else pd.read_parquet(path or uri)
    except Exception as exc:  # parser, permission, decoding errors alike
        raise StepError(f"{uri}: cannot read as {kind}: {' '.join(str(exc).split())}") from exc


@dataclass(frozen=True)
class Batch:
    """A batch file: its valid rows (``request_id`` = ``batch``, ``row`` = input position),
    and how many rows the API's rules reject (with predict's rejected file beside it, if any)."""

    rows: pd.DataFrame
    rejected: int
    reasons: pd.Series  # field -> rows rejected for it


def read_batch(uri: str) -> Batch:
    """A rows file as monitor judges it: the feature columns checked by the API's rules
    (``schema.rejection_reasons``), predictions from predict's column when the file has one
    (else NaN: not scored yet), actuals from ``actual`` or the target column, the version
    from ``model_version`` (else none). Predict's output: its rejected rows are beside it."""
    table = read_any(uri).reset_index(drop=True)
    missing = [c for c in config.FEATURES if c not in table.columns]
    if missing:
        raise StepError(f"{uri}: missing column(s): {', '.join(missing)}")
    valid, rejected = localscore.split_valid(table.loc[:, list(config.FEATURES)])
    reasons = rejected[config.REASON_COLUMN]
    beside = config.local_path(uri)
    if config.PREDICTION_COLUMN in table.columns and beside is not None:
        rejects_file = localscore.rejected_path(beside)
        if rejects_file.is_file():
            earlier = read_any(str(rejects_file))
            reasons = pd.concat([reasons, earlier.get(config.REASON_COLUMN, pd.Series())])
    kept = table.loc[valid.index]

    def column(name: str, default: object) -> object:
        return kept[name].to_numpy() if name in kept.columns else default

    rows = pd.DataFrame(
        {
            "request_id": BATCH_REQUEST_ID,
            "row": valid[config.ROW_COLUMN].to_numpy(),
            "model_version": column("model_version", None),
            **{name: valid[name].to_numpy() for name in config.FEATURES},
            "prediction": column(config.PREDICTION_COLUMN, np.nan),
        }
    )
    rows["prediction"] = rows["prediction"].astype(np.float64)
    actual = next((c for c in ACTUAL_NAMES if c in kept.columns), None)
    if actual is not None:
        rows[ACTUAL_COLUMN] = pd.to_numeric(kept[actual], errors="coerce").to_numpy(np.float64)
    return Batch(rows, len(reasons), by_field(reasons))
