"""k8s/'s Kubernetes manifests, validated offline against the Kubernetes API's JSON schemas
(the `kubernetes-validate` package, strict: an unknown or misspelt field fails).

In: k8s/kubernetes_job_template.yaml (as written and as MLflow fills it) and k8s/deploy/*.yaml.
Out: nothing; a manifest that a cluster's API server would reject fails here. KServe's
InferenceService is not a Kubernetes kind: its predictor container is validated against the
Container schema, the rest by structure.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

from steps import config
from tests.support import mlflow_kubernetes

K8S = config.PROJECT_ROOT / "k8s"
VERSION = kubernetes_validate.latest_version()
DEPLOY = sorted((K8S / "deploy").glob("*.yaml"))
KSERVE = K8S / "deploy" / "inferenceservice.yaml"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kubernetes_resources() -> list[tuple[str, dict[str, Any]]]:
    """(label, resource) for every Kubernetes object in k8s/ (KServe's is not one)."""
    found = [("kubernetes_job_template.yaml", documents(K8S / "kubernetes_job_template.yaml")[0])]
    for path in DEPLOY:
        if path != KSERVE:
            found += [(f"{path.name}:{doc['kind']}", doc) for doc in documents(path)]
    return found


def filled_job() -> dict[str, Any]:
    """The Job exactly as MLflow's kubernetes backend submits it for `-e main`."""
    kb = mlflow_kubernetes()
    template = documents(K8S / "kubernetes_job_template.yaml")[0]
    return kb._get_kubernetes_job_definition(
        project_name="california-housing-price-k8s",
        image_tag="registry.example.internal/ml/california-housing-price:abc1234",
        image_digest="sha256:0",
        command=kb._get_run_command(["python -m steps.main --use-cache true"]),
        env_vars={"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_RUN_ID": "r1"},
        job_template=template,
    )


def validate_fragment(fragment: dict[str, Any], schema_file: str) -> None:
    """One part of an object (a Container) against its strict schema, as
    kubernetes_validate.validate does for whole objects."""
    folder = f"kubernetes-json-schema/v{VERSION}-local-strict"
    schema = schema_contents(f"{folder}/{schema_file}", VERSION)
    definitions = schema_contents(f"{folder}/_definitions.json", VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    jsonschema.Draft202012Validator(schema, registry=registry).validate(fragment)


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(label, pod spec) of every workload that runs the image, KServe's predictor included."""
    specs = []
    for label, resource in kubernetes_resources():
        spec = resource["spec"]
        spec = spec.get("jobTemplate", {}).get("spec", spec)  # a CronJob's Job
        if "template" in spec:
            specs.append((label, spec["template"]["spec"]))
    specs.append((KSERVE.name, documents(KSERVE)[0]["spec"]["predictor"]))
    return specs


@pytest.mark.parametrize(("label", "resource"), kubernetes_resources(), ids=lambda v: v)
def test_manifest_is_valid_for_the_kubernetes_api(label, resource):
    kubernetes_validate.validate(resource, VERSION, strict=True)


def test_the_job_mlflow_fills_in_is_valid():
    kubernetes_validate.validate(filled_job(), VERSION, strict=True)


def test_the_kserve_predictor_runs_the_image_as_a_v2_server():
    service = documents(KSERVE)[0]
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    assert set(service["spec"]) == {"predictor"}
    (container,) = service["spec"]["predictor"]["containers"]
    validate_fragment(container, "container-v1.json")
    # KServe routes to the predictor's first port; 8080 is its default
    assert container["ports"][0]["containerPort"] == 8080
    assert container["command"][:3] == ["python", "-m", "steps.serve"]
    assert container["command"][container["command"].index("--port") + 1] == "8080"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


@pytest.mark.parametrize(("label", "pod"), pod_specs(), ids=lambda v: v)
def test_every_pod_runs_the_images_user_and_commands_the_project_has(label, pod):
    """The image's uid (it owns /opt/project), and `python -m steps.<entry>` with options that
    entry point has (a misspelt flag would only fail once the pod starts)."""
    dockerfile = (K8S / "Dockerfile").read_text()
    uid = int(re.search(r"useradd --create-home --uid (\d+) mlflow", dockerfile).group(1))
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"]:
        command = container["command"]
        if command[0].startswith("{replaced with"):  # MLflow's template: the entry point's
            continue
        assert command[:2] == ["python", "-m"]
        cli = importlib.import_module(command[2]).cli
        known = {opt for param in cli.params for opt in param.opts}
        assert {word for word in command[3:] if word.startswith("--")} <= known, command
