"""Entry point ``main``: run load_data → preprocess → train → register as nested MLflow runs.

In: every step's parameters (defaults shared with the steps), ``env_manager`` for the
children and ``use_cache``.
Out: a parent run in experiment ``california_housing_price`` whose children are the step
runs (``mlflow.parentRunId``), each fed its upstream run id. A step is reused instead of
rerun when a FINISHED run of it exists with the same parameters (as MLflow stores them), the
same git commit from a clean tree, the same upstream run and the same data md5; register is
never reused. Parent tags: ``pipeline.<step>.run_id``, ``pipeline.<step>.reused``,
``registry.version``, ``registry.alias``, ``dataset.dvc_md5``; parent metric ``test_rmse``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from steps import config, runtime
from steps.hyperparams import DEFAULT_HYPERPARAMS, hyperparameter_options
from steps.load_data import expected_md5
from steps.runtime import StepError

STEP = "main"
DEFAULT_EXPERIMENT_ID = "0"
NEVER_REUSED = frozenset({"register"})
# Fail in ~15 s instead of ~4 min per request when the tracking server is gone (mlflow's
# defaults: 7 retries, backoff factor 2, capped at 120 s). Children inherit them; the user's
# own settings win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


@dataclass
class StepResult:
    step: str
    run_id: str
    reused: bool
    seconds: float
    metric: str = ""


@dataclass(frozen=True)
class CacheKey:
    """What must match for a finished run to stand in for a new one."""

    step: str
    params: dict[str, str]
    git_commit: str | None
    clean_tree: bool
    data_md5: str | None = field(default=None)


# --- pure core ----------------------------------------------------------------------------
def as_mlflow_params(params: dict[str, Any]) -> dict[str, str]:
    """Parameters the way MLflow stores them (strings), so comparisons can hit."""
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}


def step_params(step: str, upstream_run_id: str | None, opts: dict[str, Any]) -> dict[str, str]:
    """The parameters main passes to one step, taken from main's own options."""
    names = {
        "load_data": ["source_url", "accept_drift"],
        "preprocess": ["test_size", "split_seed", "split_strategy"],
        "train": ["model_kind", *opts["hyperparam_names"]],
        "register": [],
    }[step]
    params = {name: opts[name] for name in names}
    if upstream_run_id is not None:
        params["upstream_run_id"] = upstream_run_id
    return as_mlflow_params(params)


def reusable(run: Any, key: CacheKey) -> bool:
    """Does a FINISHED run match the key exactly? A dirty tree never matches."""
    tags = run.data.tags
    return (
        key.clean_tree
        and key.git_commit is not None
        and run.info.status == "FINISHED"
        and tags.get(config.TAG_STEP) == key.step
        and tags.get("mlflow.source.git.commit") == key.git_commit
        and tags.get(config.TAG_GIT_DIRTY) == "false"
        and (key.data_md5 is None or tags.get(config.TAG_DVC_MD5) == key.data_md5)
        and all(stored_as(v) == run.data.params.get(k) for k, v in key.params.items())
    )


def stored_as(value: str) -> str:
    """How `mlflow run` records a parameter: shell-quoted, so "" is stored as "''"."""
    return shlex.quote(value)


def summary_table(results: list[StepResult]) -> str:
    rows = [("step", "run id", "status", "seconds", "key metric")]
    rows += [
        (r.step, r.run_id, "reused" if r.reused else "ran", f"{r.seconds:.1f}", r.metric)
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


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
        return mlflow.create_experiment(config.EXPERIMENT_NAME, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Another pipeline created it between our lookup and our create.
        return mlflow.get_experiment_by_name(config.EXPERIMENT_NAME).experiment_id


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
    if launcher is not None and launcher.info.experiment_id != DEFAULT_EXPERIMENT_ID:
        return mlflow.start_run(run_id=launcher_id)

    experiment_id = ensure_experiment()
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        os.environ.pop(var, None)
    copied = {}
    if launcher is not None:
        copied = {k: v for k, v in launcher.data.tags.items() if k.startswith("mlflow.")}
        copied.pop("mlflow.runName", None)
        copied["pipeline.launcher_run_id"] = launcher_id
    run = mlflow.start_run(experiment_id=experiment_id, tags=copied)
    if launcher is not None:
        mlflow.log_params(launcher.data.params)
        client.set_tag(launcher_id, "pipeline.moved_to_run_id", run.info.run_id)
        runtime.echo(STEP, f"pipeline runs are grouped in experiment {config.EXPERIMENT_NAME!r}")
    return run


def find_reusable(experiment_id: str, key: CacheKey) -> Any | None:
    import mlflow

    candidates = mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{config.TAG_STEP}` = '{key.step}' and attributes.status = 'FINISHED' "
            f"and tags.`{config.TAG_GIT_DIRTY}` = 'false'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=200,
    )
    return next((run for run in candidates if reusable(run, key)), None)


def launch(step: str, params: dict[str, str], env_manager: str, experiment_id: str) -> str:
    """Run one entry point as a child run and wait; returns its run id.

    Synchronous mode runs the entry point's command directly (asynchronous mode would put a
    whole extra `mlflow run` process in between) and, on Ctrl-C/SIGTERM, kills the child and
    ends its run before re-raising.
    """
    import mlflow
    from mlflow.exceptions import ExecutionException, MlflowException

    try:
        submitted = mlflow.projects.run(
            str(config.PROJECT_ROOT),
            entry_point=step,
            parameters=params,
            env_manager=env_manager,
            experiment_id=experiment_id,
            run_name=step,
            synchronous=True,
        )
    except ExecutionException as exc:
        raise StepError(f"step {step} failed: {exc}") from exc
    except MlflowException as exc:
        if not runtime.tracking_unreachable(exc):
            raise
        raise StepError(
            f"step {step}: tracking server unreachable: {runtime.one_line(exc)}"
        ) from exc
    return submitted.run_id


def key_metric(step: str, run: Any) -> str:
    metrics, tags = run.data.metrics, run.data.tags
    if step == "load_data":
        return f"rows={metrics.get('n_rows', 0):.0f}"
    if step == "preprocess":
        return f"train/test={metrics.get('n_train', 0):.0f}/{metrics.get('n_test', 0):.0f}"
    if step == "train":
        return f"test_rmse={metrics.get('test_rmse', float('nan')):,.0f}"
    return f"v{tags.get('registry.version')} @{tags.get('registry.alias')}"


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
    from mlflow.entities import RunStatus

    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    signal.signal(signal.SIGTERM, runtime.raise_interrupt)
    runtime.die_with_parent()
    runtime.skip_exit_collection()
    try:
        run_pipeline(env_manager, use_cache, opts)
    except Exception as exc:
        if not runtime.tracking_unreachable(exc):
            raise
        runtime.end_run_safely(RunStatus.to_string(RunStatus.FAILED))
        click.echo(f"error: {STEP}: tracking server unreachable: {runtime.one_line(exc)}", err=True)
        raise SystemExit(1) from None


def end_orphaned_launcher_run(launcher_id: str | None, launcher_pid: int) -> None:
    """If the `mlflow run` that started us is dead, nobody else will end its run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not launcher_id or os.getppid() == launcher_pid:
        return
    client = mlflow.MlflowClient()
    with contextlib.suppress(MlflowException):
        if client.get_run(launcher_id).info.status == "RUNNING":
            client.set_terminated(launcher_id, "KILLED")


def run_pipeline(env_manager: str, use_cache: bool, opts: dict[str, Any]) -> None:
    import mlflow
    from mlflow.entities import RunStatus

    mlflow.set_tracking_uri(config.tracking_uri())
    launcher_id, launcher_pid = os.environ.get("MLFLOW_RUN_ID"), os.getppid()
    opts["hyperparam_names"] = list(DEFAULT_HYPERPARAMS)
    parent = open_parent_run()
    experiment_id = parent.info.experiment_id
    client = mlflow.MlflowClient()
    # Under `mlflow run <git URL>` children are launched from the temp clone, so MLflow names
    # their source file:///tmp/…; give them the parent's (the URL the user ran, #subdir kept).
    source_name = client.get_run(parent.info.run_id).data.tags.get("mlflow.source.name")
    git = runtime.git_state()
    data_md5 = expected_md5(config.PROJECT_ROOT)
    mlflow.set_tags({config.TAG_STEP: STEP, config.TAG_GIT_DIRTY: str(git.dirty).lower()})
    if git.dirty and use_cache:
        runtime.echo(STEP, "work tree is dirty: every step runs (no reuse)")

    results: list[StepResult] = []
    upstream: str | None = None
    try:
        for step in ("load_data", "preprocess", "train", "register"):
            started = time.perf_counter()
            params = step_params(step, upstream, opts)
            key = CacheKey(step, params, git.commit, not git.dirty, data_md5)
            hit = None
            if use_cache and step not in NEVER_REUSED:
                hit = find_reusable(experiment_id, key)
            if hit is not None:
                run_id = hit.info.run_id
                runtime.echo(STEP, f"{step}: reusing run {run_id}")
            else:
                runtime.echo(STEP, f"{step}: running")
                run_id = launch(step, params, env_manager, experiment_id)
                if source_name:
                    client.set_tag(run_id, "mlflow.source.name", source_name)
            run = client.get_run(run_id)
            results.append(
                StepResult(
                    step,
                    run_id,
                    hit is not None,
                    time.perf_counter() - started,
                    key_metric(step, run),
                )
            )
            mlflow.set_tags(
                {
                    f"pipeline.{step}.run_id": run_id,
                    f"pipeline.{step}.reused": str(hit is not None).lower(),
                }
            )
            upstream = run_id
    except StepError as exc:
        runtime.end_run_safely(RunStatus.to_string(RunStatus.FAILED))
        click.echo(f"error: {STEP}: {exc}", err=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        runtime.ignore_interrupts()
        runtime.end_run_safely(RunStatus.to_string(RunStatus.KILLED))
        end_orphaned_launcher_run(launcher_id, launcher_pid)
        click.echo(f"error: {STEP}: interrupted", err=True)
        raise SystemExit(130) from None
    except Exception:
        # The parent may be our own run (not the launcher's): nobody else would end it.
        runtime.end_run_safely(RunStatus.to_string(RunStatus.FAILED))
        raise

    train_run = client.get_run(results[2].run_id)
    register_run = client.get_run(results[3].run_id)
    mlflow.log_metric("test_rmse", train_run.data.metrics["test_rmse"])
    mlflow.set_tags(
        {
            config.TAG_DVC_MD5: data_md5,
            "registry.version": register_run.data.tags["registry.version"],
            "registry.alias": register_run.data.tags["registry.alias"],
        }
    )
    click.echo(summary_table(results))
    tracking = mlflow.get_tracking_uri()
    if tracking.startswith(("http://", "https://")):
        click.echo(
            f"{tracking.rstrip('/')}/#/experiments/{experiment_id}/runs/{parent.info.run_id}"
        )
    mlflow.end_run()


if __name__ == "__main__":
    cli()
