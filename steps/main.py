"""Entry point ``main``: run load_data → preprocess → train → register as nested MLflow runs.

In: every step's parameters (defaults shared with the steps), ``env_manager`` for the
children and ``use_cache``.
Out: a parent run in experiment ``california_housing_price`` (tagged
``mlflow.experimentKind=custom_model_development`` so the UI opens its classic ML view)
whose children are the step runs (``mlflow.parentRunId``), each fed its upstream run id. A
step is reused instead of rerun when a FINISHED run of it exists with the same parameters
(as MLflow stores them), the same code hash (``steps.orchestration.fingerprint``: the step's
modules in any subpackage,
MLproject, the lock file — read from the work tree, so a dirty tree still reuses), the same
upstream run and the same data md5; register is never reused. Parent tags:
``pipeline.<step>.run_id``, ``pipeline.<step>.reused``, ``registry.version``,
``registry.alias``, ``dataset.dvc_md5``; parent metric ``test_rmse``; the parent is named
``main · <kind> · v<N>@<alias>`` and its description (``mlflow.note.content``) is the step
table. Each step's output goes to the artifact ``logs/<step>.log`` of its run; the terminal
gets one line per step (``PIPELINE_VERBOSE=1``: everything as well, as it happens). Steps that run
are started ahead of their turn and wait for their upstream (``Chain``), so their start-up
overlaps the work before them; when the pipeline stops early, those still waiting end KILLED.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from steps import config
from steps.infra import forkserver, processes
from steps.infra.errors import StepError, one_line
from steps.ml.hyperparams import DEFAULT_HYPERPARAMS, hyperparameter_options
from steps.orchestration import fingerprint, upstream_wait
from steps.tracking import provenance, refusals, steprun, storerace

STEP = "main"
STEPS = ("load_data", "preprocess", "train", "register")
CHAIN_POLL_S = 0.05
NEVER_REUSED = frozenset({"register"})
# What the children print unless the user asks for detail: no INFO chatter from MLflow, no
# per-file progress bars (the run's log artifact keeps whatever they print anyway).
QUIET_DEFAULTS = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
LOG_ARTIFACT_DIR = "logs"
# How long a finished or cancelled step's output may take to arrive through its pipes
# (verbose): the child has exited, so only a process that inherited the pipe holds it open.
TEE_DRAIN_S = 5.0
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
        copied.pop("mlflow.runName", None)
        copied[config.TAG_LAUNCHER_RUN] = launcher_id
    run = mlflow.start_run(experiment_id=experiment_id, tags=copied)
    if launcher is not None:
        mlflow.log_params(launcher.data.params)
        client.set_tag(launcher_id, config.TAG_MOVED_TO_RUN, run.info.run_id)
        steprun.echo(STEP, f"pipeline runs are grouped in experiment {config.EXPERIMENT_NAME!r}")
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


class Tee:
    """Verbose: a child's stdout and stderr are pipes whose every chunk is copied, as it
    arrives, both to this process's stdout/stderr (the terminal) and to the step's log.

    The terminal is reached through copies of fds 1 and 2 taken now: later launches point
    fds 1 and 2 at other children's outputs for a moment (``output_to``). Chunks of the two
    streams enter the log whole, in the order they arrived.
    """

    def __init__(self, log: Path) -> None:
        self.sink = log.open("ab")
        self.lock = threading.Lock()
        self.writers: list[int] = []
        self.threads: list[threading.Thread] = []
        for stream in (1, 2):
            read, write = os.pipe()
            self.writers.append(write)
            terminal = os.dup(stream)
            thread = threading.Thread(target=self._copy, args=(read, terminal), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _copy(self, read: int, terminal: int) -> None:
        try:
            while chunk := os.read(read, 65536):
                with self.lock:
                    if not self.sink.closed:
                        self.sink.write(chunk)
                        self.sink.flush()
                with contextlib.suppress(OSError):  # a closed terminal must not cost the log
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(terminal, view) :]
        finally:
            os.close(read)
            os.close(terminal)

    def release(self) -> None:
        """Close our copies of the pipes' write ends once the child holds its own: the
        copying then ends when the child (and whatever inherited its output) has exited."""
        for fd in self.writers:
            os.close(fd)
        self.writers = []

    def close(self, timeout: float = TEE_DRAIN_S) -> None:
        """Wait for the child's last output, then close the log (later output is dropped
        from the log, still shown)."""
        self.release()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self.lock:
            self.sink.close()


@contextlib.contextmanager
def output_to(log: Path, tee: Tee | None = None) -> Iterator[None]:
    """Point this process's stdout/stderr at ``log`` (verbose: at ``tee``'s pipes, which
    also fill ``log``) while a child is started.

    ``mlflow.projects`` starts the entry point with our file descriptors; a child keeps the
    ones it was started with, so swapping them around the launch gives every step its own
    log even while two steps run at once.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    if tee is None:
        with log.open("ab") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
    else:
        os.dup2(tee.writers[0], 1)
        os.dup2(tee.writers[1], 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        if tee is not None:
            tee.release()


def attach_log(client: Any, run_id: str, log: Path) -> None:
    """Keep a step's full output with its run (quiet: the terminal only got one line of it)."""
    try:
        with contextlib.suppress(Exception):
            client.log_artifact(run_id, str(log), LOG_ARTIFACT_DIR)
    finally:
        shutil.rmtree(log.parent, ignore_errors=True)


def child_environment(env_manager: str, verbose: bool) -> None:
    """Environment the children inherit: quiet MLflow, main's pid (upstream_wait.wait_for_upstream)
    and our own interpreter first on PATH.

    With ``--env-manager local`` MLflow runs each step's ``python`` from PATH; a pipeline
    started as ``.venv/bin/mlflow run …`` from a shell without the venv would otherwise
    hand its steps the system interpreter.
    """
    if not verbose:
        for name, value in QUIET_DEFAULTS.items():
            os.environ.setdefault(name, value)
    os.environ[config.MAIN_PID_ENV] = str(os.getpid())
    if env_manager == "local":
        bin_dir = str(Path(sys.executable).parent)
        path = os.environ.get("PATH", "")
        if path.split(os.pathsep)[0] != bin_dir:
            os.environ["PATH"] = os.pathsep.join([bin_dir, path]) if path else bin_dir


@dataclass
class Launched:
    """A step started as a child run; ``released``: when it could begin its work."""

    step: str
    submitted: Any  # mlflow.projects.SubmittedRun
    log: Path
    tee: Tee | None
    gate: Path | None
    released: float

    @property
    def run_id(self) -> str:
        return self.submitted.run_id

    def warmed_up(self) -> bool:
        """Imports done and run open (upstream_wait.wait_for_upstream); a step started without a
        gate is taken as warm, since nothing can be started earlier than it anyway."""
        return self.gate is None or Path(f"{self.gate}{upstream_wait.READY_SUFFIX}").exists()


def project_run_args(
    step: str, params: dict[str, str], env_manager: str, experiment_id: str
) -> dict[str, Any]:
    """Arguments of ``mlflow.projects._run`` for one local entry point of this project.
    ``synchronous=True`` runs the command here (no extra ``mlflow run`` process); ``_run``
    returns without waiting for it either way."""
    return {
        "uri": str(config.PROJECT_ROOT),
        "experiment_id": experiment_id,
        "entry_point": step,
        "version": None,
        "parameters": params,
        "docker_args": None,
        "backend_name": "local",
        "backend_config": {},
        "storage_dir": None,
        "env_manager": env_manager,
        "synchronous": True,
        "run_name": step,
        "build_image": False,
        "docker_auth": None,
    }


def launch(
    step: str,
    params: dict[str, str],
    env_manager: str,
    experiment_id: str,
    log: Path,
    gate: Path | None,
    verbose: bool = False,
) -> Launched:
    """Start one entry point as a child run of the active (parent) run; do not wait.

    ``mlflow.projects.run`` would block until the step ends. Its helper ``_run`` does the
    same run creation, tagging and command (the entry point itself, no extra ``mlflow run``
    process) and returns the running step, so main can start the next step meanwhile.
    The step's output goes to ``log`` (``verbose``: and to our terminal, through a ``Tee``).
    ``gate``: the child waits for this file before it starts its work (``runtime``).
    """
    import mlflow.projects
    from mlflow.exceptions import ExecutionException, MlflowException

    if gate is not None:
        os.environ[config.START_AFTER_ENV] = str(gate)
    tee = Tee(log) if verbose else None
    try:
        with output_to(log, tee):
            submitted = mlflow.projects._run(
                **project_run_args(step, params, env_manager, experiment_id)
            )
    except BaseException as exc:
        if tee is not None:
            tee.close(0)
        shutil.rmtree(log.parent, ignore_errors=True)
        if isinstance(exc, ExecutionException):
            raise StepError(f"step {step} failed: {exc}") from exc
        if isinstance(exc, MlflowException) and refusals.tracking_unreachable(exc):
            raise StepError(f"step {step}: tracking server unreachable: {one_line(exc)}") from exc
        raise
    finally:
        os.environ.pop(config.START_AFTER_ENV, None)
    return Launched(step, submitted, log, tee, gate, time.perf_counter())


def new_log(step: str) -> Path:
    """``<temp dir>/<step>.log``: the artifact's name."""
    return Path(tempfile.mkdtemp(prefix="pipeline-log-")) / f"{step}.log"


def finish(launched: Launched, client: Any) -> str:
    """Wait for a launched step; keep its log on its run; a failure is a StepError."""
    ok = launched.submitted.wait()
    run_id, step, log = launched.run_id, launched.step, launched.log
    if launched.tee is not None:
        launched.tee.close()
    if client.get_run(run_id).info.status == "RUNNING":  # the step could not end it itself
        client.set_terminated(run_id, "FINISHED" if ok else "FAILED")
    if not ok:
        if launched.tee is None:  # verbose: the terminal has already shown all of it
            for line in error_lines(log.read_text(errors="replace")):
                click.echo(f"  {line}", err=True)
        where = f"full output: artifact {LOG_ARTIFACT_DIR}/{step}.log of run {run_id}"
        attach_log(client, run_id, log)
        raise StepError(f"step {step} failed: Run (ID '{run_id}') failed ({where})")
    attach_log(client, run_id, log)
    return run_id


def cancel(launched: Launched, client: Any) -> None:
    """Stop a launched step (SIGTERM: it ends its run KILLED) and drop its log."""
    from mlflow.exceptions import MlflowException

    launched.submitted.cancel()
    if launched.tee is not None:
        launched.tee.close()
    with contextlib.suppress(MlflowException):
        if client.get_run(launched.run_id).info.status == "RUNNING":
            client.set_terminated(launched.run_id, "KILLED")
    shutil.rmtree(launched.log.parent, ignore_errors=True)


class Chain:
    """The steps left once one step misses the cache. Each gives the next a new upstream run,
    so all of them run, and each is started ahead of its turn: its imports and tracking-store
    set-up overlap the work before it, and it waits at a gate file that main creates when
    its upstream has finished. A step is started only once every step ahead of it has
    warmed up (the working one too: it may have been released before it was ready), so one
    start-up at a time competes with the working step for the CPU."""

    def __init__(
        self,
        steps: list[str],
        upstream: str | None,
        start: Callable[[str, str | None, Path | None], Launched],
        gates: Path,
    ) -> None:
        self.to_start, self.upstream, self.start, self.gates = steps, upstream, start, gates
        self.ahead: list[Launched] = []

    def __bool__(self) -> bool:
        return bool(self.to_start or self.ahead)

    def _start_next(self) -> None:
        before = self.ahead[-1].run_id if self.ahead else self.upstream
        gate = self.gates / before if self.ahead and before else None
        self.ahead.append(self.start(self.to_start.pop(0), before, gate))

    def run_next(self, client: Any) -> Launched:
        """Wait for the next step in line (starting later ones meanwhile); release the one
        after it. A failed step is a StepError."""
        if not self.ahead:
            self._start_next()
        launched = self.ahead[0]
        while launched.submitted.get_status() == "RUNNING":
            if self.to_start and all(started.warmed_up() for started in self.ahead):
                self._start_next()
            time.sleep(CHAIN_POLL_S)
        finish(launched, client)
        self.ahead.pop(0)
        (self.gates / launched.run_id).touch()
        if self.ahead:
            self.ahead[0].released = time.perf_counter()
        self.upstream = launched.run_id
        return launched


def key_metric(step: str, run: Any) -> str:
    metrics, tags = run.data.metrics, run.data.tags
    if step == "load_data":
        return f"rows={metrics.get('n_rows', 0):,.0f}"
    if step == "preprocess":
        return f"train/test={metrics.get('n_train', 0):,.0f}/{metrics.get('n_test', 0):,.0f}"
    if step == "train":
        return f"test_rmse=${metrics.get('test_rmse', float('nan')):,.0f}"
    return f"v{tags.get(config.TAG_REGISTRY_VERSION)} @{tags.get(config.TAG_REGISTRY_ALIAS)}"


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
    source_name = client.get_run(parent.info.run_id).data.tags.get("mlflow.source.name")
    git = provenance.git_state()
    data_md5 = provenance.expected_md5(config.PROJECT_ROOT)
    mlflow.set_tags(
        {
            config.TAG_STEP: STEP,
            config.TAG_GIT_DIRTY: str(git.dirty).lower(),
            "mlflow.runName": f"{STEP} · {opts['model_kind']} · running",
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
                client.set_tag(run_id, "mlflow.source.name", pipeline.source_name)
        run = client.get_run(run_id)
        elapsed = time.perf_counter() - started
        result = StepResult(step, run_id, hit is not None, elapsed, key_metric(step, run))
        results.append(result)
        click.echo(result_row(result))
        reused = str(hit is not None).lower()
        mlflow.set_tags({f"pipeline.{step}.run_id": run_id, f"pipeline.{step}.reused": reused})
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
            "mlflow.runName": parent_run_name(opts["model_kind"], version, alias),
            "mlflow.note.content": run_description(results, model),
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
