"""What every step's thin command layer shares: the MLflow run it logs into, git state, and
the rule that a failure is one line on stderr, a non-zero exit and a run that is not left
RUNNING; an interrupted step (SIGINT/SIGTERM, however many and in whatever order) ends its
run KILLED with exit 130, never FINISHED.

Tags written on every step run: ``pipeline.step``, ``pipeline.code_hash``
(steps.fingerprint), ``git.dirty``, ``mlflow.runName`` (the step's name, unless the user
named the run) and, when the run was not created by ``mlflow run`` (which sets it itself),
``mlflow.source.git.commit``.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import importlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from steps import config, fingerprint


class StepError(Exception):
    """A failure the user can act on; its message is printed as the single error line."""


@dataclass(frozen=True)
class GitState:
    commit: str | None
    dirty: bool


def git_state(root: Path = config.PROJECT_ROOT) -> GitState:
    """Commit and cleanliness of the work tree; a tree outside git counts as dirty."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=normal")
    return GitState(commit=commit, dirty=commit is None or status is None or bool(status))


def expected_md5(root: Path = config.PROJECT_ROOT) -> str:
    """The md5 data.dvc records for ``data/``: the data version this checkout asks for."""
    import yaml

    path = config.dvc_file(root)
    try:
        outs = yaml.safe_load(path.read_text())["outs"]
        return next(o["md5"] for o in outs if o["path"] == config.DATA_DIR_NAME)
    except (OSError, KeyError, TypeError, StopIteration, yaml.YAMLError) as exc:
        raise StepError(f"{path} is missing or does not track {config.DATA_DIR_NAME}/") from exc


def dataset_source(uri: str) -> Any:
    """An MLflow dataset source for a URL or local path, chosen explicitly.

    A plain string is ambiguous to MLflow's registry (two local sources claim it), so pick.
    """
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if uri.startswith(("http://", "https://")):
        return HTTPDatasetSource(uri)
    local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
    return local(uri)


UNIQUE_RACE_MARKERS = ("UniqueViolation", "UNIQUE constraint failed", "duplicate key")
UNIQUE_RACE_ATTEMPTS = 4


def with_unique_race_retry(write: Callable[[], Any]) -> Any:
    """Call ``write`` (an MLflow call that creates a row), retrying a known store race.

    The tracking store gets-or-creates some rows without a lock — a logged dataset by
    (experiment, name, digest), a registry alias by (model, alias) — so two pipelines doing
    the same write at the same moment make one insert fail on the unique key. The retry
    finds (or updates) the row the other one created.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(1, UNIQUE_RACE_ATTEMPTS + 1):
        try:
            return write()
        except MlflowException as exc:
            if attempt == UNIQUE_RACE_ATTEMPTS or not any(
                marker in str(exc) for marker in UNIQUE_RACE_MARKERS
            ):
                raise
            time.sleep(0.2 * attempt)
    return None


def echo(step: str, message: str) -> None:
    click.echo(f"[{step}] {message}", err=True)


# Set when this process raises its first KeyboardInterrupt: it is on its way out from then on.
# A pipeline interrupted by Ctrl-C sends each step two signals (SIGINT from the terminal's
# group, SIGTERM from main stopping it), often at once; the second, turned into a second
# KeyboardInterrupt, would cut the first one's handling short (the run left to MLflow's exit
# hook, which ends it FINISHED). Process-wide, as signal handlers are.
_interrupted = False


def interrupt(reason: str) -> NoReturn:
    """Raise KeyboardInterrupt, and make every interrupt after it a no-op (raise_interrupt)."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt(reason)


def raise_interrupt(signum: int, _frame: Any) -> None:
    """The SIGINT/SIGTERM handler: the first signal raises KeyboardInterrupt, later ones are
    dropped. Setting the flag before raising leaves no moment (not even the first bytecode of
    an ``except``) where a second signal could raise again."""
    if not _interrupted:
        interrupt(f"signal {signum}")


def take_interrupts() -> None:
    """Route SIGTERM (what process managers and `kill` send) and SIGINT to raise_interrupt.
    SIGINT is left alone when ignored: a job started in the background inherits it ignored,
    and Python keeps it so."""
    signal.signal(signal.SIGTERM, raise_interrupt)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, raise_interrupt)


def ignore_interrupts() -> None:
    """While a run is being ended, a second Ctrl-C/SIGTERM must not abort the bookkeeping.
    The flag comes first: a signal already received, whose Python handler has not run yet,
    still reaches raise_interrupt (a no-op now) until the dispositions below are in place."""
    global _interrupted
    _interrupted = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def die_with_parent() -> None:
    """Linux: receive SIGTERM when the parent process dies.

    `mlflow run` has no SIGTERM handler: `kill <its pid>` ends it at once and would orphan
    main and the running step, which keep going while their runs stay RUNNING. With this
    they are interrupted instead, and end their runs KILLED.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def tracking_unreachable(exc: BaseException) -> bool:
    """Is this MLflow's "the tracking server did not answer" (not an API error)?"""
    import requests
    from mlflow.exceptions import MlflowException

    cause = exc.__cause__ or exc.__context__
    return isinstance(exc, MlflowException) and isinstance(
        cause, requests.exceptions.RequestException
    )


# MLflow's error codes for a tracking server's 401 and 403 (its basic-auth app).
REFUSED_STATUS = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}
REFUSED_ENDPOINT = re.compile(r"endpoint (/\S+) failed")
REST_PREFIX = re.compile(r"^/(?:ajax-)?api/[0-9.]+/(?:mlflow/)?")


def refusal(exc: BaseException | None) -> str | None:
    """One line for a request the tracking server refused (401/403), naming the operation
    and the account, or None for any other error. ``exc`` or the error it was raised from
    (a StepError wrapping MLflow's) may be the refusal. Never includes the password."""
    from mlflow.exceptions import MlflowException

    while exc is not None and not (
        isinstance(exc, MlflowException) and exc.error_code in REFUSED_STATUS
    ):
        exc = exc.__cause__
    if exc is None:
        return None
    code = exc.error_code
    endpoint = REFUSED_ENDPOINT.search(str(exc))
    operation = REST_PREFIX.sub("", endpoint.group(1)) if endpoint else "a request"
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    who = f"user {user!r}" if user else "anonymous user (MLFLOW_TRACKING_USERNAME unset)"
    if code == "UNAUTHENTICATED":
        why = (
            "wrong username or password"
            if user
            else "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    else:
        why = "the account lacks the permission (docs/scaling.md, accounts)"
    return f"tracking server refused {operation} for {who} ({REFUSED_STATUS[code]} {code}): {why}"


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


def skip_exit_collection() -> None:
    """Freeze the heap at interpreter exit, so CPython's finalisation skips its collections.

    A step process holds millions of objects from MLflow, SQLAlchemy, pandas and scikit-learn
    imports; the final garbage collections walk all of them for ~0.6 s per process, only for
    the OS to reclaim the memory anyway. atexit handlers still run (gc.freeze collects nothing,
    frees nothing), so MLflow's own exit hooks are unaffected.
    """
    atexit.register(gc.freeze)


READY_SUFFIX = ".ready"


def wait_for_upstream(warm: Sequence[str] = ()) -> None:
    """Under main, a step may be started while the step before it still runs, so that its
    imports and tracking-store set-up overlap that work. It imports ``warm`` (modules the
    step would otherwise import later, lazily) and waits here, with its run open, until main
    creates the gate file: the upstream finished. Main stops it (SIGTERM → KILLED) if the
    upstream fails. Run on its own, a step does neither."""
    gate = os.environ.pop(config.START_AFTER_ENV, None)
    if not gate:
        return
    main_pid = int(os.environ.get(config.MAIN_PID_ENV) or parent_pid())
    for module in warm:
        importlib.import_module(module)
    Path(f"{gate}{READY_SUFFIX}").touch()  # main may start the step after this one now
    while not os.path.exists(gate):
        # main may die before it could stop us (or before it knew we had started)
        if not process_alive(main_pid):
            interrupt("main is gone")
        time.sleep(0.02)


def parent_pid() -> int:
    """The pid of the process that started us: for a step run by the fork server, the parent
    of the ``python -m steps.<step>`` process MLflow started (``forkserver``)."""
    from steps import forkserver

    return forkserver.client_parent_pid() or os.getppid()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for the duration of the block, then raise
    KeyboardInterrupt if one came. main starts a child inside: interrupted half-way, it
    would not know the child it must stop. Handlers, unlike a blocked signal mask, are
    reset when the child execs, so the child stays interruptible."""
    received: list[int] = []
    saved = {
        signum: signal.signal(signum, lambda got, _frame: received.append(got))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    if received and saved[received[0]] is not signal.SIG_IGN:
        interrupt(f"signal {received[0]}")


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

    status = RunStatus.KILLED if _interrupted else RunStatus.FAILED
    ignore_interrupts()
    if mlflow.active_run() is not None:
        end_run_safely(RunStatus.to_string(status))


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
        try:
            if not launched_by_mlflow_run and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
                mlflow.set_experiment(config.EXPERIMENT_NAME)
            run = mlflow.start_run()
        except Exception as exc:
            if refused := refusal(exc):
                click.echo(f"error: {step}: {refused}", err=True)
                sys.exit(1)
            if not tracking_unreachable(exc):
                raise
            click.echo(f"error: {step}: tracking server unreachable: {one_line(exc)}", err=True)
            sys.exit(1)
        try:
            wait_for_upstream(warm)
            git = git_state()
            tags = {
                config.TAG_STEP: step,
                config.TAG_CODE_HASH: fingerprint.code_hash(step),
                config.TAG_GIT_DIRTY: str(git.dirty).lower(),
            }
            if is_generated_name(run.info.run_name):
                # `mlflow run` without --run-name names a run at random; the step's name reads
                # better. A name the user chose is kept.
                tags["mlflow.runName"] = step
            if not launched_by_mlflow_run:
                if git.commit:
                    tags["mlflow.source.git.commit"] = git.commit
                if params:
                    mlflow.log_params(params)
            mlflow.set_tags(tags)
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
            if refused := refusal(exc):
                click.echo(f"error: {step}: {refused}", err=True)
                sys.exit(1)
            if not tracking_unreachable(exc):
                raise
            click.echo(f"error: {step}: tracking server unreachable: {one_line(exc)}", err=True)
            sys.exit(1)
        except BaseException:
            # GeneratorExit, too, when an interrupt kept the step's exception from us (run_step)
            end_run_safely(
                RunStatus.to_string(RunStatus.KILLED if _interrupted else RunStatus.FAILED)
            )
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
