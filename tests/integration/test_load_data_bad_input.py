"""load_data on bad input: non-zero exit, one line naming the problem, run FAILED, champion
alias untouched, nothing unverified in data/ or the DVC cache."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.dummy import DummyRegressor

from steps import config
from tests.conftest import copy_project, free_port, housing_csv, housing_tgz, project_env, run_cmd

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def write_variant(tmp: Path, name: str) -> str:
    """A bad source file for case `name`; returns its URL."""
    real = pd.read_csv(housing_csv())
    path = tmp / f"{name}.csv"
    if name == "missing_file":
        return (tmp / "nowhere" / "housing.csv").as_uri()
    if name == "unreachable_url":
        return f"http://127.0.0.1:{free_port()}/housing.csv"
    if name == "empty_file":
        path.write_bytes(b"")
    elif name == "missing_column":
        real.drop(columns=["households"]).to_csv(path, index=False)
    elif name == "non_numeric":
        real.astype({"median_income": object}).assign(
            median_income=lambda d: d["median_income"].where(d.index != 10, "high")
        ).to_csv(path, index=False)
    elif name == "hash_mismatch":
        real.iloc[:-1].to_csv(path, index=False)  # valid, but one row short
    elif name == "truncated_tgz":
        path = tmp / "housing.tgz"
        blob = housing_tgz().read_bytes()
        path.write_bytes(blob[: len(blob) // 3])
    return path.as_uri()


CASES = {
    "missing_file": "cannot download",
    "unreachable_url": "cannot download",
    "empty_file": "the data file is empty",
    "missing_column": "missing column(s): households",
    "non_numeric": "column 'median_income' is not numeric",
    "hash_mismatch": "but data.dvc expects",
    "truncated_tgz": "truncated or corrupt",
}


@pytest.fixture(scope="module")
def store_with_champion(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(config.EXPERIMENT_NAME)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(DummyRegressor().fit([[0]], [1]), name="model")
    version = mlflow.register_model(info.model_uri, config.MODEL_NAME)
    client = MlflowClient(uri)
    client.set_registered_model_alias(config.MODEL_NAME, config.CHAMPION_ALIAS, version.version)
    return uri, client, version.version


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_source_fails_cleanly(tmp_path, store_with_champion, case):
    uri, client, champion = store_with_champion
    project = copy_project(tmp_path / "project")
    url = write_variant(tmp_path, case)
    result = run_cmd(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            ".",
            "-e",
            "load_data",
            "--env-manager",
            "local",
            "--experiment-name",
            config.EXPERIMENT_NAME,
            "-P",
            f"source_url={url}",
        ],
        cwd=project,
        env=project_env(uri),
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert CASES[case] in errors[0]

    run = client.search_runs(
        [client.get_experiment_by_name(config.EXPERIMENT_NAME).experiment_id],
        f"tags.`{config.TAG_STEP}` = 'load_data'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert run.info.status == "FAILED"
    alias = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert alias.version == champion
    assert not (project / "data").exists()
    assert not list((project / ".dvc").glob("cache/**/*.dir"))


def test_modified_workspace_data_is_refused(tmp_path, store_with_champion):
    uri, client, champion = store_with_champion
    project = copy_project(tmp_path / "project")
    (project / "data").mkdir()
    pd.read_csv(housing_csv()).iloc[5:].to_csv(project / "data" / "housing.csv", index=False)
    result = run_cmd([sys.executable, "-m", "steps.load_data"], cwd=project, env=project_env(uri))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: load_data: ")
    assert "dvc add data" in result.stderr
    alias = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert alias.version == champion
