"""The image for real: ``make image``, then the pipeline through MLflow's ``docker_env``
(``mlflow run k8s -e main``), the image's prediction server, and the Kubernetes Job's
container run in docker exactly as a pod would run it.

In: a Docker engine (``.ci/docker.sh`` installs Debian's and starts it when none answers; if
it cannot, every test here fails saying why), a tracking server with proxied artifacts on a
free loopback port, the data over loopback HTTP. Out: one image build, one containerised
pipeline, one serving container and one Job container per module; each container removed.
Containers use the host's network (the engine runs without a bridge: .ci/docker.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from steps import config
from tests.support import (
    PROJECT_ROOT,
    SAMPLE_ROW,
    free_port,
    housing_tgz,
    mlflow_kubernetes,
    run_cmd,
    serve_directory,
    start_mlflow_server,
    stop,
    v2_request,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.docker]

IMAGE = "california-housing-price:latest"
ROW = SAMPLE_ROW


def docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def post(url: str, payload: object) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def image() -> str:
    """``make image`` from this work tree (the Debian base is reused once built)."""
    engine = subprocess.run(
        [str(PROJECT_ROOT / ".ci" / "docker.sh")],
        env=os.environ | {"DOCKER_NEEDS": "debootstrap"},
        capture_output=True,
        text=True,
        check=False,
    )
    if engine.returncode != 0:
        pytest.fail(f"no Docker engine (.ci/docker.sh):\n{engine.stderr[-3000:]}")
    built = run_cmd(["make", "image"], cwd=PROJECT_ROOT, env=dict(os.environ), timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return IMAGE


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tracking server with proxied artifacts: containers share no disk with it."""
    root = tmp_path_factory.mktemp("containers-tracking")
    proc, url = start_mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts")
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def pipeline(image: str, tracking: str) -> dict[str, Any]:
    """``mlflow run k8s -e main`` under its docker_env: the data comes over HTTP, so the
    container downloads it itself (its DVC cache starts empty)."""
    with serve_directory(housing_tgz().parent) as (base, requested):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env |= {
            "MLFLOW_TRACKING_URI": tracking,
            "HOUSING_DATA_URL": f"{base}/{housing_tgz().name}",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        started = time.perf_counter()
        done = run_cmd(
            [
                *(sys.executable, "-m", "mlflow", "run", "k8s", "-e", "main"),
                *("-A", "network=host", "--experiment-name", config.EXPERIMENT_NAME),
            ],
            cwd=PROJECT_ROOT,
            env=env,
            timeout=900,
        )
        seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"containerised main: {seconds:.1f} s")
    return {"result": done, "downloads": list(requested)}


def client(tracking: str) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking)


def test_pipeline_runs_in_docker_and_registers_a_champion(pipeline, tracking):
    """Every step is a nested run that says it ran in docker and names the commit the user
    ran; the champion is the train run's model; the data was fetched from inside the
    container."""
    assert pipeline["downloads"], "the container did not download the data"
    mlflow_client = client(tracking)
    experiment = mlflow_client.get_experiment_by_name(config.EXPERIMENT_NAME)
    runs = mlflow_client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = {r.data.tags[config.TAG_STEP]: r for r in runs if r is not parent}
    assert set(children) == {"load_data", "preprocess", "train", "register"}
    for run in [parent, *children.values()]:
        assert run.info.status == "FINISHED", run.info.run_name
        assert run.data.tags.get("mlflow.project.env") == "docker", run.info.run_name
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    # the commit the user ran, not the image's own snapshot of it
    head = run_cmd(["git", "rev-parse", "HEAD"], PROJECT_ROOT, dict(os.environ)).stdout.strip()
    for run in children.values():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags[config.TAG_MLFLOW_GIT_COMMIT] == head, run.info.run_name
    assert parent.data.tags["mlflow.docker.image.uri"].startswith("california-housing-price:")
    champion = mlflow_client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert champion.run_id == children["train"].info.run_id
    assert champion.tags[config.VERSION_TAG_GIT_COMMIT] == head


@pytest.fixture(scope="module")
def server(pipeline, tracking: str) -> Iterator[str]:
    """The image's prediction server, as users start it: ``docker run … python -m steps.serve``."""
    port = free_port()
    name = f"housing-serve-{uuid.uuid4().hex[:8]}"
    started = docker(
        *("run", "-d", "--name", name, "--network", "host"),
        *("-e", f"MLFLOW_TRACKING_URI={tracking}", IMAGE),
        *("python", "-m", "steps.serve", "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", "1", "--reload-interval", "1"),
    )
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                get(f"{url}/ready")
                break
            except OSError:
                running = docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
                assert running == "true", docker("logs", name).stderr[-3000:]
                assert time.monotonic() < deadline, docker("logs", name).stderr[-3000:]
                time.sleep(0.5)
        yield url
    finally:
        docker("rm", "-f", name)


def test_the_images_server_answers_every_protocol(server):
    """/predict, MLflow's /invocations, the V2 infer request and /metrics, one row each."""
    one = post(f"{server}/predict", {"data": [ROW]})["predictions"]
    assert len(one) == 1 and 50_000 < one[0] < 600_000
    split = {"dataframe_split": {"columns": list(ROW), "data": [list(ROW.values())]}}
    assert post(f"{server}/invocations", split)["predictions"] == one
    v2 = post(f"{server}/v2/models/{config.MODEL_NAME}/infer", v2_request(pd.DataFrame([ROW])))
    assert v2["outputs"][0]["data"] == one
    metrics = get(f"{server}/metrics")
    assert "housing_api_predicted_rows_total 3.0" in metrics


def pod_command(job: dict[str, Any], image: str) -> list[str]:
    """``docker run`` for the Job's one container with its user, command and environment:
    what the kubelet would run, minus the registry (the image is the local one)."""
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    user = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    args = ["run", "--rm", "--network", "host"]
    args += ["--user", f"{user['runAsUser']}:{user.get('runAsGroup', user['runAsUser'])}"]
    args += ["--cap-drop", "ALL"] if "ALL" in user.get("capabilities", {}).get("drop", []) else []
    if user.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for variable in container["env"]:
        args += ["-e", f"{variable['name']}={variable['value']}"]
    return [*args, image, *container["command"]]


def test_server_follows_the_alias_moved_by_a_kubernetes_job(server, tracking, image):
    """A second version is promoted by the promote step run as MLflow's Kubernetes backend
    would submit it (the Job template, filled by MLflow), in docker with the pod's user;
    the running server then answers with it without a restart."""
    mlflow_client = client(tracking)
    first = mlflow_client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    second = mlflow_client.create_model_version(
        config.MODEL_NAME,
        first.source,
        run_id=first.run_id,
        tags=first.tags,
        model_id=first.model_id or first.source.removeprefix("models:/"),
    )
    kb = mlflow_kubernetes()
    template = yaml.safe_load((PROJECT_ROOT / "k8s" / "kubernetes_job_template.yaml").read_text())
    experiment = mlflow_client.get_experiment_by_name(config.EXPERIMENT_NAME)
    run = mlflow_client.create_run(experiment.experiment_id, run_name="promote")
    command = (
        f"python -m steps.promote --version {second.version} --reason 'Job test' "
        f"--model-name {config.MODEL_NAME}"
    )
    job = kb._get_kubernetes_job_definition(
        project_name="california_housing_price_k8s",
        image_tag="registry.example.internal/ml/california-housing-price:test",
        image_digest="sha256:0",
        command=kb._get_run_command([command]),
        env_vars={
            "MLFLOW_TRACKING_URI": tracking,
            "MLFLOW_RUN_ID": run.info.run_id,
            "MLFLOW_EXPERIMENT_ID": experiment.experiment_id,
        },
        job_template=template,
    )
    ran = docker(*pod_command(job, image))
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    promoted = mlflow_client.get_run(run.info.run_id)
    assert promoted.info.status == "FINISHED"
    assert promoted.data.tags[config.TAG_CHAMPION_TO] == str(second.version)
    deadline = time.monotonic() + 60
    while json.loads(get(f"{server}/version"))["model_version"] != str(second.version):
        assert time.monotonic() < deadline, "the server did not follow @champion"
        time.sleep(0.5)
    assert post(f"{server}/predict", {"data": [ROW]})["model_version"] == str(second.version)
