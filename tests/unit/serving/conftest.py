"""Fixtures of the serving tests: the real app (``create_app``) around the small real pipeline
of tests/unit/conftest.py, driven in-process by FastAPI's TestClient. Nothing of ours is
mocked."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from steps.serving import api
from tests.unit.serving.app import MAX_BODY, MAX_ROWS, REF


@pytest.fixture(scope="module")
def client(pipeline) -> TestClient:
    app = api.create_app(api.ServedModel(pipeline, REF), MAX_ROWS, MAX_BODY)
    with TestClient(app) as c:
        yield c
