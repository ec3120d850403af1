"""predict's local engine (steps.batch.localscore): validation with row numbers, chunked
scoring, table formats and paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steps import config
from steps.batch import localscore
from steps.infra.errors import StepError


def test_split_valid_reports_every_reason_and_keeps_row_numbers(sample):
    df = sample[0].head(6).astype({"latitude": object}).reset_index(drop=True)
    df.loc[1, "latitude"] = "abc"
    df.loc[2, "ocean_proximity"] = "MARS"
    df.loc[3, ["population", "households"]] = [-1.0, np.nan]
    df.loc[4, "total_bedrooms"] = np.nan  # allowed
    valid, rejected = localscore.split_valid(df)
    assert valid[config.ROW_COLUMN].tolist() == [0, 4, 5]
    assert rejected[config.ROW_COLUMN].tolist() == [1, 2, 3]
    assert rejected[config.REASON_COLUMN].tolist() == [
        "latitude: not a number",
        "ocean_proximity: unknown value",
        "population: below 0; households: missing",
    ]
    assert valid["latitude"].dtype == np.float64


@pytest.mark.parametrize("jobs", [1, 3])
def test_predict_frame_in_chunks_equals_one_predict(pipeline, sample, jobs):
    valid, _ = localscore.split_valid(sample[0].head(101))
    np.testing.assert_array_equal(
        localscore.predict_frame(pipeline, valid, chunk_rows=10, progress=False, jobs=jobs),
        pipeline.predict(sample[0].head(101)),
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.csv", "csv"), ("a.CSV", "csv"), ("a.csv.gz", "csv"), ("s3://b/a.parquet", "parquet")],
)
def test_table_format(name, kind):
    assert localscore.table_format(name) == kind


def test_table_format_rejects_unknown_extensions():
    with pytest.raises(StepError, match=r"expected \.csv or \.parquet"):
        localscore.table_format("a.xlsx")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_then_read_round_trip(tmp_path, sample, suffix):
    df = sample[0].head(10)
    path = tmp_path / f"t{suffix}"
    localscore.write_table(df, path)
    pd.testing.assert_frame_equal(localscore.read_table(str(path)), df, check_dtype=False)
    assert len(localscore.read_table(path.as_uri())) == 10


def test_read_table_errors_are_one_line(tmp_path):
    with pytest.raises(StepError, match="no such file"):
        localscore.read_table(str(tmp_path / "missing.csv"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(StepError, match="cannot read as parquet") as exc:
        localscore.read_table(str(tmp_path / "bad.parquet"))
    assert "\n" not in str(exc.value)
    (tmp_path / "cols.csv").write_text("longitude,latitude\n1,2\n")
    with pytest.raises(StepError, match=r"missing column.*housing_median_age"):
        localscore.read_table(str(tmp_path / "cols.csv"))


def test_rejected_path_follows_the_output_format():
    assert localscore.rejected_path(Path("out/p.parquet")) == Path("out/p.rejected.parquet")
    assert localscore.rejected_path(Path("out/p.csv")) == Path("out/p.rejected.csv")
    assert localscore.rejected_path(Path("p.csv.gz")) == Path("p.rejected.csv")


def test_a_csv_input_is_typed_by_the_contract_rule(tmp_path):
    source = tmp_path / "rows.csv"
    pd.DataFrame(
        {
            "id": ["007", "8", "9"],  # integers: int64 (leading zeros are text to no one)
            "code": ["1", "NA", "3"],  # integers with a missing one: float64
            "note": ["a", "1", ""],  # text: str, the missing token null
            **{name: ["1"] * 3 for name in config.NUMERIC_FEATURES},
            config.CATEGORICAL_FEATURE: ["INLAND"] * 3,
        }
    ).to_csv(source, index=False)
    df = localscore.read_table(str(source))
    assert df["id"].tolist() == [7, 8, 9] and df["id"].dtype == "int64"
    assert df["code"].dtype == "float64" and np.isnan(df["code"][1])
    assert df["note"].dtype == "str" and df["note"].isna().tolist() == [False, False, True]
    assert df[config.CATEGORICAL_FEATURE].dtype == "str"
