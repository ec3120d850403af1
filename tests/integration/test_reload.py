"""The API follows ``@champion`` without a restart, under load: a real server with two
workers, a real registry, a load generator on keep-alive connections, and the alias moved
forward, to a version that cannot load, and back."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from steps import config
from steps.tracking.loading import DEFAULT_MODEL_URI, load_version
from tests.integration.test_serving import (
    child_env,
    get,
    records,
    served_versions,
    server,
    tracking,
)
from tests.support import demo_pipeline, housing_csv, housing_sample, register_demo_model

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MODEL_URI = DEFAULT_MODEL_URI  # the champion, as serve resolves it by default
RELOAD_S = 1.0
# a moved alias must be served within the interval plus a load (download + skops + probe)
CONVERGE_S = RELOAD_S + 20


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict:
    """v1 and v2 (different models) and v3, whose model file is corrupted; @champion → v1."""
    import mlflow

    workdir = tmp_path_factory.mktemp("reload")
    uri = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    X, y = housing_sample(housing_csv(), n_rows=2_000, seed=5)
    with tracking(uri):
        v1 = register_demo_model(uri, demo_pipeline(X, y, n_estimators=40), X, workdir / "a")
        v2 = register_demo_model(uri, demo_pipeline(X, y, n_estimators=5), X, workdir / "a")
        v3 = register_demo_model(uri, demo_pipeline(X, y, n_estimators=7), X, workdir / "a")
        client = mlflow.MlflowClient()
        source = client.get_model_version(config.MODEL_NAME, v3).source
        model_id = source.removeprefix("models:/")
        location = Path(urlparse(client.get_logged_model(model_id).artifact_location).path)
        (skops_file,) = location.rglob("*.skops")
        skops_file.write_bytes(b"not a skops file")
        client.set_registered_model_alias(config.MODEL_NAME, config.CHAMPION_ALIAS, v1)
        row = records(X.head(1))[0]
        expected = {
            v: float(load_version(f"models:/{config.MODEL_NAME}/{v}")[0].predict(X.head(1))[0])
            for v in (v1, v2)
        }
    assert expected[v1] != expected[v2]
    return {"uri": uri, "workdir": workdir, "v": (v1, v2, v3), "row": row, "expected": expected}


class Load:
    """Threads POSTing one row each over keep-alive connections, recording every answer."""

    def __init__(self, url: str, row: dict, threads: int = 4) -> None:
        self.url, self.target = url, urlparse(url)
        self.body = json.dumps({"data": [row]})
        self.answers: list[tuple[float, int, str | None, dict]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.target.hostname, self.target.port, timeout=30)
        while not self._stop.is_set():
            try:
                conn.request("POST", "/predict", self.body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = json.loads(response.read())
                header = response.getheader("x-model-version")
                self.answers.append((time.monotonic(), response.status, header, payload))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(self.target.hostname, self.target.port)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def since(self, start: float) -> list[tuple[float, int, str | None, dict]]:
        return [a for a in list(self.answers) if a[0] >= start]

    def wait_for(self, version: str, timeout: float) -> float:
        """Seconds until every worker serves ``version`` (its /metrics model_info, one
        sample per worker pid) and every answer of a stretch of 40 comes from it."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            recent = self.since(start)[-40:]
            answered = len(recent) == 40 and all(a[2] == version for a in recent)
            if answered and set(served_versions(self.url).values()) == {version}:
                return time.monotonic() - start
            time.sleep(0.1)
        seen = sorted({a[2] for a in self.since(start)[-40:]}, key=str)
        workers = served_versions(self.url)
        raise AssertionError(f"v{version} not served after {timeout} s: {seen}, {workers}")


def watch_ready(url: str, condition, streak: int = 5) -> list[dict]:
    """/ready answers (each on a new connection, taken by either worker) until ``streak`` in
    a row meet ``condition``."""
    answers: list[dict] = []
    deadline = time.monotonic() + CONVERGE_S
    while len(answers) < streak:
        status, ready = get(f"{url}/ready")
        assert status == 200, ready
        answers = [*answers, ready] if condition(ready) else []
        assert time.monotonic() < deadline, ready
        time.sleep(0.05)
    return answers


def metric(url: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_the_api_follows_the_alias_under_load_without_a_failed_request(versions):
    import mlflow

    v1, v2, v3 = versions["v"]
    args = [sys.executable, "-m", "steps.serve", "--model-uri", MODEL_URI, "--workers", "2"]
    args += ["--reload-interval", str(RELOAD_S)]
    env = child_env(versions["uri"], allow_pickle=False)
    client = mlflow.MlflowClient(versions["uri"])

    def move(version: str) -> None:
        client.set_registered_model_alias(config.MODEL_NAME, config.CHAMPION_ALIAS, version)

    serving = server(args, env, versions["workdir"], "/ready")
    with serving as url, Load(url, versions["row"]) as load:
        load.wait_for(v1, CONVERGE_S)
        move(v2)
        load.wait_for(v2, CONVERGE_S)
        move(v3)  # cannot load: v2 keeps serving, and /ready says why
        deadline = time.monotonic() + CONVERGE_S
        while metric(url, "housing_api_model_loads_total", result="failed") < 2:
            assert time.monotonic() < deadline, "not every worker tried v3"
            time.sleep(0.2)
        refused_at = time.monotonic()
        # every worker looks at the registry twice more: v3 is neither retried nor served
        ready = watch_ready(url, lambda r: r["reload"]["refused_version"] == v3)
        # the workers check on one interval, so their counts differ by one at most
        after = max(r["reload"]["checks"] for r in ready) + 3
        ready = watch_ready(url, lambda r: r["reload"]["checks"] >= after)
        for answer in ready:
            assert answer["model_version"] == v2 and answer["reload"]["refused_version"] == v3
            assert f"v{v3}" in answer["reload"]["last_error"]
        assert metric(url, "housing_api_model_loads_total", result="failed") == 2
        assert {a[2] for a in load.since(refused_at)} == {v2}
        move(v1)
        load.wait_for(v1, CONVERGE_S)
        assert len(served_versions(url)) == 2  # both workers, each on v1
        # each worker loaded v2 then v1 and refused v3 once
        assert metric(url, "housing_api_model_loads_total", result="loaded") == 4
        assert metric(url, "housing_api_model_loads_total", result="failed") == 2
        assert metric(url, "housing_api_requests_total", endpoint="/predict", status="200") > 0

    # no worker was killed by uvicorn's supervisor (a slow health answer) and replaced
    log = (versions["workdir"] / f"server-{urlparse(url).port}.log").read_text()
    assert " died" not in log, log[-3000:]
    answers = load.answers
    assert not load.errors, load.errors[:5]
    assert len(answers) > 200
    assert {a[1] for a in answers} == {200}
    for _, _, header, payload in answers:  # every answer names the version that made it
        assert payload["model_version"] == header
        assert np.isclose(payload["predictions"][0], versions["expected"][header], rtol=1e-9)
    assert {a[2] for a in answers} == {v1, v2}
