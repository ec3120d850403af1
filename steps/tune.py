"""Entry point ``tune``: random search with k-fold cross-validation on the train split only.

In: the ``preprocess`` run (``--upstream-run-id``; empty = the latest finished one) — only
its ``splits/train.parquet`` is read; the test split is never used for selection — plus the
model kind, number of trials, folds and seed.
Out (MLflow): one nested child run per trial (params = the trial's hyperparameters; metrics
``cv_rmse_mean``, ``cv_rmse_std``); on the tune run, params ``best_<name>`` and metric
``best_cv_rmse``, tag ``lineage.upstream_run_id``, and ``best_params.json`` to feed ``train``.
"""

from __future__ import annotations

import json
from typing import Any

import click
import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, cross_val_score

from steps import config, lineage, models, runtime
from steps.models import build_pipeline
from steps.schema import features_and_target

STEP = "tune"
DEFAULT_N_TRIALS = 8
DEFAULT_CV_FOLDS = 3
DEFAULT_TUNE_SEED = 0

# Ranges around the defaults in steps/hyperparams.py; learning rate sampled on a log scale.
SEARCH_SPACE: dict[str, tuple[str, Any]] = {
    "learning_rate": ("log_uniform", (0.03, 0.15)),
    # capped by serving cost: ~0.06 ms per 1000 rows per tree (see steps/hyperparams.py)
    "n_estimators": ("choice", (200, 300, 400, 600)),
    "max_leaves": ("choice", (31, 63, 127)),
    "min_samples_leaf": ("choice", (5, 10, 20, 40)),
    "subsample": ("choice", (0.6, 0.8, 1.0)),
}


# --- pure core ----------------------------------------------------------------------------
def sample_trials(n_trials: int, seed: int) -> list[dict[str, Any]]:
    """``n_trials`` hyperparameter sets drawn from SEARCH_SPACE, reproducibly."""
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(n_trials):
        trial: dict[str, Any] = {}
        for name, (kind, spec) in SEARCH_SPACE.items():
            if kind == "log_uniform":
                low, high = spec
                trial[name] = round(float(np.exp(rng.uniform(np.log(low), np.log(high)))), 5)
            else:
                trial[name] = spec[int(rng.integers(len(spec)))]
        trials.append(trial)
    return trials


def cv_rmse(
    train: pd.DataFrame, preprocessor: Any, kind: str, params: dict[str, Any], folds: int, seed: int
) -> tuple[float, float]:
    """Mean and std of RMSE over k folds of the training rows (fold-local preprocessing)."""
    X, y = features_and_target(train)
    pipeline = build_pipeline(preprocessor, models.build_estimator(kind, **params))
    scores = cross_val_score(
        pipeline,
        X,
        y,
        cv=KFold(folds, shuffle=True, random_state=seed),
        scoring="neg_root_mean_squared_error",
    )
    return float(-scores.mean()), float(scores.std())


# --- click + MLflow -----------------------------------------------------------------------
@click.command(help="Cross-validated random search over the model's hyperparameters.")
@click.option("--upstream-run-id", default="", help="preprocess run (empty: latest finished).")
@click.option(
    "--model-kind",
    type=click.Choice(models.MODEL_KINDS),
    default=models.DEFAULT_MODEL_KIND,
    show_default=True,
)
@click.option("--n-trials", type=click.IntRange(min=1), default=DEFAULT_N_TRIALS, show_default=True)
@click.option("--cv-folds", type=click.IntRange(min=2), default=DEFAULT_CV_FOLDS, show_default=True)
@click.option("--seed", type=int, default=DEFAULT_TUNE_SEED, show_default=True)
@runtime.as_step(STEP)
def cli(upstream_run_id: str, model_kind: str, n_trials: int, cv_folds: int, seed: int) -> None:
    import mlflow

    upstream = lineage.resolve_upstream(upstream_run_id, "preprocess")
    lineage.link(upstream)
    train, _, preprocessor = lineage.read_preprocess_outputs(upstream.info.run_id)
    best: tuple[float, dict[str, Any]] | None = None
    for number, params in enumerate(sample_trials(n_trials, seed), start=1):
        with mlflow.start_run(run_name=f"trial-{number}", nested=True):
            mlflow.set_tags(
                {config.TAG_STEP: "tune_trial", config.TAG_UPSTREAM: upstream.info.run_id}
            )
            mlflow.log_params({"model_kind": model_kind, **params})
            mean, std = cv_rmse(train, preprocessor, model_kind, params, cv_folds, seed)
            mlflow.log_metrics({"cv_rmse_mean": mean, "cv_rmse_std": std})
        runtime.echo(STEP, f"trial {number}/{n_trials}: cv RMSE ${mean:,.0f} ± {std:,.0f} {params}")
        if best is None or mean < best[0]:
            best = (mean, params)

    assert best is not None
    mlflow.log_params({f"best_{k}": v for k, v in best[1].items()})
    mlflow.log_metric("best_cv_rmse", best[0])
    mlflow.log_text(json.dumps(best[1], indent=2), "best_params.json")
    flags = " ".join(f"-P {k}={v}" for k, v in best[1].items())
    runtime.echo(STEP, f"best cv RMSE ${best[0]:,.0f}; train with: {flags}")


if __name__ == "__main__":
    cli()
