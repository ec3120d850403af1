"""Baseline for bench/pipeline_bench.py: the whole pipeline as ONE script and ONE MLflow run.

Same work as ``mlflow run . -e main`` on a cold store, minus the step boundaries: read and
validate housing.csv, split it, fit the same sklearn Pipeline (steps.features + steps.models
via steps.models.build_pipeline), score it, log params/metrics/input dataset/model/evaluation
into one run and register the model, setting ``champion`` or ``challenger`` like register does.
No subprocesses, no artifact hand-off between steps, no DVC.

    python bench/monolith.py --tracking-uri sqlite:////tmp/mono/mlflow.db [--json]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: make `steps` importable
    sys.path.insert(0, str(PROJECT_ROOT))

# the clone's verified copy: `make data` (and `make bench`) fetch it
DEFAULT_CSV = PROJECT_ROOT / "data" / "housing.csv"
EXPERIMENT = "california_housing_monolith"


def load(csv: Path) -> Any:
    """Validated raw frame (the same parser and schema load_data uses)."""
    from steps.data.acquisition import parse_raw

    return parse_raw(csv.read_bytes())


def fit(raw: Any, model_kind: str) -> tuple[Any, Any, Any, dict[str, float]]:
    """Split, then fit and score preprocessing + regressor as one Pipeline."""
    from steps import config, features, models, preprocess, train

    train_df, test_df = preprocess.split_data(
        raw, config.DEFAULT_TEST_SIZE, config.DEFAULT_SPLIT_SEED, config.DEFAULT_SPLIT_STRATEGY
    )
    pipeline = models.build_pipeline(
        features.build_preprocessor(), models.build_estimator(model_kind)
    )
    pipeline, metrics = train.fit_and_score(pipeline, train_df, test_df)
    return pipeline, train_df, test_df, metrics


def log_run(raw: Any, csv: Path, fitted: tuple[Any, Any, Any, dict[str, float]], kind: str) -> str:
    """One MLflow run with what the step runs log between them; returns its id."""
    import mlflow

    from steps import config, models, train
    from steps.data import schema
    from steps.tracking import lineage, provenance

    pipeline, train_df, test_df, metrics = fitted
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_name="monolith") as run:
        mlflow.log_params({"model_kind": kind, **models.DEFAULT_HYPERPARAMS})
        mlflow.set_tag("model.kind", kind)
        dataset = mlflow.data.from_pandas(
            raw,
            source=provenance.dataset_source(str(csv)),
            targets=config.TARGET,
            name=config.RAW_DATASET_NAME,
        )
        mlflow.log_input(dataset, context="raw")
        mlflow.log_metrics(metrics)
        datasets = lineage.log_split_inputs(train_df, test_df)
        train.log_model(pipeline, schema.features_and_target(train_df)[0])
        with tempfile.TemporaryDirectory() as figures:
            built = train.render_evaluation(pipeline, test_df, metrics, Path(figures))
            train.log_evaluation(pipeline, built, Path(figures), datasets["test"])
        return run.info.run_id


def register(run_id: str, test_rmse: float) -> tuple[str, str]:
    """Register the run's model; champion only if it beats the current one by register's
    margins (on the run's own test RMSE: the monolith keeps no split lineage to compare on)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from steps import config
    from steps.ml import gate

    client = mlflow.MlflowClient()
    try:
        current = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
        champion_rmse = float(current.tags.get("test_rmse", "inf"))
    except MlflowException:
        champion_rmse = None
    version = mlflow.register_model(
        f"runs:/{run_id}/{config.MODEL_ARTIFACT}",
        config.MODEL_NAME,
        tags={"train_run_id": run_id, "test_rmse": repr(test_rmse)},
    )
    wins = champion_rmse is None or gate.beats(
        test_rmse,
        champion_rmse,
        config.DEFAULT_GATE_MIN_ABS_IMPROVEMENT,
        config.DEFAULT_GATE_MIN_REL_IMPROVEMENT,
    )
    alias = config.CHAMPION_ALIAS if wins else config.CHALLENGER_ALIAS
    client.set_registered_model_alias(config.MODEL_NAME, alias, version.version)
    return str(version.version), alias


@click.command(help="Cold monolithic baseline: load, split, fit, log and register in one run.")
@click.option("--tracking-uri", default=None, help="Default: $MLFLOW_TRACKING_URI.")
@click.option("--csv", "csv", type=click.Path(path_type=Path), default=DEFAULT_CSV)
@click.option("--model-kind", default=None, help="Default: the project's default kind.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def cli(tracking_uri: str | None, csv: Path, model_kind: str | None, as_json: bool) -> None:
    started = time.perf_counter()
    import mlflow

    from steps import models
    from steps.infra import processes

    processes.skip_exit_collection()  # the steps exit this way too: compare like with like
    kind = model_kind or models.DEFAULT_MODEL_KIND
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    phases: dict[str, float] = {"imports": time.perf_counter() - started}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        phases[name] = now - t0
        return now

    t = time.perf_counter()
    raw = load(csv)
    t = lap("load", t)
    fitted = fit(raw, kind)
    t = lap("split_fit_score", t)
    run_id = log_run(raw, csv, fitted, kind)
    t = lap("log", t)
    version, alias = register(run_id, fitted[3]["test_rmse"])
    lap("register", t)
    result = {
        "run_id": run_id,
        "model_kind": kind,
        "test_rmse": fitted[3]["test_rmse"],
        "registry_version": version,
        "registry_alias": alias,
        "phases_s": phases,
        "in_process_s": time.perf_counter() - started,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for name, seconds in phases.items():
            click.echo(f"{name:<16} {seconds:7.1f} s")
        click.echo(f"{'total':<16} {result['in_process_s']:7.1f} s  (v{version} @{alias})")


if __name__ == "__main__":
    cli()
