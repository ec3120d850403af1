"""schemathesis against the API's own OpenAPI schema: generated requests, valid and invalid,
must never get a 5xx. The app is the real one around a small real fitted pipeline."""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from steps import config
from steps.serving import api
from steps.tracking import loading
from tests.support import demo_pipeline, housing_csv, housing_sample

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MIN_CASES = 500
EXAMPLES_PER_MODE = 300


@pytest.fixture(scope="module")
def api_schema():
    X, y = housing_sample(housing_csv(), n_rows=1_000, seed=2)
    ref = loading.ModelRef(
        name=config.MODEL_NAME,
        version="1",
        uri=loading.DEFAULT_MODEL_URI,
        run_id="fuzz",
        tags={config.VERSION_TAG_TRAIN_RUN: "fuzz", config.TAG_DVC_MD5: "md5"},
    )
    model = api.ServedModel(demo_pipeline(X, y, n_estimators=20), ref)
    return schemathesis.openapi.from_asgi("/openapi.json", api.create_app(model, 50, 40_000))


def fuzz(operation, mode: GenerationMode, statuses: Counter[int]) -> int:
    """Send up to EXAMPLES_PER_MODE generated requests to one operation; returns how many."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def exercise(case):
        nonlocal sent
        response = case.call()
        sent += 1
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error])

    try:
        exercise()
    except Unsatisfiable:
        # an operation without inputs has no invalid request to generate
        assert mode is GenerationMode.NEGATIVE
    return sent


def test_generated_requests_never_get_a_server_error(api_schema):
    calls: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls[f"{operation.label} {mode.value}"] += fuzz(operation, mode, statuses)
    assert sum(calls.values()) >= MIN_CASES, calls
    exercised = {label.rsplit(" ", 1)[0] for label in calls}
    assert {"POST /predict", "POST /invocations", "POST /v2/models/{model_name}/infer"} <= exercised
    assert not any(code >= 500 for code in statuses), statuses
    assert statuses[200] and statuses[422]  # both valid and invalid requests were generated
