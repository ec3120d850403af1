"""Entry point ``tune``: Optuna search (TPE, fold-by-fold pruning) with k-fold cross-validation
on the train split only, shareable by several processes through one Optuna storage.

In: the ``preprocess`` run (``--upstream-run-id``; empty = the latest finished one) — only
its ``splits/train.parquet`` is read; the test split is never used for selection — plus the
model kind, the study's trial budget, folds and seed, and where the study lives:
``--storage`` (an Optuna storage URL; empty = ``optuna.db`` beside a SQLite tracking store,
else in the project root) and ``--study-name`` (empty = ``tune-<model kind>-<upstream run
id>``). Processes given the same storage and study share its budget: together they run
exactly ``n_trials`` trials (the rule: ``steps.ml.study``).
Out (MLflow): one nested child run per trial this process ran (params = the trial's
hyperparameters; metric ``cv_rmse_running`` per fold; ``cv_rmse_mean``/``cv_rmse_std`` when
all folds ran; tags ``optuna.study_name``, ``optuna.trial_number``, ``optuna.trial_state`` =
COMPLETE or PRUNED — a pruned trial's run is FINISHED too); on the tune run, the study's best
trial (after the other processes' trials have ended): params ``best_<name>``, metrics
``best_cv_rmse``, ``trials_run``, ``trials_pruned``, tags ``optuna.study_name``,
``optuna.storage`` (password hidden), ``tune.best_trial_run_id``,
``lineage.upstream_run_id``, and ``best_params.json`` to feed ``train``. In the study: each
trial's user attribute ``mlflow_run_id``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import root_mean_squared_error
from sklearn.model_selection import KFold

from steps import config, models
from steps.data.schema import features_and_target
from steps.infra.errors import StepError
from steps.ml import study
from steps.models import build_pipeline
from steps.tracking import lineage, outputs, steprun

if TYPE_CHECKING:
    import optuna

STEP = "tune"
DEFAULT_N_TRIALS = 8
DEFAULT_CV_FOLDS = 3
DEFAULT_TUNE_SEED = 0
DEFAULT_STORAGE = ""  # empty: steps.ml.study.default_storage
DEFAULT_STUDY_NAME = ""  # empty: steps.ml.study.default_study_name
# TPE's own default (10 random trials first) would make the default budget of 8 a pure random
# search; bench/tune_bench.py compares the two at equal budgets.
TPE_STARTUP_TRIALS = 4
# The median of fewer finished trials prunes on noise.
PRUNER_STARTUP_TRIALS = 3
TRIAL_RUN_ID_ATTR = "mlflow_run_id"
# How long a process that ran out of budget waits at least for the others' last trials.
FINISH_WAIT_SECONDS = 60.0

# Ranges around the defaults in steps/ml/hyperparams.py; learning rate sampled on a log scale.
SEARCH_SPACE: dict[str, tuple[str, Any]] = {
    "learning_rate": ("log_uniform", (0.03, 0.15)),
    # capped by serving cost: ~0.06 ms per 1000 rows per tree (see steps/ml/hyperparams.py)
    "n_estimators": ("choice", (200, 300, 400, 600)),
    "max_leaves": ("choice", (31, 63, 127)),
    "min_samples_leaf": ("choice", (5, 10, 20, 40)),
    "subsample": ("choice", (0.6, 0.8, 1.0)),
}


# --- pure core ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialOutcome:
    fold_rmses: tuple[float, ...]
    pruned: bool

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_rmses))

    @property
    def std(self) -> float:
        return float(np.std(self.fold_rmses))


def suggest_params(trial: optuna.Trial) -> dict[str, Any]:
    """One hyperparameter set from SEARCH_SPACE, drawn by the trial's sampler."""
    params: dict[str, Any] = {}
    for name, (kind, spec) in SEARCH_SPACE.items():
        if kind == "log_uniform":
            low, high = spec
            params[name] = trial.suggest_float(name, low, high, log=True)
        else:
            params[name] = trial.suggest_categorical(name, list(spec))
    return params


def search_space_digest() -> str:
    """Short hash of SEARCH_SPACE: a study's trials are comparable only within one space."""
    return hashlib.sha256(json.dumps(SEARCH_SPACE, sort_keys=True).encode()).hexdigest()[:12]


def fold_rmses(
    train: pd.DataFrame, preprocessor: Any, kind: str, params: dict[str, Any], folds: int, seed: int
) -> Iterator[float]:
    """RMSE of each of k folds of the training rows, lazily: a pruned trial fits no more
    folds. Preprocessing is refitted inside each fold."""
    X, y = features_and_target(train)
    pipeline = build_pipeline(preprocessor, models.build_estimator(kind, **params))
    for fit_rows, score_rows in KFold(folds, shuffle=True, random_state=seed).split(X):
        fitted = clone(pipeline).fit(X.iloc[fit_rows], y.iloc[fit_rows])
        yield float(root_mean_squared_error(y.iloc[score_rows], fitted.predict(X.iloc[score_rows])))


def cv_rmse(
    train: pd.DataFrame, preprocessor: Any, kind: str, params: dict[str, Any], folds: int, seed: int
) -> tuple[float, float]:
    """Mean and std of RMSE over k folds of the training rows (fold-local preprocessing)."""
    outcome = TrialOutcome(tuple(fold_rmses(train, preprocessor, kind, params, folds, seed)), False)
    return outcome.mean, outcome.std


def run_folds(
    trial: optuna.Trial,
    scores: Iterable[float],
    folds: int,
    on_fold: Callable[[int, float], None] = lambda _step, _running: None,
) -> TrialOutcome:
    """Report the running mean RMSE after each fold as the trial's intermediate value (step =
    fold index) and stop once the pruner says so. After the last fold there is nothing left
    to save, so the pruner is not asked."""
    done: list[float] = []
    for score in scores:
        done.append(score)
        running = float(np.mean(done))
        trial.report(running, len(done) - 1)
        on_fold(len(done) - 1, running)
        if len(done) < folds and trial.should_prune():
            return TrialOutcome(tuple(done), pruned=True)
    return TrialOutcome(tuple(done), pruned=False)


def make_sampler(seed: int, tpe: bool = True) -> optuna.samplers.BaseSampler:
    """TPE (the default) or uniform random sampling over SEARCH_SPACE, seeded."""
    import optuna

    if not tpe:
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials running in other processes count as bad, so they are not re-proposed
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=TPE_STARTUP_TRIALS, constant_liar=True
    )


def make_pruner(enabled: bool = True) -> optuna.pruners.BasePruner:
    import optuna

    if not enabled:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0)


def paste_line(model_kind: str, params: dict[str, Any]) -> str:
    flags = " ".join(f"-P {k}={v}" for k, v in {"model_kind": model_kind, **params}.items())
    return f"mlflow run . -e main {flags}"


# --- click + MLflow -----------------------------------------------------------------------
def run_trial(
    the_study: optuna.Study,
    trial: optuna.Trial,
    train: pd.DataFrame,
    preprocessor: Any,
    model_kind: str,
    cv_folds: int,
    seed: int,
    run_tags: dict[str, str],
) -> TrialOutcome:
    """One trial in its own nested MLflow run; the study is told the trial's end in every
    case (a failed or interrupted trial counts in the budget all the same: it is not re-run)."""
    import mlflow
    from optuna.trial import TrialState

    try:
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True) as child:
            trial.set_user_attr(TRIAL_RUN_ID_ATTR, child.info.run_id)
            mlflow.set_tags({**run_tags, config.TAG_OPTUNA_TRIAL_NUMBER: str(trial.number)})
            params = suggest_params(trial)
            mlflow.log_params({"model_kind": model_kind, **params})
            outcome = run_folds(
                trial,
                fold_rmses(train, preprocessor, model_kind, params, cv_folds, seed),
                cv_folds,
                lambda step, running: mlflow.log_metric("cv_rmse_running", running, step=step),
            )
            state = TrialState.PRUNED if outcome.pruned else TrialState.COMPLETE
            mlflow.set_tag(config.TAG_OPTUNA_TRIAL_STATE, state.name)
            if not outcome.pruned:
                mlflow.log_metrics({"cv_rmse_mean": outcome.mean, "cv_rmse_std": outcome.std})
    except BaseException:
        # the original error is the one to report, not a storage that is gone as well
        with contextlib.suppress(Exception):
            the_study.tell(trial, state=TrialState.FAIL)
        raise
    if outcome.pruned:
        the_study.tell(trial, state=TrialState.PRUNED)
    else:
        the_study.tell(trial, outcome.mean)
    return outcome


@click.command(help="Cross-validated Optuna search over the model's hyperparameters.")
@click.option("--upstream-run-id", default="", help="preprocess run (empty: latest finished).")
@click.option(
    "--model-kind",
    type=click.Choice(models.MODEL_KINDS),
    default=models.DEFAULT_MODEL_KIND,
    show_default=True,
)
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    default=DEFAULT_N_TRIALS,
    show_default=True,
    help="the study's total budget, shared by every process working on it.",
)
@click.option("--cv-folds", type=click.IntRange(min=2), default=DEFAULT_CV_FOLDS, show_default=True)
@click.option("--seed", type=int, default=DEFAULT_TUNE_SEED, show_default=True)
@click.option(
    "--storage",
    default=DEFAULT_STORAGE,
    help="Optuna storage URL (empty: optuna.db beside a SQLite tracking store, else in the "
    "project root). Keep passwords out of it: MLflow records parameters (PGPASSWORD works).",
)
@click.option(
    "--study-name",
    default=DEFAULT_STUDY_NAME,
    help="empty: tune-<model kind>-<upstream run id>.",
)
def cli(
    upstream_run_id: str,
    model_kind: str,
    n_trials: int,
    cv_folds: int,
    seed: int,
    storage: str,
    study_name: str,
) -> None:
    # steprun.as_step would log the storage URL as given, password included
    logged = dict(
        upstream_run_id=upstream_run_id,
        model_kind=model_kind,
        n_trials=n_trials,
        cv_folds=cv_folds,
        seed=seed,
        storage=study.redacted(storage) if storage else storage,
        study_name=study_name,
    )
    steprun.run_step(
        STEP,
        logged,
        lambda run: tune(
            run, upstream_run_id, model_kind, n_trials, cv_folds, seed, storage, study_name
        ),
    )


def run_trials(
    the_study: Any,
    n_trials: int,
    train: Any,
    preprocessor: Any,
    model_kind: str,
    cv_folds: int,
    seed: int,
    trial_tags: dict[str, str],
) -> tuple[int, int]:
    """Run trials here while the study's budget lasts; (trials run, of them pruned)."""
    ran = pruned = 0
    while (trial := study.ask_within_budget(the_study, n_trials)) is not None:
        outcome = run_trial(
            the_study, trial, train, preprocessor, model_kind, cv_folds, seed, trial_tags
        )
        ran += 1
        pruned += outcome.pruned
        if outcome.pruned:
            result = f"pruned after fold {len(outcome.fold_rmses)}/{cv_folds}: running"
        else:
            result = "cv"
        steprun.echo(
            STEP, f"trial {trial.number}: {result} RMSE ${outcome.mean:,.0f} {trial.params}"
        )
    return ran, pruned


def log_best(
    the_study: Any, study_name: str, n_trials: int, model_kind: str, ran: int, pruned: int
) -> None:
    """Once every budget trial has ended: the study's best trial on this run."""
    import mlflow

    still_running = study.wait_for_others(the_study, n_trials, FINISH_WAIT_SECONDS)
    if still_running:
        steprun.echo(
            STEP,
            f"warning: trials {still_running} still RUNNING (their process may have died); "
            "reporting the best finished trial",
        )
    try:
        best = the_study.best_trial  # COMPLETE trials only
    except ValueError as exc:
        raise StepError(f"study {study_name!r} has no completed trial") from exc
    mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
    mlflow.log_metrics({"best_cv_rmse": best.value, "trials_run": ran, "trials_pruned": pruned})
    mlflow.set_tag(config.TAG_TUNE_BEST_TRIAL_RUN, best.user_attrs.get(TRIAL_RUN_ID_ATTR, ""))
    mlflow.log_text(json.dumps(best.params, indent=2), "best_params.json")
    steprun.echo(
        STEP,
        f"ran {ran} trial(s) here, {pruned} pruned; best of the study: trial {best.number}, "
        f"cv RMSE ${best.value:,.0f}; train with:",
    )
    click.echo(paste_line(model_kind, best.params))


def tune(
    run: Any,
    upstream_run_id: str,
    model_kind: str,
    n_trials: int,
    cv_folds: int,
    seed: int,
    storage: str,
    study_name: str,
) -> None:
    """Open or join the study, run trials while its budget lasts, then log its best trial."""
    import mlflow
    import optuna

    if not config.verbose():
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    upstream = lineage.resolve_upstream(upstream_run_id, "preprocess")
    lineage.link(upstream)
    storage = storage or study.default_storage(config.tracking_uri(), config.PROJECT_ROOT)
    study_name = study_name or study.default_study_name(model_kind, upstream.info.run_id)
    settings = {
        "model_kind": model_kind,
        "upstream_run_id": upstream.info.run_id,
        "n_trials": n_trials,
        "cv_folds": cv_folds,
        "seed": seed,
        "search_space": search_space_digest(),
    }
    the_study, created = study.open_study(study.open_storage(storage), study_name, settings)
    the_study.sampler = make_sampler(study.sampler_seed(seed, created, run.info.run_id))
    the_study.pruner = make_pruner()
    run_tags = {
        config.TAG_OPTUNA_STUDY: study_name,
        config.TAG_OPTUNA_STORAGE: study.redacted(study.with_driver(storage)),
    }
    mlflow.set_tags(run_tags)
    held = len(the_study.get_trials(deepcopy=False))
    where = run_tags[config.TAG_OPTUNA_STORAGE]
    steprun.echo(
        STEP,
        f"{'created' if created else 'joined'} study {study_name!r} ({where}): "
        f"budget {n_trials} trials (numbers 0-{n_trials - 1}), {min(held, n_trials)} taken",
    )

    train, _, preprocessor = outputs.read_preprocess_outputs(upstream.info.run_id)
    trial_tags = {
        **run_tags,
        config.TAG_STEP: "tune_trial",
        config.TAG_UPSTREAM: upstream.info.run_id,
    }
    ran, pruned = run_trials(
        the_study, n_trials, train, preprocessor, model_kind, cv_folds, seed, trial_tags
    )
    log_best(the_study, study_name, n_trials, model_kind, ran, pruned)


if __name__ == "__main__":
    cli()
