"""Unit tests of steps.models: every kind fits, round-trips through skops, and doesn't leak."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import skops.io
from lightgbm import LGBMRegressor
from lightgbm.basic import LightGBMError
from sklearn.metrics import r2_score
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from steps import config, features, models
from tests.support import synthetic_housing

SMALL = {"n_estimators": 30}  # unit-test speed; the defaults are exercised by the bench


def _pipeline(kind: str, **hyperparams: object) -> Pipeline:
    return Pipeline(
        [
            ("preprocess", features.build_preprocessor()),
            ("model", models.build_estimator(kind, **hyperparams)),
        ]
    )


def _xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    return frame.loc[:, list(config.FEATURES)], frame[config.TARGET]


@pytest.fixture(scope="module", autouse=True)
def _one_openmp_thread() -> Iterator[None]:
    # HGB's OpenMP threads spin-wait: on a busy shared box a 30-tree fit took 8 s with
    # 2 threads and 0.3 s with 1.
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def fitted_pipelines() -> dict[str, Pipeline]:
    X, y = _xy(synthetic_housing())
    return {kind: _pipeline(kind, **SMALL).fit(X, y) for kind in models.MODEL_KINDS}


def test_contract_constants():
    assert {"linear", "random_forest", "hgb", "lightgbm"} <= set(models.MODEL_KINDS)
    assert models.DEFAULT_MODEL_KIND in models.MODEL_KINDS
    required = {"n_estimators", "learning_rate", "max_leaves", "min_samples_leaf", "random_state"}
    assert required <= set(models.DEFAULT_HYPERPARAMS)
    assert len(models.DEFAULT_HYPERPARAMS) <= len(required) + 2


@pytest.mark.parametrize("kind", models.MODEL_KINDS)
def test_every_kind_predicts_finite_dollars(kind, fitted_pipelines):
    X, y = _xy(synthetic_housing(seed=1))
    pred = fitted_pipelines[kind].predict(X)
    assert pred.shape == (len(X),)
    assert np.isfinite(pred).all()
    assert 0.2 * y.mean() < pred.mean() < 5 * y.mean()  # dollars, not log-dollars


@pytest.mark.parametrize("kind", models.MODEL_KINDS)
def test_skops_round_trip_with_the_trusted_types(kind, fitted_pipelines):
    pipe = fitted_pipelines[kind]
    blob = skops.io.dumps(pipe)
    assert set(skops.io.get_untrusted_types(data=blob)) <= set(models.SKOPS_TRUSTED_TYPES)
    loaded = skops.io.loads(blob, trusted=list(models.SKOPS_TRUSTED_TYPES))
    X, _ = _xy(synthetic_housing(seed=1))
    # rtol: a 2-thread random forest sums its trees in thread order.
    np.testing.assert_allclose(loaded.predict(X), pipe.predict(X), rtol=1e-12)
    np.testing.assert_allclose(loaded.predict(X.iloc[[0]]), pipe.predict(X.iloc[[0]]), rtol=1e-12)


def test_trusted_types_are_exactly_what_the_kinds_need(fitted_pipelines):
    needed = set()
    for pipe in fitted_pipelines.values():
        needed |= set(skops.io.get_untrusted_types(data=skops.io.dumps(pipe)))
    assert needed == set(models.SKOPS_TRUSTED_TYPES)


@pytest.fixture(scope="module")
def lightgbm_and_rows(fitted_pipelines) -> tuple[models.FastLGBMRegressor, np.ndarray]:
    pipe = fitted_pipelines["lightgbm"]
    rows = pipe.named_steps["preprocess"].transform(_xy(synthetic_housing(seed=1))[0])
    assert isinstance(rows, np.ndarray)  # the fast path only takes numpy batches
    return pipe.named_steps["model"], rows


# 1 and 8: the online API's batches; 64: the last size on the fast path; 65: the first past it.
@pytest.mark.parametrize("n_rows", [1, 8, models.SMALL_BATCH_ROWS, models.SMALL_BATCH_ROWS + 1])
def test_fast_lightgbm_predict_matches_the_sklearn_wrapper(n_rows, lightgbm_and_rows):
    fast, rows = lightgbm_and_rows
    # Rows from the middle, so a batch that silently reused row 0 or the first n would differ.
    batch = np.ascontiguousarray(rows[100 : 100 + n_rows])
    reference = LGBMRegressor.predict(fast, batch)  # the unpatched wrapper path
    assert len(np.unique(reference)) == n_rows  # distinct answers: a row mix-up would show
    np.testing.assert_array_equal(fast.predict(batch), reference)  # to the bit


def test_fast_lightgbm_predict_is_not_fooled_by_non_numpy_or_narrow_input(lightgbm_and_rows):
    fast, rows = lightgbm_and_rows
    batch = rows[:8]
    columns = [f"Column_{i}" for i in range(batch.shape[1])]  # LightGBM's default names
    np.testing.assert_allclose(
        fast.predict(pd.DataFrame(batch, columns=columns)),
        LGBMRegressor.predict(fast, batch),
        rtol=1e-12,
    )
    with pytest.raises(LightGBMError, match="number of features"):  # booster checks width
        fast.predict(batch[:1, :-1])
    with pytest.raises(LightGBMError, match="number of features"):  # the C call checks it too
        models.booster_predict_small(fast.booster_, np.ascontiguousarray(batch[:1, :-1]))
    # a strided view and float32 rows are copied to what the C call takes: same numbers
    for other in (rows[:16:2], rows[:8].astype(np.float32)):
        np.testing.assert_array_equal(fast.predict(other), LGBMRegressor.predict(fast, other))


def test_unknown_kind_and_hyperparameter_are_rejected():
    with pytest.raises(ValueError, match="lightgbm") as info:
        models.build_estimator("xgboost")
    assert all(kind in str(info.value) for kind in models.MODEL_KINDS)
    with pytest.raises(ValueError, match="max_depth"):
        models.build_estimator("lightgbm", max_depth=3)


def test_shuffled_target_gives_no_skill_on_held_out_rows():
    """Leakage control: with y shuffled, nothing can be learned, so held-out R² must be ~0.

    The same data unshuffled must be learnable, else the check would be vacuous.
    """
    frame = synthetic_housing(n=600, seed=3)
    train, test = frame.iloc[:450], frame.iloc[450:]
    X_train, y_train = _xy(train)
    X_test, y_test = _xy(test)
    shuffled = pd.Series(np.random.default_rng(0).permutation(y_train.to_numpy()))
    real = _pipeline(models.DEFAULT_MODEL_KIND).fit(X_train, y_train)
    null = _pipeline(models.DEFAULT_MODEL_KIND).fit(X_train, shuffled)
    real_r2, null_r2 = (
        r2_score(y_test, real.predict(X_test)),
        r2_score(y_test, null.predict(X_test)),
    )
    assert real_r2 > 0.5
    assert null_r2 < 0.1
