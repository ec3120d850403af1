"""tune's search (steps.ml.search): the search space as Optuna draws it, fold-by-fold
pruning, CV on train rows only."""

from __future__ import annotations

import math

import optuna
import pytest

from steps import features
from steps.ml.search import (
    SEARCH_SPACE,
    cv_rmse,
    fold_rmses,
    make_pruner,
    make_sampler,
    paste_line,
    run_folds,
    search_space_digest,
    suggest_params,
)
from tests.support import synthetic_housing

optuna.logging.set_verbosity(optuna.logging.WARNING)


def drawn_params(seed: int, n: int) -> list[dict]:
    the_study = optuna.create_study(sampler=make_sampler(seed))
    params = []
    for _ in range(n):
        trial = the_study.ask()
        params.append(suggest_params(trial))
        the_study.tell(trial, params[-1]["learning_rate"])  # any value: TPE needs some
    return params


def test_params_are_reproducible_and_inside_the_space():
    # past the random start-up trials, so TPE's own proposals are covered too
    params = drawn_params(seed=1, n=8)
    assert params == drawn_params(seed=1, n=8)
    assert params != drawn_params(seed=2, n=8)
    for trial in params:
        assert set(trial) == set(SEARCH_SPACE)
        low, high = SEARCH_SPACE["learning_rate"][1]
        assert low <= trial["learning_rate"] <= high
        for name in ("n_estimators", "max_leaves", "min_samples_leaf", "subsample"):
            assert trial[name] in SEARCH_SPACE[name][1]


def test_search_space_digest_is_stable_and_follows_the_space(monkeypatch):
    digest = search_space_digest()
    assert digest == search_space_digest()
    monkeypatch.setitem(SEARCH_SPACE, "max_leaves", ("choice", (31, 63)))
    assert search_space_digest() != digest


def test_cv_rmse_scores_only_the_rows_it_is_given():
    train = synthetic_housing(240, seed=5)
    params = {"n_estimators": 50, "learning_rate": 0.1}
    mean, std = cv_rmse(train, features.build_preprocessor(), "lightgbm", params, 3, 0)
    assert math.isfinite(mean) and mean > 0 and std >= 0
    scores = list(fold_rmses(train, features.build_preprocessor(), "lightgbm", params, 3, 0))
    assert len(scores) == 3 and mean == pytest.approx(sum(scores) / 3)
    # a target the features cannot explain scores clearly worse
    noise = train.assign(
        median_house_value=train["median_house_value"].sample(frac=1, random_state=0).to_numpy()
    )
    worse, _ = cv_rmse(noise, features.build_preprocessor(), "lightgbm", params, 3, 0)
    assert worse > mean


def counted(scores: list[float], pulled: list[float]):
    for score in scores:
        pulled.append(score)
        yield score


def test_a_weak_trial_is_pruned_after_its_first_fold_and_fits_no_more():
    the_study = optuna.create_study(pruner=make_pruner())
    for _ in range(3):  # the pruner's start-up trials
        trial = the_study.ask()
        the_study.tell(trial, run_folds(trial, [100.0, 100.0, 100.0], 3).mean)

    pulled: list[float] = []
    reported: list[tuple[int, float]] = []
    weak = the_study.ask()
    outcome = run_folds(
        weak, counted([150.0, 50.0, 50.0], pulled), 3, lambda s, r: reported.append((s, r))
    )
    assert outcome.pruned and outcome.fold_rmses == (150.0,) and pulled == [150.0]
    assert reported == [(0, 150.0)] and weak.study.trials[-1].intermediate_values == {0: 150.0}

    # the running mean is what is reported: 80, then (80 + 110) / 2 = 95 < 100
    good = run_folds(the_study.ask(), [80.0, 110.0, 130.0], 3)
    assert not good.pruned and good.mean == pytest.approx(320 / 3)


def test_the_last_fold_is_never_pruned():
    the_study = optuna.create_study(pruner=make_pruner())
    for _ in range(3):
        trial = the_study.ask()
        the_study.tell(trial, run_folds(trial, [100.0, 100.0], 2).mean)
    outcome = run_folds(the_study.ask(), [90.0, 500.0], 2)
    assert not outcome.pruned and outcome.fold_rmses == (90.0, 500.0)


def test_paste_line_is_a_main_command_with_every_param():
    line = paste_line("lightgbm", {"learning_rate": 0.05, "n_estimators": 300})
    assert (
        line
        == "mlflow run . -e main -P model_kind=lightgbm -P learning_rate=0.05 -P n_estimators=300"
    )
