"""load_data's pure core: parsing, schema errors (one line, naming the problem), archives."""

from __future__ import annotations

import io
import tarfile

import pytest

from steps import config
from steps.data.acquisition import extract_csv, parse_raw
from steps.infra.errors import StepError


def to_csv(df) -> bytes:
    return df.to_csv(index=False).encode()


def test_valid_table_parses_with_declared_types(raw_frame):
    df = parse_raw(to_csv(raw_frame))
    assert list(df.columns) == list(config.RAW_COLUMNS)
    assert len(df) == len(raw_frame)
    assert df["total_bedrooms"].isna().sum() == raw_frame["total_bedrooms"].isna().sum()
    assert df["median_income"].dtype == "float64"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda df: df.drop(columns=["median_income"]), "missing column(s): median_income"),
        (lambda df: df.assign(extra=1), "unexpected column(s): extra"),
        (
            lambda df: df.assign(
                population=df["population"].astype(object).where(df.index != 3, "lots")
            ),
            "'population' is not numeric",
        ),
        (lambda df: df.head(0), "no data rows"),
        (
            lambda df: df.assign(latitude=df["latitude"].where(df.index != 0, 95.0)),
            "'latitude' has 1 values above",
        ),
        (
            lambda df: df.assign(households=df["households"].where(df.index != 0, -4.0)),
            "'households' has 1 values below",
        ),
        (lambda df: df.assign(ocean_proximity="ON MARS"), "unknown values ['ON MARS']"),
        (lambda df: df.assign(median_house_value=float("nan")), "'median_house_value' has"),
    ],
)
def test_bad_tables_fail_with_one_line_naming_the_problem(raw_frame, mutate, message):
    with pytest.raises(StepError) as err:
        parse_raw(to_csv(mutate(raw_frame)))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_empty_and_non_utf8_payloads():
    with pytest.raises(StepError, match="empty"):
        parse_raw(b"")
    with pytest.raises(StepError, match="not UTF-8"):
        parse_raw(b"longitude,latitude\n\xff\xfe,1\n")


def test_duplicated_header_is_reported(raw_frame):
    payload = to_csv(raw_frame).replace(b"population", b"households", 1)
    with pytest.raises(StepError, match="duplicated column"):
        parse_raw(payload)


def tgz_with(name: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def test_extract_csv_from_archive_and_plain_file(raw_frame):
    payload = to_csv(raw_frame)
    assert extract_csv(payload, "http://host/housing.csv") == payload
    assert extract_csv(tgz_with("housing.csv", payload), "file:///x/housing.tgz") == payload


def test_truncated_or_wrong_archive_is_reported(raw_frame):
    blob = tgz_with("housing.csv", to_csv(raw_frame))
    with pytest.raises(StepError, match="truncated or corrupt"):
        extract_csv(blob[: len(blob) // 2], "housing.tgz")
    with pytest.raises(StepError, match=r"holds no housing\.csv"):
        extract_csv(tgz_with("other.csv", b"a,b\n"), "housing.tgz")
