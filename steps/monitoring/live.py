"""Live accuracy: served predictions joined with the actuals that came back as feedback.

In: served rows (``request_id``, ``row``, ``model_version``, ``prediction``) and feedback rows
(``request_id``, ``row``, ``actual``, ``ts``: when it arrived). Out: the rows with an
``actual`` column (NaN where none came back; of several answers for one row the latest
wins), and per served version the rows, the rows with actuals, RMSE and MAE in dollars.
Pure: no MLflow, no I/O.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from steps.monitoring.drift import PREDICTION_COLUMN, VERSION_COLUMN

ACTUAL_COLUMN = "actual"
KEY = ["request_id", "row"]
FEEDBACK_COLUMNS = (*KEY, ACTUAL_COLUMN, "ts")


def with_actuals(rows: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with the latest actual fed back for each (request id, row); NaN where none."""
    rows = rows.drop(columns=[ACTUAL_COLUMN], errors="ignore")
    if feedback.empty:
        return rows.assign(**{ACTUAL_COLUMN: np.nan})
    latest = (
        feedback.sort_values("ts", kind="stable")
        .drop_duplicates(KEY, keep="last")
        .loc[:, [*KEY, ACTUAL_COLUMN]]
        .astype({"request_id": str, "row": "int64", ACTUAL_COLUMN: "float64"})
    )
    keyed = rows.astype({"request_id": str, "row": "int64"})
    return keyed.merge(latest, on=KEY, how="left", validate="many_to_one")


def accuracy(rows: pd.DataFrame) -> pd.DataFrame:
    """Per version (index, as strings): ``rows``, ``rows_with_actuals``, ``rmse``, ``mae``
    (NaN without actuals); plus a row ``all`` over every version."""
    error = rows[PREDICTION_COLUMN] - rows[ACTUAL_COLUMN]
    frame = pd.DataFrame(
        {
            "version": rows[VERSION_COLUMN].astype(str),
            "has": rows[ACTUAL_COLUMN].notna(),
            "sq": error**2,
            "abs": error.abs(),
        }
    )

    def summary(part: pd.DataFrame) -> dict[str, float]:
        known = part[part["has"]]
        return {
            "rows": len(part),
            "rows_with_actuals": len(known),
            "rmse": float(np.sqrt(known["sq"].mean())) if len(known) else np.nan,
            "mae": float(known["abs"].mean()) if len(known) else np.nan,
        }

    table = {version: summary(part) for version, part in frame.groupby("version", sort=True)}
    table["all"] = summary(frame)
    return pd.DataFrame.from_dict(table, orient="index")
