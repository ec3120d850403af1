"""Optuna studies on shared storage, and the trial budget they hold (used by ``tune``).

In: an Optuna storage URL (a SQLite file, PostgreSQL, …), a study name and the settings every
process working on the study must share (model kind, upstream run, folds, seed, budget,
search space). Out: the study, created by the first process and joined by the others, and
trials handed out within the budget. Nothing here logs to MLflow; Optuna is imported only
when a function needs it (~0.3-0.5 s).

The budget rule: Optuna numbers a study's trials 0, 1, 2, … under a lock on the study's row,
so the numbers are unique and gap-free across processes and machines. The trials numbered
below ``n_trials`` are the budget, whatever their end (complete, pruned or failed). A process
asks for a trial only while fewer than ``n_trials`` trials exist; a trial that still comes
back numbered ``n_trials`` or more (another process took the last one between the count and
the ask) is told FAIL at once, with the user attribute ``over_budget``, and never evaluated.

Written to the storage: the study user attribute ``tune_settings`` (by the process that
creates the study) and ``over_budget`` on refused trials.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steps.infra.errors import StepError, one_line

if TYPE_CHECKING:
    import optuna

SETTINGS_ATTR = "tune_settings"
OVER_BUDGET_ATTR = "over_budget"
STUDY_DB_FILE = "optuna.db"
# A joining process waits this long for the creator to record the settings (milliseconds
# after the creation, unless the creator died in between).
SETTINGS_WAIT_SECONDS = 30.0
# Processes starting together on an empty database race to create Optuna's tables.
STORAGE_OPEN_ATTEMPTS = 5
POLL_SECONDS = 0.5


# --- pure core ----------------------------------------------------------------------------
def default_storage(tracking_uri: str, root: Path) -> str:
    """``optuna.db`` beside a SQLite tracking store; for any other tracking URI, in ``root``."""
    if tracking_uri.startswith("sqlite:///"):
        store = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
        return f"sqlite:///{(store.parent / STUDY_DB_FILE).resolve()}"
    return f"sqlite:///{(root / STUDY_DB_FILE).resolve()}"


def default_study_name(model_kind: str, upstream_run_id: str) -> str:
    return f"tune-{model_kind}-{upstream_run_id}"


def with_driver(url: str) -> str:
    """Name the installed PostgreSQL driver: SQLAlchemy 2.1 maps a bare ``postgresql://`` to
    psycopg 3, which is not installed (the same pitfall as `mlflow server`, docs/scaling.md)."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def redacted(url: str) -> str:
    """The URL without its password, fit for logs and tags."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@", 1)[-1] if "@" in url else url


def budget_left(n_existing: int, n_trials: int) -> int:
    """Trials a process may still ask for, given how many the study holds (any state)."""
    return max(0, n_trials - n_existing)


def in_budget(number: int, n_trials: int) -> bool:
    return number < n_trials


def settings_conflicts(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``name=stored (this run: wanted)`` for every setting the two disagree on."""
    return [
        f"{name}={stored.get(name)!r} (this run: {value!r})"
        for name, value in wanted.items()
        if stored.get(name) != value
    ]


def sampler_seed(seed: int, created: bool, run_id: str) -> int:
    """The creator samples with ``seed`` (one process on a new study is reproducible); each
    joining process gets its own stream, or it would propose the creator's first points."""
    return seed if created else zlib.crc32(f"{seed}:{run_id}".encode())


# --- storage ------------------------------------------------------------------------------
def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage for ``url``, its tables created if missing; a clear error otherwise."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

    url = with_driver(url)
    for attempt in range(1, STORAGE_OPEN_ATTEMPTS + 1):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, ProgrammingError):
            # another process created the same table or version row a moment earlier
            if attempt == STORAGE_OPEN_ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError) as exc:
            raise StepError(f"optuna storage {redacted(url)}: {one_line(exc, 200)}") from exc
    raise AssertionError("unreachable")


def open_study(
    storage: optuna.storages.BaseStorage, name: str, settings: dict[str, Any]
) -> tuple[optuna.Study, bool]:
    """Create the study ``name`` (minimising), or join it when another process did; returns
    (study, created). A study made with other settings is refused: its trials would score
    another objective."""
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
    else:
        study.set_user_attr(SETTINGS_ATTR, settings)
        return study, True

    deadline = time.monotonic() + SETTINGS_WAIT_SECONDS
    while (stored := study.user_attrs.get(SETTINGS_ATTR)) is None:
        if time.monotonic() > deadline:
            raise StepError(
                f"study {name!r} exists but records no tune settings (made by something else, "
                "or its creator died): pass another study_name"
            )
        time.sleep(POLL_SECONDS)
    conflicts = settings_conflicts(stored, settings)
    if conflicts:
        raise StepError(
            f"study {name!r} was made with {', '.join(conflicts)}: "
            "pass the same values or another study_name"
        )
    return study, False


def ask_within_budget(study: optuna.Study, n_trials: int) -> optuna.Trial | None:
    """The next trial of the study's budget, or None when the budget is used up."""
    if budget_left(len(study.get_trials(deepcopy=False)), n_trials) == 0:
        return None
    return keep_within_budget(study, study.ask(), n_trials)


def keep_within_budget(
    study: optuna.Study, trial: optuna.Trial, n_trials: int
) -> optuna.Trial | None:
    """``trial`` if its number is inside the budget; else it is told FAIL (user attribute
    ``over_budget``) and None is returned: another process asked between our count and ask."""
    from optuna.trial import TrialState

    if in_budget(trial.number, n_trials):
        return trial
    trial.set_user_attr(OVER_BUDGET_ATTR, True)
    study.tell(trial, state=TrialState.FAIL)
    return None


def budget_trials(study: optuna.Study, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if in_budget(t.number, n_trials)]


def wait_for_others(study: optuna.Study, n_trials: int, min_wait: float) -> list[int]:
    """Block until no budget trial is RUNNING (other processes finish theirs), so every
    process reports the same best trial. Gives up after ``min_wait`` seconds or twice the
    longest finished trial, whichever is longer (a process killed with SIGKILL leaves its
    trial RUNNING for good); returns the numbers still running then."""
    from optuna.trial import TrialState

    started = time.monotonic()
    while True:
        trials = budget_trials(study, n_trials)
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        durations = [t.duration.total_seconds() for t in trials if t.duration is not None]
        if not running or time.monotonic() - started > max(min_wait, 2 * max(durations or [0])):
            return running
        time.sleep(POLL_SECONDS)
