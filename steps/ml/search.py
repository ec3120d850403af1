"""tune's search: the space, the sampler, the pruner and the cross-validated objective.

In: the train split (raw rows with the target), an unfitted preprocessor, the model kind,
a hyperparameter set, the number of folds and a seed; an Optuna trial for drawing params and
reporting fold scores. Out: params drawn from ``SEARCH_SPACE``, RMSE per fold (lazily: a
pruned trial fits no more folds), a ``TrialOutcome`` and the ``mlflow run`` line that trains
with the best params. Nothing is logged or written here (``steps.tracking.trials`` logs the
trials, ``steps.ml.study`` holds the study); Optuna is imported only when a function needs it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import root_mean_squared_error
from sklearn.model_selection import KFold

from steps import models
from steps.data.schema import features_and_target
from steps.models import build_pipeline

if TYPE_CHECKING:
    import optuna

# TPE's own default (10 random trials first) would make the default budget of 8 a pure random
# search; bench/tune_bench.py compares the two at equal budgets.
TPE_STARTUP_TRIALS = 4
# The median of fewer finished trials prunes on noise.
PRUNER_STARTUP_TRIALS = 3

# Ranges around the defaults in steps/ml/hyperparams.py; learning rate sampled on a log scale.
SEARCH_SPACE: dict[str, tuple[str, Any]] = {
    "learning_rate": ("log_uniform", (0.03, 0.15)),
    # capped by serving cost: ~0.06 ms per 1000 rows per tree (see steps/ml/hyperparams.py)
    "n_estimators": ("choice", (200, 300, 400, 600)),
    "max_leaves": ("choice", (31, 63, 127)),
    "min_samples_leaf": ("choice", (5, 10, 20, 40)),
    "subsample": ("choice", (0.6, 0.8, 1.0)),
}


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
