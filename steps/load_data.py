"""Step ``load_data``: materialise the DVC-tracked raw dataset, validate it, log it.

In: ``data.dvc`` (the versioned hash of ``data/``), optionally ``--source-url`` and
``--accept-drift``. Acquisition order: a workspace copy → the local DVC cache → a configured
DVC remote → a download from the source URL (file:// or http(s)://, .csv or .tgz). Whatever
arrives must pass the declared schema, hash exactly to the md5 in ``data.dvc`` and pass the
data contract (steps/data/contract.py: table rules, and drift against the reference — the data
the ``@champion`` was trained on, else the last finished load); only then is ``data/``
written (checkout, pull or download) and the DVC cache filled. ``--accept-drift true`` turns
drift failures into warnings; table rules always stop the load.

Out (MLflow): artifact ``raw/housing.csv``; the data report ``data_report/report.md``,
``data_report/histograms.png`` (overlay with the reference) and ``data_report/profile.json``
(what the next version is compared against), also on a failed run; input dataset
``california_housing_raw`` (digest = the data.dvc md5); tags ``dataset.dvc_md5``,
``dataset.file_md5``, ``dataset.acquired_from``, ``data_contract.status``
(passed/warnings/failed), ``data_contract.accept_drift``, ``data_contract.reference``,
``data_contract.reference_run_id``, ``data_contract.warnings``; the run description is the
report; metrics ``n_rows``, ``n_missing_total_bedrooms``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click
import pandas as pd

from steps import config
from steps.data import contract, schema
from steps.data.acquisition import acquire
from steps.infra.errors import StepError
from steps.tracking import provenance, steprun, storerace
from steps.tracking.reference import data_profile, data_run

STEP = "load_data"
NOTE_LIMIT = 7_900  # MLflow rejects tag values over 8,000 characters; the artifact is whole


# --- the data contract's reference and report (MLflow) --------------------------------------
@dataclass(frozen=True)
class Reference:
    profile: dict[str, Any] | None
    run_id: str | None
    label: str


def find_reference(experiment_id: str) -> Reference:
    """The data the champion was trained on, else the last finished load; else none.

    The champion's load_data run is looked for in every experiment (a load run by hand may
    sit in Default); the fallback only in this run's experiment.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        champion = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    except MlflowException:
        champion = None
    md5 = champion.tags.get(config.TAG_DVC_MD5) if champion else None
    run = data_run(client, md5) if md5 else None
    if run is not None:
        label = f"the champion's data (v{champion.version}, md5 {md5}, run {run.info.run_id})"
    else:
        found = client.search_runs(
            [experiment_id],
            f"tags.`{config.TAG_STEP}` = '{STEP}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        run = found[0] if found else None
        if run is None:
            return Reference(None, None, "none (first load: absolute rules only)")
        label = (
            f"the last finished load (md5 {run.data.tags.get(config.TAG_DVC_MD5)}, "
            f"run {run.info.run_id})"
        )
    try:
        prof = data_profile(run.info.run_id)
    except (MlflowException, OSError, ValueError, schema.SchemaError) as exc:
        steprun.echo(STEP, f"reference run {run.info.run_id} has no usable data: {exc}")
        return Reference(None, None, f"none (run {run.info.run_id} has no usable data)")
    return Reference(prof, run.info.run_id, label)


def run_contract(df: pd.DataFrame, md5: str, reference: Reference, accept_drift: bool) -> None:
    """Check ``df``, log the data report and tags, and stop the load on a hard violation."""
    import mlflow

    result = contract.check(df, reference.profile, accept_drift=accept_drift)
    verdict = result.verdict
    markdown = contract.report_markdown(result, reference.profile, md5, reference.label)
    mlflow.log_text(markdown, contract.REPORT_PATH)
    mlflow.log_dict(result.profile, contract.PROFILE_PATH)
    figure = contract.histograms_figure(result.profile, reference.profile, result.drift)
    mlflow.log_figure(figure, contract.HISTOGRAMS_PATH)
    status = "failed" if verdict.failures else ("warnings" if verdict.warnings else "passed")
    tags = {
        config.TAG_CONTRACT_STATUS: status,
        config.TAG_CONTRACT_ACCEPT_DRIFT: str(accept_drift).lower(),
        config.TAG_CONTRACT_REFERENCE: reference.label[:500],
        # the run description: the report without its image (which only resolves as artifact)
        config.TAG_MLFLOW_NOTE: markdown.replace("![overlay histograms](histograms.png)", "")[
            :NOTE_LIMIT
        ],
    }
    if reference.run_id:
        tags[config.TAG_CONTRACT_REFERENCE_RUN] = reference.run_id
    if verdict.warnings:
        tags[config.TAG_CONTRACT_WARNINGS] = " | ".join(f.message for f in verdict.warnings)[:5000]
    mlflow.set_tags(tags)
    for finding in verdict.warnings:
        steprun.echo(STEP, f"warning: {finding.message}")
    if verdict.failures:
        raise StepError(verdict.error_line())
    steprun.echo(STEP, f"data contract {status} (reference: {reference.label})")


@click.command(help="Materialise, verify and log the raw housing dataset.")
@click.option(
    "--source-url",
    default=config.DEFAULT_SOURCE_URL,
    show_default=True,
    help=f"Download URL when DVC has no copy (empty: ${config.DATA_URL_ENV}, else public URL).",
)
@click.option(
    "--accept-drift",
    type=bool,
    default=config.DEFAULT_ACCEPT_DRIFT,
    show_default=True,
    help="Accept a deliberate shift: drift failures become warnings (table rules still fail).",
)
@steprun.as_step(STEP)
def cli(source_url: str, accept_drift: bool) -> None:
    import mlflow

    root = config.PROJECT_ROOT
    md5 = provenance.expected_md5(root)
    reference = find_reference(mlflow.active_run().info.experiment_id)
    df, origin, file_md5 = acquire(
        root, source_url, lambda new: run_contract(new, md5, reference, accept_drift)
    )
    steprun.echo(STEP, f"{len(df)} rows from {origin}, DVC md5 {md5}")

    mlflow.set_tags(
        {config.TAG_DVC_MD5: md5, config.TAG_FILE_MD5: file_md5, config.TAG_DATA_SOURCE: origin}
    )
    mlflow.log_metrics(
        {"n_rows": len(df), "n_missing_total_bedrooms": int(df["total_bedrooms"].isna().sum())}
    )
    dataset = mlflow.data.from_pandas(
        df,
        source=provenance.dataset_source(origin if "://" in origin else str(config.data_dir(root))),
        targets=config.TARGET,
        name=config.RAW_DATASET_NAME,
        digest=md5,
    )
    storerace.with_unique_race_retry(lambda: mlflow.log_input(dataset, context="raw"))
    mlflow.log_artifact(str(config.raw_data_path(root)), artifact_path=config.RAW_ARTIFACT_DIR)


if __name__ == "__main__":
    cli()
