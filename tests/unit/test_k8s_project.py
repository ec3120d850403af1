"""k8s/: the Kubernetes sub-project, loaded with MLflow's own loaders (no cluster needed)."""

from __future__ import annotations

import json
import re
import types

import pytest
import yaml
from mlflow.projects import _parse_kubernetes_config
from mlflow.projects import _project_spec as project_spec

from steps import config
from tests.support import mlflow_kubernetes

ROOT = config.PROJECT_ROOT
K8S = ROOT / "k8s"


@pytest.fixture(scope="module")
def kb() -> types.ModuleType:
    return mlflow_kubernetes()


@pytest.fixture(scope="module")
def k8s_project():
    return project_spec.load_project(str(K8S))


@pytest.fixture(scope="module")
def root_project():
    return project_spec.load_project(str(ROOT))


def test_is_a_docker_project_with_an_image(k8s_project):
    assert k8s_project.env_type == "docker_env"
    assert k8s_project.docker_env["image"] == "california-housing-price:latest"
    assert k8s_project.name == "california_housing_price_k8s"


def test_entry_points_are_the_root_projects_unchanged(k8s_project, root_project):
    """Same names, parameters, defaults and commands: the same steps, only packaged."""
    assert set(k8s_project._entry_points) == set(root_project._entry_points)
    for name, root_ep in root_project._entry_points.items():
        ep = k8s_project.get_entry_point(name)
        assert ep.command == root_ep.command, f"{name}: run python k8s/sync_mlproject.py"
        assert {p: (s.type, s.default) for p, s in ep.parameters.items()} == {
            p: (s.type, s.default) for p, s in root_ep.parameters.items()
        }, f"{name}: run python k8s/sync_mlproject.py"


def test_commands_render_like_mlflow_would_submit_them(k8s_project, kb):
    command = k8s_project.get_entry_point("main").compute_command(
        {"n_estimators": "50", "random_state": "3"}, storage_dir=None
    )
    assert command.startswith("python -m steps.main ")
    assert "--n-estimators 50" in command
    assert "--random-state 3" in command
    assert kb._get_run_command([command])[:3] == ["python", "-m", "steps.main"]


def test_backend_config_parses_and_job_template_fills(monkeypatch, kb):
    backend = json.loads((K8S / "kubernetes_config.json").read_text())
    assert {"kube-context", "repository-uri", "kube-job-template-path"} <= set(backend)
    # MLflow resolves the template path against the working directory: the repo root
    monkeypatch.chdir(ROOT)
    parsed = _parse_kubernetes_config(backend)
    template = parsed["kube-job-template"]
    assert template["kind"] == "Job"
    container = template["spec"]["template"]["spec"]["containers"][0]
    for field in ("name", "image", "command"):
        value = container[field]
        text = value[0] if isinstance(value, list) else value
        assert text.startswith("{replaced with"), field
    assert template["spec"]["template"]["spec"]["restartPolicy"] == "Never"

    monkeypatch.delenv("KUBE_MLFLOW_TRACKING_URI", raising=False)
    job = kb._get_kubernetes_job_definition(
        project_name="california_housing_price_k8s",
        image_tag=f"{parsed['repository-uri']}:abc123",
        image_digest="sha256:0",
        command=kb._get_run_command(["python -m steps.load_data --source-url ''"]),
        env_vars={"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_RUN_ID": "r1"},
        job_template=parsed["kube-job-template"],
    )
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith(":abc123@sha256:0")
    assert container["command"][:3] == ["python", "-m", "steps.load_data"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "true"
    assert job["metadata"]["name"].startswith("california_housing_price_k8s-")
    assert job["metadata"]["namespace"]


def test_job_template_is_the_documented_format():
    template = yaml.safe_load((K8S / "kubernetes_job_template.yaml").read_text())
    assert template["apiVersion"] == "batch/v1"
    assert template["metadata"]["name"] == "{replaced with MLflow Project name}"
    container = template["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == (
        "{replaced with URI of Docker image created during Project execution}"
    )
    assert container["command"] == ["{replaced with MLflow Project entry point command}"]


def test_dockerfile_installs_the_pinned_requirements_and_the_steps():
    dockerfile = (K8S / "Dockerfile").read_text()
    # a registry's Python image when there is one; make image passes the Debian base otherwise
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11", dockerfile, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M)
    assert "COPY requirements.lock" in dockerfile
    assert re.search(
        r"--require-hashes[\s\\]+--python /opt/venv/bin/python -r \S+requirements.lock", dockerfile
    )
    assert "COPY --chown=10001:10001 steps/ steps/" in dockerfile
    assert "PYTHONPATH=/opt/project" in dockerfile
    # the code is copied after the packages: a code change rebuilds neither them nor the base
    assert dockerfile.index("requirements.lock") < dockerfile.index(
        "COPY --chown=10001:10001 steps/"
    )
    # everything the image COPYs from the repo root exists there and is in the build context
    # (make image sends what the .dockerignore lets through, nothing else)
    ignore = (K8S / "Dockerfile.dockerignore").read_text()
    allowed = [line[1:].removesuffix("/**") for line in ignore.splitlines() if line[:1] == "!"]
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for src in [w for w in line.split()[1:-1] if not w.startswith("--")]:
                assert (ROOT / src).exists(), src
                assert src.rstrip("/") in allowed, f"{src} is not in the build context"


def test_job_runs_as_the_images_user():
    """The Job's pod user is the one the image creates (it owns /opt/project)."""
    dockerfile = (K8S / "Dockerfile").read_text()
    uid = re.search(r"useradd --create-home --uid (\d+) mlflow", dockerfile).group(1)
    template = yaml.safe_load((K8S / "kubernetes_job_template.yaml").read_text())
    security = template["spec"]["template"]["spec"]["securityContext"]
    assert str(security["runAsUser"]) == uid
    assert security["runAsNonRoot"] is True


def test_docs_explain_the_k8s_run():
    text = (ROOT / "docs" / "scaling.md").read_text()
    assert "--backend kubernetes" in text
    assert "k8s/kubernetes_config.json" in text
    assert "docker build -f k8s/Dockerfile" in text
