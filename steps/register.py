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

import time
from dataclasses import dataclass

import click

from steps import config, lineage, runtime
from steps.runtime import StepError

STEP = "register"
MAX_SETTLE_ROUNDS = 20
SETTLE_PAUSE_S = 0.2


@dataclass(frozen=True)
class Candidate:
    version: int
    test_rmse: float


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


def choose_champion(current: Candidate | None, newer: list[Candidate]) -> Candidate | None:
    """The best of the current champion and the versions registered after it.

    Ties keep the current champion, then the older version, so concurrent registrations
    all converge on the same answer whatever order they run in.
    """
    best = current
    for candidate in sorted(newer, key=lambda c: c.version):
        if best is None or candidate.test_rmse < best.test_rmse:
            best = candidate
    return best


# --- I/O + MLflow -------------------------------------------------------------------------
def as_candidate(version) -> Candidate | None:
    rmse = version.tags.get(config.VERSION_TAG_TEST_RMSE)
    return Candidate(int(version.version), float(rmse)) if rmse is not None else None


def set_alias(client, model_name: str, alias: str, version: int | str) -> None:
    # The store upserts aliases without a lock; concurrent registers can collide on the key.
    runtime.with_unique_race_retry(
        lambda: client.set_registered_model_alias(model_name, alias, version)
    )


def current_champion(client, model_name: str) -> Candidate | None:
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(model_name, config.CHAMPION_ALIAS)
    except MlflowException:
        return None
    return as_candidate(version) or Candidate(int(version.version), float("inf"))


def settle_champion(client, model_name: str) -> Candidate | None:
    """Point ``champion`` at the best candidate, re-checking until no one else moved it.

    The registry has no compare-and-set, so two pipelines registering at once could each
    overwrite the other's decision; every register re-reads after writing, and all of them
    compute the same target, so the alias converges on the best version.
    """
    for _ in range(MAX_SETTLE_ROUNDS):
        current = current_champion(client, model_name)
        floor = current.version if current else 0
        newer = [
            c
            for v in client.search_model_versions(f"name = '{model_name}'")
            if int(v.version) > floor and (c := as_candidate(v)) is not None
        ]
        best = choose_champion(current, newer)
        if best is None or best == current:
            return current
        set_alias(client, model_name, config.CHAMPION_ALIAS, best.version)
        time.sleep(SETTLE_PAUSE_S)
    raise StepError(f"champion alias of {model_name} kept changing; rerun register")


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

    before = current_champion(client, model_name)
    decision = decide_alias(new_rmse, before.test_rmse if before else None)
    tags = {
        config.VERSION_TAG_TRAIN_RUN: upstream.info.run_id,
        config.VERSION_TAG_GIT_COMMIT: upstream.data.tags.get(
            "mlflow.source.git.commit", "unknown"
        ),
        config.TAG_DVC_MD5: upstream.data.tags.get(config.TAG_DVC_MD5, "unknown"),
        config.VERSION_TAG_TEST_RMSE: repr(new_rmse),
        "model.kind": upstream.data.tags.get("model.kind", "unknown"),
    }
    version = mlflow.register_model(
        f"runs:/{upstream.info.run_id}/{config.MODEL_ARTIFACT}", model_name, tags=tags
    )
    champion = settle_champion(client, model_name)
    won = champion is not None and champion.version == int(version.version)
    if won != (decision.alias == config.CHAMPION_ALIAS):
        # Another pipeline registered (or removed) a version meanwhile; the settled alias wins.
        assert champion is not None
        decision = Decision(
            config.CHAMPION_ALIAS if won else config.CHALLENGER_ALIAS,
            f"settled among concurrent registrations: champion is v{champion.version} "
            f"(test_rmse {champion.test_rmse:,.0f})",
        )
    if not won:
        set_alias(client, model_name, config.CHALLENGER_ALIAS, version.version)
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
        mlflow.log_metric("champion_test_rmse_before", before.test_rmse)


if __name__ == "__main__":
    cli()
