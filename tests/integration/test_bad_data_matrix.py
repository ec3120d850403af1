"""The bad-data matrix: every way the raw data can be wrong, and the clean stop each ends in.

Two layers:

* in-process (fast): each bad payload, made from the real housing.csv, goes through
  ``steps.load_data.parse_raw`` / ``extract_csv`` and must raise ``StepError`` with one line
  naming the problem;
* end to end (slow): a representative subset goes through ``mlflow run . -e load_data`` and
  must exit non-zero with exactly one ``error: load_data: …`` line, leave its run FAILED (no
  run RUNNING anywhere), leave the champion alias alone, create no ``data/`` and put nothing
  that does not match data.dvc into the DVC cache.

No case is repaired: the data must hash to data.dvc byte for byte, so any repaired payload
would be refused by the md5 check anyway (see docs/reliability.md).
"""

from __future__ import annotations

import functools
import gzip
import io
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import ViewType
from sklearn.dummy import DummyRegressor

from steps import config
from steps.load_data import extract_csv, parse_raw
from steps.runtime import StepError
from tests.support import (
    copy_project,
    free_port,
    housing_csv,
    housing_tgz,
    mlflow_run_local,
    project_env,
    run_cmd,
    serve_directory,
)

pytestmark = pytest.mark.integration

REAL_FILE_MD5 = "d1c47305887e2252bf1ccbd74ff159a6"  # housing.csv as data.dvc versions it


# --- payload builders (all start from the real file) ----------------------------------------
@functools.cache
def real_bytes() -> bytes:
    return housing_csv().read_bytes()


def real_frame() -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(real_bytes()))


def csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def set_cell(column: str, value: object, row: int = 10) -> Callable[[], bytes]:
    def build() -> bytes:
        df = real_frame()
        df[column] = df[column].astype(object)
        df.loc[row, column] = value
        return csv(df)

    return build


def replace_header(old: str, new: str) -> Callable[[], bytes]:
    def build() -> bytes:
        head, rest = real_bytes().split(b"\n", 1)
        return head.replace(old.encode(), new.encode(), 1) + b"\n" + rest

    return build


def tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    build: Callable[[], bytes]
    message: str  # must appear in the single error line
    suffix: str = ".csv"  # how the payload is named/served
    parses: bool = False  # schema-valid: only the data.dvc md5 check stops it


CASES: dict[str, Case] = {
    "empty_file": Case(lambda: b"", "the data file is empty"),
    "blank_lines_only": Case(lambda: b"\n \n\r\n", "the data file is empty"),
    "header_only": Case(lambda: real_bytes().split(b"\n", 1)[0] + b"\n", "no data rows"),
    "missing_column": Case(
        lambda: csv(real_frame().drop(columns=["households"])), "missing column(s): households"
    ),
    "extra_column": Case(lambda: csv(real_frame().assign(extra=1)), "unexpected column(s): extra"),
    "renamed_column": Case(
        replace_header("median_income", "income"), "missing column(s): median_income"
    ),
    "duplicated_header": Case(
        replace_header("population", "households"), "duplicated column(s): households"
    ),
    "text_in_numeric": Case(
        set_cell("median_income", "high"), "column 'median_income' is not numeric"
    ),
    "infinite_value": Case(set_cell("total_rooms", "inf"), "'total_rooms' has infinite values"),
    "all_nan_column": Case(
        lambda: csv(real_frame().assign(population=float("nan"))),
        "'population' has 20640 missing values",
    ),
    "nan_target": Case(set_cell(config.TARGET, None), "'median_house_value' has 1 missing"),
    "negative_target": Case(
        set_cell(config.TARGET, -1.0), "'median_house_value' has 1 values below 0"
    ),
    "negative_count": Case(set_cell("households", -4.0), "'households' has 1 values below 0"),
    "latitude_out_of_range": Case(set_cell("latitude", 95.0), "'latitude' has 1 values above"),
    "longitude_sign_flipped": Case(set_cell("longitude", 122.25), "'longitude' has 1 values above"),
    "unknown_ocean_proximity": Case(
        set_cell("ocean_proximity", "ON MARS"), "has unknown values ['ON MARS']"
    ),
    "missing_ocean_proximity": Case(
        set_cell("ocean_proximity", None), "'ocean_proximity' has 1 missing"
    ),
    "non_utf8_bytes": Case(
        lambda: real_bytes().replace(b"NEAR BAY", b"NEAR B\xe9Y", 1), "is not UTF-8 text"
    ),
    "utf16_file": Case(lambda: real_bytes().decode().encode("utf-16"), "is not UTF-8 text"),
    "ragged_later_row": Case(
        lambda: real_bytes().replace(b"INLAND\n", b"INLAND,1\n", 1), "is not valid CSV"
    ),
    # extra fields in the FIRST data row: pandas makes the leading columns an index
    "ragged_row": Case(
        lambda: real_bytes().replace(b"NEAR BAY\n", b"NEAR BAY,1,2\n", 1), "is not valid CSV"
    ),
    "semicolon_delimited": Case(
        lambda: real_bytes().replace(b",", b";"), "missing column(s): longitude"
    ),
    # cut inside a row: pandas pads the short last row with NaN, the schema catches it
    "truncated_mid_row": Case(
        lambda: real_bytes()[: len(real_bytes()) // 2], "'median_house_value' has 1 missing"
    ),
    "truncated_tgz": Case(
        lambda: housing_tgz().read_bytes()[: len(housing_tgz().read_bytes()) // 3],
        "truncated or corrupt",
        suffix=".tgz",
    ),
    "tgz_without_housing_csv": Case(
        lambda: tgz({"other.csv": real_bytes()}), "holds no housing.csv", suffix=".tgz"
    ),
    "gzip_named_csv": Case(lambda: gzip.compress(real_bytes()), "is not UTF-8 text"),
    # schema-valid but not the versioned bytes: only the md5 check in acquire() stops these
    "one_row_short": Case(lambda: csv(real_frame().iloc[:-1]), "but data.dvc expects", parses=True),
    "crlf_line_endings": Case(
        lambda: real_bytes().replace(b"\n", b"\r\n"), "but data.dvc expects", parses=True
    ),
    "all_nan_nullable_column": Case(
        lambda: csv(real_frame().assign(total_bedrooms=float("nan"))),
        "'total_bedrooms' has 20640 missing values (more than 5% of rows)",
    ),
    "rows_shuffled": Case(
        lambda: csv(real_frame().sample(frac=1.0, random_state=0)),
        "but data.dvc expects",
        parses=True,
    ),
}


# --- in-process layer ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if not c.parses))
def test_bad_payload_is_refused_in_process_with_one_line(name):
    case = CASES[name]
    with pytest.raises(StepError) as err:
        parse_raw(extract_csv(case.build(), f"housing{case.suffix}"))
    message = str(err.value)
    assert "\n" not in message
    assert len(message) < 400
    assert case.message in message, message


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.parses))
def test_schema_valid_but_unversioned_payload_passes_the_schema(name):
    """These are only stopped by the md5 check (the end-to-end layer proves it)."""
    df = parse_raw(CASES[name].build())
    assert list(df.columns) == list(config.RAW_COLUMNS)


# --- end-to-end layer ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store_with_champion(tmp_path_factory):
    """A tracking store whose registry already has a champion the bad runs must not touch."""
    root = tmp_path_factory.mktemp("bad-data-matrix")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(config.EXPERIMENT_NAME)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(DummyRegressor().fit([[0]], [1]), name="model")
    version = mlflow.register_model(info.model_uri, config.MODEL_NAME)
    client = MlflowClient(uri)
    client.set_registered_model_alias(config.MODEL_NAME, config.CHAMPION_ALIAS, version.version)
    return uri, client, str(version.version)


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """A local HTTP server (for the 404 case); yields (directory, base URL)."""
    root = tmp_path_factory.mktemp("http")
    with serve_directory(root) as (url, _):
        yield root, url


SOURCE_CASES = {  # where the data cannot be fetched at all
    "missing_file": "cannot download",
    "unreachable_url": "cannot download",
    "http_404": "cannot download",
}
END_TO_END = [
    "empty_file",
    "header_only",
    "missing_column",
    "duplicated_header",
    "text_in_numeric",
    "negative_target",
    "unknown_ocean_proximity",
    "non_utf8_bytes",
    "truncated_tgz",
    "one_row_short",
    "crlf_line_endings",
    "all_nan_nullable_column",
]


def source_url(name: str, tmp: Path, http_root: tuple[Path, str]) -> tuple[str, str]:
    """(source_url, expected message) for an end-to-end case."""
    if name == "missing_file":
        return (tmp / "nowhere" / "housing.csv").as_uri(), SOURCE_CASES[name]
    if name == "unreachable_url":
        return f"http://127.0.0.1:{free_port()}/housing.csv", SOURCE_CASES[name]
    if name == "http_404":
        return f"{http_root[1]}/no-such/housing.csv", SOURCE_CASES[name]
    case = CASES[name]
    path = tmp / f"housing{case.suffix}"
    path.write_bytes(case.build())
    return path.as_uri(), case.message


def dvc_cache_objects(project: Path) -> set[str]:
    cache = project / ".dvc" / "cache"
    return {
        p.parent.name + p.name for p in cache.rglob("*") if p.is_file() and len(p.parent.name) == 2
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", [*SOURCE_CASES, *END_TO_END])
def test_mlflow_run_load_data_stops_cleanly(tmp_path, store_with_champion, http_root, name):
    uri, client, champion = store_with_champion
    project = copy_project(tmp_path / "project")
    url, message = source_url(name, tmp_path, http_root)
    result = run_cmd(
        mlflow_run_local(
            "load_data", "--experiment-name", config.EXPERIMENT_NAME, "-P", f"source_url={url}"
        ),
        cwd=project,
        env=project_env(uri),
        timeout=300,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: load_data: ")
    assert message in errors[0], errors[0]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]

    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    run = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{config.TAG_STEP}` = 'load_data' and params.source_url = '{url}'",
        run_view_type=ViewType.ALL,
    )
    assert [r.info.status for r in run] == ["FAILED"]
    running = client.search_runs(
        [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)],
        "attributes.status = 'RUNNING'",
        run_view_type=ViewType.ALL,
    )
    assert not running
    alias = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert str(alias.version) == champion
    assert not (project / "data").exists()
    assert not list(project.glob(".acquire-*"))
    # nothing enters the cache unless it is exactly what data.dvc versions (here: nothing)
    want = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    assert dvc_cache_objects(project) <= {want.removesuffix(".dir"), REAL_FILE_MD5}
    assert dvc_cache_objects(project) == set()


def test_modified_workspace_data_is_refused(tmp_path, store_with_champion):
    """data/ edited by hand (not `dvc add`-ed): the step names the fix instead of using it."""
    uri, client, champion = store_with_champion
    project = copy_project(tmp_path / "project")
    (project / "data").mkdir()
    pd.read_csv(housing_csv()).iloc[5:].to_csv(project / "data" / "housing.csv", index=False)
    result = run_cmd([sys.executable, "-m", "steps.load_data"], cwd=project, env=project_env(uri))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: load_data: ")
    assert "dvc add data" in result.stderr
    alias = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert str(alias.version) == champion
