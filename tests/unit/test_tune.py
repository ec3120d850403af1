"""tune's pure core: reproducible sampling inside the declared space, CV on train rows only."""

from __future__ import annotations

import math

from steps import features
from steps.tune import SEARCH_SPACE, cv_rmse, sample_trials
from tests.support import synthetic_housing


def test_trials_are_reproducible_and_inside_the_space():
    trials = sample_trials(6, seed=1)
    assert trials == sample_trials(6, seed=1)
    assert trials != sample_trials(6, seed=2)
    for trial in trials:
        assert set(trial) == set(SEARCH_SPACE)
        low, high = SEARCH_SPACE["learning_rate"][1]
        assert low <= trial["learning_rate"] <= high
        for name in ("n_estimators", "max_leaves", "min_samples_leaf", "subsample"):
            assert trial[name] in SEARCH_SPACE[name][1]


def test_cv_rmse_scores_only_the_rows_it_is_given():
    train = synthetic_housing(240, seed=5)
    params = {"n_estimators": 50, "learning_rate": 0.1}
    mean, std = cv_rmse(train, features.build_preprocessor(), "lightgbm", params, 3, 0)
    assert math.isfinite(mean) and mean > 0 and std >= 0
    # a target the features cannot explain scores clearly worse
    noise = train.assign(
        median_house_value=train["median_house_value"].sample(frac=1, random_state=0).to_numpy()
    )
    worse, _ = cv_rmse(noise, features.build_preprocessor(), "lightgbm", params, 3, 0)
    assert worse > mean
