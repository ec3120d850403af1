"""load_data's ways of getting the data, each through ``mlflow run . -e load_data``.

The README's offline instructions rely on them: a successful http:// download (loopback
server with the real housing.tgz) that fills the DVC cache; a second run, with ``data/``
gone and the download URL pointing nowhere, restored from that cache; and a fresh copy with
neither data nor cache pulling from a DVC remote (a local directory). Each run's tag
``dataset.acquired_from`` must name the source, and the restored file must be the versioned
one byte for byte.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from steps import config
from tests.support import (
    copy_project,
    housing_tgz,
    latest_run,
    mlflow_run_local,
    project_env,
    run_cmd,
    serve_directory,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REAL_FILE_MD5 = "d1c47305887e2252bf1ccbd74ff159a6"  # housing.csv as data.dvc versions it


def load_data(project: Path, tracking_uri: str, data_url: str):
    """`mlflow run . -e load_data` with $HOUSING_DATA_URL; asserts it succeeded; its run."""
    result = run_cmd(
        mlflow_run_local("load_data", "--experiment-name", config.EXPERIMENT_NAME),
        cwd=project,
        env=project_env(tracking_uri, **{config.DATA_URL_ENV: data_url}),
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return latest_run(MlflowClient(tracking_uri), "load_data")


def dvc(project: Path, *args: str) -> None:
    result = run_cmd([sys.executable, "-m", "dvc", *args], cwd=project, env=project_env(""))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def file_md5(project: Path) -> str:
    return hashlib.md5(config.raw_data_path(project).read_bytes()).hexdigest()


def cache_files(project: Path) -> int:
    return sum(1 for p in (project / ".dvc" / "cache").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    """A project copy whose first load_data downloaded housing.tgz over http://."""
    root = tmp_path_factory.mktemp("acquisition")
    served = root / "served"
    served.mkdir()
    shutil.copy2(housing_tgz(), served / "housing.tgz")
    project = copy_project(root / "project")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    assert not (project / "data").exists() and cache_files(project) == 0
    with serve_directory(served) as (base_url, requested):
        url = f"{base_url}/housing.tgz"
        run = load_data(project, uri, url)
    return project, uri, url, run, requested


def test_http_download_is_verified_and_cached(downloaded):
    project, _, url, run, requested = downloaded
    assert requested == ["/housing.tgz"]
    assert run.data.tags[config.TAG_DATA_SOURCE] == url
    assert run.data.tags[config.TAG_FILE_MD5] == REAL_FILE_MD5
    assert file_md5(project) == REAL_FILE_MD5
    assert cache_files(project) > 0  # the next run needs no network


def test_second_run_restores_from_the_dvc_cache(downloaded, tmp_path):
    project, uri, _, _, _ = downloaded
    shutil.rmtree(project / "data")
    run = load_data(project, uri, (tmp_path / "nowhere.tgz").as_uri())  # a download would fail
    assert run.data.tags[config.TAG_DATA_SOURCE] == "dvc-cache"
    assert run.data.tags[config.TAG_FILE_MD5] == REAL_FILE_MD5
    assert file_md5(project) == REAL_FILE_MD5


def test_fresh_copy_pulls_from_a_dvc_remote(downloaded, tmp_path):
    project, uri, _, _, _ = downloaded
    store = tmp_path / "dvc-store"
    # --local: .dvc/config.local is ignored by git, so the copies stay clean work trees
    dvc(project, "remote", "add", "-d", "--local", "store", str(store))
    dvc(project, "push")
    assert any(p.is_file() for p in store.rglob("*"))

    fresh = copy_project(tmp_path / "fresh")
    assert not (fresh / "data").exists() and cache_files(fresh) == 0
    dvc(fresh, "remote", "add", "-d", "--local", "store", str(store))
    run = load_data(fresh, uri, (tmp_path / "nowhere.tgz").as_uri())  # a download would fail
    assert run.data.tags[config.TAG_DATA_SOURCE] == "dvc-remote"
    assert run.data.tags[config.TAG_FILE_MD5] == REAL_FILE_MD5
    assert file_md5(fresh) == REAL_FILE_MD5
