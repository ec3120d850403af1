"""tune's pure core: the search space as Optuna draws it, fold-by-fold pruning, CV on train
rows only; and the study's budget rule (steps.ml.study) on real Optuna storages."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from steps import config, features
from steps.infra.errors import StepError
from steps.ml import study
from steps.tune import (
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
SETTINGS = {"model_kind": "lightgbm", "cv_folds": 3, "n_trials": 4, "seed": 0}


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


# --- steps.ml.study: storage, settings, budget ----------------------------------------------
def test_default_storage_sits_beside_a_sqlite_tracking_store(tmp_path):
    assert study.default_storage(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "root") == (
        f"sqlite:///{tmp_path}/optuna.db"
    )
    for uri in ("http://127.0.0.1:5000", "postgresql://u@h/db", "file:///x/mlruns"):
        assert study.default_storage(uri, tmp_path) == f"sqlite:///{tmp_path}/optuna.db"
    assert study.default_study_name("hgb", "abc123") == "tune-hgb-abc123"


def test_storage_urls_name_the_driver_and_hide_the_password():
    url = "postgresql://mlflow:secret@127.0.0.1:5432/optuna"
    assert study.with_driver(url) == "postgresql+psycopg2://mlflow:secret@127.0.0.1:5432/optuna"
    assert study.with_driver("sqlite:////x.db") == "sqlite:////x.db"
    assert "secret" not in study.redacted(url) and "127.0.0.1:5432/optuna" in study.redacted(url)


def test_budget_rule():
    assert [study.budget_left(n, 3) for n in range(5)] == [3, 2, 1, 0, 0]
    assert [study.in_budget(number, 3) for number in range(5)] == [True] * 3 + [False] * 2


def test_joining_processes_sample_their_own_streams():
    assert study.sampler_seed(7, created=True, run_id="a" * 32) == 7
    joiners = {study.sampler_seed(7, created=False, run_id=c * 32) for c in "abc"}
    assert len(joiners) == 3 and 7 not in joiners


def test_a_study_is_created_once_and_joined_with_the_same_settings(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    first, created = study.open_study(study.open_storage(url), "s", SETTINGS)
    second, joined_created = study.open_study(study.open_storage(url), "s", SETTINGS)
    assert created and not joined_created
    assert first._study_id == second._study_id
    with pytest.raises(StepError, match=r"cv_folds=3 \(this run: 5\)"):
        study.open_study(study.open_storage(url), "s", {**SETTINGS, "cv_folds": 5})


def test_an_unreachable_storage_is_one_clear_error(tmp_path):
    with pytest.raises(StepError, match="optuna storage sqlite:///"):
        study.open_storage(f"sqlite:///{tmp_path}/missing-dir/optuna.db")


def test_two_handles_share_the_budget_and_an_extra_ask_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    a, _ = study.open_study(study.open_storage(url), "s", SETTINGS)
    b, _ = study.open_study(study.open_storage(url), "s", SETTINGS)
    taken = []
    for handle in (a, b, a, b, a, b):
        trial = study.ask_within_budget(handle, 4)
        if trial is not None:
            taken.append(trial.number)
            handle.tell(trial, 1.0)
    assert taken == [0, 1, 2, 3]

    # the race the count cannot close: a process asked after another took the last trial
    late = b.ask()
    assert study.keep_within_budget(b, late, 4) is None
    refused = a.trials[-1]
    assert refused.number == 4 and refused.state == TrialState.FAIL
    assert refused.user_attrs == {study.OVER_BUDGET_ATTR: True}
    assert [t.number for t in study.budget_trials(a, 4)] == [0, 1, 2, 3]


def test_waiting_for_others_ends_when_their_trials_end(tmp_path):
    the_study, _ = study.open_study(
        study.open_storage(f"sqlite:///{tmp_path}/optuna.db"), "s", SETTINGS
    )
    assert study.wait_for_others(the_study, 4, min_wait=30) == []
    the_study.ask()  # another process's trial, never told
    started = time.monotonic()
    assert study.wait_for_others(the_study, 4, min_wait=0.2) == [0]
    assert time.monotonic() - started < 5


def test_importing_tune_does_not_import_optuna():
    code = "import sys, steps.tune; print('optuna' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=config.PROJECT_ROOT, capture_output=True, text=True
    )
    assert out.stdout.strip() == "False", out.stderr
