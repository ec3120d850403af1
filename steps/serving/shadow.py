"""Shadow and canary serving of a second alias (``--shadow-alias``, usually ``challenger``).

In: the request id (``x-request-id``), ``--canary-percent`` and, per logged request, the
shadow model that was current when it was answered. Out: which requests the shadow alias
answers (``answers_canary``: deterministic, so a client, a test or a log reader can tell),
and the shadow model's predictions for the requests the champion answered
(``score_jobs``, called by the inference log's writer thread, off the response path).
Nothing written here: the predictions go to the inference log's ``shadow_*`` columns
(``steps.serving.inferencelog``) and to ``/metrics`` (``steps.serving.metrics``).
Pure: no MLflow, no file I/O.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from steps.serving.batching import predict_rows

# --- defaults (serve's --shadow-alias / --canary-percent and the MLproject mirror these) ----
DEFAULT_SHADOW_ALIAS = ""  # empty: no shadow, no canary
DEFAULT_CANARY_PERCENT = 0

CANARY_BUCKETS = 100


class ShadowSettingsError(ValueError):
    """Shadow/canary options serve cannot work with: it stops before binding a port."""


def canary_bucket(request_id: str) -> int:
    """The request's bucket, 0-99: CRC-32 of its id, the same in every worker and run
    (Python's ``hash`` of a str is salted per process)."""
    return zlib.crc32(request_id.encode()) % CANARY_BUCKETS


def answers_canary(request_id: str, percent: int) -> bool:
    """True when the shadow alias answers this request: its bucket is below ``percent``.
    An empty id (none assigned yet) is never a canary."""
    return bool(request_id) and canary_bucket(request_id) < percent


def check_settings(
    shadow_alias: str, canary_percent: int, served_alias: str | None, logging: bool
) -> str | None:
    """Validate ``--shadow-alias`` and ``--canary-percent`` against the served alias and
    whether the inference log is on. Out: the shadow alias (None: off). Raises
    ``ShadowSettingsError`` with a one-line message."""
    alias = shadow_alias.strip()
    if not 0 <= canary_percent <= 100:
        raise ShadowSettingsError(f"--canary-percent must be within [0, 100], not {canary_percent}")
    if not alias:
        if canary_percent:
            raise ShadowSettingsError(
                "--canary-percent needs --shadow-alias: the alias whose version answers the canary"
            )
        return None
    if alias == served_alias:
        raise ShadowSettingsError(f"--shadow-alias {alias} is the alias already served")
    if not logging and not canary_percent:
        raise ShadowSettingsError(
            f"--shadow-alias {alias}: shadow predictions go to the inference log, which is off"
        )
    return alias


@dataclass(eq=False)
class ShadowJob:
    """One champion-answered request for the shadow model to score: made on the request path
    (the model current then), scored once by the log's writer (``score_jobs``)."""

    alias: str
    model: Any  # a ``ServedModel``: ``.score`` and ``.ref.version``
    version: str = ""
    predictions: np.ndarray | None = field(default=None, repr=False)


def score_jobs(
    jobs: Sequence[ShadowJob],
    rows: Sequence[Sequence[Any]],
    answered: Sequence[np.ndarray],
) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """Score each unscored job on its request's ``rows`` (same positions as ``jobs``), one
    predict call per shadow model, and fill in its ``version`` and ``predictions``. A model
    that fails leaves its jobs' predictions NaN (the answers were sent; the log keeps them).
    Out: per shadow model, (alias, version, its predictions, the answered predictions of
    the same rows), for the metrics."""
    groups: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        if job.predictions is None:
            groups.setdefault(id(job.model), []).append(i)
    scored = []
    for indices in groups.values():
        model = jobs[indices[0]].model
        batch = [row for i in indices for row in rows[i]]
        try:
            predicted = predict_rows(model.score, batch)
        except Exception:  # a shadow that cannot score must not stop the log
            predicted = np.full(len(batch), np.nan)
        start = 0
        for i in indices:
            n = len(rows[i])
            jobs[i].version = model.ref.version
            jobs[i].predictions = predicted[start : start + n]
            start += n
        champion = np.concatenate([np.asarray(answered[i], dtype=np.float64) for i in indices])
        scored.append((jobs[indices[0]].alias, model.ref.version, predicted, champion))
    return scored
