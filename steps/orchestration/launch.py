"""Starting the steps: each through ``mlflow.projects._run`` as a child run, its output
teed to a log (artifact ``logs/<step>.log``), started ahead of its turn behind a gate file,
released once its upstream finished (``Chain``), and stopped (``cancel``) when the pipeline
fails or is interrupted."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from steps import config
from steps.infra.errors import StepError, one_line
from steps.orchestration import upstream_wait
from steps.orchestration.summary import error_lines
from steps.tracking import refusals

CHAIN_POLL_S = 0.05
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
