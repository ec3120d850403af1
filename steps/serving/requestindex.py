"""Which requests the inference log holds, shared by serve's worker processes: what
``POST /feedback`` checks an id against (``steps.serving.feedback``).

In: (request id, unix time, row count) of every logged request, from each worker's log
writer thread (``add``, at every drain: within ~0.25 s of the answer). Out: ``rows_of(id)``:
the row count of a logged request answered within the retention, else None (never answered
and logged, or answered longer ago than the retention).

Written: ``<log_dir>/_requests.sqlite`` (SQLite in WAL mode: every worker writes and reads it
at once; the leading ``_`` keeps pandas, pyarrow and Spark from taking it for part of the
log). Rows older than the retention are deleted by the writers, at most once a minute. An
id answered twice (a client's own ``x-request-id`` reused) names its latest request.

Why a shared file: feedback for a request may reach any worker, and a worker's own memory
holds only the requests it answered; the log's Parquet files are closed (readable) up to
300 s after their rows arrive.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

# How long after its answer a request accepts feedback: a week of delay for the actuals
# (a sale closing, a label arriving) is what the log keeps ids for.
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
FILE_NAME = "_requests.sqlite"
PRUNE_EVERY_S = 60.0
BUSY_TIMEOUT_S = 10.0


class RequestIndex:
    """The request index of one log directory; one SQLite connection per thread using it."""

    def __init__(self, directory: Path, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.path = Path(directory) / FILE_NAME
        self.retention_s = retention_s
        self._local = threading.local()
        self._pruned_at = 0.0
        with self._connection() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS requests (request_id TEXT PRIMARY KEY, "
                "ts REAL NOT NULL, rows INTEGER NOT NULL) WITHOUT ROWID"
            )
            db.execute("CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)")

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            self._local.db = db
        return db

    def add(self, requests: list[tuple[str, float, int]]) -> None:
        """Record logged requests (id, unix time, rows); prune expired ones now and then."""
        with self._connection() as db:
            db.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?)", requests)
            now = time.time()
            if now - self._pruned_at >= PRUNE_EVERY_S:
                self._pruned_at = now
                db.execute("DELETE FROM requests WHERE ts < ?", (now - self.retention_s,))

    def rows_of(self, request_id: str, now: float | None = None) -> int | None:
        """The row count of ``request_id`` if it was logged within the retention, else None."""
        found = (
            self._connection()
            .execute("SELECT ts, rows FROM requests WHERE request_id = ?", (request_id,))
            .fetchone()
        )
        if found is None or found[0] < (now or time.time()) - self.retention_s:
            return None
        return int(found[1])

    def close(self) -> None:
        """Close this thread's connection (others close with their threads)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
