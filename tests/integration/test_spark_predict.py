"""``mlflow run . -e predict -P engine=spark`` and ``python -m steps.predict --engine spark``
for real: PySpark in local mode (``local[2]``) with the suite's Java (JAVA_HOME), MLflow's
spark_udf, a model logged and registered like the train and register steps do in a temp
SQLite store. The local engine's reading and checking of the same rows as one file is the
reference for what is valid, what is rejected and why.

One Spark run in all, launched by `mlflow run` as a user does (the step starts and stops its
own SparkSession): the rows as a directory of three CSV parts, split further into 8 KiB input
splits, so row numbers must follow files and splits across many partitions. The failure cases
call the step directly and stop before any JVM.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steps import config
from steps.batch import localscore, sparkscore
from tests.support import (
    copy_project,
    demo_pipeline,
    error_lines,
    housing_sample,
    launched_run_id,
    messy_rows,
    mlflow_run_local,
    predict_env,
    project_env,
    register_demo_model,
    run_cmd,
    run_predict,
    tracking,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SPARK = ["--engine", "spark", "--spark-master", "local[2]"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spark-predict")


@pytest.fixture(scope="module")
def registry(workdir) -> dict:
    """A temp SQLite registry holding one champion version of a small real pipeline."""
    uri = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    X, y = housing_sample(n_rows=2_000, seed=3)
    with tracking(uri):
        version = register_demo_model(
            uri, demo_pipeline(X, y, n_estimators=60), X, artifact_root=workdir / "artifacts"
        )
    return {"uri": uri, "version": version}


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """600 raw rows the model never saw, as text, with bad ones among them."""
    X, _ = housing_sample(n_rows=600, seed=99)
    return messy_rows(X)


@pytest.fixture(scope="module")
def pyfunc_model(registry):
    """The registered version loaded by MLflow's own pyfunc loader (the reference)."""
    import mlflow.pyfunc

    with tracking(registry["uri"]), pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
        return mlflow.pyfunc.load_model(f"models:/{config.MODEL_NAME}/{registry['version']}")


def finished_run(registry, run_filter: str = "") -> object:
    import mlflow

    client = mlflow.MlflowClient(registry["uri"])
    exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    (run,) = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{config.TAG_STEP}` = 'predict'" + run_filter,
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return run


def read_sorted(path: Path | str) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(config.ROW_COLUMN).reset_index(drop=True)


def test_spark_scores_like_pyfunc_and_rejects_like_the_local_engine(
    registry, workdir, rows, pyfunc_model
):
    source = workdir / "rows.csv"
    rows.to_csv(source, index=False)
    parts = workdir / "rows"  # no extension: the format comes from the files in it
    parts.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(rows)), 3)):
        rows.iloc[part].to_csv(parts / f"part-{i}.csv", index=False)
    spark_out = workdir / "spark" / "out.parquet"

    small_splits = "--conf spark.sql.files.maxPartitionBytes=8192 pyspark-shell"
    # as a user starts it (README: `mlflow run . -e predict -P engine=spark`), from a copy of
    # the project: the MLproject's command line must carry engine and master to the step
    result = run_cmd(
        mlflow_run_local(
            "predict",
            *("--experiment-name", config.EXPERIMENT_NAME),
            *("-P", "engine=spark", "-P", f"spark_master={SPARK[-1]}"),
            *("-P", f"input={parts}", "-P", f"output={spark_out}"),
        ),
        cwd=copy_project(workdir / "project"),
        env=project_env(
            registry["uri"],
            PYSPARK_SUBMIT_ARGS=small_splits,
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        ),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"starting Spark on {SPARK[-1]};" in result.stdout + result.stderr

    scored = read_sorted(spark_out)
    rejected = read_sorted(sparkscore.rejected_location(str(spark_out)))
    # the local engine's reading and checking of the same rows as one file
    local_valid, local_rejected = localscore.split_valid(localscore.read_table(str(source)))

    # every input row exactly once, in one output or the other, numbered as in one file
    assert len(scored) + len(rejected) == len(rows)
    assert sorted([*scored[config.ROW_COLUMN], *rejected[config.ROW_COLUMN]]) == list(
        range(len(rows))
    )
    # the same rows rejected for the same reasons as the local engine
    assert rejected[config.ROW_COLUMN].tolist() == local_rejected[config.ROW_COLUMN].tolist()
    assert rejected[config.REASON_COLUMN].tolist() == local_rejected[config.REASON_COLUMN].tolist()
    assert len(rejected) == 6  # messy_rows: six bad rows; "NA" bedrooms is allowed
    assert rejected.loc[rejected[config.ROW_COLUMN] == 3, "latitude"].item() == "north"
    # extra columns carried through, quoted commas intact
    assert scored["block_id"].tolist() == rows.loc[scored[config.ROW_COLUMN], "block_id"].tolist()
    assert list(scored.columns) == [config.ROW_COLUMN, *rows.columns, config.PREDICTION_COLUMN]

    # predictions: MLflow's pyfunc on the same version, to the cent
    assert scored[config.ROW_COLUMN].tolist() == local_valid[config.ROW_COLUMN].tolist()
    reference = pyfunc_model.predict(local_valid.loc[:, list(config.FEATURES)])
    np.testing.assert_allclose(
        scored[config.PREDICTION_COLUMN], np.asarray(reference, dtype=float), rtol=0, atol=0.005
    )

    run = finished_run(registry, " and params.engine = 'spark'")
    assert run.info.run_id == launched_run_id(result.stderr)
    assert run.info.status == "FINISHED"
    assert run.data.tags[config.TAG_PREDICT_MODEL_VERSION] == registry["version"]
    assert run.data.tags[config.TAG_PREDICT_OUTPUT] == str(spark_out)
    assert run.data.tags[config.TAG_PREDICT_REJECTED_OUTPUT] == sparkscore.rejected_location(
        str(spark_out)
    )
    assert run.data.metrics["rows_in"] == len(rows)
    assert run.data.metrics["rows_rejected"] == len(rejected)
    assert run.data.metrics["rows_predicted"] == len(scored)


def test_missing_input_fails_the_run_with_one_line_before_spark_starts(registry, workdir):
    result = run_predict(
        registry["uri"],
        workdir,
        *SPARK,
        "--input",
        str(workdir / "nowhere.csv"),
        "--output",
        str(workdir / "x.parquet"),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "nowhere.csv: no such file or directory" in line
    assert "starting Spark" not in result.stderr
    assert finished_run(registry).info.status == "FAILED"
    assert not (workdir / "x.parquet").exists()


@pytest.mark.parametrize("java_home", [None, "empty"], ids=["no-java-on-path", "bad-java-home"])
def test_missing_java_fails_with_one_line_saying_what_to_install(
    registry, workdir, rows, java_home
):
    source = workdir / "java.csv"
    rows.head(20).to_csv(source, index=False)
    env = predict_env(registry["uri"], PATH=str(Path(sys.executable).parent))
    env.pop("JAVA_HOME", None)
    if java_home:
        (workdir / java_home).mkdir(exist_ok=True)
        env["JAVA_HOME"] = str(workdir / java_home)
    result = run_predict(
        registry["uri"],
        workdir,
        *SPARK,
        "--input",
        str(source),
        "--output",
        str(workdir / "java.parquet"),
        env=env,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "openjdk-17-jre-headless" in line and "JAVA_HOME" in line
    assert finished_run(registry).info.status == "FAILED"
