"""How a step finds the run it consumes and records that link.

Tags written: ``lineage.upstream_run_id`` (the consumed run) and ``dataset.dvc_md5`` (carried
down from load_data so every run names its data version). Inputs logged: the train/test
splits as MLflow datasets with contexts ``train``/``test``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from steps import config
from steps.infra.errors import StepError
from steps.tracking import storerace


def resolve_upstream(run_id: str, step: str):
    """The FINISHED ``step`` run named by ``run_id``, or the latest one when it is empty."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    if not run_id:
        experiment_id = mlflow.active_run().info.experiment_id
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{config.TAG_STEP}` = '{step}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not found:
            raise StepError(f"no finished {step} run in this experiment; pass --upstream-run-id")
        return found[0]
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise StepError(f"upstream run {run_id} not found") from exc
    actual = run.data.tags.get(config.TAG_STEP)
    if actual != step:
        raise StepError(f"upstream run {run_id} is a {actual or 'foreign'} run, expected {step}")
    if run.info.status != "FINISHED":
        raise StepError(f"upstream {step} run {run_id} is {run.info.status}, not FINISHED")
    return run


def link(upstream) -> None:
    """Tag the active run with its upstream run and the data version it descends from."""
    import mlflow

    tags = {config.TAG_UPSTREAM: upstream.info.run_id}
    md5 = upstream.data.tags.get(config.TAG_DVC_MD5)
    if md5:
        tags[config.TAG_DVC_MD5] = md5
    mlflow.set_tags(tags)


def split_dataset(part: pd.DataFrame, context: str):
    """A split as an MLflow dataset, named after the raw dataset and the split."""
    import mlflow

    return mlflow.data.from_pandas(
        part.reset_index(drop=True),
        targets=config.TARGET,
        name=f"{config.RAW_DATASET_NAME}_{context}",
    )


def log_split_inputs(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, Any]:
    """Log both splits as the run's inputs; returns the datasets by context, so a step that
    also logs metrics or evaluations against them reuses them (MLflow infers a dataset's
    schema anew for every new object: ~0.2 s per split)."""
    import mlflow

    datasets = {"train": split_dataset(train, "train"), "test": split_dataset(test, "test")}
    for context, dataset in datasets.items():
        storerace.with_unique_race_retry(
            lambda d=dataset, c=context: mlflow.log_input(d, context=c)
        )
    return datasets
