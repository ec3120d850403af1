"""Create a team's accounts on an authenticated tracking server and grant their permissions.

In: an accounts file (``--accounts-file``, kept outside the repository): one account a line,
``<role> <username> <password>``, roles ``pipeline``, ``serving`` and ``maintainer``; ``#``
comments. The admin's credentials in ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``
and the server in ``MLFLOW_TRACKING_URI``.

Out (on the server, through MLflow's auth API, idempotently: run it again after editing the
file): the experiment ``california_housing_price`` and the registered model, created by the
admin if missing (a resource's creator is granted MANAGE on it, and no role should own them);
each account created, or its password set to the file's; the grants of ``GRANTS`` (an
existing grant is updated in place). Prints one line per account with its grants, never a
password. The server's default permission is NO_PERMISSIONS (``steps.infra.authserver``): what is
not granted here is refused.

Why these levels (mlflow/server/auth/__init__.py, MLflow 3.17): creating a run needs
``update`` on its experiment (EDIT); creating a model version needs ``update`` on the
registered model (EDIT) and READ on the source run; setting or deleting an alias needs
``update``/``delete`` on the registered model, the same level as registering. So the pipeline,
whose register step moves ``@champion`` through the gate, can move aliases too: MLflow cannot
tell the two apart; what stops it moving the champion by hand is the gate in its code, and
only maintainers get MANAGE (delete versions, change the model's grants). Model artifacts are
downloaded through the server's artifact proxy, which checks READ on the experiment that
logged them: serving gets READ on the experiment as well, and no write anywhere. The launcher
run of a bare ``mlflow run . -e main`` goes to experiment ``Default`` (id 0), hence EDIT there
for the accounts that start runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import click

from steps import config
from steps.infra.errors import StepError, one_line
from steps.tracking import refusals, steprun

STEP = "accounts"
ROLES = ("pipeline", "serving", "maintainer")
EXPERIMENT = "experiment"
REGISTERED_MODEL = "registered_model"
# Experiment ids are known only on the server; these stand for them in GRANTS.
PIPELINE_EXPERIMENT = "<pipeline experiment>"
RUN_CREATING_LEVELS = frozenset({"EDIT", "MANAGE"})
CURRENT_USER = "/api/2.0/mlflow/users/current"
CURRENT_USER_PERMISSIONS = "/api/3.0/mlflow/users/current/permissions"
# MLflow checks no password rules of its own for accounts made through its API.
MIN_PASSWORD_LENGTH = 12


@dataclass(frozen=True)
class Account:
    role: str
    username: str
    password: str

    def __repr__(self) -> str:  # never print a password by accident
        return f"Account(role={self.role!r}, username={self.username!r})"


@dataclass(frozen=True)
class Grant:
    resource_type: str
    resource_id: str
    permission: str


GRANTS: dict[str, tuple[Grant, ...]] = {
    "pipeline": (
        Grant(EXPERIMENT, PIPELINE_EXPERIMENT, "EDIT"),
        Grant(EXPERIMENT, config.DEFAULT_EXPERIMENT_ID, "EDIT"),
        Grant(REGISTERED_MODEL, config.MODEL_NAME, "EDIT"),
    ),
    "serving": (
        Grant(REGISTERED_MODEL, config.MODEL_NAME, "READ"),
        Grant(EXPERIMENT, PIPELINE_EXPERIMENT, "READ"),
    ),
    "maintainer": (
        Grant(EXPERIMENT, PIPELINE_EXPERIMENT, "EDIT"),
        Grant(EXPERIMENT, config.DEFAULT_EXPERIMENT_ID, "EDIT"),
        Grant(REGISTERED_MODEL, config.MODEL_NAME, "MANAGE"),
    ),
}


# --- pure core ----------------------------------------------------------------------------
def parse_accounts(text: str, origin: str) -> list[Account]:
    """``<role> <username> <password>`` lines; errors name the line, never the password."""
    accounts: list[Account] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        where = f"{origin} line {number}"
        if len(fields) != 3:
            raise StepError(f"{where}: expected '<role> <username> <password>'")
        role, username, password = fields
        if role not in ROLES:
            raise StepError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise StepError(f"{where}: password shorter than {MIN_PASSWORD_LENGTH} characters")
        if any(a.username == username for a in accounts):
            raise StepError(f"{where}: {username!r} is listed twice")
        accounts.append(Account(role, username, password))
    if not accounts:
        raise StepError(f"{origin} lists no account")
    return accounts


def grants_for(role: str, experiment_id: str, model_name: str = config.MODEL_NAME) -> list[Grant]:
    """The role's grants with the pipeline experiment's real id and the model filled in."""
    resolved = {PIPELINE_EXPERIMENT: experiment_id, config.MODEL_NAME: model_name}
    return [
        Grant(g.resource_type, resolved.get(g.resource_id, g.resource_id), g.permission)
        for g in GRANTS[role]
    ]


# --- I/O + MLflow -------------------------------------------------------------------------
def ensure_resources(client, model_name: str) -> str:
    """The pipeline experiment's id and the registered model, created by the caller."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(config.EXPERIMENT_NAME)
    )
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(model_name)
    return experiment_id


def ensure_account(auth, account: Account) -> str:
    """Create the user, or set its password to the file's; returns what was done."""
    from mlflow.exceptions import MlflowException

    try:
        auth.create_user(account.username, account.password)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.update_user_password(account.username, account.password)
        return "exists, password set"
    return "created"


def ensure_grant(auth, username: str, grant: Grant) -> None:
    """Grant, or change an existing grant to ``grant.permission`` (the grant API refuses to
    overwrite: revoke, then grant again)."""
    from mlflow.exceptions import MlflowException

    args = (username, grant.resource_type, grant.resource_id)
    try:
        auth.grant_user_permission(*args, grant.permission)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        if auth.get_user_permission(*args).permission != grant.permission:
            auth.revoke_user_permission(*args)
            auth.grant_user_permission(*args, grant.permission)


def missing_run_permission(
    username: str, permissions: list[dict], experiment_id: str, experiment_name: str
) -> str | None:
    """Why ``username`` may not create runs in the experiment (None: it may), from the
    grants the server lists for the current user."""
    levels = {
        p["permission"]
        for p in permissions
        if p["resource_type"] == EXPERIMENT and p["resource_pattern"] in (experiment_id, "*")
    }
    if levels & RUN_CREATING_LEVELS:
        return None
    has = ", ".join(sorted(levels)) or "nothing"
    return (
        f"user {username!r} may not create runs in experiment {experiment_name!r}: needs EDIT, "
        f"has {has} (docs/scaling.md, accounts)"
    )


@click.group(help="Accounts on an authenticated tracking server (docs/scaling.md).")
def cli() -> None:
    pass


@cli.command(
    help="Check the credentials before `mlflow run` (whose launcher would only print "
    "a traceback): accepted, and allowed to create runs in the experiment."
)
@click.option("--experiment-name", default=config.EXPERIMENT_NAME, show_default=True)
def check(experiment_name: str) -> None:
    uri = config.tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return  # a local store has no accounts
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    creds = get_default_host_creds(uri)
    try:
        whoami = http_request(creds, CURRENT_USER, "GET")
        if whoami.status_code == 404:
            return  # no auth app on this server
        verify_rest_response(whoami, CURRENT_USER)
        user = whoami.json()["user"]
        if user["is_admin"]:
            return
        experiment = mlflow_client(uri).get_experiment_by_name(experiment_name)
        if experiment is None:
            raise StepError(f"no experiment {experiment_name!r}: an admin runs `make accounts`")
        listed = http_request(creds, CURRENT_USER_PERMISSIONS, "GET")
        verify_rest_response(listed, CURRENT_USER_PERMISSIONS)
        problem = missing_run_permission(
            user["username"],
            listed.json()["permissions"],
            experiment.experiment_id,
            experiment_name,
        )
        if problem:
            raise StepError(problem)
    except (StepError, MlflowException, requests.RequestException) as exc:
        fail(exc)


def mlflow_client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def fail(exc: BaseException) -> None:
    problem = refusals.refusal(exc) or one_line(exc)
    if refusals.tracking_unreachable(exc) or isinstance(exc, OSError):
        problem = f"tracking server unreachable: {problem}"
    click.echo(f"error: {STEP}: {problem}", err=True)
    raise SystemExit(1) from None


@cli.command(help="Create the team's accounts on the tracking server and grant permissions.")
@click.option(
    "--accounts-file",
    required=True,
    type=click.Path(dir_okay=False),
    help="'<role> <username> <password>' lines (roles: pipeline, serving, maintainer).",
)
@click.option("--model-name", default=config.MODEL_NAME, show_default=True)
def apply(accounts_file: str, model_name: str) -> None:
    import warnings

    import mlflow
    from mlflow.exceptions import MlflowException

    with warnings.catch_warnings():  # mlflow.server's own import of a deprecated starlette API
        warnings.simplefilter("ignore")
        from mlflow.server import get_app_client

    uri = config.tracking_uri()
    try:
        if not uri.startswith(("http://", "https://")):
            raise StepError(f"MLFLOW_TRACKING_URI must be the auth server's http(s) URL, not {uri}")
        if not os.environ.get("MLFLOW_TRACKING_USERNAME"):
            raise StepError("set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD to the admin's")
        try:
            with open(accounts_file) as f:
                accounts = parse_accounts(f.read(), accounts_file)
        except OSError as exc:
            raise StepError(f"cannot read {accounts_file}: {exc.strerror}") from exc
        client = mlflow.MlflowClient(uri)
        auth = get_app_client("basic-auth", tracking_uri=uri)
        experiment_id = ensure_resources(client, model_name)
        for account in accounts:
            done = ensure_account(auth, account)
            grants = grants_for(account.role, experiment_id, model_name)
            for grant in grants:
                ensure_grant(auth, account.username, grant)
            summary = ", ".join(f"{g.resource_type} {g.resource_id} {g.permission}" for g in grants)
            steprun.echo(STEP, f"{account.username} ({account.role}, {done}): {summary}")
    except (StepError, MlflowException) as exc:
        fail(exc)


if __name__ == "__main__":
    cli()
