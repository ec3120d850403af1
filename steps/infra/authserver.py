"""Start ``mlflow server --app-name basic-auth`` with its secrets checked and its config written.

In: ``--auth-database-uri`` (where MLflow keeps users and grants: ``sqlite:////abs/path`` or
``postgresql+psycopg2://…``), the rest of the command line (passed to ``mlflow server`` as
it is), and two secrets from the environment, each either set directly or read from a file
named by ``<NAME>_FILE`` outside this repository: ``MLFLOW_AUTH_ADMIN_PASSWORD`` (the admin
account, created the first time the auth database is empty) and
``MLFLOW_FLASK_SERVER_SECRET_KEY`` (signs the UI's sessions and CSRF tokens). The repository
holds no default for either: a missing one is an error line and exit 2, before anything starts.

Out: the auth config (``default_permission = NO_PERMISSIONS``: an account sees only what it is
granted, see ``steps.infra.accounts``; admin user ``admin``; verified passwords cached
``--auth-cache-ttl`` seconds, bench/auth_bench.py) in a private temp dir for the server's
lifetime, removed when it stops; the server runs in the foreground, SIGINT/SIGTERM passed on.
Secrets go to the server through its environment only, never into the config or a log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

from steps import config
from steps.infra.errors import StepError

STEP = "auth-server"
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
SECRETS = (ADMIN_PASSWORD_ENV, SECRET_KEY_ENV)
FILE_SUFFIX = "_FILE"
# An account not granted anything on a resource gets nothing: READ as the default would let
# every account (the serving one too) read every run and model.
DEFAULT_PERMISSION = "NO_PERMISSIONS"
APP_NAME = "basic-auth"
# MLflow hashes passwords with scrypt and, by default, verifies the hash on every request: a
# pipeline makes hundreds. A verified (user, password) is cached per server worker this long;
# a password changed through the API is dropped from the worker that changed it at once, from
# the others after at most this long.
AUTH_CACHE_TTL_S = 30


# --- pure core ----------------------------------------------------------------------------
def auth_config_text(database_uri: str, cache_ttl_s: int = AUTH_CACHE_TTL_S) -> str:
    """The ini MLflow's basic-auth app reads (MLFLOW_AUTH_CONFIG_PATH); holds no secret
    but the database URI's own password, if it has one."""
    return (
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = {database_uri}\n"
        f"admin_username = {ADMIN_USERNAME}\n"
        f"auth_cache_ttl_seconds = {cache_ttl_s}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


def inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def read_secret(name: str, env: Mapping[str, str], root: Path = config.PROJECT_ROOT) -> str:
    """``env[name]``, else the first line of the file ``env[name + "_FILE"]`` names, which
    must lie outside ``root`` (a secret in the work tree is one ``git add`` from published)."""
    if env.get(name):
        return env[name]
    file_name = env.get(name + FILE_SUFFIX)
    if not file_name:
        raise StepError(
            f"{name} is not set: export it, or {name}{FILE_SUFFIX}=<a file outside the repository>"
        )
    path = Path(file_name).expanduser()
    if inside(path, root):
        raise StepError(f"{name}{FILE_SUFFIX}={path} is inside the repository: keep it outside")
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise StepError(f"{name}{FILE_SUFFIX}: cannot read {path}: {exc.strerror}") from exc
    if not value:
        raise StepError(f"{name}{FILE_SUFFIX}: {path} is empty")
    return value


def check_database_uri(uri: str) -> None:
    if uri.startswith("sqlite:") and not uri.startswith("sqlite:////"):
        # a relative path would land wherever the server's workers start
        raise StepError(f"--auth-database-uri must be absolute (sqlite:////abs/path), got {uri!r}")


def server_command(server_args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--app-name", APP_NAME, *server_args]


# --- command ------------------------------------------------------------------------------
@click.command(
    help="mlflow server with basic auth: secrets from the environment or files outside the "
    "repository. Arguments after -- go to mlflow server.",
    context_settings={"ignore_unknown_options": True},
)
@click.option(
    "--auth-database-uri",
    required=True,
    help="Users and grants: sqlite:////abs/basic_auth.db or postgresql+psycopg2://…",
)
@click.option(
    "--auth-cache-ttl",
    type=click.IntRange(min=0),
    default=AUTH_CACHE_TTL_S,
    show_default=True,
    help="Seconds a verified password is cached per worker (0: verify every request).",
)
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
def cli(auth_database_uri: str, auth_cache_ttl: int, server_args: tuple[str, ...]) -> None:
    try:
        check_database_uri(auth_database_uri)
        secrets = {name: read_secret(name, os.environ) for name in SECRETS}
    except StepError as exc:
        click.echo(f"error: {STEP}: {exc}", err=True)
        raise SystemExit(2) from None
    with tempfile.TemporaryDirectory(prefix="mlflow-auth-") as tmp:  # mode 0700
        ini = Path(tmp) / "basic_auth.ini"
        ini.touch(mode=0o600)
        ini.write_text(auth_config_text(auth_database_uri, auth_cache_ttl))
        env = os.environ | secrets | {"MLFLOW_AUTH_CONFIG_PATH": str(ini)}
        for name in SECRETS:
            env.pop(name + FILE_SUFFIX, None)
        server = subprocess.Popen(server_command(server_args), env=env)
        # Ctrl-C reaches the server's process group itself; a SIGTERM for us is passed on.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, _frame: server.send_signal(signum))
        code = server.wait()
    raise SystemExit(128 - code if code < 0 else code)


if __name__ == "__main__":
    cli()
