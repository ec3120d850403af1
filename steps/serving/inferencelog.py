"""The inference log: what ``serve`` answered, one Parquet row per predicted input row.

In: per answered prediction request (``InferenceLog.record``, called on the request path):
its request id, endpoint, the model that answered (name, version; its alias: the model URI's,
or the shadow alias for a canary request), the validated ``HousingRow`` rows and their
predictions, and the shadow model to score them with (``steps.serving.shadow.ShadowJob``;
None: no shadow). A request is sampled whole with probability ``sample_rate`` (1: every
request).

Out: Parquet files, one set per worker process, under ``log_dir``::

    <log_dir>/<yyyy-mm-dd>/requests-<pid>-<yyyymmddThhmmssZ>-<seq>.parquet

(the date and time: UTC, when the file's first row arrived; ``seq`` counts the process's
files from 0). A file is written under a hidden name (``.requests-...parquet.tmp``, which
pandas/pyarrow and Spark skip) and renamed when closed: once it reaches ``max_file_rows``
rows or about ``max_file_bytes`` bytes, ``max_file_seconds`` after its first row, and when the
worker exits (``close``). ``pd.read_parquet(log_dir)`` reads every closed file at any time.

Schema (``SCHEMA``), one row per input row:

- ``request_id`` string (the ``x-request-id`` answered), ``row`` int32 (0-based position in
  the request), ``ts`` timestamp[us, UTC] (when the request was answered), ``endpoint`` string
  (``/predict``, ``/invocations``, ``/v2/models/{model_name}/infer``);
- ``model_name``, ``model_version`` string, ``model_alias`` string (null: a pinned version);
- the raw features of ``steps.config.FEATURES``: eight float64 (``total_bedrooms`` null when
  not sent) and ``ocean_proximity`` string;
- ``prediction`` float64 (dollars); ``shadow_version`` string, ``shadow_prediction`` float64
  and ``shadow_alias`` string: the shadow model's prediction of the same row (null: no
  shadow, the shadow alias did not exist yet, or the shadow alias answered the request).

Off the request path: ``record`` only builds a tuple and ``put_nowait``s it on a bounded
queue; a full queue drops the request's rows and counts them
(``housing_api_inference_log_dropped_total``), it never blocks. A daemon thread drains the
queue every ``drain_interval_s``, turns the rows into columns a few hundred requests at a
time and writes them (``housing_api_inference_log_written_total``). The shadow model scores
the requests the writer takes, at every drain (one predict call per shadow version), so its
predictions reach ``/metrics`` (``housing_api_shadow_*``) within ~0.25 s and never delay
an answer. It polls rather than
blocking on ``get``: a blocked consumer is woken by every ``put``, one thread switch per
request.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import random
import re
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from steps import config
from steps.serving import metrics
from steps.serving.requestindex import RequestIndex
from steps.serving.shadow import ShadowJob, score_jobs

# --- defaults (serve's --log-dir / --log-sample-rate and the MLproject mirror these) --------
DEFAULT_LOG_DIR = "logs/inference"  # relative to serve's working directory
# Every request: measured within the throughput target on the 2-core box (docs/api.md).
DEFAULT_SAMPLE_RATE = 1.0
OFF_VALUES = frozenset({"", "none", "off", "false"})  # --log-dir values that turn the log off

# Requests waiting for the writer; full: dropped and counted. Seconds of single-row requests
# at the measured rate per worker: room for a writer stalled on a slow disk, not for a
# writer that cannot keep up (then dropping is the point).
QUEUE_REQUESTS = 10_000
DRAIN_INTERVAL_S = 0.25
ROW_GROUP_ROWS = 20_000  # rows buffered before a row group is written
# Queued requests turned into columns at a time, then the GIL is offered to the event loop:
# the writer's Python work comes in slices of ~1 ms, not one stall per row group.
CONVERT_REQUESTS = 256
MAX_FILE_ROWS = 500_000
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_FILE_SECONDS = 300.0

REQUEST_ID_HEADER = b"x-request-id"
# An incoming x-request-id is kept when it is this short and this plain (it goes into logs
# and a response header); anything else gets a fresh id.
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")

_FEATURE_VALUES = attrgetter(*config.FEATURES)
_NUMERIC = set(config.NUMERIC_FEATURES)


def _schema() -> Any:
    import pyarrow as pa

    features = [
        (name, pa.float64() if name in _NUMERIC else pa.string()) for name in config.FEATURES
    ]
    return pa.schema(
        [
            ("request_id", pa.string()),
            ("row", pa.int32()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("endpoint", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("model_alias", pa.string()),
            *features,
            ("prediction", pa.float64()),
            ("shadow_version", pa.string()),
            ("shadow_prediction", pa.float64()),
            ("shadow_alias", pa.string()),
        ]
    )


def request_id(incoming: bytes | str | None) -> str:
    """The id of a request: its ``x-request-id`` if sane (``_SANE_REQUEST_ID``), else a new
    uuid4 hex."""
    if isinstance(incoming, str):
        incoming = incoming.encode("latin-1", "replace")
    if incoming and _SANE_REQUEST_ID.fullmatch(incoming):
        return incoming.decode()
    return uuid.uuid4().hex


class InferenceLogError(ValueError):
    """A setting the log cannot work with: serve stops before binding a port."""


def log_dir_or_none(log_dir: str) -> Path | None:
    """``--log-dir`` as an absolute path, or None when it turns the log off (``OFF_VALUES``)."""
    if log_dir.strip().lower() in OFF_VALUES:
        return None
    return Path(log_dir).expanduser().resolve()


def check_settings(log_dir: str, sample_rate: float) -> Path | None:
    """Validate ``--log-dir`` and ``--log-sample-rate`` and create the directory.

    Out: the directory (None: log off). Raises ``InferenceLogError`` with a one-line message.
    """
    if not 0.0 <= sample_rate <= 1.0:
        raise InferenceLogError(f"--log-sample-rate must be within [0, 1], not {sample_rate:g}")
    directory = log_dir_or_none(log_dir)
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InferenceLogError(f"--log-dir {log_dir}: {exc.strerror or exc}") from None
    if not os.access(directory, os.W_OK):
        raise InferenceLogError(f"--log-dir {log_dir}: not writable")
    return directory


@dataclass(frozen=True)
class Limits:
    """When the writer writes a row group and closes a file."""

    row_group_rows: int = ROW_GROUP_ROWS
    max_file_rows: int = MAX_FILE_ROWS
    max_file_bytes: int = MAX_FILE_BYTES
    max_file_seconds: float = MAX_FILE_SECONDS
    drain_interval_s: float = DRAIN_INTERVAL_S


# What record() queues per request: (request id, unix time, endpoint, model name, version,
# alias, shadow job or None, rows, predictions).
Entry = tuple[str, float, str, str, str, str | None, ShadowJob | None, Sequence[Any], np.ndarray]


class ParquetFiles:
    """The open file of one process and its rotation; used by the writer thread only.

    In: column batches (``write``). Out: closed, renamed files (``close_file``); the paths of
    the files it closed in ``closed``.
    """

    def __init__(
        self,
        directory: Path,
        limits: Limits,
        pid: int,
        schema: Any = None,
        prefix: str = "requests",
    ) -> None:
        self.directory = directory
        self.limits = limits
        self.pid = pid
        self.schema = _schema() if schema is None else schema
        self.prefix = prefix
        self.seq = 0
        self.writer: Any = None
        self.tmp: Path | None = None
        self.final: Path | None = None
        self.rows = 0
        self.opened_at = 0.0  # monotonic
        self.closed: list[Path] = []

    def open_file(self) -> None:
        import pyarrow.parquet as pq

        now = datetime.now(UTC)
        day = self.directory / now.strftime("%Y-%m-%d")
        day.mkdir(parents=True, exist_ok=True)
        name = f"{self.prefix}-{self.pid}-{now.strftime('%Y%m%dT%H%M%SZ')}-{self.seq:06d}.parquet"
        self.seq += 1
        self.final = day / name
        self.tmp = day / f".{name}.tmp"  # hidden: readers of the directory skip it
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self.rows = 0
        self.opened_at = time.monotonic()

    def write(self, table: Any) -> None:
        """Append ``table`` (of ``self.schema``) as a row group; close the file when full."""
        if self.writer is None:
            self.open_file()
        self.writer.write_table(table)
        self.rows += table.num_rows
        size = self.tmp.stat().st_size if self.tmp is not None else 0
        if self.rows >= self.limits.max_file_rows or size >= self.limits.max_file_bytes:
            self.close_file()

    def expired(self) -> bool:
        age = time.monotonic() - self.opened_at
        return self.writer is not None and age >= self.limits.max_file_seconds

    def close_file(self) -> None:
        """Finish the open file (footer) and give it its final name: one atomic rename."""
        if self.writer is None:
            return
        self.writer.close()
        os.replace(self.tmp, self.final)
        self.closed.append(self.final)
        self.writer = self.tmp = self.final = None


class InferenceLog:
    """One process's inference log: ``record`` on the request path, a writer thread behind it.

    ``close`` (idempotent; also at interpreter exit) writes what is queued, closes the file
    and stops the thread.
    """

    prefix = "requests"
    scores_shadows = True  # the feedback and rejected-rows logs reuse the writer, not this

    def __init__(
        self,
        directory: Path,
        sample_rate: float = DEFAULT_SAMPLE_RATE,
        model_alias: str | None = None,
        limits: Limits | None = None,
        queue_size: int = QUEUE_REQUESTS,
        index: RequestIndex | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self.model_alias = model_alias
        self.limits = limits or Limits()
        self.index = index
        self.on_table: Any = None  # called with each table of rows the writer builds
        self.files = ParquetFiles(directory, self.limits, os.getpid(), self.schema(), self.prefix)
        self.queue: queue.Queue[Entry] = queue.Queue(maxsize=queue_size)
        self.pending: list[Entry] = []  # taken from the queue, not yet columns
        self.tables: list[Any] = []  # columns, not yet written
        self.buffered_rows = 0  # rows of both
        self.buffered_since = 0.0  # unix time of the oldest of them
        self.dropped_rows = 0
        self.written_rows = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one drain at a time: the thread's or close()'s
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # --- request path ---------------------------------------------------------------------
    def record(
        self,
        request_id: str,
        endpoint: str,
        name: str,
        version: str,
        rows: Sequence[Any],
        predictions: np.ndarray,
        alias: str | None = None,
        shadow: ShadowJob | None = None,
    ) -> None:
        """Queue one answered request (if sampled); never blocks: a full queue drops it.
        ``alias``: the answering alias (None: the log's ``model_alias``); ``shadow``: the
        shadow model to score the rows with, in the writer thread."""
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        answered_by = self.model_alias if alias is None else alias
        entry = (
            request_id, time.time(), endpoint, name, version, answered_by, shadow, rows,
            predictions,
        )  # fmt: skip
        try:
            self.queue.put_nowait(entry)
        except queue.Full:
            self.dropped_rows += len(rows)
            metrics.inference_log_dropped(len(rows))

    # --- writer thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.limits.drain_interval_s):
            try:
                self.drain()
            except Exception:  # a full disk must not kill the thread: retry next tick
                logging.getLogger("uvicorn.error").exception("inference log: write failed")

    def schema(self) -> Any:
        return _schema()

    def drain(self, final: bool = False) -> None:
        """Move the queue into the buffer; write a row group when it is big enough, or when
        the file is due (age) or ``final``; ``final`` also closes the file. The requests
        taken go to the request index (if any) at once, before their rows reach a file."""
        with self._lock:
            taken: list[tuple[str, float, int]] = []
            while True:
                try:
                    entry = self.queue.get_nowait()
                except queue.Empty:
                    break
                if not self.buffered_rows:
                    self.buffered_since = entry[1]
                self.pending.append(entry)
                # every entry: its id at [0], unix time at [1], one value per row at [-1]
                taken.append((entry[0], entry[1], len(entry[-1])))
                self.buffered_rows += len(entry[-1])
                if len(self.pending) >= CONVERT_REQUESTS:
                    self._convert()
                if self.buffered_rows >= self.limits.row_group_rows:
                    self._flush_buffer()
            if taken and self.index is not None:
                self.index.add(taken)
            self._score_shadows()
            if self.buffered_rows and (final or self._due()):
                self._flush_buffer()
            if final or self.files.expired():
                self.files.close_file()

    def _due(self) -> bool:
        """Buffered rows must reach a file within ``max_file_seconds`` of the first of them."""
        if self.files.writer is not None:
            return self.files.expired()
        return time.time() - self.buffered_since >= self.limits.max_file_seconds

    def _convert(self) -> None:
        """Pending requests -> an Arrow table of the buffer (also handed to ``on_table``, if
        set: the drift gauge); then let the event loop run."""
        if self.pending:
            self._score_shadows()
            self.tables.append(self.to_table(self.pending))
            if self.on_table is not None:
                self.on_table(self.tables[-1])
            self.pending = []
            time.sleep(0)  # releases the GIL: a request waiting for it goes first

    def _score_shadows(self) -> None:
        """The shadow model's predictions for the pending requests not scored yet, counted
        on /metrics."""
        if not self.scores_shadows:
            return
        todo = [e for e in self.pending if e[6] is not None and e[6].predictions is None]
        if not todo:
            return
        jobs = [e[6] for e in todo]
        scored = score_jobs(jobs, [e[7] for e in todo], [e[8] for e in todo])
        for alias, version, shadow_predictions, answered in scored:
            metrics.observe_shadow(alias, version, shadow_predictions, answered)

    def _flush_buffer(self) -> None:
        import pyarrow as pa

        self._convert()
        table = pa.concat_tables(self.tables)
        self.tables, self.buffered_rows = [], 0
        self.files.write(table)  # pyarrow releases the GIL while it encodes and writes
        self.written_rows += table.num_rows
        metrics.inference_log_written(table.num_rows)

    def to_table(self, entries: Sequence[Entry]) -> Any:
        """Queued requests -> one Arrow table of ``SCHEMA``, one row per input row."""
        import pyarrow as pa

        ids, index, ts, endpoints, names, versions, aliases, values = ([] for _ in range(8))
        predictions, shadow_versions, shadow_aliases, shadow_predictions = [], [], [], []
        any_shadow = False
        for rid, at, endpoint, name, version, alias, job, rows, predicted in entries:
            n = len(rows)
            ids += [rid] * n
            index += range(n)
            ts += [int(at * 1_000_000)] * n
            endpoints += [endpoint] * n
            names += [name] * n
            versions += [version] * n
            aliases += [alias] * n
            values += [_FEATURE_VALUES(row) for row in rows]
            predictions.append(np.asarray(predicted, dtype=np.float64))
            if job is not None and job.predictions is not None:
                any_shadow = True
                shadow_versions += [job.version] * n
                shadow_aliases += [job.alias] * n
                shadow_predictions.append(job.predictions)
            else:
                shadow_versions += [None] * n
                shadow_aliases += [None] * n
                shadow_predictions.append(np.full(n, np.nan))
        total = len(ids)
        columns = list(zip(*values, strict=True)) if values else [()] * len(config.FEATURES)
        schema = self.files.schema
        data = {
            "request_id": ids,
            "row": index,
            "ts": ts,
            "endpoint": endpoints,
            "model_name": names,
            "model_version": versions,
            "model_alias": aliases,
            **dict(zip(config.FEATURES, columns, strict=True)),
            "prediction": np.concatenate(predictions) if predictions else [],
            "shadow_version": shadow_versions if any_shadow else pa.nulls(total, pa.string()),
            "shadow_prediction": (
                pa.array(np.concatenate(shadow_predictions), from_pandas=True)  # NaN: null
                if any_shadow
                else pa.nulls(total, pa.float64())
            ),
            "shadow_alias": shadow_aliases if any_shadow else pa.nulls(total, pa.string()),
        }
        arrays = [
            v if isinstance(v, pa.Array) else pa.array(v, type=f.type)
            for f, v in ((f, data[f.name]) for f in schema)
        ]
        return pa.Table.from_arrays(arrays, schema=schema)

    # --- shutdown -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the thread, write everything queued and close the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout=30)
        self.drain(final=True)
        if self.index is not None:
            self.index.close()
        atexit.unregister(self.close)


def open_log(
    directory: Path | None, sample_rate: float, model_alias: str | None
) -> InferenceLog | None:
    """The process's log (None: off, or a sample rate of 0), writing the ids it logs to the
    directory's request index (``steps.serving.requestindex``: what ``/feedback`` checks)."""
    if directory is None or sample_rate <= 0:
        return None
    return InferenceLog(directory, sample_rate, model_alias, index=RequestIndex(directory))
