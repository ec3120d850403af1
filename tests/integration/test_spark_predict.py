"""``mlflow run . -e predict -P engine=spark`` and ``python -m steps.predict --engine spark``
for real: PySpark in local mode (``local[2]``) with the suite's Java (JAVA_HOME), MLflow's
spark_udf, a model logged and registered like the train and register steps do in a temp
SQLite store. The local engine's reading and checking of the same rows as one file is the
reference for what is valid, what is rejected and why.

One Spark run in all, launched by `mlflow run` as a user does (the step starts and stops its
own SparkSession): the rows as a directory of three CSV parts, split further into 8 KiB input
splits, so row numbers must follow files and splits across many partitions. The failure cases
call the step directly and stop before any JVM. The output contract
(``steps.batch.output_contract``): that Spark run's files against the local engine's on the
same CSV rows (an int ``id`` column, bad rows), and both engines on Parquet input, compared
column by column.
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
ENGINES = ("local", "spark")


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
    data = with_id(rows)
    source = workdir / "rows.csv"
    data.to_csv(source, index=False)
    parts = workdir / "rows"  # no extension: the format comes from the files in it
    parts.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(data)), 3)):
        data.iloc[part].to_csv(parts / f"part-{i}.csv", index=False)
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
    assert list(scored.columns) == [config.ROW_COLUMN, *data.columns, config.PREDICTION_COLUMN]

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

    # the output contract on CSV input (steps.batch.output_contract): the local engine's files
    # for the same rows as one file are Spark's, column by column
    local_out = engine_outputs(registry, workdir / "contract-csv", source, "local")
    assert_same_outputs(local_out.parent, spark_out.parent)
    assert scored["id"].dtype == "int64"


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


def engine_outputs(registry, folder: Path, source: Path, engine: str) -> Path:
    """``predict`` on ``source`` with ``engine``; the folder it wrote its outputs in."""
    folder.mkdir(exist_ok=True)
    out = folder / engine / "out.parquet"
    engine_args = SPARK if engine == "spark" else ["--engine", "local"]
    result = run_predict(
        registry["uri"], folder, *engine_args, "--input", str(source), "--output", str(out)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def with_id(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with an int ``id`` column after the first: a passthrough column with a type."""
    data = rows.copy()
    data.insert(1, "id", np.arange(1_000, 1_000 + len(data), dtype=np.int64))
    return data


def assert_same_outputs(local_dir: Path, spark_dir: Path) -> None:
    """The two engines' folders hold the same files, with the same Arrow types, columns in the
    same order, dtypes and values (predictions to the cent)."""
    import pyarrow.dataset

    dirs = {"local": local_dir, "spark": spark_dir}
    names = {e: sorted(p.name for p in d.iterdir()) for e, d in dirs.items()}
    assert names["local"] == names["spark"] == ["out.parquet", "out.rejected.parquet"]
    for table in names["local"]:
        # as stored: the same Arrow types (Spark's directory read as one table)
        schemas = [pyarrow.dataset.dataset(dirs[e] / table).schema for e in ENGINES]
        assert [(f.name, str(f.type)) for f in schemas[0]] == [
            (f.name, str(f.type)) for f in schemas[1]
        ], table
        local, spark = (read_sorted(dirs[e] / table) for e in ENGINES)
        assert list(local.columns) == list(spark.columns), table
        for column in local.columns:  # column by column: dtype, then values
            assert local[column].dtype == spark[column].dtype, (table, column)
            if column == config.PREDICTION_COLUMN:
                np.testing.assert_allclose(local[column], spark[column], rtol=0, atol=0.005)
            else:
                pd.testing.assert_series_equal(local[column], spark[column], obj=column)


def test_both_engines_write_the_same_columns_dtypes_values_and_rejects_from_parquet(
    registry, workdir, rows
):
    """The output contract on Parquet input (CSV input: the first test): same input, same
    files, same columns in the same order with the same dtypes and values, either engine."""
    folder = workdir / "contract-parquet"
    folder.mkdir()
    data = with_id(rows.head(120))
    data.loc[3, "latitude"] = 99.0  # Parquet has no text in a number column: out of range
    data.loc[8, "total_bedrooms"] = None
    data = data.astype({c: "float64" for c in config.NUMERIC_FEATURES})
    data = data.astype({"block_id": "str", config.CATEGORICAL_FEATURE: "str"})
    source = folder / "rows.parquet"
    data.to_parquet(source, index=False)
    outputs = {engine: engine_outputs(registry, folder, source, engine) for engine in ENGINES}
    assert_same_outputs(outputs["local"].parent, outputs["spark"].parent)

    scored = read_sorted(outputs["local"])
    rejected = read_sorted(outputs["local"].parent / "out.rejected.parquet")
    assert list(scored.columns) == [config.ROW_COLUMN, *data.columns, config.PREDICTION_COLUMN]
    assert list(rejected.columns) == [config.ROW_COLUMN, *data.columns, config.REASON_COLUMN]
    assert scored[config.ROW_COLUMN].dtype == "int64" and scored["id"].dtype == "int64"
    assert scored[config.PREDICTION_COLUMN].dtype == "float64"
    assert len(scored) + len(rejected) == len(data) and len(rejected) == 6
