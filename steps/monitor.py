"""Entry point ``monitor``: judge a window of served rows against the champion's reference.

In: ``--log-dir`` (serve's inference log, default ``logs/inference``) and the window
``--since``/``--until`` (ISO-8601; without a zone: UTC; defaults: the 24 hours before now),
or ``--input`` a rows file (CSV/Parquet: predict's output, or raw rows, scored with the
champion when they carry no predictions; actual values from an ``actual`` or
``median_house_value`` column); ``--feedback`` an extra file of actuals (``request_id``,
``row``, ``actual``) besides the log's own (``POST /feedback``); ``--fail-on-drift``.

The reference: the registry's ``@champion``, its data version's profile that the data
contract keeps (``data_report/profile.json`` of the load_data run of its ``dataset.dvc_md5``)
and, per served version, its predictions on its own test rows. The judgement:
``steps.monitoring`` (drift per feature with the contract's PSI and missing-rate code,
prediction drift per version, live RMSE/MAE per version where actuals came back).

Out (MLflow, a run tagged ``pipeline.step=monitor``): metrics ``rows``,
``psi.<feature>``, ``missing_rate_change.<feature>``, ``prediction_psi.v<N>``,
``rows.v<N>``, ``live_rmse``/``live_mae`` (and ``.v<N>``) where actuals exist,
``rows_rejected``; where a shadow model scored logged rows (serve's ``--shadow-alias``), per
shadow version ``shadow_rows.v<N>``, ``shadow_mean_abs_difference.v<N>`` and with actuals
``live_rmse.shadow.v<N>``/``live_mae.shadow.v<N>`` beside ``live_rmse.answered.v<N>``/
``live_mae.answered.v<N>`` (the answers' on the same rows) and
``rows_with_actuals.shadow.v<N>``; tags ``monitor.verdict`` (``ok``/``drift``),
``monitor.drifted_features`` (comma-separated), ``monitor.model_version`` (the champion
judged), ``monitor.window``, ``monitor.source``; artifacts ``monitor/report.md``,
``monitor/features.png``, ``monitor/predictions.png``; the report as the run's description.
``--fail-on-drift true``: a ``drift`` verdict ends the run FAILED with exit 1 and one line
naming the drifted features, after everything is logged (for schedulers). A window that
cannot be judged (no log, too few rows, no reference) is a one-line error, exit 1.
"""

from __future__ import annotations

import os

import click
import pandas as pd

from steps import config
from steps.infra.errors import StepError
from steps.monitoring import drift, live, report, sources
from steps.serving import inferencelog
from steps.tracking import steprun
from steps.tracking.champion import champion_reference, version_predictions
from steps.tracking.loading import ModelLoadError

STEP = "monitor"
REPORT_DIR = "monitor"
DEFAULT_FAIL_ON_DRIFT = False
TAG_VERDICT = config.TAG_MONITOR_VERDICT
TAG_DRIFTED = config.TAG_MONITOR_DRIFTED
TAG_VERSION = "monitor.model_version"
TAG_WINDOW = "monitor.window"
TAG_SOURCE = "monitor.source"
NOTE_LIMIT = 7_900  # MLflow's tag limit is 8,000 characters; the artifact is whole


def served_rows(log_dir: str, since: str, until: str, input_uri: str):
    """(rows, rejected rows, rows rejected per field, window label, source label); read and
    checked before anything is looked up in MLflow."""
    if input_uri:
        batch = sources.read_batch(input_uri)
        return batch.rows, batch.rejected, batch.reasons, f"batch {input_uri}", input_uri
    start, end = sources.window(since, until)
    directory = inferencelog.log_dir_or_none(log_dir)
    if directory is None:
        raise StepError("--log-dir is off; give the inference log's directory or --input")
    rows = sources.read_log_window(directory, start, end)
    rejected, reasons = sources.read_rejected_window(directory, start, end)
    label = f"{start.isoformat()} to {end.isoformat()}"
    return rows, rejected, reasons, label, str(directory)


def complete_batch(rows: pd.DataFrame, champion: str) -> pd.DataFrame:
    """A batch without versions is the champion's; without predictions, scored by it as
    predict scores (raw rows)."""
    if rows["model_version"].isna().all():
        rows["model_version"] = champion
    if rows["prediction"].isna().any():
        from steps.batch import localscore

        pipeline, _ = localscore.load_model(f"models:/{config.MODEL_NAME}/{champion}")
        features = rows.loc[:, list(config.FEATURES)]
        rows["prediction"] = localscore.predict_frame(
            pipeline, features, localscore.DEFAULT_CHUNK_ROWS, False
        )
    return rows


def shadow_metrics(shadow: pd.DataFrame | None) -> dict[str, float]:
    """The shadow comparison (``live.shadow_comparison``) as metric names and values."""
    metrics: dict[str, float] = {}
    for version, row in (shadow if shadow is not None else pd.DataFrame()).iterrows():
        metrics[f"shadow_rows.v{version}"] = row["rows"]
        metrics[f"shadow_mean_abs_difference.v{version}"] = row["mean_abs_difference"]
        if row["rows_with_actuals"]:
            metrics[f"rows_with_actuals.shadow.v{version}"] = row["rows_with_actuals"]
            metrics[f"live_rmse.shadow.v{version}"] = row["shadow_rmse"]
            metrics[f"live_mae.shadow.v{version}"] = row["shadow_mae"]
            metrics[f"live_rmse.answered.v{version}"] = row["answered_rmse"]
            metrics[f"live_mae.answered.v{version}"] = row["answered_mae"]
    return metrics


def log_results(
    judged: drift.Judgement,
    accuracy: pd.DataFrame,
    rows: pd.DataFrame,
    markdown: str,
    figures: dict,
    rejected: int | None,
    shadow: pd.DataFrame | None = None,
) -> None:
    import mlflow

    metrics = {"rows": judged.rows}
    for name, f in judged.features.items():
        metrics[f"psi.{name}"] = f.psi.value
        metrics[f"missing_rate_change.{name}"] = f.missing_rate_change.value
    for version, stat in judged.predictions.items():
        metrics[f"prediction_psi.v{version}"] = stat.value
    for version, row in accuracy.iterrows():
        suffix = "" if version == "all" else f".v{version}"
        if suffix:
            metrics[f"rows{suffix}"] = row["rows"]
        if row["rows_with_actuals"]:
            metrics[f"live_rmse{suffix}"] = row["rmse"]
            metrics[f"live_mae{suffix}"] = row["mae"]
            metrics[f"rows_with_actuals{suffix}"] = row["rows_with_actuals"]
    if rejected is not None:
        metrics["rows_rejected"] = rejected
    metrics |= shadow_metrics(shadow)
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
    mlflow.log_text(markdown, f"{REPORT_DIR}/report.md")
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"{REPORT_DIR}/{name}")


@click.command(help="Judge a window of served rows against the champion's reference.")
@click.option(
    "--log-dir",
    default=inferencelog.DEFAULT_LOG_DIR,
    show_default=True,
    help="serve's inference log directory.",
)
@click.option("--since", default="", help="Window start, ISO-8601 (empty: 24 h before --until).")
@click.option("--until", default="", help="Window end, ISO-8601, exclusive (empty: now).")
@click.option(
    "--input",
    "input_uri",
    default="",
    help="A rows file (CSV/Parquet) to judge instead of the log.",
)
@click.option(
    "--feedback", default="", help="Extra actuals: CSV/Parquet with request_id, row, actual."
)
@click.option(
    "--fail-on-drift",
    type=bool,
    default=DEFAULT_FAIL_ON_DRIFT,
    show_default=True,
    help="Exit 1 (run FAILED) on a drift verdict, after logging everything.",
)
@steprun.as_step(STEP)
def cli(
    log_dir: str, since: str, until: str, input_uri: str, feedback: str, fail_on_drift: bool
) -> None:
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = mlflow.MlflowClient()
    rows, rejected, reasons, window, source = served_rows(log_dir, since, until, input_uri)
    try:
        champion, profile, reference_label = champion_reference(client)
    except ModelLoadError as exc:
        raise StepError(str(exc)) from exc
    if input_uri:
        rows = complete_batch(rows, champion)
    mlflow.set_tags({TAG_VERSION: champion, TAG_WINDOW: window, TAG_SOURCE: source})
    rows["model_version"] = rows["model_version"].astype(str)
    versions = sorted(rows["model_version"].unique())
    reference, problems = version_predictions(client, versions)
    for version, problem in problems.items():
        steprun.echo(STEP, f"v{version}: no test predictions to compare with ({problem})")
    try:
        judged = drift.judge(rows, profile, reference)
    except drift.WindowError as exc:
        raise StepError(f"{window}: {exc}") from exc
    log_dir_path = None if input_uri else inferencelog.log_dir_or_none(log_dir)
    fed_back = sources.read_feedback_files(log_dir_path, feedback)
    if live.ACTUAL_COLUMN in rows.columns and fed_back.empty:
        joined = rows
    else:
        joined = live.with_actuals(rows, fed_back)
    accuracy = live.accuracy(joined)
    shadow = live.shadow_comparison(joined)
    markdown = report.markdown(
        judged, accuracy, window, reference_label, champion, rejected, reasons, shadow
    )
    figures = {
        report.FEATURES_PNG: report.feature_figure(rows, profile, judged),
        report.PREDICTIONS_PNG: report.prediction_figure(rows, reference),
    }
    log_results(judged, accuracy, rows, markdown, figures, rejected, shadow)
    drifted = ",".join(judged.drifted_features)
    note = markdown.replace(f"![features]({report.FEATURES_PNG})", "").replace(
        f"![predictions]({report.PREDICTIONS_PNG})", ""
    )
    mlflow.set_tags(
        {
            TAG_VERDICT: judged.verdict,
            TAG_DRIFTED: drifted,
            config.TAG_MLFLOW_NOTE: note[:NOTE_LIMIT],
            config.TAG_MLFLOW_RUN_NAME: f"monitor · v{champion} · {judged.verdict}",
        }
    )
    overall = accuracy.loc["all"]
    live_text = (
        f", live RMSE ${overall['rmse']:,.0f} on {int(overall['rows_with_actuals'])} rows"
        if overall["rows_with_actuals"]
        else ""
    )
    steprun.echo(
        STEP,
        f"{judged.rows} rows ({window}): {judged.verdict}"
        + (f" in {drifted}" if drifted else "")
        + live_text,
    )
    if fail_on_drift and judged.verdict == "drift":
        what = drifted or "predictions of " + ", ".join(f"v{v}" for v in judged.drifted_versions)
        raise StepError(f"drift in {what} (see {REPORT_DIR}/report.md)")


if __name__ == "__main__":
    cli()
