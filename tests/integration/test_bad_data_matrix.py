"""The bad-data matrix: every way the raw data can be wrong, and the clean stop each ends in.

Two layers:

* in-process (fast): each bad payload, made from the real housing.csv, goes through
  ``steps.data.acquisition.parse_raw`` / ``extract_csv`` and must raise ``StepError`` with one line
  naming the problem;
* end to end (slow): a representative subset goes through ``mlflow run . -e load_data`` and
  must exit non-zero with exactly one ``error: load_data: …`` line, leave its run FAILED (no
  run RUNNING anywhere), leave the champion alias alone, create no ``data/`` and put nothing
  that does not match data.dvc into the DVC cache.

The data contract (steps/data/contract.py) adds versions that pass the schema and hash to
data.dvc but are wrong — too few rows, a doubled table, a column in another unit, a cut
file — made as a user makes a new version (`dvc add data`, commit data.dvc) and compared with
the champion's data; legitimate versions (rows shuffled, columns reordered, 5% more rows from
the same population) must pass. In process against a reference profile, and end to end
through each acquisition path (workspace, DVC cache, download) with the same clean-stop
assertions plus: data/ and the DVC cache byte-for-byte unchanged.

No case is repaired: the data must hash to data.dvc byte for byte, so any repaired payload
would be refused by the md5 check anyway (see docs/reliability.md).
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import re
import shutil
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
from steps.data import contract, schema
from steps.data.acquisition import extract_csv, parse_raw
from steps.infra.errors import StepError
from tests.support import (
    assert_nothing_moved,
    commit,
    copy_project,
    free_port,
    housing_csv,
    housing_tgz,
    mlflow_run_local,
    new_data_version,
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
# One case for each place a load can stop: an empty payload, bytes that are not text, a
# broken archive, a schema violation, and a file that parses but is not data.dvc's version.
# The other refusals end in the same StepError from parse_raw, whose one-line message the
# in-process tests above check for every case; running each through `mlflow run` again would
# repeat the same clean stop.
END_TO_END = [
    "empty_file",
    "non_utf8_bytes",
    "truncated_tgz",
    "missing_column",
    "one_row_short",
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
    assert_nothing_moved(client, champion)
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


# --- the data contract: versions that pass the schema and the md5 but are wrong ------------
# A new data version is made as a user makes one: change data/housing.csv, `dvc add data`,
# commit data.dvc. The reference (the champion's data) is a random 95% of the real rows, so
# the full real file is "5% more rows from the same population".
REFERENCE_FRACTION = 0.95


def reference_frame() -> pd.DataFrame:
    return real_frame().sample(frac=REFERENCE_FRACTION, random_state=7).sort_index()


@dataclass(frozen=True)
class ContractCase:
    build: Callable[[], pd.DataFrame]
    rule: str | None  # the rule the one error line names; None: the version passes
    line: str = ""  # regex the whole error line must match


CONTRACT_CASES: dict[str, ContractCase] = {
    # legitimate new versions
    "rows_shuffled": ContractCase(lambda: reference_frame().sample(frac=1.0, random_state=1), None),
    "columns_reordered": ContractCase(
        lambda: reference_frame()[list(config.RAW_COLUMNS)[::-1]], None
    ),
    "five_percent_more_rows_shuffled_reordered": ContractCase(
        lambda: real_frame().sample(frac=1.0, random_state=2)[list(config.RAW_COLUMNS)[::-1]], None
    ),
    # wrong ones
    "three_rows": ContractCase(
        lambda: real_frame().head(3),
        "min_rows",
        r"data contract: rule min_rows: 3 rows < 1000 \(and \d+ more failure\(s\): see "
        r"data_report/report\.md\); pass accept_drift=true if the change is deliberate",
    ),
    "doubled_table": ContractCase(
        lambda: pd.concat([real_frame(), real_frame()], ignore_index=True),
        "duplicate_rows",
        r"data contract: rule duplicate_rows: 50\.0% of rows are exact duplicates of another "
        r"row > 1\.0% \(and 1 more failure\(s\): see data_report/report\.md\); "
        r"pass accept_drift=true if the change is deliberate",
    ),
    "income_unit_x10": ContractCase(
        lambda: real_frame().assign(median_income=real_frame()["median_income"] * 10),
        "feature_psi",
        r"data contract: rule feature_psi, column 'median_income': PSI \d+\.\d{3} > 0\.1; "
        r"pass accept_drift=true if the change is deliberate",
    ),
    "target_in_thousands": ContractCase(
        lambda: real_frame().assign(median_house_value=real_frame()[config.TARGET] / 1000),
        "target_psi",
        r"data contract: rule target_psi, column 'median_house_value': PSI \d+\.\d{3} > 0\.1; "
        r"pass accept_drift=true if the change is deliberate",
    ),
    "truncated_at_90_percent": ContractCase(
        lambda: real_frame().iloc[: int(len(real_frame()) * 0.90)],
        "row_count_drop",
        r"data contract: rule row_count_drop: 18,576 rows vs 19,608 in the reference "
        r"\(-5\.3%\); drop 0\.053 > 0\.03; pass accept_drift=true if the change is deliberate",
    ),
    "age_stuck_at_one_value": ContractCase(
        lambda: reference_frame().assign(housing_median_age=52.0), "near_constant"
    ),
}


@pytest.fixture(scope="module")
def reference_profile() -> dict:
    return contract.profile(schema.validate_raw(reference_frame()))


@pytest.mark.parametrize("name", list(CONTRACT_CASES))
def test_contract_in_process(name, reference_profile):
    case = CONTRACT_CASES[name]
    result = contract.check(parse_raw(csv(case.build())), reference_profile)
    if case.rule is None:
        assert result.verdict.failures == [], [f.message for f in result.verdict.failures]
        return
    assert result.verdict.failures, f"{name} passed the contract"
    assert result.verdict.failures[0].rule == case.rule
    line = result.verdict.error_line()
    assert "\n" not in line
    if case.line:
        assert re.fullmatch(case.line, line), line


def snapshot(project: Path) -> dict[str, bytes]:
    """Every file under data/ and the DVC cache, with its bytes."""
    roots = [project / "data", project / ".dvc" / "cache"]
    return {
        str(p.relative_to(project)): p.read_bytes()
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def contract_store(tmp_path_factory):
    """A store whose champion was trained on the reference version, loaded by load_data."""
    root = tmp_path_factory.mktemp("contract")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    project = copy_project(root / "project")
    new_data_version(project, csv(reference_frame()), "reference data version")
    result = run_cmd(
        mlflow_run_local("load_data", "--experiment-name", config.EXPERIMENT_NAME),
        cwd=project,
        env=project_env(uri),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    md5 = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(config.EXPERIMENT_NAME)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(DummyRegressor().fit([[0]], [1]), name="model")
    version = mlflow.register_model(
        info.model_uri, config.MODEL_NAME, tags={config.TAG_DVC_MD5: md5}
    )
    client.set_registered_model_alias(config.MODEL_NAME, config.CHAMPION_ALIAS, version.version)
    return uri, client, str(version.version), md5


def load_new_version(tmp_path, store, name: str, path: str, *params: str):
    """Make CONTRACT_CASES[name] a new data version and run load_data on it.

    ``path`` is how load_data finds it: ``workspace`` (data/ present), ``cache`` (data/
    removed, the DVC cache has it), ``remote`` (only a DVC remote has it: `dvc push`, then
    data/ and the cache removed) or ``download`` (none; fed through source_url).
    Returns (mlflow run result, project, snapshot before the run, the load_data run).
    """
    uri, client, _, _ = store
    project = copy_project(tmp_path / "project")
    payload = csv(CONTRACT_CASES[name].build())
    new_data_version(project, payload, name)
    args = ["--experiment-name", config.EXPERIMENT_NAME, "--run-name", f"{name}-{path}"]
    if path == "remote":
        for dvc_args in (
            ["remote", "add", "-q", "-d", "store", str(tmp_path / "dvc-remote")],
            ["push", "-q"],
        ):
            done = run_cmd([sys.executable, "-m", "dvc", *dvc_args], project, dict(os.environ))
            assert done.returncode == 0, done.stderr
        commit(project, "DVC remote")
        shutil.rmtree(project / ".dvc" / "cache")
    if path in ("cache", "download", "remote"):
        shutil.rmtree(project / "data")
    if path == "download":
        shutil.rmtree(project / ".dvc" / "cache")
        (tmp_path / "housing.csv").write_bytes(payload)
        args += ["-P", f"source_url={(tmp_path / 'housing.csv').as_uri()}"]
    for param in params:
        args += ["-P", param]
    before = snapshot(project)
    result = run_cmd(
        mlflow_run_local("load_data", *args), cwd=project, env=project_env(uri), timeout=300
    )
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    runs = client.search_runs(
        [experiment.experiment_id],
        f"attributes.run_name = '{name}-{path}'",
        run_view_type=ViewType.ALL,
    )
    assert len(runs) == 1
    return result, project, before, runs[0]


def artifact_paths(client, run_id: str, path: str) -> set[str]:
    return {f.path for f in client.list_artifacts(run_id, path)}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("three_rows", "workspace"),
        ("doubled_table", "cache"),
        ("income_unit_x10", "download"),
        ("truncated_at_90_percent", "workspace"),
        ("target_in_thousands", "remote"),
    ],
)
def test_contract_stops_a_bad_version_before_anything_is_written(
    tmp_path, contract_store, name, path
):
    _, client, champion, _ = contract_store
    result, project, before, run = load_new_version(tmp_path, contract_store, name, path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert re.fullmatch("error: load_data: " + CONTRACT_CASES[name].line, errors[0]), errors[0]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert run.info.status == "FAILED"
    assert run.data.tags["data_contract.status"] == "failed"
    assert run.data.tags["data_contract.reference"].startswith("the champion's data")
    # the report is on the failed run, so every broken rule can be read there
    assert "data_report/report.md" in artifact_paths(client, run.info.run_id, "data_report")
    assert_nothing_moved(client, champion)
    # data/ and the DVC cache exactly as before the run (absent stays absent)
    assert snapshot(project) == before
    assert (project / "data").exists() == (path == "workspace")
    if path == "remote":
        assert not (project / ".dvc" / "cache").exists()
    assert not list(project.glob(".acquire-*"))


@pytest.mark.slow
def test_legitimate_version_passes_and_is_checked_out(tmp_path, contract_store):
    """5% more rows of the same population, shuffled, columns reordered: load_data passes,
    checks data/ out of the DVC cache and logs the data report."""
    uri, client, _, _ = contract_store
    name = "five_percent_more_rows_shuffled_reordered"
    result, project, _, run = load_new_version(tmp_path, contract_store, name, "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert run.info.status == "FINISHED"
    assert run.data.tags["data_contract.status"] == "passed"
    assert run.data.tags["data_contract.accept_drift"] == "false"
    assert run.data.tags["data_contract.reference"].startswith("the champion's data")
    assert run.data.tags[config.TAG_DATA_SOURCE] == "dvc-cache"
    assert (project / "data" / "housing.csv").read_bytes() == csv(CONTRACT_CASES[name].build())
    assert artifact_paths(client, run.info.run_id, "data_report") == {
        "data_report/report.md",
        "data_report/histograms.png",
        "data_report/profile.json",
    }
    mlflow.set_tracking_uri(uri)
    report = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/data_report/report.md")
    assert "contract: **passed**" in report
    assert "## Drift against the reference" in report


@pytest.mark.slow
def test_accepted_drift_passes_with_warning_and_tag(tmp_path, contract_store):
    _, client, champion, _ = contract_store
    result, _, _, run = load_new_version(
        tmp_path, contract_store, "income_unit_x10", "workspace", "accept_drift=true"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert run.info.status == "FINISHED"
    assert run.data.tags["data_contract.accept_drift"] == "true"
    assert run.data.tags["data_contract.status"] == "warnings"
    assert re.match(
        r"rule feature_psi, column 'median_income': PSI \d+\.\d{3} > 0\.1",
        run.data.tags["data_contract.warnings"],
    )
    assert "[load_data] warning: rule feature_psi, column 'median_income'" in result.stderr
    alias = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert str(alias.version) == champion
