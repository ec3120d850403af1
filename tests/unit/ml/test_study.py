"""The study's storage, settings and budget rule (steps.ml.study) on real Optuna storages."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from steps.infra.errors import StepError
from steps.ml import study

optuna.logging.set_verbosity(optuna.logging.WARNING)
SETTINGS = {"model_kind": "lightgbm", "cv_folds": 3, "n_trials": 4, "seed": 0}


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
