"""Entry point ``main``: run load_data → preprocess → train → register as nested MLflow runs.

In: every step's parameters (defaults shared with the steps), ``env_manager`` for the
children and ``use_cache``.
Out: a parent run in experiment ``california_housing_price`` (tagged
``mlflow.experimentKind=custom_model_development`` so the UI opens its classic ML view)
whose children are the step runs (``mlflow.parentRunId``), each fed its upstream run id. A
step is reused instead of rerun when a FINISHED run of it exists with the same parameters
(as MLflow stores them), the same code hash (``steps.orchestration.fingerprint``: the step's
modules in any subpackage, MLproject, the lock file — read from the work tree, so a dirty
tree still reuses), the same upstream run and the same data md5; register is never reused
(``steps.orchestration.reuse``). Parent tags:
``pipeline.<step>.run_id``, ``pipeline.<step>.reused``, ``registry.version``,
``registry.alias``, ``dataset.dvc_md5``; parent metric ``test_rmse``; the parent is named
``main · <kind> · v<N>@<alias>`` and its description (``mlflow.note.content``) is the step
table. Each step's output goes to the artifact ``logs/<step>.log`` of its run; the terminal
gets one line per step (``PIPELINE_VERBOSE=1``: everything as well, as it happens). Steps that run
are started ahead of their turn and wait for their upstream (``steps.orchestration.launch``),
so their start-up overlaps the work before them; when the pipeline stops early, those still
waiting end KILLED. The step table: ``steps.orchestration.summary``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from steps import config
from steps.infra import forkserver, processes
from steps.infra.errors import StepError, one_line
from steps.ml.hyperparams import DEFAULT_HYPERPARAMS, hyperparameter_options
from steps.orchestration import fingerprint
from steps.orchestration.launch import Chain, Launched, cancel, child_environment, launch, new_log
from steps.orchestration.reuse import NEVER_REUSED, CacheKey, find_reusable, step_params
from steps.orchestration.summary import (
    TABLE_HEADER,
    StepResult,
    key_metric,
    result_row,
    run_description,
    table_row,
)
from steps.tracking import provenance, refusals, steprun, storerace

STEP = "main"
STEPS = ("load_data", "preprocess", "train", "register")
EXPERIMENT_KIND = "custom_model_development"


def parent_run_name(model_kind: str, version: str | None, alias: str | None) -> str:
    return f"{STEP} · {model_kind} · v{version}@{alias}"


# --- MLflow -------------------------------------------------------------------------------
def ensure_experiment() -> str:
    """The pipeline's experiment id, created (artifacts next to a local database) if absent."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(config.EXPERIMENT_NAME)
    if experiment is not None:
        return experiment.experiment_id
    uri = mlflow.get_tracking_uri()
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
    try:
        return mlflow.create_experiment(
            config.EXPERIMENT_NAME,
            artifact_location=location,
            tags={config.TAG_EXPERIMENT_KIND: EXPERIMENT_KIND},
        )
    except mlflow.exceptions.MlflowException:
        # Another pipeline created it between our lookup and our create.
        return mlflow.get_experiment_by_name(config.EXPERIMENT_NAME).experiment_id


def tag_experiment_kind(client: Any, experiment_id: str) -> None:
    """Without this tag the MLflow 3 UI opens the experiment on its GenAI overview page."""
    experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(config.TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, config.TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)


def open_parent_run() -> Any:
    """Start (or adopt) the parent run inside the pipeline's experiment.

    ``mlflow run . -e main`` creates the parent before this code runs, in Default unless the
    user named an experiment. A run cannot move between experiments, so in that case the
    parent is recreated in ``california_housing_price`` and the launcher run is tagged with a
    pointer to it.
    """
    import mlflow

    client = mlflow.MlflowClient()
    launcher_id = os.environ.get("MLFLOW_RUN_ID")
    launcher = client.get_run(launcher_id) if launcher_id else None
    if launcher is not None and launcher.info.experiment_id != config.DEFAULT_EXPERIMENT_ID:
        return mlflow.start_run(run_id=launcher_id)

    experiment_id = ensure_experiment()
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        os.environ.pop(var, None)
    copied = {}
    if launcher is not None:
        copied = {k: v for k, v in launcher.data.tags.items() if k.startswith("mlflow.")}
        copied.pop(config.TAG_MLFLOW_RUN_NAME, None)
        copied[config.TAG_LAUNCHER_RUN] = launcher_id
    run = mlflow.start_run(experiment_id=experiment_id, tags=copied)
    if launcher is not None:
        mlflow.log_params(launcher.data.params)
        client.set_tag(launcher_id, config.TAG_MOVED_TO_RUN, run.info.run_id)
        steprun.echo(STEP, f"pipeline runs are grouped in experiment {config.EXPERIMENT_NAME!r}")
    return run


@click.command(help="Run the whole pipeline as nested MLflow runs, reusing finished steps.")
@click.option("--source-url", default=config.DEFAULT_SOURCE_URL, show_default=True)
@click.option("--accept-drift", type=bool, default=config.DEFAULT_ACCEPT_DRIFT, show_default=True)
@click.option("--test-size", type=float, default=config.DEFAULT_TEST_SIZE, show_default=True)
@click.option("--split-seed", type=int, default=config.DEFAULT_SPLIT_SEED, show_default=True)
@click.option(
    "--split-strategy",
    type=click.Choice(config.SPLIT_STRATEGIES),
    default=config.DEFAULT_SPLIT_STRATEGY,
    show_default=True,
)
@hyperparameter_options
@click.option("--env-manager", default=config.DEFAULT_ENV_MANAGER, show_default=True)
@click.option("--use-cache", type=bool, default=config.DEFAULT_USE_CACHE, show_default=True)
def cli(env_manager: str, use_cache: bool, **opts: Any) -> None:
    for name, value in config.HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    processes.take_interrupts()
    processes.die_with_parent()
    processes.skip_exit_collection()
    child_environment(env_manager, config.verbose())
    with forkserver.running():  # before our own MLflow import: the two overlap
        try:
            run_pipeline(env_manager, use_cache, opts)
        except Exception as exc:
            refused = refusals.refusal(exc)
            if not refused and not refusals.tracking_unreachable(exc):
                raise
            from mlflow.entities import RunStatus

            steprun.end_run_safely(RunStatus.to_string(RunStatus.FAILED))
            problem = refused or f"tracking server unreachable: {one_line(exc)}"
            click.echo(f"error: {STEP}: {problem}", err=True)
            raise SystemExit(1) from None


def end_orphaned_launcher_run(launcher_id: str | None, launcher_pid: int) -> None:
    """If the `mlflow run` that started us is dead, nobody else will end its run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not launcher_id or processes.parent_pid() == launcher_pid:
        return
    client = mlflow.MlflowClient()
    with contextlib.suppress(MlflowException):
        if client.get_run(launcher_id).info.status == "RUNNING":
            client.set_terminated(launcher_id, "KILLED")


def show_data_and_model(client: Any, parent_id: str, load_run: Any, train_run: Any) -> None:
    """Give the parent run the raw dataset and the trained model its children logged, so the
    runs table's Dataset and Models columns show them on the pipeline's row too."""
    datasets = [
        d for d in load_run.inputs.dataset_inputs if d.dataset.name == config.RAW_DATASET_NAME
    ]
    if datasets:
        storerace.with_unique_race_retry(lambda: client.log_inputs(parent_id, datasets=datasets))
    models = train_run.outputs.model_outputs if train_run.outputs else []
    if models:
        client.log_outputs(parent_id, models=list(models))


def where_to_look(tracking: str, experiment_id: str, run_id: str) -> str:
    if tracking.startswith(("http://", "https://")):
        return f"{tracking.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return (
        f"make ui, then http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id} "
        f"(store: {tracking})"
    )


@dataclass
class Pipeline:
    """The parent run and what every step of this pipeline shares."""

    run: Any
    client: Any
    experiment_id: str
    data_md5: str
    source_name: str | None  # the parent's mlflow.source.name, given to every child
    live: list[Launched] = field(default_factory=list)  # started, not yet done


def open_pipeline(opts: dict[str, Any]) -> Pipeline:
    """Open the parent run and tag it as running."""
    import mlflow

    parent = open_parent_run()
    client = mlflow.MlflowClient()
    tag_experiment_kind(client, parent.info.experiment_id)
    # Under `mlflow run <git URL>` children are launched from the temp clone, so MLflow names
    # their source file:///tmp/…; give them the parent's (the URL the user ran, #subdir kept).
    source_name = client.get_run(parent.info.run_id).data.tags.get(config.TAG_MLFLOW_SOURCE_NAME)
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
    return Pipeline(parent, client, parent.info.experiment_id, data_md5, source_name)


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
            if pipeline.source_name:
                client.set_tag(run_id, config.TAG_MLFLOW_SOURCE_NAME, pipeline.source_name)
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


def run_pipeline(env_manager: str, use_cache: bool, opts: dict[str, Any]) -> None:
    import mlflow

    mlflow.set_tracking_uri(config.tracking_uri())
    # an interrupt before the loop below leaves the parent run to the exit hook: KILLED then
    steprun.end_open_run_at_exit()
    launcher_id, launcher_pid = os.environ.get("MLFLOW_RUN_ID"), processes.parent_pid()
    opts["hyperparam_names"] = list(DEFAULT_HYPERPARAMS)
    pipeline = open_pipeline(opts)
    gates = Path(tempfile.mkdtemp(prefix="pipeline-gates-"))
    click.echo(table_row(TABLE_HEADER))
    try:
        results = run_steps(pipeline, env_manager, use_cache, opts, gates)
    except StepError as exc:
        stop_pipeline(pipeline, "FAILED")
        click.echo(f"error: {STEP}: {exc}", err=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        processes.ignore_interrupts()
        stop_pipeline(pipeline, "KILLED")
        end_orphaned_launcher_run(launcher_id, launcher_pid)
        click.echo(f"error: {STEP}: interrupted", err=True)
        raise SystemExit(130) from None
    except Exception:
        # The parent may be our own run (not the launcher's): nobody else would end it.
        stop_pipeline(pipeline, "FAILED", tolerant=True)
        raise
    finally:
        shutil.rmtree(gates, ignore_errors=True)
    finish_pipeline(pipeline, results, opts)


if __name__ == "__main__":
    cli()
