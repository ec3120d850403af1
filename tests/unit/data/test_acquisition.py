"""A source's data version for retrain (steps.data.acquisition): hashed as DVC hashes it,
versioned the DVC way, undone; with real DVC in a fresh git repo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from steps import config
from steps.data import acquisition
from steps.infra.errors import StepError
from steps.tracking import provenance
from tests.support import synthetic_housing


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def write_source(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_housing(n=300, seed=seed).to_csv(path, index=False)
    return path


def test_the_source_md5_is_the_md5_dvc_records_when_it_is_versioned(repo, tmp_path):
    first = write_source(tmp_path / "src" / "a.csv", seed=1)
    payload, md5 = acquisition.source_version(first.as_uri())
    assert md5.endswith(".dir")
    assert acquisition.adopt_version(repo, payload) == md5 == provenance.expected_md5(repo)
    assert config.raw_data_path(repo).read_bytes() == first.read_bytes()
    before = config.dvc_file(repo).read_text()

    second = write_source(tmp_path / "src" / "b.csv", seed=2)
    payload, md5_b = acquisition.source_version(second.as_uri())
    assert md5_b != md5
    assert acquisition.adopt_version(repo, payload) == md5_b  # data/ replaced, not merged
    assert [p.name for p in config.data_dir(repo).iterdir()] == [config.RAW_FILE_NAME]
    assert not list(repo.glob(".adopt-*"))

    acquisition.restore_version(repo, before)
    assert provenance.expected_md5(repo) == md5
    assert not config.data_dir(repo).exists()


def test_a_source_that_breaks_the_schema_is_no_version(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("longitude,latitude\n1,2\n")
    with pytest.raises(StepError):
        acquisition.source_version(bad.as_uri())
