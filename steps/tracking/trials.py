"""tune's trials as MLflow runs: each trial a nested run, the study's best on the tune run.

In: an Optuna study (``steps.ml.study``: opened, budget shared by every process working on
it), the train split, an unfitted preprocessor, the model kind, folds, seed and the tags
every trial run carries. Out: the trials this process ran and how many were pruned.
Written (MLflow): one nested child run per trial (params: the model kind and the trial's
hyperparameters; metric ``cv_rmse_running`` per fold; ``cv_rmse_mean``/``cv_rmse_std`` when
all folds ran; tags ``optuna.trial_number``, ``optuna.trial_state``); on the active (tune)
run the study's best trial: params ``best_<name>``, metrics ``best_cv_rmse``,
``trials_run``, ``trials_pruned``, tag ``tune.best_trial_run_id`` and the artifact
``best_params.json``. In the study: each trial's user attribute ``mlflow_run_id``. The
objective itself (folds, pruning) is ``steps.ml.search``'s.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

import click
import pandas as pd

from steps import config
from steps.infra.errors import StepError
from steps.ml import study
from steps.ml.search import TrialOutcome, fold_rmses, paste_line, run_folds, suggest_params
from steps.tracking import steprun

if TYPE_CHECKING:
    import optuna

ECHO_AS = "tune"  # progress lines read as tune's, whoever runs the trials
TRIAL_RUN_ID_ATTR = "mlflow_run_id"
# How long a process that ran out of budget waits at least for the others' last trials.
FINISH_WAIT_SECONDS = 60.0


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
            ECHO_AS, f"trial {trial.number}: {result} RMSE ${outcome.mean:,.0f} {trial.params}"
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
            ECHO_AS,
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
        ECHO_AS,
        f"ran {ran} trial(s) here, {pruned} pruned; best of the study: trial {best.number}, "
        f"cv RMSE ${best.value:,.0f}; train with:",
    )
    click.echo(paste_line(model_kind, best.params))
