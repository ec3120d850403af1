"""``POST /feedback``: the actual values of a served request's rows, once they are known,
logged beside the inference log for ``monitor`` to join on the request id.

In: a body ``{"request_id": "<id>", "actuals": [<one value per row of that request>]}``
(dollars, finite, >= 0) and the request index (``steps.serving.requestindex``: which ids the
log holds, with their row counts). Out (``Feedback.answer``): 200 ``{"request_id", "rows"}``;
422 for a body of another shape (pydantic's field-level ``detail``) or a count of actuals
that differs from the request's rows; 404 for an id the log does not hold: never answered
and logged (a request dropped by sampling included), or answered longer ago than the
retention. The answering worker indexes a request within one drain of the log's writer
(~0.25 s); an id not found at once is looked up again after ``INDEX_WAIT_S`` before a 404.
Nothing is written unless the answer is 200.

Written: ``<log_dir>/_feedback/<yyyy-mm-dd>/feedback-<pid>-<yyyymmddThhmmssZ>-<seq>.parquet``,
one row per actual: ``request_id`` string, ``row`` int32, ``ts`` timestamp[us, UTC] (when the
feedback arrived), ``actual`` float64; by the inference log's writer (bounded queue, a
thread, rotation, a hidden name until closed), so the same durability: rows still in memory
are lost if the worker is killed with SIGKILL. The leading ``_`` keeps
``pd.read_parquet(log_dir)`` to the requests; ``pd.read_parquet(f"{log_dir}/_feedback")``
reads the feedback. Feedback sent twice for a request: the latest wins in ``monitor``.
"""

from __future__ import annotations

import asyncio
import queue
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from steps.serving.inferencelog import DRAIN_INTERVAL_S, InferenceLog, Limits
from steps.serving.requestindex import RequestIndex
from steps.serving.rowschema import DEFAULT_MAX_ROWS

DIR_NAME = "_feedback"
# Two drains of the answering worker's writer, and a margin for a busy machine.
INDEX_WAIT_S = 3 * DRAIN_INTERVAL_S
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"  # what the API answers in x-request-id

Actual = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def body_model(max_rows: int = DEFAULT_MAX_ROWS) -> type[BaseModel]:
    class FeedbackRequest(BaseModel):
        """Actual values for the rows of one answered request, in the request's row order."""

        model_config = ConfigDict(extra="forbid")
        request_id: str = Field(pattern=REQUEST_ID_PATTERN, description="its x-request-id")
        actuals: list[Actual] = Field(min_length=1, max_length=max_rows)

    return FeedbackRequest


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("request_id", pa.string()),
            ("row", pa.int32()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("actual", pa.float64()),
        ]
    )


class FeedbackLog(InferenceLog):
    """The inference log's writer with feedback's schema and file names."""

    prefix = "feedback"
    scores_shadows = False

    def schema(self) -> Any:
        return _schema()

    def record_actuals(self, request_id: str, actuals: list[float]) -> bool:
        """Queue one request's actuals; False when the queue is full (nothing queued)."""
        try:
            self.queue.put_nowait((request_id, time.time(), actuals))
        except queue.Full:
            return False
        return True

    def to_table(self, entries: Any) -> Any:
        import pyarrow as pa

        ids, rows, ts, actuals = [], [], [], []
        for rid, at, values in entries:
            ids += [rid] * len(values)
            rows += range(len(values))
            ts += [int(at * 1_000_000)] * len(values)
            actuals += values
        data = {"request_id": ids, "row": rows, "ts": ts, "actual": actuals}
        schema = self.files.schema
        arrays = [pa.array(data[f.name], type=f.type) for f in schema]
        return pa.Table.from_arrays(arrays, schema=schema)


class Feedback:
    """``POST /feedback`` over one log directory: the index to check ids, the log to write."""

    def __init__(
        self,
        index: RequestIndex,
        log: FeedbackLog,
        max_rows: int = DEFAULT_MAX_ROWS,
        index_wait_s: float = INDEX_WAIT_S,
    ) -> None:
        self.index = index
        self.log = log
        self.body = body_model(max_rows)
        self.index_wait_s = index_wait_s

    async def answer(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) for a raw request body; writes only on 200."""
        try:
            body = self.body.model_validate_json(raw)
        except ValidationError as exc:
            detail = [
                {"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"]}
                for e in exc.errors()
            ]
            return 422, {"detail": detail}
        rows = self.index.rows_of(body.request_id)
        if rows is None:  # perhaps answered a moment ago by a worker whose writer has not run
            await asyncio.sleep(self.index_wait_s)
            rows = self.index.rows_of(body.request_id)
        if rows is None:
            days = self.index.retention_s / 86_400
            return 404, {
                "detail": f"unknown request id {body.request_id!r}: not in the inference log, "
                f"or answered more than {days:g} days ago"
            }
        if rows != len(body.actuals):
            item = {
                "type": "row_count",
                "loc": ["body", "actuals"],
                "msg": f"request {body.request_id} had {rows} row(s); got "
                f"{len(body.actuals)} actual(s)",
            }
            return 422, {"detail": [item]}
        if not self.log.record_actuals(body.request_id, body.actuals):
            return 503, {"detail": "feedback queue full: retry later"}
        return 200, {"request_id": body.request_id, "rows": rows}

    def close(self) -> None:
        self.log.close()


def open_feedback(
    log_dir: Path | None, max_rows: int = DEFAULT_MAX_ROWS, limits: Limits | None = None
) -> Feedback | None:
    """The process's feedback endpoint over ``log_dir`` (None: no inference log, no feedback)."""
    if log_dir is None:
        return None
    return Feedback(RequestIndex(log_dir), FeedbackLog(log_dir / DIR_NAME, limits=limits), max_rows)
