"""What every step's thin command layer shares: the MLflow run it logs into, git state, and
the rule that a failure is one line on stderr, a non-zero exit and a run that is not left
RUNNING; an interrupted step (SIGINT/SIGTERM, however many and in whatever order) ends its
run KILLED with exit 130, never FINISHED.

Tags written on every step run: ``pipeline.step``, ``pipeline.code_hash``
(steps.orchestration.fingerprint), ``git.dirty``, ``mlflow.runName`` (the step's name, unless
the user
named the run) and, when the run was not created by ``mlflow run`` (which sets it itself),
``mlflow.source.git.commit``.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import click

from steps import config
from steps.infra import processes
from steps.infra.errors import StepError, one_line
from steps.infra.processes import (
    die_with_parent,
    ignore_interrupts,
    skip_exit_collection,
    take_interrupts,
)
from steps.orchestration import fingerprint
from steps.orchestration.upstream_wait import wait_for_upstream
from steps.tracking.provenance import git_state
from steps.tracking.refusals import refusal, tracking_unreachable


def echo(step: str, message: str) -> None:
    click.echo(f"[{step}] {message}", err=True)


def end_run_safely(status: str | None = None, run_id: str | None = None) -> bool:
    """End the active run; if the tracking server is gone, say so instead of a traceback.

    ``run_id``: the run to end when no run is active any more. ``mlflow.end_run`` takes the
    run off its stack before the store records the end, so an end_run cut short by an
    interrupt leaves the run RUNNING (or FINISHED, had the store already recorded it) but
    no longer active."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        if run_id is not None and mlflow.active_run() is None:
            mlflow.MlflowClient().set_terminated(run_id, status)
        elif status is None:
            mlflow.end_run()
        else:
            mlflow.end_run(status)
    except MlflowException as exc:
        click.echo(f"warning: could not record the run's end: {one_line(exc, 160)}", err=True)
        return False
    return True


# MLflow's generated run names: predicate-noun-integer (mlflow.utils.name_utils).
GENERATED_RUN_NAME = re.compile(r"[a-z]+-[a-z]+-\d{1,3}")


def is_generated_name(name: str | None) -> bool:
    return not name or GENERATED_RUN_NAME.fullmatch(name) is not None


def end_open_run_at_exit() -> None:
    """Take over from MLflow's exit hook, which ends a run still open at exit FINISHED. Every
    way out of step_run ends the run it opened; one still open here was cut short (an
    interrupt raised by something other than raise_interrupt, say) and ends KILLED if the
    process was interrupted, FAILED otherwise, never FINISHED."""
    from mlflow.tracking import fluent

    # A private name: if MLflow renames it, ours still runs first (atexit is last in, first
    # out) and leaves no run open for it.
    mlflow_hook = getattr(fluent, "_safe_end_run", None)
    if mlflow_hook is not None:
        atexit.unregister(mlflow_hook)
    atexit.unregister(_end_open_run)
    atexit.register(_end_open_run)


def _end_open_run() -> None:
    import mlflow
    from mlflow.entities import RunStatus

    status = RunStatus.KILLED if processes.interrupted() else RunStatus.FAILED
    ignore_interrupts()
    if mlflow.active_run() is not None:
        end_run_safely(RunStatus.to_string(status))


def exit_on_tracking_error(step: str, exc: BaseException) -> None:
    """A refused (401/403) or unanswered tracking request: one line and exit 1. Any other
    error returns, for the caller to re-raise with its traceback."""
    if refused := refusal(exc):
        click.echo(f"error: {step}: {refused}", err=True)
        sys.exit(1)
    if tracking_unreachable(exc):
        click.echo(f"error: {step}: tracking server unreachable: {one_line(exc)}", err=True)
        sys.exit(1)


def open_run(step: str, launched_by_mlflow_run: bool) -> Any:
    """Start (or resume, under ``mlflow run``) the step's run; a tracking server that refuses
    or does not answer ends the step with one line."""
    import mlflow

    try:
        if not launched_by_mlflow_run and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
            mlflow.set_experiment(config.EXPERIMENT_NAME)
        return mlflow.start_run()
    except Exception as exc:
        exit_on_tracking_error(step, exc)
        raise


def tag_step_run(
    step: str, run: Any, params: dict[str, Any] | None, launched_by_mlflow_run: bool
) -> None:
    """The tags every step run carries (module docstring), and the params when ``mlflow
    run`` did not log them."""
    import mlflow

    git = git_state()
    tags = {
        config.TAG_STEP: step,
        config.TAG_CODE_HASH: fingerprint.code_hash(step),
        config.TAG_GIT_DIRTY: str(git.dirty).lower(),
    }
    if is_generated_name(run.info.run_name):
        # `mlflow run` without --run-name names a run at random; the step's name reads
        # better. A name the user chose is kept.
        tags[config.TAG_MLFLOW_RUN_NAME] = step
    if not launched_by_mlflow_run:
        if git.commit:
            tags[config.TAG_MLFLOW_GIT_COMMIT] = git.commit
        if params:
            mlflow.log_params(params)
    mlflow.set_tags(tags)


@contextlib.contextmanager
def step_run(
    step: str, params: dict[str, Any] | None = None, warm: Sequence[str] = ()
) -> Iterator[Any]:
    """Open (or resume, under ``mlflow run``) the step's MLflow run and end it honestly.

    ``StepError`` → FAILED, message on one line, exit 1; SIGINT/SIGTERM → KILLED, exit 130;
    any other exception → FAILED and re-raised so the traceback is kept. A signal from the
    moment the run is opened until its end is recorded, including one that arrives while a
    failure or an earlier signal is being handled, ends it KILLED with exit 130 (never
    FINISHED); more signals after the first change nothing.
    """
    import mlflow
    from mlflow.entities import RunStatus

    skip_exit_collection()
    mlflow.set_tracking_uri(config.tracking_uri())
    launched_by_mlflow_run = bool(os.environ.get("MLFLOW_RUN_ID"))
    # SIGTERM (what process managers and `kill` send) should end the run like Ctrl-C does.
    take_interrupts()
    die_with_parent()
    end_open_run_at_exit()

    run = None
    try:
        run = open_run(step, launched_by_mlflow_run)
        try:
            wait_for_upstream(warm)
            tag_step_run(step, run, params, launched_by_mlflow_run)
            yield run
        except KeyboardInterrupt:
            raise  # below, with the interrupts that land in the branches here
        except StepError as exc:
            end_run_safely(RunStatus.to_string(RunStatus.FAILED))
            # a StepError raised from a refused request says what was refused, not its guess
            click.echo(f"error: {step}: {refusal(exc) or exc}", err=True)
            sys.exit(1)
        except Exception as exc:
            end_run_safely(RunStatus.to_string(RunStatus.FAILED))
            exit_on_tracking_error(step, exc)
            raise
        except BaseException:
            # GeneratorExit, too, when an interrupt kept the step's exception from us (run_step)
            killed = processes.interrupted()
            end_run_safely(RunStatus.to_string(RunStatus.KILLED if killed else RunStatus.FAILED))
            raise
        else:
            if not end_run_safely():
                click.echo(
                    f"error: {step}: done, but the tracking server did not record it", err=True
                )
                sys.exit(1)
    except KeyboardInterrupt:
        end_interrupted(step, run.info.run_id if run else None)


def end_interrupted(step: str, run_id: str | None) -> NoReturn:
    """The way out of an interrupted step: its run KILLED, one line, exit 130.

    By the time this runs, the KeyboardInterrupt came through interrupt(), so a further
    signal is a no-op already, before ignore_interrupts holds them back. ``run_id``: the
    interrupt may have cut short an end_run that had already let go of the run."""
    from mlflow.entities import RunStatus

    ignore_interrupts()
    end_run_safely(RunStatus.to_string(RunStatus.KILLED), run_id)
    click.echo(f"error: {step}: interrupted", err=True)
    sys.exit(130)


def run_step(
    step: str,
    params: dict[str, Any] | None,
    body: Callable[[Any], None],
    warm: Sequence[str] = (),
) -> None:
    """``with step_run(...) as run: body(run)``, plus what a ``with`` block cannot catch: a
    signal that arrives while an exception leaves ``body`` is raised on entry to the context
    manager's ``__exit__``, before step_run sees either, and would end the step with click's
    "Aborted!" (exit 1). It ends the run KILLED here (exit 130), as in step_run."""
    run = None
    try:
        with step_run(step, params=params, warm=warm) as run:
            body(run)
    except KeyboardInterrupt:
        end_interrupted(step, run.info.run_id if run else None)


def as_step(
    step: str, warm: Sequence[str] = ()
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a click callback so it runs inside ``step_run`` (by ``run_step``) with its
    params logged (``warm``: see ``wait_for_upstream``)."""

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> None:
            run_step(step, kwargs, lambda _run: func(**kwargs), warm)

        return wrapper

    return decorate
