"""Free loopback ports, waiting for HTTP, a static HTTP server and MLflow tracking servers
(plain and authenticated: steps.infra.authserver, steps.infra.accounts)."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support.data import PROJECT_ROOT
from tests.support.processes import kill_session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server for the files under ``root``: yields (base URL, paths requested).

    The paths are recorded as each request arrives, so a test can tell a download happened.
    """
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            requested.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def server_args(port: int, backend_uri: str, artifacts: Path) -> list[str]:
    """`mlflow server` options of the test servers: loopback, proxied artifacts, 2 workers."""
    return [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--workers",
        "2",
    ]


# How `make server` starts the server (the Makefile exports it): without MLflow's GenAI job
# runners, seven processes that are no part of this project.
NO_JOB_RUNNERS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_mlflow_server(
    backend_uri: str, artifacts: Path, port: int | None = None
) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            *server_args(port, backend_uri, artifacts),
        ],
        env=os.environ | NO_JOB_RUNNERS,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc)
    except Exception:
        stop(proc)
        raise
    return proc, url


AUTH_ADMIN_PASSWORD = "admin-test-password-1"


# role, username, password: the accounts file `python -m steps.infra.accounts apply` reads
TEST_ACCOUNTS = (
    ("pipeline", "pipeline", "pipeline-test-pass-1"),
    ("serving", "serving", "serving-test-pass-12"),
    ("maintainer", "alice", "alice-test-pass-123"),
)


def auth_env(username: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment with MLflow credentials for ``username`` (None: none)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    }
    if username == "admin":
        env |= {
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": AUTH_ADMIN_PASSWORD,
        }
    elif username is not None:
        password = next(p for _, user, p in TEST_ACCOUNTS if user == username)
        env |= {"MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}
    return env | extra


def auth_server_secrets(secrets_dir: Path) -> dict[str, str]:
    """The environment an auth server takes its secrets from: files written in ``secrets_dir``
    (keep it outside the project: steps.infra.authserver refuses a secret file inside it)."""
    (secrets_dir / "admin").write_text(AUTH_ADMIN_PASSWORD + "\n")
    (secrets_dir / "flask").write_text("test-flask-secret-key\n")
    return {
        "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(secrets_dir / "admin"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE": str(secrets_dir / "flask"),
    }


def rest(
    url: str, path: str, body: dict | None = None, username: str | None = None
) -> tuple[int, dict]:
    """One MLflow REST call (POST with ``body``, else GET) as ``username`` (None: anonymous;
    the passwords of TEST_ACCOUNTS, ``admin``'s of AUTH_ADMIN_PASSWORD): status, JSON body."""
    import base64
    import json
    import urllib.error

    headers = {"Content-Type": "application/json"}
    if username is not None:
        creds = auth_env(username)
        token = f"{username}:{creds['MLFLOW_TRACKING_PASSWORD']}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text or b"{}")
        except ValueError:
            return exc.code, {"text": text.decode(errors="replace")}


def start_auth_server(
    backend_uri: str,
    auth_db_uri: str,
    artifacts: Path,
    secrets_dir: Path,
    auth_options: Sequence[str] = (),
) -> tuple[subprocess.Popen, str]:
    """`python -m steps.infra.authserver` (mlflow server --app-name basic-auth) on a free port, the
    secrets read from files in ``secrets_dir``, artifacts proxied."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= auth_server_secrets(secrets_dir) | NO_JOB_RUNNERS
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "steps.infra.authserver",
            "--auth-database-uri",
            auth_db_uri,
            *auth_options,
            "--",
            *server_args(port, backend_uri, artifacts),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, timeout=300)
    except Exception:
        stop_auth_server(proc)
        raise
    return proc, url


def stop_auth_server(proc: subprocess.Popen) -> None:
    """The launcher passes SIGTERM on; its server's workers are in its session, ended too."""
    stop(proc)
    kill_session(proc.pid)


def write_accounts(accounts_file: Path) -> Path:
    """TEST_ACCOUNTS as the accounts file steps.infra.accounts reads
    ('<role> <username> <password>')."""
    accounts_file.write_text("".join(f"{r} {u} {p}\n" for r, u, p in TEST_ACCOUNTS))
    return accounts_file


def apply_accounts(url: str, accounts_file: Path) -> subprocess.CompletedProcess:
    """`python -m steps.infra.accounts apply` as the admin: TEST_ACCOUNTS created and granted."""
    write_accounts(accounts_file)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "steps.infra.accounts",
            "apply",
            "--accounts-file",
            str(accounts_file),
        ],
        cwd=PROJECT_ROOT,
        env=auth_env("admin", MLFLOW_TRACKING_URI=url),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
