"""Prediction for the API: validated rows in, dollars out, with concurrent requests batched.

In: a fitted pipeline (``steps.features.HousingFeatures`` + estimator, as logged), made a
``Scorer`` once per loaded version (``scorer``), and the ``steps.serving.rowschema.HousingRow`` rows
of one or more requests. Out: float64 predictions, one per row, each request's slice resolved
on its own future. No I/O, no MLflow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline

from steps.serving.rowschema import HousingRow, rows_to_array

# A fitted pipeline's predict as a function of the (n, 9) raw-value array.
Scorer = Callable[[np.ndarray], np.ndarray]


def scorer(pipeline: Any) -> Scorer:
    """``pipeline.predict`` as a plain chain of its steps' own ``transform`` and the final
    ``predict``, what ``Pipeline.predict`` runs without metadata routing.

    What it leaves out is the check that the pipeline is fitted, repeated on every call
    (sklearn derives every step's tags for it: ~0.1 ms, a sixth of scoring one row). A
    served version is checked once instead, when it is loaded and scores the probe row.
    Anything but a ``Pipeline`` keeps its own predict.
    """
    if not isinstance(pipeline, Pipeline):
        return pipeline.predict
    transforms = [
        step.transform
        for _, step in pipeline.steps[:-1]
        if step is not None and not (isinstance(step, str) and step == "passthrough")
    ]
    final = pipeline.steps[-1][1].predict

    def score(X: np.ndarray) -> np.ndarray:
        for transform in transforms:
            X = transform(X)
        return final(X)

    return score


def predict_rows(score: Scorer, rows: Sequence[HousingRow]) -> np.ndarray:
    """Dollar predictions for validated rows, float64, one per row: the logged pipeline's own
    steps (``scorer``) on the raw values (no preprocessing here)."""
    return np.asarray(score(rows_to_array(rows)), dtype=np.float64).reshape(-1)


class MicroBatcher:
    """Coalesce the rows of concurrent requests into one ``predict`` call.

    A request appends its rows and awaits a future; the first one in schedules a flush with
    ``call_soon``, which asyncio runs only after every callback already ready, i.e. after
    the other requests that arrived in the same event-loop tick have queued their rows.
    No timer, so a lone request never waits. Predict runs on the loop thread: it is
    CPU-bound and GIL-heavy, and while it runs new requests pile up for the next batch.
    Each request names the scorer it started with: after a model swap, requests already
    in flight are still answered by the model their response will name.
    """

    def __init__(self, predict: Callable[[Scorer, Sequence[HousingRow]], np.ndarray]) -> None:
        self._predict = predict
        self._pending: list[tuple[Scorer, Sequence[HousingRow], asyncio.Future[np.ndarray]]] = []

    def submit(self, score: Scorer, rows: Sequence[HousingRow]) -> Awaitable[np.ndarray]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((score, rows, future))
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        groups: dict[int, list[tuple[Scorer, Sequence[HousingRow], asyncio.Future[np.ndarray]]]]
        groups = {}
        for item in pending:
            groups.setdefault(id(item[0]), []).append(item)
        for batch in groups.values():
            self._flush_group(batch)

    def _flush_group(
        self, batch: list[tuple[Scorer, Sequence[HousingRow], asyncio.Future[np.ndarray]]]
    ) -> None:
        if len(batch) == 1:
            self._run_one(*batch[0])
            return
        score = batch[0][0]
        try:
            predictions = self._predict(score, [row for _, rows, _ in batch for row in rows])
        except Exception:
            # Isolate the failure: rerun each request alone so only the culprit fails.
            for item in batch:
                self._run_one(*item)
            return
        start = 0
        for _, rows, future in batch:
            if not future.done():  # a cancelled (disconnected) request has no reader
                future.set_result(predictions[start : start + len(rows)])
            start += len(rows)

    def _run_one(
        self, score: Scorer, rows: Sequence[HousingRow], future: asyncio.Future[np.ndarray]
    ) -> None:
        try:
            result = self._predict(score, rows)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)
