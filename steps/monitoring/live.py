"""Live accuracy: served predictions joined with the actuals that came back as feedback.

In: served rows (``request_id``, ``row``, ``model_version``, ``prediction``) and feedback rows
(``request_id``, ``row``, ``actual``, ``ts``: when it arrived). Out: the rows with an
``actual`` column (NaN where none came back; of several answers for one row the latest
wins), and per served version the rows, the rows with actuals, RMSE and MAE in dollars;
where a shadow model scored the same rows (``shadow_version``, ``shadow_prediction``: serve's
``--shadow-alias``), the two side by side per shadow version (``shadow_comparison``).
Pure: no MLflow, no I/O.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from steps.monitoring.drift import PREDICTION_COLUMN, VERSION_COLUMN

ACTUAL_COLUMN = "actual"
SHADOW_VERSION_COLUMN = "shadow_version"
SHADOW_PREDICTION_COLUMN = "shadow_prediction"
SHADOW_COLUMNS = (
    "answered_versions",
    "rows",
    "mean_abs_difference",
    "rows_with_actuals",
    "shadow_rmse",
    "shadow_mae",
    "answered_rmse",
    "answered_mae",
)
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


def shadow_comparison(rows: pd.DataFrame) -> pd.DataFrame:
    """Champion vs challenger on the same rows: per shadow version (index, as strings) of the
    rows a shadow model scored, ``answered_versions`` (the versions that answered them,
    comma-separated), ``rows``, ``mean_abs_difference`` between the two predictions, and where
    actuals came back (``actual`` column, if any) ``rows_with_actuals`` and RMSE/MAE of the
    shadow (``shadow_rmse``, ``shadow_mae``) and of the answers (``answered_rmse``,
    ``answered_mae``) on those same rows. Empty (``SHADOW_COLUMNS``) without shadow rows."""
    if SHADOW_PREDICTION_COLUMN not in rows.columns or SHADOW_VERSION_COLUMN not in rows.columns:
        return pd.DataFrame(columns=list(SHADOW_COLUMNS))
    shadowed = rows[rows[SHADOW_PREDICTION_COLUMN].notna() & rows[SHADOW_VERSION_COLUMN].notna()]
    actual = (
        shadowed[ACTUAL_COLUMN]
        if ACTUAL_COLUMN in shadowed.columns
        else pd.Series(np.nan, index=shadowed.index)
    )
    table = {}
    for version, part in shadowed.groupby(shadowed[SHADOW_VERSION_COLUMN].astype(str), sort=True):
        shadow = part[SHADOW_PREDICTION_COLUMN].astype(np.float64)
        answered = part[PREDICTION_COLUMN].astype(np.float64)
        known = actual.loc[part.index].notna()
        truth = actual.loc[part.index][known]

        def rmse(predicted: pd.Series, known: pd.Series = known, truth: pd.Series = truth) -> float:
            return (
                float(np.sqrt(((predicted[known] - truth) ** 2).mean())) if known.any() else np.nan
            )

        def mae(predicted: pd.Series, known: pd.Series = known, truth: pd.Series = truth) -> float:
            return float((predicted[known] - truth).abs().mean()) if known.any() else np.nan

        table[version] = {
            "answered_versions": ",".join(sorted(part[VERSION_COLUMN].astype(str).unique())),
            "rows": len(part),
            "mean_abs_difference": float((shadow - answered).abs().mean()),
            "rows_with_actuals": int(known.sum()),
            "shadow_rmse": rmse(shadow),
            "shadow_mae": mae(shadow),
            "answered_rmse": rmse(answered),
            "answered_mae": mae(answered),
        }
    return pd.DataFrame.from_dict(table, orient="index", columns=list(SHADOW_COLUMNS))
