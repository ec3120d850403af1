"""Real processes against a real registry: ``python -m steps.serve``, ``mlflow models
serve`` and ``python -m steps.predict`` on a model logged and registered exactly like the
train/register steps do, in a temp SQLite store, on free loopback ports.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steps import config, predict
from steps.batch import localscore
from steps.serving import shadow
from steps.tracking.loading import DEFAULT_MODEL_URI
from tests.support import (
    PROJECT_ROOT,
    demo_pipeline,
    error_lines,
    free_port,
    housing_csv,
    housing_sample,
    latest_run,
    launched_run_id,
    log_demo_reference,
    mlflow_run_local,
    register_demo_model,
    run_cmd,
    stop,
    tracking,
    wait_http,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MODEL_URI = DEFAULT_MODEL_URI  # the champion, as serve resolves it by default


# --- helpers ------------------------------------------------------------------------------
def child_env(tracking_uri: str, allow_pickle: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PYTHONPATH": str(PROJECT_ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    if allow_pickle:  # only mlflow's own loaders need it; our server must not
        env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"
    return env


def post(url: str, payload: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def served_versions(url: str) -> dict[str, str]:
    """Worker pid -> the version it serves, from /metrics (model_info is 1 for it)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        sample.labels["pid"]: sample.labels["version"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "housing_api_model_info" and sample.value == 1
    }


def records(X: pd.DataFrame) -> list[dict]:
    return json.loads(X.to_json(orient="records"))  # NaN -> null


@contextmanager
def server(args: list[str], env: dict[str, str], cwd: Path, probe: str) -> Iterator[str]:
    """Run a server process in its own session; yield its base URL; kill the whole group."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (cwd / f"server-{port}.log").open("w")
    proc = subprocess.Popen(
        [*args, "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            wait_http(f"{url}{probe}", proc, timeout=180)
        except Exception:
            log.flush()
            raise RuntimeError((cwd / f"server-{port}.log").read_text()[-3000:]) from None
        yield url
    finally:
        stop(proc)
        with suppress(ProcessLookupError):  # any worker the parent left behind
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="module")
def registry(workdir) -> dict:
    """A temp SQLite registry holding one champion version of a small real pipeline."""
    import mlflow

    uri = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    X, y = housing_sample(housing_csv(), n_rows=2_000, seed=3)
    pipeline = demo_pipeline(X, y, n_estimators=60)
    with tracking(uri):
        version = register_demo_model(uri, pipeline, X, artifact_root=workdir / "artifacts")
        mv = mlflow.MlflowClient().get_model_version(config.MODEL_NAME, version)
        # monitor's reference: the data version's profile and the version's test predictions
        table = pd.read_csv(housing_csv())
        log_demo_reference(
            mv.tags["train_run_id"], table, table.sample(2_000, random_state=4), pipeline
        )
    return {"uri": uri, "version": version, "tags": dict(mv.tags), "run_id": mv.run_id}


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Raw rows the model never saw, a few with total_bedrooms missing."""
    X, _ = housing_sample(housing_csv(), n_rows=300, seed=99)
    X.loc[X.index[:10], "total_bedrooms"] = np.nan
    return X


@pytest.fixture(scope="module")
def pyfunc_predictions(registry, rows) -> np.ndarray:
    import mlflow.pyfunc

    with tracking(registry["uri"]), pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
        return np.asarray(mlflow.pyfunc.load_model(MODEL_URI).predict(rows), dtype=float)


@pytest.fixture(scope="module")
def api(registry, workdir) -> Iterator[str]:
    args = [sys.executable, "-m", "steps.serve", "--model-uri", MODEL_URI, "--workers", "1"]
    env = child_env(registry["uri"], allow_pickle=False)
    with server(args, env, workdir, "/ready") as url:
        yield url


# --- steps.serve --------------------------------------------------------------------------
def test_ready_and_version_describe_the_registered_version(api, registry):
    assert get(f"{api}/health") == (200, {"status": "ok"})
    assert get(f"{api}/ready")[0] == 200
    status, info = get(f"{api}/version")
    assert status == 200
    assert info == {
        "model_name": config.MODEL_NAME,
        "model_version": registry["version"],
        "model_uri": MODEL_URI,
        "run_id": registry["tags"]["train_run_id"],
        "dataset_dvc_md5": registry["tags"][config.TAG_DVC_MD5],
        "git_commit": registry["tags"]["git_commit"],
        "test_rmse": registry["tags"]["test_rmse"],
    }
    assert info["run_id"] == registry["run_id"]


def test_api_predictions_equal_pyfunc(api, registry, rows, pyfunc_predictions):
    status, body = post(f"{api}/predict", {"data": records(rows)})
    assert status == 200
    assert body["model_version"] == registry["version"]
    np.testing.assert_array_equal(np.asarray(body["predictions"]), pyfunc_predictions)


def test_api_single_rows_equal_pyfunc(api, rows, pyfunc_predictions):
    for i in range(3):
        status, body = post(f"{api}/predict", {"data": records(rows.iloc[[i]])})
        assert status == 200
        assert body["predictions"] == [pyfunc_predictions[i]]


def test_mlflow_scoring_client_is_served_by_invocations(api, rows, pyfunc_predictions):
    from urllib.parse import urlparse

    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    address = urlparse(api)
    client = ScoringServerClient(address.hostname, address.port)
    client.wait_server_ready(timeout=30)  # MLflow's client probes /ping
    # a DataFrame goes as dataframe_split, with NaN for the missing bedrooms
    response = client.invoke(rows)
    predictions = response.get_predictions(predictions_format="ndarray", dtype=float)
    np.testing.assert_array_equal(predictions.reshape(-1), pyfunc_predictions)
    # a list of row dicts goes as `inputs`
    listed = client.invoke(records(rows.head(5)))
    assert listed["predictions"] == list(pyfunc_predictions[:5])


def test_open_inference_protocol_v2_over_http(api, registry, rows, pyfunc_predictions):
    status, meta = get(f"{api}/v2/models/{config.MODEL_NAME}")
    assert status == 200
    assert meta["versions"] == [registry["version"]]
    columns = records(rows)
    inputs = [
        {
            "name": meta_input["name"],
            "datatype": meta_input["datatype"],
            "shape": [len(columns)],
            "data": [row.get(meta_input["name"]) for row in columns],
        }
        for meta_input in meta["inputs"]  # built from the metadata, as a V2 client does
    ]
    status, body = post(f"{api}/v2/models/{config.MODEL_NAME}/infer", {"inputs": inputs})
    assert status == 200, body
    assert body["model_version"] == registry["version"]
    np.testing.assert_array_equal(np.asarray(body["outputs"][0]["data"]), pyfunc_predictions)


def test_a_v2_client_triton_http_reads_metadata_and_infers(api, registry, rows, pyfunc_predictions):
    """Triton's own HTTP client (``tritonclient``), as KServe/Triton users call a V2 server:
    readiness, model metadata, and one tensor per column built with its numpy helpers."""
    from urllib.parse import urlparse

    import tritonclient.http as v2

    client = v2.InferenceServerClient(url=urlparse(api).netloc)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(config.MODEL_NAME)
    meta = client.get_model_metadata(config.MODEL_NAME)
    assert meta["versions"] == [registry["version"]]
    complete = rows.dropna()  # the client cannot send null: a FP64 tensor is numbers only
    inputs = []
    for spec in meta["inputs"]:
        column = complete[spec["name"]].to_numpy()
        array = column.astype(object) if spec["datatype"] == "BYTES" else column.astype("float64")
        tensor = v2.InferInput(spec["name"], [len(complete)], spec["datatype"])
        tensor.set_data_from_numpy(array, binary_data=False)
        inputs.append(tensor)
    (output,) = meta["outputs"]
    wanted = [v2.InferRequestedOutput(output["name"], binary_data=False)]
    result = client.infer(config.MODEL_NAME, inputs, outputs=wanted, request_id="t1")
    expected = pyfunc_predictions[rows.index.get_indexer(complete.index)]
    np.testing.assert_array_equal(result.as_numpy(output["name"]), expected)
    assert result.get_response()["model_version"] == registry["version"]
    with pytest.raises(v2.InferenceServerException, match="unknown model"):
        client.get_model_metadata("SomeOtherModel")


def test_api_rejects_bad_rows_with_422(api, rows):
    row = records(rows.head(1))[0] | {"ocean_proximity": "MARS"}
    status, body = post(f"{api}/predict", {"data": [row]})
    assert status == 422
    assert body["detail"][0]["loc"] == ["body", "data", 0, "ocean_proximity"]


def test_unknown_model_fails_fast_with_one_line(registry, workdir):
    result = subprocess.run(
        [sys.executable, "-m", "steps.serve", "--model-uri", "models:/Nope@champion"],
        cwd=workdir,
        env=child_env(registry["uri"], allow_pickle=False),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: serve: cannot resolve")
    assert "Traceback" not in result.stderr


def post_for_id(url: str, payload: object, request_id: str | None = None) -> tuple[str, dict]:
    """POST ``payload`` (with ``x-request-id`` if given): the answered request id and body."""
    headers = {"Content-Type": "application/json"}
    if request_id is not None:
        headers["x-request-id"] = request_id
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=30) as r:
        return r.headers["x-request-id"], json.loads(r.read())


@pytest.fixture(scope="module")
def two_workers(registry, workdir, rows, pyfunc_predictions) -> dict:
    """Two workers serve and log what they answer, take feedback, and are stopped as an
    orchestrator stops them (SIGTERM to the process it started). Traffic: single rows and a
    25-row request (the log's test); from ``real_at`` on 600 unshifted real rows and a
    request with one bad row, then, from
    ``shift_at`` on,
    600 rows with median_income x10 (the monitor's windows); feedback for the unshifted
    request, and a wrong count and an unknown id. Returns what was answered and seen."""
    import psutil

    log_dir = workdir / "inference-log"
    args = [sys.executable, "-m", "steps.serve", "--model-uri", MODEL_URI, "--workers", "2"]
    args += ["--log-dir", str(log_dir)]  # the sample rate: its default, every request
    env = child_env(registry["uri"], allow_pickle=False)
    answered: dict[str, list[float]] = {}
    X, y = housing_sample(housing_csv(), n_rows=1_200, seed=21)  # not the model's 2,000 rows
    feedback: dict[str, tuple[int, dict]] = {}
    with server(args, env, workdir, "/ready") as url:
        for i in range(6):  # new connections: the kernel picks a worker per connection
            rid, body = post_for_id(f"{url}/predict", {"data": records(rows.iloc[[i]])}, f"c-{i}")
            assert rid == f"c-{i}"
            np.testing.assert_array_equal(body["predictions"], pyfunc_predictions[i : i + 1])
            answered[rid] = body["predictions"]
        many = records(rows.head(25))  # with missing bedrooms
        rid, body = post_for_id(f"{url}/predict", {"data": many})
        np.testing.assert_array_equal(body["predictions"], pyfunc_predictions[:25])
        answered[rid] = body["predictions"]
        rid, body = post_for_id(f"{url}/invocations", {"dataframe_records": many[:3]})
        answered[rid] = body["predictions"]
        real_at = pd.Timestamp.now(tz="UTC")  # before: rows with bedrooms missing on purpose
        rid, body = post_for_id(f"{url}/predict", {"data": records(X.head(600))}, "c-real")
        answered[rid] = body["predictions"]
        bad = records(X.head(2))
        bad[1]["ocean_proximity"] = "MARS"
        assert post(f"{url}/predict", {"data": bad})[0] == 422  # one row rejected
        # feedback at once, on new connections (either worker): the index is shared
        actuals = [float(v) for v in y[:600]]
        feedback["ok"] = post(f"{url}/feedback", {"request_id": "c-real", "actuals": actuals})
        feedback["count"] = post(f"{url}/feedback", {"request_id": "c-real", "actuals": [1.0]})
        feedback["unknown"] = post(f"{url}/feedback", {"request_id": "c-nope", "actuals": [1.0]})
        feedback["shape"] = post(f"{url}/feedback", {"request_id": "c-real"})
        shift_at = pd.Timestamp.now(tz="UTC")
        shifted = X.tail(600).assign(median_income=lambda d: d["median_income"] * 10)
        rid, body = post_for_id(f"{url}/predict", {"data": records(shifted)}, "c-shifted")
        answered[rid] = body["predictions"]
        served = served_versions(url)
        workers = [psutil.Process(int(pid)) for pid in served]
        (supervisor,) = {worker.parent() for worker in workers}
        cmdline = supervisor.cmdline()
        supervisor.terminate()
        _, alive = psutil.wait_procs([supervisor, *workers], timeout=60)
    return {
        "log_dir": log_dir,
        "answered": answered,
        "served": served,
        "cmdline": cmdline,
        "alive": alive,
        "feedback": feedback,
        "actuals": np.asarray(y[:600], dtype=float),
        "real_at": real_at,
        "shift_at": shift_at,
    }


def test_two_workers_serve_log_what_they_answer_and_exit_together(registry, rows, two_workers):
    """Two workers each serve and log what they answer; after SIGTERM both exit, each closes
    its log files, and pandas reads one row per input row under the answered request ids."""
    answered, log_dir = two_workers["answered"], two_workers["log_dir"]
    served = two_workers["served"]
    assert set(served.values()) == {registry["version"]} and len(served) == 2, served
    assert "steps.serve" in two_workers["cmdline"]
    assert not two_workers["alive"], f"still running 60 s after SIGTERM: {two_workers['alive']}"

    generated = [rid for rid in answered if not rid.startswith("c-")]
    assert len(generated) == 2 and all(len(rid) == 32 for rid in generated)
    assert not list(log_dir.rglob("*.tmp"))  # every file closed and renamed
    names = [f.name for f in log_dir.glob("*/*.parquet")]
    assert names and all(
        re.fullmatch(r"requests-\d+-\d{8}T\d{6}Z-\d{6}\.parquet", n) for n in names
    )
    log = pd.read_parquet(log_dir).sort_values(["request_id", "row"])
    assert len(log) == sum(len(p) for p in answered.values())
    logged = {rid: group["prediction"].tolist() for rid, group in log.groupby("request_id")}
    assert logged == answered
    assert (log["model_version"] == registry["version"]).all()
    assert (log["model_alias"] == config.CHAMPION_ALIAS).all()
    big = log[log["request_id"] == generated[0]]
    expected = rows.head(25).reset_index(drop=True)
    pd.testing.assert_series_equal(
        big["total_bedrooms"].reset_index(drop=True), expected["total_bedrooms"], check_dtype=False
    )


def test_feedback_then_monitor_judges_the_logged_windows(registry, workdir, two_workers):
    """POST /feedback on the two-worker server: 200 for the 600-row request (whichever worker
    answered it), 422 for a wrong count or shape, 404 for an id never answered. Then
    ``mlflow run . -e monitor`` on the log: the unshifted window is ``ok`` with a live RMSE
    equal to the one of the answered predictions; the shifted one, with --fail-on-drift,
    is ``drift`` naming median_income only and exits 1."""
    import mlflow

    fed = two_workers["feedback"]
    assert fed["ok"] == (200, {"request_id": "c-real", "rows": 600})
    assert fed["count"][0] == 422 and "had 600 row(s); got 1" in json.dumps(fed["count"][1])
    assert fed["shape"][0] == 422
    assert fed["unknown"][0] == 404
    real_at, shift_at = two_workers["real_at"].isoformat(), two_workers["shift_at"].isoformat()
    env = child_env(registry["uri"], allow_pickle=False)
    log_dir = str(two_workers["log_dir"])
    ok = run_cmd(
        mlflow_run_local(
            "monitor",
            "-P",
            f"log_dir={log_dir}",
            "-P",
            f"since={real_at}",
            "-P",
            f"until={shift_at}",
        ),
        cwd=PROJECT_ROOT,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    shifted = run_cmd(
        [sys.executable, "-m", "steps.monitor", "--log-dir", log_dir, "--since", shift_at,
         "--fail-on-drift", "true"],
        cwd=workdir,
        env=env,
    )  # fmt: skip
    assert shifted.returncode == 1
    assert error_lines(shifted.stderr) == [
        "error: monitor: drift in median_income (see monitor/report.md)"
    ]

    with tracking(registry["uri"]):
        client = mlflow.MlflowClient()
        first = client.get_run(launched_run_id(ok.stderr))
        second = latest_run(client, "monitor")
        artifacts = {a.path for a in client.list_artifacts(first.info.run_id, "monitor")}
    assert first.info.status == "FINISHED" and second.info.status == "FAILED"
    tags, metrics = first.data.tags, first.data.metrics
    assert tags["monitor.verdict"] == "ok" and tags["monitor.drifted_features"] == ""
    assert tags["monitor.model_version"] == registry["version"]
    # the feedback's 600 rows, scored by what the server answered
    answered = np.asarray(two_workers["answered"]["c-real"])
    rmse = float(np.sqrt(np.mean((answered - two_workers["actuals"]) ** 2)))
    assert metrics["live_rmse"] == pytest.approx(rmse)
    assert metrics["rows_with_actuals"] == 600
    assert metrics["rows"] == 600 and metrics["rows_rejected"] == 1
    assert {f"psi.{name}" for name in config.FEATURES} <= set(metrics)
    assert artifacts == {"monitor/report.md", "monitor/features.png", "monitor/predictions.png"}
    assert second.data.tags["monitor.verdict"] == "drift"
    assert second.data.tags["monitor.drifted_features"] == "median_income"
    assert second.data.metrics["psi.median_income"] > 1


def metric_samples(url: str, name: str) -> dict[tuple[str, str], float]:
    """(alias, version) -> value of a metric labelled by alias and version, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (sample.labels["alias"], sample.labels["version"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def wait_for_shadow(url: str, version: str | None, timeout: float = 60) -> dict:
    """/ready once the shadow alias' version is ``version``."""
    deadline = time.monotonic() + timeout
    while True:
        ready = get(f"{url}/ready")[1]
        if ready["shadow"]["model_version"] == version or time.monotonic() > deadline:
            return ready
        time.sleep(0.2)


def feature_gauges(url: str, name: str) -> dict[str, float]:
    """feature -> value of a gauge labelled by feature (or "" -> value: unlabelled)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        sample.labels.get("feature", ""): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_drift_gauges_on_metrics_flag_the_feature_in_another_unit(registry, workdir):
    """A live server judges its recent logged rows every ``--drift-interval`` against the
    served version's data: 520 single-row requests with median_income x10 (a unit change)
    flag median_income on /metrics, and no other feature."""
    log_dir = workdir / "drift-log"
    args = [sys.executable, "-m", "steps.serve", "--model-uri", MODEL_URI, "--workers", "1"]
    args += ["--log-dir", str(log_dir), "--drift-interval", "0.5"]
    X, _ = housing_sample(housing_csv(), n_rows=520, seed=41)
    shifted = X.assign(median_income=X["median_income"] * 10)
    with server(args, child_env(registry["uri"], allow_pickle=False), workdir, "/ready") as url:
        for row in records(shifted):
            assert post(f"{url}/predict", {"data": [row]})[0] == 200
        # judged once the window holds the rows and every feature has its gauges (well
        # before the default interval's first judgement, 60 s after the start)
        deadline = time.monotonic() + 30
        while len(drifted := feature_gauges(url, "housing_api_feature_drift")) < len(
            config.FEATURES
        ):
            assert time.monotonic() < deadline, "the gauges never judged the logged rows"
            time.sleep(0.2)
        psi = feature_gauges(url, "housing_api_feature_psi")
        window = feature_gauges(url, "housing_api_drift_window_rows")[""]
    assert 500 <= window <= len(shifted)
    assert set(drifted) == set(config.FEATURES)
    assert {feature for feature, flag in drifted.items() if flag == 1} == {"median_income"}
    assert psi["median_income"] == max(psi.values())


def test_shadow_and_canary_follow_the_challenger_alias(registry, workdir, rows):
    """``--shadow-alias challenger --canary-percent 50`` on one worker: it starts and answers
    from the champion while no challenger exists; once the alias appears, requests whose id is
    in the canary half are answered (and named) by the challenger, the others by the
    champion with the challenger's prediction of the same row logged and on /metrics
    (labelled by alias and version); moving the alias is followed. Then ``steps.monitor`` on
    a 600-row request with feedback: both versions' live RMSE on those same rows."""
    import mlflow

    X, y = housing_sample(housing_csv(), n_rows=800, seed=8)
    challenger = demo_pipeline(X, y, n_estimators=10)
    with tracking(registry["uri"]):
        version = register_demo_model(registry["uri"], challenger, X, alias=None)
        client = mlflow.MlflowClient()
    champion = registry["version"]
    log_dir = workdir / "shadow-log"
    args = [sys.executable, "-m", "steps.serve", "--model-uri", MODEL_URI, "--workers", "1",
            "--log-dir", str(log_dir), "--shadow-alias", "challenger", "--canary-percent", "50",
            "--reload-interval", "0.5"]  # fmt: skip
    env = child_env(registry["uri"], allow_pickle=False)
    single = [records(rows.iloc[[i]]) for i in range(40)]
    versions: dict[str, str] = {}
    big_X, big_y = housing_sample(housing_csv(), n_rows=600, seed=31)
    big_id = next(f"big-{i}" for i in range(100) if not shadow.answers_canary(f"big-{i}", 50))
    try:
        with server(args, env, workdir, "/ready") as url:
            assert get(f"{url}/ready")[1]["shadow"]["model_version"] is None  # no alias yet
            _, body = post_for_id(f"{url}/predict", {"data": single[0]}, "before")
            assert body["model_version"] == champion
            with tracking(registry["uri"]):
                client.set_registered_model_alias(config.MODEL_NAME, "challenger", version)
            assert wait_for_shadow(url, version)["shadow"]["model_version"] == version
            for i, data in enumerate(single):
                _, body = post_for_id(f"{url}/predict", {"data": data}, f"k-{i}")
                versions[f"k-{i}"] = body["model_version"]
            canary = {rid for rid in versions if shadow.answers_canary(rid, 50)}
            big_at = pd.Timestamp.now(tz="UTC")
            _, big = post_for_id(f"{url}/predict", {"data": records(big_X)}, big_id)
            fed = post(f"{url}/feedback", {"request_id": big_id, "actuals": big_y.tolist()})
            assert fed[0] == 200, fed
            expected_rows = len(versions) - len(canary) + len(big_X)
            deadline = time.monotonic() + 15  # the log's writer scores every 0.25 s
            name = "housing_api_shadow_predictions_total"
            while metric_samples(url, name).get(("challenger", version), 0) < expected_rows:
                assert time.monotonic() < deadline, metric_samples(url, name)
                time.sleep(0.2)
            shadowed = metric_samples(url, name)
            canaries = metric_samples(url, "housing_api_canary_requests_total")
            differences = metric_samples(url, "housing_api_shadow_abs_difference_dollars_count")
            with tracking(registry["uri"]):  # the alias moves: the shadow follows
                client.set_registered_model_alias(config.MODEL_NAME, "challenger", champion)
            assert wait_for_shadow(url, champion)["shadow"]["model_version"] == champion
    finally:
        with tracking(registry["uri"]):
            client.delete_registered_model_alias(config.MODEL_NAME, "challenger")

    assert 10 <= len(canary) <= 30
    assert versions == {rid: version if rid in canary else champion for rid in versions}
    assert shadowed[("challenger", version)] == expected_rows
    assert 0 < differences[("challenger", version)] <= expected_rows  # sampled per drain
    assert canaries == {("challenger", version): len(canary)}
    log = pd.read_parquet(log_dir).set_index("request_id")
    assert log.loc[["before"], "shadow_version"].isna().all()
    log = log.drop(index=["before", big_id]).loc[list(versions)]
    answered_by_challenger = log.index.isin(list(canary))
    canary_rows, champion_rows = log[answered_by_challenger], log[~answered_by_challenger]
    assert (canary_rows["model_version"] == version).all()
    assert (canary_rows["model_alias"] == "challenger").all()
    assert canary_rows["shadow_version"].isna().all()
    assert (champion_rows["model_version"] == champion).all()
    assert (champion_rows["shadow_version"] == version).all()
    assert (champion_rows["shadow_alias"] == "challenger").all()
    features = champion_rows.loc[:, list(config.FEATURES)]
    np.testing.assert_allclose(
        champion_rows["shadow_prediction"], challenger.predict(features), rtol=1e-12
    )
    np.testing.assert_allclose(
        canary_rows["prediction"],
        challenger.predict(canary_rows[list(config.FEATURES)]),
        rtol=1e-12,
    )

    judged = run_cmd(
        [sys.executable, "-m", "steps.monitor", "--log-dir", str(log_dir),
         "--since", big_at.isoformat()],
        cwd=workdir,
        env=env,
    )  # fmt: skip
    assert judged.returncode == 0, judged.stderr[-3000:]
    with tracking(registry["uri"]):
        metrics = latest_run(mlflow.MlflowClient(), "monitor").data.metrics

    def rmse(predicted) -> float:
        return float(np.sqrt(np.mean((np.asarray(predicted) - big_y) ** 2)))

    shadowed_big = challenger.predict(big_X)
    assert metrics[f"shadow_rows.v{version}"] == len(big_X)
    assert metrics[f"rows_with_actuals.shadow.v{version}"] == len(big_X)
    assert metrics[f"live_rmse.shadow.v{version}"] == pytest.approx(rmse(shadowed_big))
    assert metrics[f"live_rmse.answered.v{version}"] == pytest.approx(rmse(big["predictions"]))
    assert metrics[f"shadow_mean_abs_difference.v{version}"] == pytest.approx(
        float(np.mean(np.abs(shadowed_big - np.asarray(big["predictions"]))))
    )


# --- mlflow models serve ------------------------------------------------------------------
def test_mlflow_models_serve_takes_raw_rows_and_agrees(registry, workdir, rows, api):
    args = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL_URI,
        "--env-manager", "local", "--host", "127.0.0.1",
    ]  # fmt: skip
    env = child_env(registry["uri"], allow_pickle=True)
    with server(args, env, workdir, "/ping") as url:
        status, body = post(f"{url}/invocations", {"dataframe_records": records(rows)})
    assert status == 200, body
    _, ours = post(f"{api}/predict", {"data": records(rows)})
    np.testing.assert_array_equal(body["predictions"], ours["predictions"])


# --- steps.predict ------------------------------------------------------------------------
def run_predict(registry, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "steps.predict", "--model-uri", MODEL_URI, *args],
        cwd=workdir,
        env=child_env(registry["uri"], allow_pickle=False),
        capture_output=True,
        text=True,
        timeout=300,
    )


def last_run(registry) -> object:
    import mlflow

    with tracking(registry["uri"]):
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(config.EXPERIMENT_NAME)
        (run,) = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{config.TAG_STEP}` = 'predict'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, predict.STEP)]
    return run, artifacts


@pytest.mark.parametrize("out_name", ["preds.parquet", "preds.csv"])
def test_batch_predict_writes_logs_and_reports_rejects(
    registry, workdir, rows, pyfunc_predictions, out_name
):
    data = rows.astype({"latitude": object})
    data.loc[data.index[20], "latitude"] = "north"
    data.loc[data.index[21], "ocean_proximity"] = "MARS"
    source = workdir / "batch_in.csv"
    data.to_csv(source, index=False)
    out = workdir / "out" / out_name

    result = run_predict(registry, workdir, "--input", str(source), "--output", str(out))
    assert result.returncode == 0, result.stderr

    written = pd.read_parquet(out) if out.suffix == ".parquet" else pd.read_csv(out)
    assert len(written) == len(rows) - 2
    keep = np.setdiff1d(np.arange(len(rows)), [20, 21])
    assert written[config.ROW_COLUMN].tolist() == keep.tolist()
    np.testing.assert_allclose(
        written[config.PREDICTION_COLUMN], pyfunc_predictions[keep], rtol=1e-12
    )
    bad = localscore.rejected_path(out)  # in the output's format, beside it
    assert bad.suffix == out.suffix
    rejected = pd.read_parquet(bad) if bad.suffix == ".parquet" else pd.read_csv(bad)
    assert rejected[config.ROW_COLUMN].tolist() == [20, 21]
    assert rejected[config.REASON_COLUMN].tolist() == [
        "latitude: not a number",
        "ocean_proximity: unknown value",
    ]
    assert "2 rejected" in result.stderr

    run, artifacts = last_run(registry)
    assert run.info.status == "FINISHED"
    assert run.data.tags[config.TAG_PREDICT_MODEL_NAME] == config.MODEL_NAME
    assert run.data.tags[config.TAG_PREDICT_MODEL_VERSION] == registry["version"]
    assert run.data.params["model_uri"] == MODEL_URI
    assert sorted(artifacts) == sorted(
        [f"predict/{out.name}", f"predict/{localscore.rejected_path(out).name}"]
    )
    assert run.data.metrics["rows_rejected"] == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("longitude,latitude\n1,2\n", "missing column(s): housing_median_age"),
        ("\x00\x01garbage", "cannot read as parquet"),
    ],
    ids=["missing", "columns", "unreadable"],
)
def test_batch_predict_bad_input_fails_the_run_with_one_line(registry, workdir, content, message):
    source = workdir / ("bad.parquet" if message.startswith("cannot") else "bad.csv")
    source.unlink(missing_ok=True)
    if content is not None:
        source.write_text(content)
    result = run_predict(
        registry, workdir, "--input", str(source), "--output", str(workdir / "x.csv")
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
    run, _ = last_run(registry)
    assert run.info.status == "FAILED"
