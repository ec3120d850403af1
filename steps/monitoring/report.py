"""monitor's report: markdown and figures for a judged window. Pure: strings and matplotlib
figures out, nothing written.

In: the ``Judgement`` (``steps.monitoring.drift``), the window's rows, the reference profile
and test predictions, the accuracy table (``steps.monitoring.live``), rejected rows and a
description of the window, and the shadow comparison (``live.shadow_comparison``). Out:
``markdown`` (verdict, per-feature table, per-version table, champion vs challenger on the
rows a shadow version scored, rejections), ``feature_figure`` (the window over the
reference, per feature, with its PSI: the data contract's overlay figure) and
``prediction_figure`` (served predictions per version over that version's test predictions).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from steps import config
from steps.data import contract
from steps.monitoring.drift import PREDICTION_COLUMN, VERSION_COLUMN, Judgement

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FEATURES_PNG = "features.png"
PREDICTIONS_PNG = "predictions.png"


def _num(value: float, digits: int = 4) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _dollars(value: float) -> str:
    return "–" if value is None or not np.isfinite(value) else f"${value:,.0f}"


def markdown(
    judged: Judgement,
    accuracy: pd.DataFrame,
    window: str,
    reference: str,
    judged_version: str,
    rejected: int | None,
    reasons: pd.Series | None = None,
    shadow: pd.DataFrame | None = None,
) -> str:
    drifted = ", ".join(judged.drifted_features) or "none"
    lines = [
        "# Monitor report",
        "",
        f"- window: {window} ({judged.rows:,} served rows)",
        f"- reference: {reference}",
        f"- verdict: **{judged.verdict}** (drifted features: {drifted}; versions whose "
        f"predictions drifted: {', '.join('v' + v for v in judged.drifted_versions) or 'none'})",
        f"- judged for: v{judged_version} (the champion)",
        "",
        "## Features",
        "",
        "| feature | PSI | threshold | missing-rate change | threshold | drift |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in judged.features.items():
        lines.append(
            f"| {name} | {_num(f.psi.value)} | {_num(f.psi.threshold)} "
            f"| {f.missing_rate_change.value:+.4f} | {_num(f.missing_rate_change.threshold)} "
            f"| {'**drift**' if f.drifted else 'ok'} |"
        )
    lines += [
        "",
        "## Served versions",
        "",
        "| version | rows | prediction PSI | threshold | rows with actuals | RMSE | MAE |",
        "|---|---|---|---|---|---|---|",
    ]
    for version, row in accuracy.iterrows():
        stat = judged.predictions.get(str(version))
        label = "all" if version == "all" else f"v{version}"
        lines.append(
            f"| {label} | {int(row['rows']):,} | {_num(stat.value) if stat else '–'} "
            f"| {_num(stat.threshold) if stat else '–'} | {int(row['rows_with_actuals']):,} "
            f"| {_dollars(row['rmse'])} | {_dollars(row['mae'])} |"
        )
    if shadow is not None and len(shadow):
        lines += shadow_lines(shadow)
    lines += ["", "## Rejected rows", ""]
    if rejected is not None:
        share = rejected / max(rejected + judged.rows, 1)
        lines.append(f"{rejected:,} row(s) broke the API's rules ({share:.2%} of rows sent).")
        if reasons is not None and len(reasons):
            lines += ["", "| field | rows |", "|---|---|"]
            lines += [f"| {field} | {count:,} |" for field, count in reasons.items()]
    lines += ["", f"![features]({FEATURES_PNG})", "", f"![predictions]({PREDICTIONS_PNG})", ""]
    return "\n".join(lines)


def shadow_lines(shadow: pd.DataFrame) -> list[str]:
    """The champion-vs-challenger section: per shadow version, on the rows it scored."""
    lines = [
        "",
        "## Champion vs challenger (shadow, same rows)",
        "",
        "Each shadow version scored the rows the answering version answered; with actuals, "
        "the lower RMSE on the same rows is the evidence for `promote`.",
        "",
        "| shadow | answered by | rows | mean abs. difference | rows with actuals "
        "| shadow RMSE | answered RMSE | shadow MAE | answered MAE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for version, row in shadow.iterrows():
        answered = ", ".join(f"v{v}" for v in str(row["answered_versions"]).split(","))
        lines.append(
            f"| v{version} | {answered} | {int(row['rows']):,} "
            f"| {_dollars(row['mean_abs_difference'])} | {int(row['rows_with_actuals']):,} "
            f"| {_dollars(row['shadow_rmse'])} | {_dollars(row['answered_rmse'])} "
            f"| {_dollars(row['shadow_mae'])} | {_dollars(row['answered_mae'])} |"
        )
    return lines


def feature_figure(rows: pd.DataFrame, profile: dict[str, Any], judged: Judgement) -> Figure:
    """The contract's overlay histograms: the window's profile over the reference's."""
    window = contract.profile(rows, config.FEATURES)
    drift = {"columns": {name: {"psi": f.psi.value} for name, f in judged.features.items()}}
    return contract.histograms_figure(window, profile, drift)


def prediction_figure(rows: pd.DataFrame, reference: dict[str, np.ndarray]) -> Figure:
    """Per served version: its predictions in the window over its own test predictions."""
    from matplotlib.figure import Figure

    versions = sorted(rows[VERSION_COLUMN].astype(str).unique())
    figure = Figure(figsize=(4.0 * max(len(versions), 1), 3.0), dpi=80)
    axes = np.atleast_1d(figure.subplots(1, max(len(versions), 1)))
    for ax, version in zip(axes, versions, strict=False):
        served = rows.loc[rows[VERSION_COLUMN].astype(str) == version, PREDICTION_COLUMN]
        values = [served.to_numpy(np.float64)]
        if version in reference:
            values.append(reference[version])
        edges = np.histogram_bin_edges(np.concatenate(values), bins=40)
        ax.hist(values[0], bins=edges, density=True, alpha=0.5, label="served")
        if version in reference:
            ax.hist(
                reference[version],
                bins=edges,
                density=True,
                histtype="step",
                color="black",
                label="test predictions",
            )
        ax.set_title(f"v{version}: predicted $", fontsize=9)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    figure.subplots_adjust(left=0.03, right=0.99, bottom=0.12, top=0.88, wspace=0.15)
    return figure
