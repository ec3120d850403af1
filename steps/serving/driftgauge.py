"""Per-feature drift of a worker's recent rows, as gauges on ``/metrics``.

In: the reference data profile of the served version's data (the one the data contract
keeps; serve looks it up at start-up), and the Arrow tables the inference log's writer
builds (``InferenceLog.on_table``: off the request path, a few hundred requests at a time or
when a row group is written, so at most ``MAX_FILE_SECONDS`` behind). Out: every
``interval_s`` a daemon thread judges the last ``recent_rows`` rows with ``monitor``'s own
code (``steps.monitoring.drift.feature_drift``: the contract's PSI and missing rate, the
window-size-aware thresholds) and sets

- ``housing_api_feature_psi{feature}``, ``housing_api_feature_missing_rate_change{feature}``;
- ``housing_api_feature_drift{feature}``: 1 when the feature is over its threshold;
- ``housing_api_drift_window_rows``: rows judged (below ``drift.RULES.min_rows``: not judged).

Each worker judges the rows it answered (the kernel spreads connections over workers); the
gauges keep the highest value of the live workers. Writes nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from steps.serving import metrics

RECENT_ROWS = 5_000  # a window monitor judges well (bench/monitor_calibration.py: 0 alarms)
INTERVAL_S = 60.0


class DriftGauge:
    """The recent rows of one worker and the thread that judges them."""

    def __init__(
        self,
        profile: dict[str, Any],
        recent_rows: int = RECENT_ROWS,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.profile = profile
        self.recent_rows = recent_rows
        self.interval_s = interval_s
        self.tables: deque[Any] = deque()
        self.rows = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift-gauge", daemon=True)

    def start(self) -> DriftGauge:
        self._thread.start()
        return self

    def add(self, table: Any) -> None:
        """Keep a log table's rows (the writer thread calls this); drop the oldest beyond
        ``recent_rows``."""
        with self._lock:
            self.tables.append(table)
            self.rows += table.num_rows
            while self.tables and self.rows - self.tables[0].num_rows >= self.recent_rows:
                self.rows -= self.tables.popleft().num_rows

    def judge(self) -> int:
        """Judge the recent rows now and set the gauges; returns the rows judged."""
        import pyarrow as pa

        from steps.monitoring import drift

        with self._lock:
            tables = list(self.tables)
        if not tables:
            return 0
        recent = pa.concat_tables(tables).to_pandas().tail(self.recent_rows)
        metrics.drift_window(len(recent))
        if len(recent) < drift.RULES.min_rows:
            return len(recent)
        for name, found in drift.feature_drift(recent, self.profile).items():
            metrics.feature_drift(
                name, found.psi.value, found.missing_rate_change.value, found.drifted
            )
        return len(recent)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.judge()
            except Exception:  # a bad table must not end the gauge for good
                logging.getLogger("uvicorn.error").exception("drift gauge: judging failed")

    def close(self) -> None:
        self._stop.set()


def reference_profile(ref: Any) -> dict[str, Any] | None:
    """The data profile the data contract keeps for the version's data (``ref``: a
    ``ModelRef``), or None when there is none (no gauges then); looked up once, at start-up."""
    import mlflow

    from steps import config
    from steps.tracking.reference import data_profile, data_run

    md5 = ref.tags.get(config.TAG_DVC_MD5)
    try:
        run = data_run(mlflow.MlflowClient(), md5) if md5 else None
        return data_profile(run.info.run_id) if run is not None else None
    except Exception as exc:  # no reference must not stop serving
        logging.getLogger("uvicorn.error").warning("drift gauge: no reference: %s", exc)
        return None


def start(
    log: Any, profile: dict[str, Any] | None, interval_s: float = INTERVAL_S
) -> DriftGauge | None:
    """Judge ``log``'s rows against ``profile`` every ``interval_s`` seconds (None, or no
    log: no gauge)."""
    if log is None or profile is None:
        return None
    # imported now, before the worker takes requests and freezes its objects (gc.freeze),
    # not 60 s into serving in the gauge's thread, where the import would hold the GIL
    import scipy.special  # noqa: F401

    from steps.monitoring import drift  # noqa: F401

    gauge = DriftGauge(profile, interval_s=interval_s).start()
    log.on_table = gauge.add
    return gauge
