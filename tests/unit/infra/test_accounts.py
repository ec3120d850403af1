"""Accounts file, grant plan, run-permission check, the auth server's secrets and the
one-line refusal built from MLflow's own 401/403 exceptions."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, UNAUTHENTICATED

from steps import config
from steps.infra import accounts, authserver
from steps.infra.errors import StepError
from steps.tracking import refusals


def test_parse_accounts_reads_roles_and_never_shows_a_password():
    text = "# role user password\npipeline ci-bot pipeline-pass-1\nserving api serving-pass-12\n"
    parsed = accounts.parse_accounts(text, "acc")
    assert [(a.role, a.username) for a in parsed] == [("pipeline", "ci-bot"), ("serving", "api")]
    assert "pipeline-pass-1" not in repr(parsed)
    for bad, match in (
        ("owner bob bob-password-12", "role must be one of"),
        ("pipeline bob short", "shorter than"),
        ("pipeline bob", "expected"),
        ("serving a pass-word-1234\npipeline a pass-word-1234", "listed twice"),
        ("# nobody\n", "lists no account"),
    ):
        with pytest.raises(StepError, match=match) as refused:
            accounts.parse_accounts(bad, "acc")
        assert "pass-word-1234" not in str(refused.value)


def test_grants_give_serving_read_only_and_only_maintainers_manage():
    by_role = {role: accounts.grants_for(role, "7", "M") for role in accounts.ROLES}
    serving = {(g.resource_type, g.resource_id): g.permission for g in by_role["serving"]}
    assert serving == {("registered_model", "M"): "READ", ("experiment", "7"): "READ"}
    pipeline = {(g.resource_type, g.resource_id): g.permission for g in by_role["pipeline"]}
    assert pipeline[("experiment", "7")] == "EDIT"
    assert pipeline[("registered_model", "M")] == "EDIT"
    manage = {role for role, grants in by_role.items() for g in grants if g.permission == "MANAGE"}
    assert manage == {"maintainer"}


def test_missing_run_permission_needs_edit_on_that_experiment():
    def grant(pattern: str, level: str) -> dict:
        return {"resource_type": "experiment", "resource_pattern": pattern, "permission": level}

    assert accounts.missing_run_permission("p", [grant("3", "EDIT")], "3", "x") is None
    assert accounts.missing_run_permission("p", [grant("*", "MANAGE")], "3", "x") is None
    problem = accounts.missing_run_permission(
        "s", [grant("3", "READ"), grant("4", "EDIT")], "3", "x"
    )
    assert "needs EDIT, has READ" in problem
    assert "has nothing" in accounts.missing_run_permission("s", [], "3", "x")


def test_secrets_come_from_the_environment_or_a_file_outside_the_repo(tmp_path):
    secret = tmp_path / "admin"
    secret.write_text("from-a-file\n")
    name = authserver.ADMIN_PASSWORD_ENV
    assert authserver.read_secret(name, {name: "direct"}) == "direct"
    assert authserver.read_secret(name, {f"{name}_FILE": str(secret)}) == "from-a-file"
    with pytest.raises(StepError, match="is not set"):
        authserver.read_secret(name, {})
    inside = config.PROJECT_ROOT / "README.md"
    with pytest.raises(StepError, match="inside the repository"):
        authserver.read_secret(name, {f"{name}_FILE": str(inside)})
    secret.write_text("\n")
    with pytest.raises(StepError, match="is empty"):
        authserver.read_secret(name, {f"{name}_FILE": str(secret)})


def test_auth_config_denies_by_default_and_holds_no_admin_password():
    text = authserver.auth_config_text("sqlite:////tmp/auth.db")
    assert "default_permission = NO_PERMISSIONS" in text
    assert "database_uri = sqlite:////tmp/auth.db" in text
    assert "admin_password" not in text
    with pytest.raises(StepError, match="absolute"):
        authserver.check_database_uri("sqlite:///auth.db")


def refused(status: int, code) -> MlflowException:
    """What mlflow.utils.rest_utils.verify_rest_response raises for a non-JSON 401/403."""
    return MlflowException(
        f"API request to endpoint /api/2.0/mlflow/runs/create failed with error code {status} "
        "!= 200. Response body: 'Permission denied'",
        error_code=code,
    )


def test_refusal_names_operation_and_account_but_not_the_password(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "serving")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "serving-secret-1")
    line = refusals.refusal(refused(403, PERMISSION_DENIED))
    assert line.startswith("tracking server refused runs/create for user 'serving' (403 ")
    assert "serving-secret-1" not in line
    wrapped = StepError("no registered model named M")
    wrapped.__cause__ = refused(401, UNAUTHENTICATED)
    assert "(401 UNAUTHENTICATED): wrong username or password" in refusals.refusal(wrapped)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    assert "anonymous" in refusals.refusal(refused(401, UNAUTHENTICATED))
    assert refusals.refusal(MlflowException("other")) is None
    assert refusals.refusal(ValueError("x")) is None
