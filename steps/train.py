"""Step ``train``: fit preprocessing + regressor as ONE sklearn Pipeline and log it.

In: the ``preprocess`` run (``--upstream-run-id``; empty = the latest finished one) with its
``splits/*.parquet`` and ``preprocessor/preprocessor.skops``; the model kind and
hyperparameters.
Out (MLflow): params (kind + hyperparameters); metrics ``{train,test}_{rmse,mae,r2}`` and
``fit_seconds``, also attached to the logged model (``model_id``) and, per split, to the
train/test dataset; the model ``model`` — Pipeline(preprocess, model) taking the nine raw feature
columns, in dollars — saved with skops and explicit trusted types, with signature and input
example; input datasets ``train``/``test``; tags ``lineage.upstream_run_id``,
``dataset.dvc_md5``, ``model.kind``, ``model.logged_model_id`` (register registers
``models:/<that id>``); the evaluation report under ``evaluation/`` (predicted
vs actual, residual histogram and map, permutation importance, error by ocean_proximity and by
price band, ``summary.md``), MLflow's regressor metrics prefixed ``eval_test_``, and
``gate/test_predictions.parquet`` (the test rows with the logged model's predictions, read
back from the store as serving reads it, and a linear baseline's: register's gate scores them).
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.pipeline import Pipeline

from steps import config, features, models
from steps.data.schema import features_and_target
from steps.infra.errors import StepError
from steps.ml import evaluation, gate
from steps.ml.hyperparams import hyperparameter_options
from steps.models import build_pipeline
from steps.tracking import lineage, loading, outputs, steprun, storerace

STEP = "train"
EVALUATION_DIR = "evaluation"


# --- pure core ----------------------------------------------------------------------------
def regression_metrics(y_true: pd.Series, y_pred: np.ndarray, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_rmse": float(np.sqrt(mean_squared_error(y_true, y_pred))),
        f"{prefix}_mae": float(mean_absolute_error(y_true, y_pred)),
        f"{prefix}_r2": float(r2_score(y_true, y_pred)),
    }


def check_trainable(train: pd.DataFrame, test: pd.DataFrame, preprocessor: Any) -> None:
    """Refuse splits too small for the preprocessor's own settings, with one clear line."""
    need = features.min_fit_rows(preprocessor.neighbors, preprocessor.oof_folds)
    if len(train) < need or len(test) < features.MIN_TEST_ROWS:
        raise StepError(
            f"{len(train)} training / {len(test)} test rows are too few: the preprocessor "
            f"({preprocessor.oof_folds} out-of-fold folds, up to {max(preprocessor.neighbors)} "
            f"neighbours) needs {need} training rows and scoring needs "
            f"{features.MIN_TEST_ROWS} test rows"
        )


def fit_and_score(
    pipeline: Pipeline, train: pd.DataFrame, test: pd.DataFrame
) -> tuple[Pipeline, dict[str, float]]:
    """Fit on train, score on both splits; returns the fitted pipeline and metrics."""
    X_train, y_train = features_and_target(train)
    X_test, y_test = features_and_target(test)
    started = time.perf_counter()
    pipeline.fit(X_train, y_train)
    metrics = {"fit_seconds": time.perf_counter() - started}
    metrics |= regression_metrics(y_train, pipeline.predict(X_train), "train")
    metrics |= regression_metrics(y_test, pipeline.predict(X_test), "test")
    return pipeline, metrics


def pinned_requirements(lock_text: str, packages: tuple[str, ...]) -> list[str]:
    """``name==version`` for each package as the lock file pins it (no environment marker)."""
    pins = {}
    for line in lock_text.splitlines():
        head = line.split("\\")[0].strip()
        if "==" in head and ";" not in head and not head.startswith(("#", "-")):
            name, version = head.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    missing = [name for name in packages if name not in pins]
    if missing:
        raise StepError(f"requirements.lock pins no {', '.join(missing)}")
    return [f"{name}=={pins[name]}" for name in packages]


def input_example(X: pd.DataFrame) -> pd.DataFrame:
    """A few raw rows, one with total_bedrooms missing, so the schema shows it is optional."""
    example = X.head(5).copy()
    example.iloc[0, example.columns.get_loc("total_bedrooms")] = np.nan
    return example


# --- click glue ---------------------------------------------------------------------------
def log_model(pipeline: Pipeline, X: pd.DataFrame):
    import mlflow
    from mlflow.models import infer_signature

    example = input_example(X)
    lock = (config.PROJECT_ROOT / config.LOCK_FILE).read_text()
    return mlflow.sklearn.log_model(
        pipeline,
        name=config.MODEL_ARTIFACT,
        serialization_format="skops",
        skops_trusted_types=list(models.SKOPS_TRUSTED_TYPES),
        # The pipeline's custom transformers live in steps/: ship them with the model so
        # `mlflow models serve` and pyfunc loaders need no checkout of this repository.
        code_paths=[str(config.PROJECT_ROOT / "steps")],
        signature=infer_signature(example, pipeline.predict(example)),
        input_example=example,
        # Stated, not inferred: MLflow's inference imports the model in a subprocess (~6 s
        # per train run) and picks up whatever else the process had loaded.
        pip_requirements=pinned_requirements(lock, config.MODEL_PACKAGES),
    )


def log_metrics(metrics: dict[str, float], model_id: str, datasets: dict[str, Any]) -> None:
    """Metrics on the run, the logged model and the split they were computed on.

    Linking them to the model makes ``mlflow.search_logged_models(order_by=...)`` rank every
    trained model across runs; linking them to the dataset says which rows a number is about.
    """
    import mlflow

    for split, dataset in datasets.items():
        mlflow.log_metrics(
            {k: v for k, v in metrics.items() if k.startswith(f"{split}_")},
            model_id=model_id,
            dataset=dataset,
        )
    rest = {k: v for k, v in metrics.items() if not k.startswith(tuple(datasets))}
    mlflow.log_metrics(rest, model_id=model_id)


def reload_logged_model(model_id: str, pipeline: Pipeline, X: pd.DataFrame) -> Pipeline:
    """The logged model read back from the artifact store, as serving will read it. A model
    that does not load, or predicts differently from the fitted one, fails the run here."""
    try:
        logged = loading.load_model_uri(f"models:/{model_id}")
    except loading.ModelLoadError as exc:
        raise StepError(f"the logged model cannot be loaded back: {exc}") from exc
    if not np.allclose(logged.predict(X), pipeline.predict(X), rtol=1e-9, atol=1e-6):
        raise StepError("the logged model predicts differently from the fitted pipeline")
    return logged


def log_gate_predictions(logged: Pipeline, train: pd.DataFrame, test: pd.DataFrame) -> None:
    """The test rows with the logged model's and a linear baseline's predictions (the
    baseline fitted on the same train rows): what register's champion gate scores. Computing
    them here, where scikit-learn is loaded anyway, spares register loading both models."""
    import mlflow

    X_test = features_and_target(test)[0]
    baseline = gate.baseline_model().fit(*features_and_target(train))
    table = gate.prediction_table(test, logged.predict(X_test), baseline.predict(X_test))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(config.GATE_PREDICTIONS_FILE).name
        table.to_parquet(path)
        mlflow.log_artifact(str(path), str(Path(config.GATE_PREDICTIONS_FILE).parent))


def render_evaluation(
    pipeline: Pipeline, test: pd.DataFrame, metrics: dict[str, float], out: Path
) -> evaluation.Report:
    """The evaluation report, its figures rendered as PNG files into ``out``: the part of the
    evaluation that needs no MLflow, which train runs beside logging the model."""
    built = evaluation.build_report(pipeline, test, metrics)
    for name, figure in built.figures.items():
        figure.savefig(out / f"{name}.png")
    return built


def log_evaluation(
    pipeline: Pipeline, built: evaluation.Report, figures: Path, test_dataset: Any
) -> None:
    """The evaluation report under ``evaluation/`` plus MLflow's regressor evaluation."""
    import mlflow

    mlflow.log_artifacts(str(figures), EVALUATION_DIR)
    for name, table in built.tables.items():
        mlflow.log_table(table, f"{EVALUATION_DIR}/{name}.json")
    mlflow.log_text(built.summary, f"{EVALUATION_DIR}/summary.md")
    # MLflow's own regressor metrics (MAPE, max error, …) on the same test rows.
    storerace.with_unique_race_retry(
        lambda: mlflow.models.evaluate(
            model=pipeline.predict,
            # the same named dataset as the logged test split, so no anonymous duplicate
            data=test_dataset,
            model_type="regressor",
            evaluator_config={"metric_prefix": "eval_test_", "log_model_explainability": False},
        )
    )


@click.command(help="Fit the preprocessing + regressor pipeline and log it as one model.")
@click.option("--upstream-run-id", default="", help="preprocess run (empty: latest finished).")
@hyperparameter_options
@steprun.as_step(
    STEP, warm=("skops.io", "mlflow.sklearn", "mlflow.models.evaluation.default_evaluator")
)
def cli(upstream_run_id: str, model_kind: str, **hyperparams: Any) -> None:
    import mlflow

    upstream = lineage.resolve_upstream(upstream_run_id, "preprocess")
    lineage.link(upstream)
    train, test, preprocessor = outputs.read_preprocess_outputs(upstream.info.run_id)
    check_trainable(train, test, preprocessor)
    estimator = models.build_estimator(model_kind, **hyperparams)
    steprun.echo(STEP, f"fitting {model_kind} on {len(train)} rows")
    pipeline, metrics = fit_and_score(build_pipeline(preprocessor, estimator), train, test)
    steprun.echo(
        STEP,
        f"test RMSE ${metrics['test_rmse']:,.0f}, R² {metrics['test_r2']:.3f} "
        f"({metrics['fit_seconds']:.1f} s)",
    )
    mlflow.set_tag(config.TAG_MODEL_KIND, model_kind)
    # The report (permutation importance, figures: ~1 s) is built in a thread while this one
    # logs and reloads the model: register waits for this run to finish.
    with tempfile.TemporaryDirectory() as figures, ThreadPoolExecutor(1) as pool:
        report = pool.submit(render_evaluation, pipeline, test, metrics, Path(figures))
        datasets = lineage.log_split_inputs(train, test)
        model_info = log_model(pipeline, features_and_target(train)[0])
        mlflow.set_tag(config.TAG_LOGGED_MODEL, model_info.model_id)
        log_metrics(metrics, model_info.model_id, datasets)
        logged = reload_logged_model(model_info.model_id, pipeline, features_and_target(test)[0])
        log_gate_predictions(logged, train, test)
        log_evaluation(pipeline, report.result(), Path(figures), datasets["test"])


if __name__ == "__main__":
    cli()
