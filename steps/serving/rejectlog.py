"""Rows the API rejected, logged beside the inference log for ``monitor``.

In: per rejected prediction request (``RejectLog.record``, on the request path, only for
422/413 answers): its request id, endpoint and pydantic's errors. Out: one Parquet row per
rejected input row and reason: ``request_id`` string, ``row`` int32 (the row's position in
the request; -1 when the body as a whole was refused: not JSON, too many rows, no rows
field), ``ts`` timestamp[us, UTC], ``endpoint`` string, ``reason`` string (``<field>: <pydantic
message>``, e.g. ``ocean_proximity: Input should be '<1H OCEAN', ...``).

Written: ``<log_dir>/_rejected/<yyyy-mm-dd>/rejected-<pid>-<yyyymmddThhmmssZ>-<seq>.parquet``
by the inference log's writer (bounded queue, a thread, rotation, a hidden name until
closed): never on the request path, and a full queue drops, as the log does. The leading
``_`` keeps ``pd.read_parquet(log_dir)`` to the answered requests.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steps.serving.inferencelog import InferenceLog, Limits

DIR_NAME = "_rejected"
WHOLE_BODY = -1  # ``row`` of a reason about the body, not one of its rows


def reasons(errors: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
    """pydantic errors (``ValidationError.errors()``) -> (row, reason) pairs."""
    out = []
    for err in errors:
        loc = list(err.get("loc", ()))
        if len(loc) >= 2 and loc[0] == "data" and isinstance(loc[1], int):
            field = ".".join(str(part) for part in loc[2:]) or "row"
            out.append((loc[1], f"{field}: {err.get('msg', '')}"))
        else:
            where = ".".join(str(part) for part in loc) or "body"
            out.append((WHOLE_BODY, f"{where}: {err.get('msg', '')}"))
    return out


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("request_id", pa.string()),
            ("row", pa.int32()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("endpoint", pa.string()),
            ("reason", pa.string()),
        ]
    )


class RejectLog(InferenceLog):
    """The inference log's writer with the rejected rows' schema and file names."""

    prefix = "rejected"
    scores_shadows = False

    def schema(self) -> Any:
        return _schema()

    def record_rejected(self, request_id: str, endpoint: str, found: list[tuple[int, str]]) -> None:
        """Queue one rejected request's (row, reason) pairs; a full queue drops them."""
        if found:
            try:
                self.queue.put_nowait((request_id, time.time(), endpoint, found))
            except queue.Full:
                self.dropped_rows += len(found)

    def to_table(self, entries: Any) -> Any:
        import pyarrow as pa

        data: dict[str, list] = {k: [] for k in ("request_id", "row", "ts", "endpoint", "reason")}
        for rid, at, endpoint, found in entries:
            for row, reason in found:
                data["request_id"].append(rid)
                data["row"].append(row)
                data["ts"].append(int(at * 1_000_000))
                data["endpoint"].append(endpoint)
                data["reason"].append(reason[:500])
        schema = self.files.schema
        return pa.Table.from_arrays(
            [pa.array(data[f.name], type=f.type) for f in schema], schema=schema
        )


def open_rejects(log_dir: Path | None, limits: Limits | None = None) -> RejectLog | None:
    """The process's rejected-rows log under ``log_dir`` (None: no inference log)."""
    return None if log_dir is None else RejectLog(log_dir / DIR_NAME, limits=limits)
