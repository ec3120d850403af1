"""The Spark engine's pure parts (steps.batch.sparkscore), without a JVM: the per-batch check is
the local engine's, row numbers continue across batches and partitions, output naming,
input format, Java detection, and PySpark staying out of the pipeline's imports."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from steps import config
from steps.batch import localscore, sparkscore
from steps.infra.errors import StepError
from tests.support import PROJECT_ROOT, housing_sample, messy_rows


@pytest.fixture(scope="module")
def text_rows() -> pd.DataFrame:
    """Rows as Spark's CSV reader hands them over: every value text, missing = None."""
    X, _ = housing_sample(n_rows=80, seed=5)
    return messy_rows(X).map(lambda v: None if v is None else str(v))


def test_check_batch_rejects_what_the_local_engine_rejects(text_rows, tmp_path):
    source = tmp_path / "rows.csv"
    text_rows.to_csv(source, index=False)
    _, local_rejected = localscore.split_valid(localscore.read_table(str(source)))

    checked = sparkscore.check_batch(text_rows, np.arange(len(text_rows)), csv=True)
    bad = checked[checked[config.REASON_COLUMN] != ""]
    assert bad[config.ROW_COLUMN].tolist() == local_rejected[config.ROW_COLUMN].tolist()
    assert bad[config.REASON_COLUMN].tolist() == local_rejected[config.REASON_COLUMN].tolist()


def test_check_batch_types_the_features_and_keeps_the_raw_values(text_rows):
    checked = sparkscore.check_batch(text_rows, np.arange(len(text_rows)), csv=True)
    assert np.isnan(checked.loc[8, sparkscore.typed("total_bedrooms")])  # "NA": missing
    assert checked.loc[8, config.REASON_COLUMN] == ""
    assert checked.loc[3, "latitude"] == "north"  # rejected rows keep what the input said
    for name in config.NUMERIC_FEATURES:
        assert checked[sparkscore.typed(name)].dtype == np.float64
    assert checked["block_id"].tolist() == text_rows["block_id"].tolist()


def test_rows_are_numbered_by_file_and_split_across_batches(text_rows):
    """Two files, the first read as two splits; one partition holds split 2 of file a, then
    file b (Spark packs small files), and its batches cut across the chunks."""
    keyed = text_rows.assign(
        **{
            sparkscore.FILE_COLUMN: ["file:/a.csv"] * 50 + ["file:/b.csv"] * 30,
            sparkscore.BLOCK_COLUMN: [0] * 20 + [4096] * 30 + [0] * 30,
        }
    )
    offsets = sparkscore.chunk_offsets(
        {("file:/b.csv", 0): 30, ("file:/a.csv", 4096): 30, ("file:/a.csv", 0): 20}
    )
    assert offsets == {("file:/a.csv", 0): 0, ("file:/a.csv", 4096): 20, ("file:/b.csv", 0): 50}
    partition = keyed.iloc[20:]  # split 2 of a.csv, then b.csv
    batches = [partition.iloc[:25], partition.iloc[25:40], partition.iloc[40:]]
    out = list(sparkscore.check_partition(iter(batches), offsets, csv=True))
    numbers = np.concatenate([b[config.ROW_COLUMN].to_numpy() for b in out])
    assert numbers.tolist() == list(range(20, 80))
    assert sparkscore.FILE_COLUMN not in out[0].columns


@pytest.mark.parametrize(
    ("output", "rejected"),
    [
        ("preds.parquet", "preds.rejected.parquet"),
        ("/data/out/preds.parquet/", "/data/out/preds.rejected.parquet"),
        ("s3a://bucket/runs/preds", "s3a://bucket/runs/preds.rejected.parquet"),
    ],
)
def test_rejected_location_sits_beside_the_output(output, rejected):
    assert sparkscore.rejected_location(output) == rejected


def test_output_must_be_parquet():
    with pytest.raises(StepError, match="writes a Parquet directory"):
        sparkscore.check_output("preds.csv")
    sparkscore.check_output("hdfs://nn/preds")


def test_input_format_from_the_name_or_the_files_inside(tmp_path):
    assert sparkscore.input_format("s3a://bucket/rows.csv.gz") == "csv"
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "part-0.parquet").write_bytes(b"")
    (parts / "_SUCCESS").write_bytes(b"")
    assert sparkscore.input_format(str(parts)) == "parquet"
    (parts / "part-1.csv").write_bytes(b"")
    with pytest.raises(StepError, match="cannot tell CSV from Parquet"):
        sparkscore.input_format(str(parts))


def test_check_columns_names_missing_and_reserved_columns():
    with pytest.raises(StepError, match="missing column"):
        sparkscore.check_columns(["longitude"], "in.csv")
    with pytest.raises(StepError, match=r"column\(s\) row are written by predict"):
        sparkscore.check_columns([*config.FEATURES, "row"], "in.csv")


def test_java_is_found_on_path_or_in_java_home(tmp_path):
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\n")
    java.chmod(0o755)
    assert sparkscore.java_problem({"PATH": str(java.parent)}) is None
    assert sparkscore.java_problem({"JAVA_HOME": str(tmp_path / "jdk"), "PATH": ""}) is None
    no_java = sparkscore.java_problem({"PATH": str(tmp_path)})
    assert no_java is not None and "apt-get install openjdk-17-jre-headless" in no_java
    bad_home = sparkscore.java_problem({"JAVA_HOME": str(tmp_path), "PATH": str(java.parent)})
    assert bad_home is not None and "has no bin/java" in bad_home


def test_the_pipeline_never_imports_pyspark():
    """Only predict's Spark path imports it, lazily: `make run` must not pay for it."""
    modules = ["main", "load_data", "preprocess", "train", "register", "predict", "serve"]
    code = (
        "import sys\n"
        + "".join(f"import steps.{m}\n" for m in modules)
        + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyspark'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_the_executors_get_every_subpackage(tmp_path):
    """Spark ships only what addPyFile gets: the zip must hold steps/ with its subpackages."""
    import zipfile

    with zipfile.ZipFile(sparkscore.steps_archive(tmp_path / "steps.zip")) as archive:
        names = set(archive.namelist())
    on_disk = {
        path.relative_to(config.PROJECT_ROOT).as_posix()
        for path in (config.PROJECT_ROOT / "steps").rglob("*.py")
    }
    assert names == on_disk
    assert {"steps/__init__.py", "steps/data/__init__.py", "steps/data/schema.py"} <= names
