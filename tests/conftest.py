"""Fixtures only; the helpers behind them live in ``tests/support.py`` (shared with bench/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.support import copy_project, start_mlflow_server, stop, synthetic_housing


@pytest.fixture
def raw_frame() -> pd.DataFrame:
    return synthetic_housing()


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture
def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    proc, url = start_mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts")
    try:
        yield url
    finally:
        stop(proc)
