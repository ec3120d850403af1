"""predict's output contract (steps.batch.output_contract): the rejects' naming and the one rule
typing a CSV input's columns, whole or in parts (the Spark engine's batches)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steps.batch import output_contract, sparkscore


@pytest.mark.parametrize(
    ("output", "rejected"),
    [
        ("preds.parquet", "preds.rejected.parquet"),
        ("out/preds.pq", "out/preds.rejected.parquet"),
        ("out/preds.csv", "out/preds.rejected.csv"),
        ("preds.csv.gz", "preds.rejected.csv"),
        ("/data/out/preds.parquet/", "/data/out/preds.rejected.parquet"),
        ("s3a://bucket/runs/preds", "s3a://bucket/runs/preds.rejected.parquet"),
    ],
)
def test_the_rejects_sit_beside_the_output_in_its_format(output, rejected):
    assert output_contract.rejected_location(output) == rejected


COLUMNS = {
    "ints": (["1", "-2", "007"], "int64"),
    "ints_missing": (["1", None, "3"], "float64"),
    "floats": (["1.5", "2", "inf"], "float64"),
    "text": (["1", "north", None], "str"),
    "empty": ([None, None, None], "str"),
}


@pytest.mark.parametrize("name", COLUMNS)
def test_a_column_is_typed_the_same_whole_or_in_parts(name):
    values, dtype = COLUMNS[name]
    text = pd.Series(values, dtype="str")
    whole = output_contract.typed_text_columns(text.to_frame(name))[name]
    assert whole.dtype == dtype
    parts = [output_contract.text_kind(text.iloc[i : i + 1]) for i in range(len(text))]
    assert output_contract.dtype_for(*output_contract.combine(parts)) == dtype
    in_parts = pd.concat([output_contract.as_dtype(text.iloc[i : i + 1], dtype) for i in range(3)])
    pd.testing.assert_series_equal(in_parts, whole, check_names=False)


def test_missing_tokens_are_null():
    text = pd.DataFrame({"a": ["NA", "", "x", "n/a"]}, dtype="str")
    assert output_contract.missing_as_null(text)["a"].isna().tolist() == [True, True, False, True]


def test_strings_are_written_as_arrow_string():
    import pyarrow as pa

    table = pa.table({"s": pa.array(["a"], pa.large_string()), "n": [1]})
    assert output_contract.with_string_columns(table).schema.types == [pa.string(), pa.int64()]


def test_the_spark_summary_finds_the_local_engines_dtypes():
    batch = pd.DataFrame(
        {
            "id": ["1", "2", "3", "4"],
            "latitude": ["37.5", "north", "38", "NA"],
            sparkscore.FILE_COLUMN: ["file:/a.csv"] * 4,
            sparkscore.BLOCK_COLUMN: [0, 0, 4096, 4096],
        }
    )
    summary = [
        row
        for part in sparkscore.summarize_partition(iter([batch]), ["id", "latitude"], csv=True)
        for row in part.to_dict("records")
    ]
    assert sorted(r[sparkscore.COUNT_COLUMN] for r in summary) == [2, 2]
    assert sparkscore.csv_dtypes(["id", "latitude"], summary) == {"id": "int64", "latitude": "str"}
    text = output_contract.missing_as_null(batch.loc[:, ["id", "latitude"]])
    local = output_contract.typed_text_columns(text)
    assert local.dtypes.astype(str).to_dict() == {"id": "int64", "latitude": "str"}
    assert np.array_equal(local["id"], [1, 2, 3, 4])
