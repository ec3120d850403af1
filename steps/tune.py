"""Entry point ``tune``: Optuna search (TPE, fold-by-fold pruning) with k-fold cross-validation
on the train split only, shareable by several processes through one Optuna storage.

In: the ``preprocess`` run (``--upstream-run-id``; empty = the latest finished one) — only
its ``splits/train.parquet`` is read; the test split is never used for selection — plus the
model kind, the study's trial budget, folds and seed, and where the study lives:
``--storage`` (an Optuna storage URL; empty = ``optuna.db`` beside a SQLite tracking store,
else in the project root) and ``--study-name`` (empty = ``tune-<model kind>-<upstream run
id>``). Processes given the same storage and study share its budget: together they run
exactly ``n_trials`` trials (the rule: ``steps.ml.study``). The search space, sampler, pruner
and cross-validated objective: ``steps.ml.search``; the trials as MLflow runs:
``steps.tracking.trials``.
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

from typing import Any

import click

from steps import config, models
from steps.ml import search, study
from steps.tracking import lineage, outputs, steprun, trials

STEP = "tune"
DEFAULT_N_TRIALS = 8
DEFAULT_CV_FOLDS = 3
DEFAULT_TUNE_SEED = 0
DEFAULT_STORAGE = ""  # empty: steps.ml.study.default_storage
DEFAULT_STUDY_NAME = ""  # empty: steps.ml.study.default_study_name


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
        "search_space": search.search_space_digest(),
    }
    the_study, created = study.open_study(study.open_storage(storage), study_name, settings)
    the_study.sampler = search.make_sampler(study.sampler_seed(seed, created, run.info.run_id))
    the_study.pruner = search.make_pruner()
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
    ran, pruned = trials.run_trials(
        the_study, n_trials, train, preprocessor, model_kind, cv_folds, seed, trial_tags
    )
    trials.log_best(the_study, study_name, n_trials, model_kind, ran, pruned)


if __name__ == "__main__":
    cli()
