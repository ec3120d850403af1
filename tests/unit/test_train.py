"""train's pure core and the evaluation report, on a small synthetic table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from steps import config, features, models
from steps.ml.evaluation import build_report, error_by, price_band
from steps.models import build_pipeline
from steps.preprocess import split_data
from steps.train import fit_and_score, input_example
from tests.support import synthetic_housing


@pytest.fixture(scope="module")
def fitted():
    train, test = split_data(synthetic_housing(400, seed=3), 0.25, 0, "random")
    estimator = models.build_estimator("linear", **models.DEFAULT_HYPERPARAMS)
    pipeline, metrics = fit_and_score(
        build_pipeline(features.build_preprocessor(), estimator), train, test
    )
    return pipeline, metrics, train, test


def test_fit_and_score_reports_every_metric_of_the_returned_pipeline(fitted):
    pipeline, metrics, train, test = fitted
    scores = {f"{split}_{name}" for split in ("train", "test") for name in ("rmse", "mae", "r2")}
    assert set(metrics) == scores | {"fit_seconds"}
    assert all(math.isfinite(value) for value in metrics.values())
    # The scores are those of the pipeline handed back, on the right split each.
    for split, frame in (("train", train), ("test", test)):
        y, pred = frame[config.TARGET], pipeline.predict(frame.loc[:, list(config.FEATURES)])
        assert metrics[f"{split}_rmse"] == pytest.approx(np.sqrt(np.mean((y - pred) ** 2)))
        assert metrics[f"{split}_mae"] == pytest.approx(np.mean(np.abs(y - pred)))
    assert metrics["test_r2"] > 0.5  # the synthetic target is mostly income


def test_pipeline_takes_raw_rows_with_missing_bedrooms(fitted):
    pipeline, _, train, _ = fitted
    example = input_example(train.loc[:, list(config.FEATURES)])
    assert np.isnan(example["total_bedrooms"].iloc[0])
    assert np.isfinite(pipeline.predict(example)).all()


def test_preprocessor_is_refitted_not_shared():
    """Two pipelines built from one preprocessor learn their own neighbour statistics."""
    prototype = features.build_preprocessor()
    a = build_pipeline(prototype, models.build_estimator("linear"))
    b = build_pipeline(prototype, models.build_estimator("linear"))
    frame = synthetic_housing(300, seed=4)
    X, y = frame.loc[:, list(config.FEATURES)], frame[config.TARGET]
    a.fit(X, y)
    b.fit(X, y * 3)  # a shared preprocessor would now hold b's statistics for both
    with pytest.raises(NotFittedError):
        check_is_fitted(prototype)
    Z_a, Z_b = a.named_steps["preprocess"].transform(X), b.named_steps["preprocess"].transform(X)
    assert not np.allclose(Z_a, Z_b)


def test_report_tables_and_figures(fitted):
    pipeline, metrics, _, test = fitted
    report = build_report(pipeline, test, metrics)
    by_ocean = report.tables["error_by_ocean_proximity"]
    assert by_ocean["rows"].sum() == len(test)
    assert set(by_ocean["group"]) <= set(config.OCEAN_PROXIMITY_VALUES)
    importance = report.tables["permutation_importance"]
    assert set(importance["feature"]) == set(config.FEATURES)
    assert importance.iloc[0]["feature"] == "median_income"
    assert {"predicted_vs_actual", "residual_histogram", "residual_map"} <= set(report.figures)
    assert f"{metrics['test_rmse']:,.0f}" in report.summary


def test_error_by_and_price_bands():
    import pandas as pd

    y = pd.Series([50_000.0, 150_000.0, 150_000.0, 600_000.0])
    pred = np.array([60_000.0, 140_000.0, 170_000.0, 600_000.0])
    table = error_by(price_band(y), y, pred).set_index("group")
    assert table.loc["100k–200k", "rows"] == 2
    assert table.loc["100k–200k", "bias"] == pytest.approx(5_000.0)
    assert table.loc["0k–100k", "rmse"] == pytest.approx(10_000.0)
    assert table.loc["500k+", "mae"] == 0


def test_model_requirements_are_the_lock_files_pins():
    from importlib.metadata import version

    from steps import config
    from steps.infra.errors import StepError
    from steps.train import pinned_requirements

    lock = (config.PROJECT_ROOT / config.LOCK_FILE).read_text()
    pins = pinned_requirements(lock, config.MODEL_PACKAGES)
    # what this environment runs is what the model will ask for
    assert pins == [f"{name}=={version(name)}" for name in config.MODEL_PACKAGES]
    with pytest.raises(StepError, match="pins no not-a-package"):
        pinned_requirements(lock, ("mlflow", "not-a-package"))


def test_the_logged_model_is_read_back_as_serving_reads_it(fitted, tmp_path):
    import mlflow

    from steps.infra.errors import StepError
    from steps.train import log_model, reload_logged_model

    pipeline, _, train, test = fitted
    X_test = test.drop(columns=[config.TARGET])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("t", artifact_location=tmp_path.as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = log_model(pipeline, train.drop(columns=[config.TARGET]))
        logged = reload_logged_model(info.model_id, pipeline, X_test)
        assert logged is not pipeline
        np.testing.assert_array_equal(logged.predict(X_test), pipeline.predict(X_test))
        # a model whose artifact predicts otherwise than the fitted one fails train
        other = build_pipeline(
            features.build_preprocessor(),
            models.build_estimator("linear", **models.DEFAULT_HYPERPARAMS),
        ).fit(X_test, test[config.TARGET])
        with pytest.raises(StepError, match="predicts differently"):
            reload_logged_model(info.model_id, other, X_test)
        with pytest.raises(StepError, match="cannot be loaded back"):
            reload_logged_model("m-0000", pipeline, X_test)
    finally:
        mlflow.set_tracking_uri(previous)
