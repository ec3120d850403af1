"""main's chain: the steps in order, each reused or started through MLflow Projects, and the
parent run's summary at the end.

In: main's options (every step's parameters), ``env_manager`` for the children, ``use_cache``
and a directory for the gate files that hold started steps back. Out: one ``StepResult`` per
step (``steps.orchestration.summary``). Reuse: ``steps.orchestration.reuse`` and
``fingerprint``; starting and stopping steps: ``steps.orchestration.launch``; the parent run
itself: ``steps.orchestration.parent``.
Written (MLflow, on the parent run): tags ``pipeline.step``, ``pipeline.git_dirty``,
``pipeline.<step>.run_id``, ``pipeline.<step>.reused``, ``registry.version``,
``registry.alias``, ``dataset.dvc_md5``; metric ``test_rmse``; its name and description (the
step table); each started child's ``mlflow.source.name``, ``mlflow.project.env`` and
``mlflow.source.git.commit`` (the parent's: INHERITED_TAGS); runs
ended KILLED or FAILED when the pipeline stops early.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from steps import config
from steps.infra import processes
from steps.orchestration import fingerprint
from steps.orchestration.launch import Chain, Launched, cancel, launch, new_log
from steps.orchestration.parent import (
    STEP,
    open_parent_run,
    parent_run_name,
    show_data_and_model,
    tag_experiment_kind,
    where_to_look,
)
from steps.orchestration.reuse import NEVER_REUSED, CacheKey, find_reusable, step_params
from steps.orchestration.summary import StepResult, key_metric, result_row, run_description
from steps.tracking import provenance, steprun

STEPS = ("load_data", "preprocess", "train", "register")
# Under `mlflow run <git URL>` children are launched from the temp clone, so MLflow names their
# source file:///tmp/…: they get the parent's (the URL the user ran, #subdir kept). Under a
# docker_env (k8s/MLproject) main launches them with env_manager=local inside its own
# container, where MLflow tags no environment and the commit is the image's own snapshot of
# the project: they get the parent's `mlflow.project.env` (docker) and the commit the user ran.
# Set as each child starts: register reads train's commit as soon as train has finished.
INHERITED_TAGS = (
    config.TAG_MLFLOW_SOURCE_NAME,
    config.TAG_MLFLOW_PROJECT_ENV,
    config.TAG_MLFLOW_GIT_COMMIT,
)


@dataclass
class Pipeline:
    """The parent run and what every step of this pipeline shares."""

    run: Any
    client: Any
    experiment_id: str
    data_md5: str
    inherited: dict[str, str]  # the parent's tags that every started child gets (INHERITED_TAGS)
    live: list[Launched] = field(default_factory=list)  # started, not yet done


def open_pipeline(opts: dict[str, Any]) -> Pipeline:
    """Open the parent run and tag it as running."""
    import mlflow

    parent = open_parent_run()
    client = mlflow.MlflowClient()
    tag_experiment_kind(client, parent.info.experiment_id)
    tags = client.get_run(parent.info.run_id).data.tags
    inherited = {name: tags[name] for name in INHERITED_TAGS if tags.get(name)}
    git = provenance.git_state()
    data_md5 = provenance.expected_md5(config.PROJECT_ROOT)
    mlflow.set_tags(
        {
            config.TAG_STEP: STEP,
            config.TAG_GIT_DIRTY: str(git.dirty).lower(),
            config.TAG_MLFLOW_RUN_NAME: f"{STEP} · {opts['model_kind']} · running",
        }
    )
    if git.dirty:
        steprun.echo(STEP, "uncommitted changes: runs are keyed on the code as it is on disk")
    return Pipeline(parent, client, parent.info.experiment_id, data_md5, inherited)


def run_steps(
    pipeline: Pipeline, env_manager: str, use_cache: bool, opts: dict[str, Any], gates: Path
) -> list[StepResult]:
    """Each step in order: reused when it may be, else started (with the steps after it,
    ahead of their turn) and waited for. One table row per step."""
    import mlflow

    is_verbose = config.verbose()

    def start(step: str, upstream_id: str | None, gate: Path | None) -> Launched:
        if is_verbose:
            steprun.echo(STEP, f"{step}: starting")
        params = step_params(step, upstream_id, opts)
        log = new_log(step)
        with processes.interrupts_deferred():  # a started child is always in `live`
            launched = launch(
                step, params, env_manager, pipeline.experiment_id, log, gate, is_verbose
            )
            pipeline.live.append(launched)
        for name, value in pipeline.inherited.items():
            pipeline.client.set_tag(launched.run_id, name, value)
        return launched

    client = pipeline.client
    results: list[StepResult] = []
    upstream: str | None = None
    chain: Chain | None = None
    for index, step in enumerate(STEPS):
        started = time.perf_counter()
        hit = None
        if not chain:
            params = step_params(step, upstream, opts)
            key = CacheKey(step, params, fingerprint.code_hash(step), pipeline.data_md5)
            if use_cache and step not in NEVER_REUSED:
                hit = find_reusable(pipeline.experiment_id, key)
            if hit is None:
                chain = Chain(list(STEPS[index:]), upstream, start, gates)
        if hit is not None:
            run_id = hit.info.run_id
        else:
            assert chain is not None
            launched = chain.run_next(client)
            pipeline.live.remove(launched)
            started, run_id = launched.released, launched.run_id
        run = client.get_run(run_id)
        elapsed = time.perf_counter() - started
        result = StepResult(step, run_id, hit is not None, elapsed, key_metric(step, run))
        results.append(result)
        click.echo(result_row(result))
        reused = str(hit is not None).lower()
        mlflow.set_tags(
            {
                config.tag_pipeline_step(step, "run_id"): run_id,
                config.tag_pipeline_step(step, "reused"): reused,
            }
        )
        upstream = run_id
    return results


def stop_pipeline(pipeline: Pipeline, status: str, tolerant: bool = False) -> None:
    """Stop every step still running or waiting (their runs end KILLED), then end the parent
    run with ``status``. ``tolerant``: a step that cannot be stopped does not keep the
    parent run from being ended (the failure being handled matters more)."""
    from mlflow.entities import RunStatus

    for launched in pipeline.live:
        if tolerant:
            with contextlib.suppress(Exception):
                cancel(launched, pipeline.client)
        else:
            cancel(launched, pipeline.client)
    steprun.end_run_safely(RunStatus.to_string(getattr(RunStatus, status)))


def finish_pipeline(pipeline: Pipeline, results: list[StepResult], opts: dict[str, Any]) -> None:
    """The parent's summary: the model it produced, its metric, name and description."""
    import mlflow

    client, parent_id = pipeline.client, pipeline.run.info.run_id
    train_run = client.get_run(results[2].run_id)
    show_data_and_model(client, parent_id, client.get_run(results[0].run_id), train_run)
    register_tags = client.get_run(results[3].run_id).data.tags
    version = register_tags[config.TAG_REGISTRY_VERSION]
    alias = register_tags[config.TAG_REGISTRY_ALIAS]
    model = f"{config.MODEL_NAME} v{version} @{alias}"
    mlflow.log_metric("test_rmse", train_run.data.metrics["test_rmse"])
    mlflow.set_tags(
        {
            config.TAG_DVC_MD5: pipeline.data_md5,
            config.TAG_REGISTRY_VERSION: version,
            config.TAG_REGISTRY_ALIAS: alias,
            config.TAG_MLFLOW_RUN_NAME: parent_run_name(opts["model_kind"], version, alias),
            config.TAG_MLFLOW_NOTE: run_description(results, model),
        }
    )
    click.echo(f"model: {model} ({register_tags.get(config.TAG_REGISTRY_REASON, '')})")
    where = where_to_look(mlflow.get_tracking_uri(), pipeline.experiment_id, parent_id)
    click.echo(f"runs:  {where}")
    mlflow.end_run()
