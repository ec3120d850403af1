"""Entry point ``main``: run load_data → preprocess → train → register as nested MLflow runs.

In: every step's parameters (defaults shared with the steps), ``env_manager`` for the
children and ``use_cache``.
Out: a parent run in experiment ``california_housing_price`` (tagged
``mlflow.experimentKind=custom_model_development`` so the UI opens its classic ML view)
whose children are the step runs (``mlflow.parentRunId``), each fed its upstream run id. A
step is reused instead of rerun when a FINISHED run of it exists with the same parameters
(as MLflow stores them), the same code hash (``steps.fingerprint``: the step's modules,
MLproject, the lock file — read from the work tree, so a dirty tree still reuses), the same
upstream run and the same data md5; register is never reused. Parent tags:
``pipeline.<step>.run_id``, ``pipeline.<step>.reused``, ``registry.version``,
``registry.alias``, ``dataset.dvc_md5``; parent metric ``test_rmse``; the parent is named
``main · <kind> · v<N>@<alias>`` and its description (``mlflow.note.content``) is the step
table. Each step's output goes to the artifact ``logs/<step>.log`` of its run; the terminal
gets one line per step (``PIPELINE_VERBOSE=1``: everything, as it happens).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from steps import config, fingerprint, runtime
from steps.hyperparams import DEFAULT_HYPERPARAMS, hyperparameter_options
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
VERBOSE_ENV = "PIPELINE_VERBOSE"
# What the children print unless the user asks for detail: no INFO chatter from MLflow, no
# per-file progress bars (the run's log artifact keeps whatever they print anyway).
QUIET_DEFAULTS = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
LOG_ARTIFACT_DIR = "logs"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


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
    code_hash: str
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
    """Does a FINISHED run match the key exactly (code, data, parameters, upstream)?"""
    tags = run.data.tags
    return (
        run.info.status == "FINISHED"
        and tags.get(config.TAG_STEP) == key.step
        and tags.get(config.TAG_CODE_HASH) == key.code_hash
        and (key.data_md5 is None or tags.get(config.TAG_DVC_MD5) == key.data_md5)
        and all(param_matches(run, name, value) for name, value in key.params.items())
    )


def param_matches(run: Any, name: str, value: str) -> bool:
    """A parameter as the run recorded it. The upstream run is compared with the run that
    was actually consumed (tag ``lineage.upstream_run_id``), so a step run alone with an
    empty ``upstream_run_id`` ("the latest one") is reusable once it is known which it took."""
    if name == "upstream_run_id":
        return run.data.tags.get(config.TAG_UPSTREAM) == value
    return stored_as(value) == run.data.params.get(name)


def stored_as(value: str) -> str:
    """How `mlflow run` records a parameter: shell-quoted, so "" is stored as "''"."""
    return shlex.quote(value)


TABLE_HEADER = ("step", "run id", "status", "seconds", "key metric")
# Fixed widths, so rows can be printed one by one as the steps finish and still line up.
TABLE_WIDTHS = (10, 32, 6, 7)


def table_row(cells: tuple[str, ...]) -> str:
    padded = [c.ljust(w) for c, w in zip(cells, TABLE_WIDTHS, strict=False)]
    return "  ".join([*padded, *cells[len(TABLE_WIDTHS) :]]).rstrip()


def result_row(r: StepResult) -> str:
    return table_row(
        (r.step, r.run_id, "reused" if r.reused else "ran", f"{r.seconds:.1f}", r.metric)
    )


def summary_table(results: list[StepResult]) -> str:
    return "\n".join([table_row(TABLE_HEADER), *(result_row(r) for r in results)])


def run_description(results: list[StepResult], model: str) -> str:
    """The parent run's markdown description: what ran, what was reused, what it produced."""
    lines = [
        f"Pipeline run: **{model}**.",
        "",
        "| step | run | status | seconds | key figure |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.step} | `{r.run_id}` | {'reused' if r.reused else 'ran'} "
        f"| {r.seconds:.1f} | {r.metric} |"
        for r in results
    ]
    return "\n".join(lines) + "\n"


def parent_run_name(model_kind: str, version: str | None, alias: str | None) -> str:
    return f"{STEP} · {model_kind} · v{version}@{alias}"


def error_lines(log: str, tail: int = 15) -> list[str]:
    """What to show of a failed step's output: its one-line errors, else the last lines."""
    lines = log.rstrip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    return errors or lines[-tail:]


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
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    except mlflow.exceptions.MlflowException:
        # Another pipeline created it between our lookup and our create.
        return mlflow.get_experiment_by_name(config.EXPERIMENT_NAME).experiment_id


def tag_experiment_kind(client: Any, experiment_id: str) -> None:
    """Without this tag the MLflow 3 UI opens the experiment on its GenAI overview page."""
    experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


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
    """The newest run matching the key. The store narrows by step, status and code hash;
    parameters (stored shell-quoted) are compared here, page by page, so no match is missed
    however many runs the experiment holds."""
    import mlflow

    client = mlflow.MlflowClient()
    query = (
        f"tags.`{config.TAG_STEP}` = '{key.step}' and attributes.status = 'FINISHED' "
        f"and tags.`{config.TAG_CODE_HASH}` = '{key.code_hash}'"
    )
    if key.data_md5:
        query += f" and tags.`{config.TAG_DVC_MD5}` = '{key.data_md5}'"
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=query,
            order_by=["attributes.start_time DESC"],
            max_results=200,
            page_token=token,
        )
        hit = next((run for run in page if reusable(run, key)), None)
        if hit is not None or not page.token:
            return hit
        token = page.token


@contextlib.contextmanager
def captured_output(verbose: bool) -> Iterator[Path | None]:
    """Send this process's stdout/stderr — and so the child step's — to a log file.

    ``mlflow.projects.run`` runs the entry point with our file descriptors, so redirecting
    them at the OS level is what catches the child's output too. Verbose: no capture.
    """
    if verbose:
        yield None
        return
    with tempfile.NamedTemporaryFile("w+b", prefix="step-", suffix=".log", delete=False) as log:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield Path(log.name)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def attach_log(client: Any, run_id: str | None, step: str, log: Path | None) -> None:
    """Keep a step's full output with its run; the terminal only got one line of it."""
    if log is None:
        return
    try:
        if run_id is not None:
            named = log.with_name(f"{step}.log")
            log.replace(named)
            log = named
            with contextlib.suppress(Exception):
                client.log_artifact(run_id, str(log), LOG_ARTIFACT_DIR)
    finally:
        log.unlink(missing_ok=True)


def child_environment(env_manager: str, verbose: bool) -> None:
    """Environment the children inherit: quiet MLflow, and our own interpreter first on PATH.

    With ``--env-manager local`` MLflow runs each step's ``python`` from PATH; a pipeline
    started as ``.venv/bin/mlflow run …`` from a shell without the venv would otherwise
    hand its steps the system interpreter.
    """
    if not verbose:
        for name, value in QUIET_DEFAULTS.items():
            os.environ.setdefault(name, value)
    if env_manager == "local":
        bin_dir = str(Path(sys.executable).parent)
        path = os.environ.get("PATH", "")
        if path.split(os.pathsep)[0] != bin_dir:
            os.environ["PATH"] = os.pathsep.join([bin_dir, path]) if path else bin_dir


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


def latest_child(client: Any, parent_id: str, step: str) -> str | None:
    """The run a failed launch left behind (MLflow's exception does not carry its id)."""
    from mlflow.exceptions import MlflowException

    try:
        runs = client.search_runs(
            [client.get_run(parent_id).info.experiment_id],
            filter_string=(
                f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.run_name = '{step}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    except MlflowException:
        return None
    return runs[0].info.run_id if runs else None


def run_step(
    step: str, params: dict[str, str], env_manager: str, parent: Any, verbose: bool
) -> str:
    """Launch one step with its output captured (unless verbose); keep the log on its run."""
    import mlflow

    client = mlflow.MlflowClient()
    failure: StepError | None = None
    run_id: str | None = None
    with captured_output(verbose) as log:
        try:
            run_id = launch(step, params, env_manager, parent.info.experiment_id)
        except StepError as exc:
            failure = exc
        except BaseException:
            if log is not None:  # interrupted: the run ends KILLED, its log is dropped
                log.unlink(missing_ok=True)
            raise
    if failure is not None:
        text = log.read_text(errors="replace") if log else ""
        for line in error_lines(text):
            click.echo(f"  {line}", err=True)
        run_id = latest_child(client, parent.info.run_id, step)
        attach_log(client, run_id, step, log)
        where = f" (full output: artifact {LOG_ARTIFACT_DIR}/{step}.log of run {run_id})"
        raise StepError(f"{failure}{where if log and run_id else ''}") from failure
    attach_log(client, run_id, step, log)
    assert run_id is not None
    return run_id


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() in {"1", "true", "yes"}


def key_metric(step: str, run: Any) -> str:
    metrics, tags = run.data.metrics, run.data.tags
    if step == "load_data":
        return f"rows={metrics.get('n_rows', 0):,.0f}"
    if step == "preprocess":
        return f"train/test={metrics.get('n_train', 0):,.0f}/{metrics.get('n_test', 0):,.0f}"
    if step == "train":
        return f"test_rmse=${metrics.get('test_rmse', float('nan')):,.0f}"
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


def show_data_and_model(client: Any, parent_id: str, load_run: Any, train_run: Any) -> None:
    """Give the parent run the raw dataset and the trained model its children logged, so the
    runs table's Dataset and Models columns show them on the pipeline's row too."""
    datasets = [
        d for d in load_run.inputs.dataset_inputs if d.dataset.name == config.RAW_DATASET_NAME
    ]
    if datasets:
        runtime.with_unique_race_retry(lambda: client.log_inputs(parent_id, datasets=datasets))
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


def run_pipeline(env_manager: str, use_cache: bool, opts: dict[str, Any]) -> None:
    import mlflow
    from mlflow.entities import RunStatus

    mlflow.set_tracking_uri(config.tracking_uri())
    launcher_id, launcher_pid = os.environ.get("MLFLOW_RUN_ID"), os.getppid()
    opts["hyperparam_names"] = list(DEFAULT_HYPERPARAMS)
    is_verbose = verbose()
    child_environment(env_manager, is_verbose)
    parent = open_parent_run()
    experiment_id = parent.info.experiment_id
    client = mlflow.MlflowClient()
    tag_experiment_kind(client, experiment_id)
    # Under `mlflow run <git URL>` children are launched from the temp clone, so MLflow names
    # their source file:///tmp/…; give them the parent's (the URL the user ran, #subdir kept).
    source_name = client.get_run(parent.info.run_id).data.tags.get("mlflow.source.name")
    git = runtime.git_state()
    data_md5 = runtime.expected_md5(config.PROJECT_ROOT)
    mlflow.set_tags(
        {
            config.TAG_STEP: STEP,
            config.TAG_GIT_DIRTY: str(git.dirty).lower(),
            "mlflow.runName": f"{STEP} · {opts['model_kind']} · running",
        }
    )
    if git.dirty:
        runtime.echo(STEP, "uncommitted changes: runs are keyed on the code as it is on disk")

    results: list[StepResult] = []
    upstream: str | None = None
    click.echo(table_row(TABLE_HEADER))
    try:
        for step in ("load_data", "preprocess", "train", "register"):
            started = time.perf_counter()
            params = step_params(step, upstream, opts)
            key = CacheKey(step, params, fingerprint.code_hash(step), data_md5)
            hit = None
            if use_cache and step not in NEVER_REUSED:
                hit = find_reusable(experiment_id, key)
            if hit is not None:
                run_id = hit.info.run_id
            else:
                if is_verbose:
                    runtime.echo(STEP, f"{step}: running")
                run_id = run_step(step, params, env_manager, parent, is_verbose)
                if source_name:
                    client.set_tag(run_id, "mlflow.source.name", source_name)
            run = client.get_run(run_id)
            result = StepResult(
                step, run_id, hit is not None, time.perf_counter() - started, key_metric(step, run)
            )
            results.append(result)
            click.echo(result_row(result))
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
    show_data_and_model(client, parent.info.run_id, client.get_run(results[0].run_id), train_run)
    register_tags = client.get_run(results[3].run_id).data.tags
    version, alias = register_tags["registry.version"], register_tags["registry.alias"]
    model = f"{config.MODEL_NAME} v{version} @{alias}"
    mlflow.log_metric("test_rmse", train_run.data.metrics["test_rmse"])
    mlflow.set_tags(
        {
            config.TAG_DVC_MD5: data_md5,
            "registry.version": version,
            "registry.alias": alias,
            "mlflow.runName": parent_run_name(opts["model_kind"], version, alias),
            "mlflow.note.content": run_description(results, model),
        }
    )
    click.echo(f"model: {model} ({register_tags.get('registry.reason', '')})")
    click.echo(
        f"runs:  {where_to_look(mlflow.get_tracking_uri(), experiment_id, parent.info.run_id)}"
    )
    mlflow.end_run()


if __name__ == "__main__":
    cli()
