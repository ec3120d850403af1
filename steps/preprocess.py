"""Step ``preprocess``: split the raw table and fit the preprocessor on the train part only.

In: the ``load_data`` run (``--upstream-run-id``; empty = the latest finished one) and its
``raw/housing.csv`` artifact; split parameters.
Out (MLflow): artifacts ``splits/train.parquet``, ``splits/test.parquet`` (raw rows, target
included) and ``preprocessor/preprocessor.skops`` (fitted on train) with
``preprocessor/feature_names.txt``; input datasets (contexts ``train``/``test``); tags
``lineage.upstream_run_id``, ``dataset.dvc_md5``; metrics ``n_train``, ``n_test``,
``n_features_out``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from steps import config, features
from steps.data import schema
from steps.data.schema import features_and_target
from steps.infra.errors import StepError
from steps.tracking import lineage, steprun

STEP = "preprocess"
INCOME_BINS: tuple[float, ...] = (0.0, 1.5, 3.0, 4.5, 6.0, np.inf)


# --- pure core ----------------------------------------------------------------------------
def income_category(income: pd.Series) -> pd.Series:
    """Géron's five median-income strata, used to keep the test split representative."""
    return pd.cut(income, bins=list(INCOME_BINS), labels=False, include_lowest=True)


def split_data(
    df: pd.DataFrame, test_size: float, random_state: int, strategy: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw table → (train, test) raw tables; rows keep their original index."""
    if not 0.0 < test_size < 1.0:
        raise StepError(f"test_size must be in (0, 1), got {test_size}")
    if strategy not in config.SPLIT_STRATEGIES:
        raise StepError(
            f"unknown split_strategy {strategy!r}; expected one of {config.SPLIT_STRATEGIES}"
        )
    check_splittable(df, test_size, strategy)
    stratify = income_category(df["median_income"]) if strategy == "income_stratified" else None
    train, test = train_test_split(
        df, test_size=test_size, random_state=random_state, stratify=stratify
    )
    return train, test


def check_splittable(df: pd.DataFrame, test_size: float, strategy: str) -> None:
    """Refuse a table too small for the split and the preprocessor's own settings.

    One clear line instead of scikit-learn's traceback from deep inside the split or the
    out-of-fold fit (e.g. "n_splits=5 greater than the number of samples").
    """
    n = len(df)
    n_test = int(np.ceil(test_size * n))
    need = features.min_fit_rows()
    if n - n_test < need or n_test < features.MIN_TEST_ROWS:
        raise StepError(
            f"{n} rows are too few: a {test_size:g} test split leaves {n - n_test} training "
            f"rows and {n_test} test rows; the preprocessor ({features.DEFAULT_OOF_FOLDS} "
            f"out-of-fold folds, up to {max(features.DEFAULT_NEIGHBORS)} neighbours) needs "
            f"{need} training rows and scoring needs {features.MIN_TEST_ROWS} test rows"
        )
    if strategy == "income_stratified":
        strata = income_category(df["median_income"]).value_counts()
        if strata.min() < 2 or n_test < len(strata) or n - n_test < len(strata):
            raise StepError(
                f"income_stratified split impossible: income band {strata.idxmin()} has "
                f"{strata.min()} row(s) (each of the {len(strata)} bands needs 2, and each "
                f"side of the split one per band); use split_strategy=random or more data"
            )


def fit_preprocessor(train: pd.DataFrame):
    """The unfitted feature pipeline, fitted on the train split only."""
    X, y = features_and_target(train)
    return features.build_preprocessor().fit(X, y)


# --- I/O + MLflow -------------------------------------------------------------------------
def read_raw(run_id: str) -> pd.DataFrame:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path=f"{config.RAW_ARTIFACT_DIR}/{config.RAW_FILE_NAME}",
            dst_path=tmp,
        )
        return schema.validate_raw(pd.read_csv(path))


@click.command(help="Split the raw data and fit the preprocessor on the train split.")
@click.option("--upstream-run-id", default="", help="load_data run (empty: latest finished).")
@click.option("--test-size", type=float, default=config.DEFAULT_TEST_SIZE, show_default=True)
@click.option("--split-seed", type=int, default=config.DEFAULT_SPLIT_SEED, show_default=True)
@click.option(
    "--split-strategy",
    type=click.Choice(config.SPLIT_STRATEGIES),
    default=config.DEFAULT_SPLIT_STRATEGY,
    show_default=True,
)
@steprun.as_step(STEP, warm=("skops.io",))
def cli(upstream_run_id: str, test_size: float, split_seed: int, split_strategy: str) -> None:
    import mlflow
    import skops.io

    upstream = lineage.resolve_upstream(upstream_run_id, "load_data")
    lineage.link(upstream)
    raw = read_raw(upstream.info.run_id)
    train, test = split_data(raw, test_size, split_seed, split_strategy)
    preprocessor = fit_preprocessor(train)
    feature_names = list(preprocessor.get_feature_names_out())
    steprun.echo(STEP, f"{len(train)} train / {len(test)} test rows, {len(feature_names)} features")

    mlflow.log_metrics(
        {"n_train": len(train), "n_test": len(test), "n_features_out": len(feature_names)}
    )
    with tempfile.TemporaryDirectory() as tmp:
        splits = Path(tmp) / config.SPLITS_ARTIFACT_DIR
        splits.mkdir()
        for name, part in ((config.TRAIN_SPLIT_FILE, train), (config.TEST_SPLIT_FILE, test)):
            part.to_parquet(splits / name)
        mlflow.log_artifacts(str(splits), artifact_path=config.SPLITS_ARTIFACT_DIR)

        pre_dir = Path(tmp) / config.PREPROCESSOR_ARTIFACT
        pre_dir.mkdir()
        skops.io.dump(preprocessor, pre_dir / config.PREPROCESSOR_FILE)
        (pre_dir / "feature_names.txt").write_text("\n".join(feature_names) + "\n")
        mlflow.log_artifacts(str(pre_dir), artifact_path=config.PREPROCESSOR_ARTIFACT)
    lineage.log_split_inputs(train, test)


if __name__ == "__main__":
    cli()
