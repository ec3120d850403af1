"""Step ``register``: put the train run's model in the Model Registry and decide its alias.

In: the ``train`` run (``--upstream-run-id``; empty = the latest finished one).
Out (registry): a new version of ``CaliforniaHousingRegressor`` tagged ``train_run_id``,
``git_commit``, ``dataset.dvc_md5``, ``test_rmse``, ``model.kind``; alias ``champion`` moves
to it only if its test_rmse beats the current champion's (or there is none), otherwise it
gets ``challenger``. Aliases only, never stages.
Out (MLflow run): tags ``lineage.upstream_run_id``, ``dataset.dvc_md5``,
``registry.version``, ``registry.alias``, ``registry.reason``; metric ``test_rmse`` and, when
there was one, ``champion_test_rmse_before``.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from steps import config, lineage, runtime
from steps.runtime import StepError

STEP = "register"


@dataclass(frozen=True)
class Decision:
    alias: str
    reason: str


# --- pure core ----------------------------------------------------------------------------
def decide_alias(new_rmse: float, champion_rmse: float | None) -> Decision:
    """Champion only when strictly better than the current champion (or there is none)."""
    if champion_rmse is None:
        return Decision(config.CHAMPION_ALIAS, "no champion yet")
    if new_rmse < champion_rmse:
        return Decision(
            config.CHAMPION_ALIAS,
            f"test_rmse {new_rmse:,.0f} beats champion's {champion_rmse:,.0f}",
        )
    return Decision(
        config.CHALLENGER_ALIAS,
        f"test_rmse {new_rmse:,.0f} does not beat champion's {champion_rmse:,.0f}",
    )


# --- I/O + MLflow -------------------------------------------------------------------------
def champion_rmse(client, model_name: str) -> float | None:
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(model_name, config.CHAMPION_ALIAS)
    except MlflowException:
        return None
    if "test_rmse" in version.tags:
        return float(version.tags["test_rmse"])
    return client.get_run(version.run_id).data.metrics.get("test_rmse")


@click.command(help="Register the train run's model and move the champion alias if it wins.")
@click.option("--upstream-run-id", default="", help="train run (empty: latest finished).")
@click.option("--model-name", default=config.MODEL_NAME, show_default=True)
@runtime.as_step(STEP)
def cli(upstream_run_id: str, model_name: str) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    upstream = lineage.resolve_upstream(upstream_run_id, "train")
    lineage.link(upstream)
    new_rmse = upstream.data.metrics.get("test_rmse")
    if new_rmse is None:
        raise StepError(f"train run {upstream.info.run_id} has no test_rmse metric")

    before = champion_rmse(client, model_name)
    decision = decide_alias(new_rmse, before)
    tags = {
        "train_run_id": upstream.info.run_id,
        "git_commit": upstream.data.tags.get("mlflow.source.git.commit", "unknown"),
        config.TAG_DVC_MD5: upstream.data.tags.get(config.TAG_DVC_MD5, "unknown"),
        "test_rmse": repr(new_rmse),
        "model.kind": upstream.data.tags.get("model.kind", "unknown"),
    }
    version = mlflow.register_model(
        f"runs:/{upstream.info.run_id}/{config.MODEL_ARTIFACT}", model_name, tags=tags
    )
    client.set_registered_model_alias(model_name, decision.alias, version.version)
    runtime.echo(STEP, f"{model_name} v{version.version} → @{decision.alias}: {decision.reason}")

    mlflow.set_tags(
        {
            "registry.version": version.version,
            "registry.alias": decision.alias,
            "registry.reason": decision.reason,
        }
    )
    mlflow.log_metric("test_rmse", new_rmse)
    if before is not None:
        mlflow.log_metric("champion_test_rmse_before", before)


if __name__ == "__main__":
    cli()
