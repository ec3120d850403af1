"""Helpers shared by the tests and the benchmarks (a plain module: no fixtures here).

Synthetic, real and resampled (larger) data, copies of the project as fresh git repos, new
data versions in them (`dvc add`, commit), `mlflow run` argv and environments, free loopback
ports, waiting for HTTP, a static HTTP server, MLflow servers, Make targets run in a project
copy that shares this venv, and a demo model logged and registered like the train and
register steps do.
``tests/conftest.py`` wraps some of these as fixtures; ``bench/`` imports them directly.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from steps import config, models
from steps.tracking import provenance

PROJECT_ROOT = config.PROJECT_ROOT


# --- data ----------------------------------------------------------------------------
def synthetic_housing(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """A small raw table with the real columns and plausible, target-correlated values."""
    rng = np.random.default_rng(seed)
    households = rng.integers(50, 2000, n).astype(float)
    rooms = households * rng.uniform(3, 8, n)
    income = rng.uniform(0.5, 15, n)
    lon = rng.uniform(-124, -114.5, n)
    lat = rng.uniform(32.6, 41.9, n)
    df = pd.DataFrame(
        {
            "longitude": lon,
            "latitude": lat,
            "housing_median_age": rng.integers(1, 52, n).astype(float),
            "total_rooms": rooms,
            "total_bedrooms": rooms * rng.uniform(0.15, 0.3, n),
            "population": households * rng.uniform(1.5, 4, n),
            "households": households,
            "median_income": income,
            config.TARGET: 40_000 * income + 5_000 * (lat - 32) + rng.normal(0, 20_000, n),
            "ocean_proximity": rng.choice(config.OCEAN_PROXIMITY_VALUES, n),
        }
    )
    df[config.TARGET] = df[config.TARGET].clip(15_000, 500_001)
    df.loc[df.sample(frac=0.05, random_state=seed).index, "total_bedrooms"] = np.nan
    return df.loc[:, list(config.RAW_COLUMNS)]


# Jitter of resample_housing: counts and money move by up to ±2% of their value, coordinates
# by up to ±0.01 degrees (~1 km) — enough that no two drawn copies of a row stay identical
# (load_data refuses >1% duplicate rows), small enough to keep the geography and the prices.
RESAMPLE_REL_JITTER = 0.02
RESAMPLE_COORD_JITTER = 0.01
_COORDINATES = ("longitude", "latitude")
# Decimals kept when written: as in housing.csv (counts and prices are whole numbers).
_RESAMPLE_DECIMALS = {"longitude": 4, "latitude": 4, "median_income": 4}


def resample_housing(df: pd.DataFrame, factor: float, seed: int = 0) -> pd.DataFrame:
    """A larger (or smaller) table like ``df``: ``round(len(df) * factor)`` rows drawn with
    replacement, each numeric value jittered (coordinates additively, the rest
    multiplicatively) and kept inside both the schema's declared range and the range the
    column has in ``df``; ``ocean_proximity`` and missing values are kept as drawn.

    Each row keeps the index label of the row it was drawn from (write it with
    ``index=False``). Used by bench/cost_curve.py to measure how the pipeline grows.
    """
    from steps.data import schema

    rng = np.random.default_rng(seed)
    n = round(len(df) * factor)
    out = df.iloc[rng.integers(0, len(df), n)].copy()
    for column in schema.NUMERIC_COLUMNS:
        values = out[column.name].to_numpy(dtype=np.float64)
        if column.name in _COORDINATES:
            jittered = values + rng.uniform(-RESAMPLE_COORD_JITTER, RESAMPLE_COORD_JITTER, n)
        else:
            jittered = values * (1 + rng.uniform(-RESAMPLE_REL_JITTER, RESAMPLE_REL_JITTER, n))
        low = max(df[column.name].min(), -np.inf if column.minimum is None else column.minimum)
        high = min(df[column.name].max(), np.inf if column.maximum is None else column.maximum)
        jittered = np.round(np.clip(jittered, low, high), _RESAMPLE_DECIMALS.get(column.name, 0))
        out[column.name] = jittered  # NaN stays NaN through jitter, clip and round
    return out


# --- processes and stores ---------------------------------------------------------------------
@functools.cache
def housing_csv() -> Path:
    """The real CSV, as the project gets it: ``data/housing.csv`` of this clone, fetched on
    first use from ``$HOUSING_DATA_URL`` (else the public URL) or DVC and checked against
    ``data.dvc`` (steps.data.fetch). A fetch that fails is an error, not a skip."""
    from steps.data.fetch import fetch

    return fetch(PROJECT_ROOT)


@functools.cache
def housing_tgz() -> Path:
    """The real CSV packed as the public download serves it (a .tgz holding housing.csv),
    built once per clone beside DVC's temp files (ignored by git, so not in project copies)."""
    csv = housing_csv()
    version = provenance.expected_md5(PROJECT_ROOT).removesuffix(".dir")
    target = PROJECT_ROOT / ".dvc" / "tmp" / f"housing-{version}.tgz"
    if not target.exists():
        partial = target.with_suffix(f".{os.getpid()}.partial")
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(csv, arcname=config.RAW_FILE_NAME)
        partial.replace(target)  # atomic: a concurrent worker sees no half-written archive
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_project(dest: Path) -> Path:
    """The current work tree (tracked + untracked, minus ignored) as a fresh, clean git repo.

    Tests must see the code as it is now, not as last committed, yet run from a clean tree
    (a dirty tree disables step reuse and marks runs dirty).
    """
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for rel in filter(None, (f.decode() for f in files)):
        src = PROJECT_ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.email=t@localhost", "-c", "user.name=tests"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot"], cwd=dest, check=True)
    return dest


def new_data_version(project: Path, payload: bytes, message: str) -> None:
    """What a user does: change data/housing.csv, `dvc add data`, commit data.dvc."""
    (project / "data").mkdir(exist_ok=True)
    (project / "data" / "housing.csv").write_bytes(payload)
    done = run_cmd([sys.executable, "-m", "dvc", "add", "-q", "data"], project, dict(os.environ))
    assert done.returncode == 0, done.stderr
    commit(project, message)


def commit(project: Path, message: str) -> None:
    for args in (
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@localhost", "-c", "user.name=tests", "commit", "-qm", message],
    ):
        done = run_cmd(args, cwd=project, env=dict(os.environ))
        assert done.returncode == 0, done.stderr


def project_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
        "HOUSING_DATA_URL": housing_tgz().as_uri(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
    }
    return env | extra


MLFLOW_RUN = [sys.executable, "-m", "mlflow", "run"]


def mlflow_run_local(entry_point: str, *args: str) -> list[str]:
    """`mlflow run . -e <entry_point> --env-manager local <args>` as an argv list."""
    return [*MLFLOW_RUN, ".", "-e", entry_point, "--env-manager", "local", *args]


def latest_run(client, step: str):
    """The most recently started run of a pipeline step in the pipeline's experiment."""
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    return client.search_runs(
        [experiment.experiment_id],
        f"tags.`{config.TAG_STEP}` = '{step}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]


def assert_nothing_moved(client, champion: str) -> None:
    """After a refused run: no run left RUNNING anywhere and the champion alias unchanged."""
    from mlflow.entities import ViewType

    running = client.search_runs(
        [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)],
        "attributes.status = 'RUNNING'",
        run_view_type=ViewType.ALL,
    )
    assert not running, [r.info.run_id for r in running]
    alias = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert str(alias.version) == champion


def run_cmd(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 900):
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def launched_run_id(output: str) -> str:
    """The run id `mlflow run` reports for the run it launched (its last lines, on stderr)."""
    found = re.findall(r"=== Run \(ID '([0-9a-f]+)'\) (?:succeeded|failed)", output)
    assert found, output[-2000:]
    return found[-1]


def run_main(project: Path, tracking_uri: str, *args: str) -> subprocess.CompletedProcess:
    """`mlflow run . -e main` in ``project`` to the end; asserts it succeeded."""
    result = run_cmd(
        mlflow_run_local("main", *args),
        cwd=project,
        env=project_env(tracking_uri),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


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


# --- an authenticated tracking server (steps.infra.authserver, steps.infra.accounts) -------
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
        # MLflow's GenAI job runners (seven huey processes) are no part of this project
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
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
    env |= auth_server_secrets(secrets_dir)
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


DEMO_TAGS = {
    "train_run_id": "",  # filled with the logging run's id
    "git_commit": "0000000000000000000000000000000000000000",
    config.TAG_DVC_MD5: "demo-md5",
    "test_rmse": "0.0",
}


# --- demo model --------------------------------------------------------
def housing_sample(csv: Path | None = None, n_rows: int | None = 2_000, seed: int = 0):
    """(X, y) from the real CSV: raw feature columns and dollars, ``n_rows`` sampled."""
    df = pd.read_csv(csv or housing_csv())
    if n_rows is not None and n_rows < len(df):
        df = df.sample(n_rows, random_state=seed)
    return df.loc[:, list(config.FEATURES)].reset_index(drop=True), df[config.TARGET].to_numpy()


def demo_pipeline(X: pd.DataFrame, y: np.ndarray, **hyperparams: Any):
    """Pipeline(preprocess, model) fitted like the train step, default model kind."""
    from steps import features
    from steps.models import build_pipeline

    estimator = models.build_estimator(models.DEFAULT_MODEL_KIND, **hyperparams)
    return build_pipeline(features.build_preprocessor(), estimator).fit(X, y)


def register_demo_model(
    tracking_uri: str, pipeline: Any, X: pd.DataFrame, artifact_root: Path | None = None
) -> str:
    """Log ``pipeline`` like the train step and register it like the register step.

    Sets the process's tracking URI to ``tracking_uri``. ``artifact_root``: where a newly
    created experiment keeps artifacts (default: mlflow's ./mlruns of the working dir).
    Returns the new version number; alias ``champion`` points at it.
    """
    import mlflow
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(config.EXPERIMENT_NAME) is None:
        mlflow.create_experiment(
            config.EXPERIMENT_NAME,
            artifact_location=artifact_root.resolve().as_uri() if artifact_root else None,
        )
    mlflow.set_experiment(config.EXPERIMENT_NAME)
    example = X.head(5).copy()
    example.iloc[0, example.columns.get_loc("total_bedrooms")] = np.nan
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            pipeline,
            name=config.MODEL_ARTIFACT,
            serialization_format="skops",
            skops_trusted_types=list(models.SKOPS_TRUSTED_TYPES),
            code_paths=[str(PROJECT_ROOT / "steps")],
            signature=infer_signature(X, pipeline.predict(X)),
            input_example=example,
        )
    tags = {**DEMO_TAGS, "train_run_id": run.info.run_id}
    version = mlflow.register_model(info.model_uri, config.MODEL_NAME, tags=tags)
    mlflow.MlflowClient().set_registered_model_alias(
        config.MODEL_NAME, config.CHAMPION_ALIAS, version.version
    )
    return str(version.version)


@contextlib.contextmanager
def tracking(uri: str) -> Iterator[None]:
    """Point this process at ``uri``, then restore the previous store (mlflow's and
    ``MLFLOW_TRACKING_URI``, which mlflow.set_tracking_uri also sets)."""
    import mlflow

    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


# --- batch predictions (steps.predict, both engines) ---------------------------------------
def predict_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    """The environment of a ``python -m steps.predict`` child: this venv first on PATH, the
    project importable, only the given tracking store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PYTHONPATH": str(PROJECT_ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
    }
    return env | extra


def run_predict(
    tracking_uri: str, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m steps.predict <args>``, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "steps.predict", *args],
        cwd=cwd,
        env=env or predict_env(tracking_uri),
        capture_output=True,
        text=True,
        timeout=600,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def messy_rows(X: pd.DataFrame) -> pd.DataFrame:
    """``X`` as text, with an extra ``block_id`` column and rows every rule rejects or lets
    through: each kind of bad value once, plus an allowed missing ``total_bedrooms`` spelled
    ``NA`` (a CSV missing-value token)."""
    df = X.astype(object).reset_index(drop=True)
    df.insert(0, "block_id", [f"b{i:05d}, CA" for i in range(len(df))])  # a comma: quoted
    cases = {
        3: ("latitude", "north"),
        5: ("ocean_proximity", "MARS"),
        8: ("total_bedrooms", "NA"),
        13: ("median_income", None),
        21: ("median_income", "inf"),
        34: ("population", -1.0),
        55: ("longitude", -130.0),
    }
    for row, (column, value) in cases.items():
        df.loc[row, column] = value
    return df


# --- a new user's shell ---------------------------------------------------------------------
# What a plain login shell on a fresh machine has: no virtualenv, no project tools on PATH.
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"


def clean_shell_env(home: Path, **extra: str) -> dict[str, str]:
    """`env -i` plus a HOME of its own and the one variable the README asks offline users to
    set (HOUSING_DATA_URL). Everything else a command needs, it must find by itself."""
    return {
        "HOME": str(home),
        "PATH": PLAIN_PATH,
        "LANG": "C.UTF-8",
        "HOUSING_DATA_URL": housing_tgz().as_uri(),
        **extra,
    }


def session_processes(sid: int) -> list[Any]:
    """Every live process of a session (a command started with ``start_new_session``)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return found


def kill_session(sid: int) -> None:
    """SIGTERM, then SIGKILL, whatever a session left running (servers sent to background)."""
    import psutil

    procs = session_processes(sid)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


# --- Make targets in a copy of the project -------------------------------------------------
# The venv running these tests: a copy's ``.venv`` links to it (no 60-s build per copy).
VENV = Path(sys.executable).parents[1]


def project_with_venv(dest: Path) -> Path:
    """A copy of the project whose ``.venv`` is this test run's venv, up to date for Make."""
    project = copy_project(dest)
    (project / ".venv").symlink_to(VENV, target_is_directory=True)
    # The copy's venv is the installed one by construction: date its locks no later than the
    # install stamp, so `make` does not reinstall into a venv other test runs are using.
    installed = (VENV / "bin" / ".installed").stat().st_mtime_ns
    for lock in ("requirements.lock", "requirements-dev.lock"):
        os.utime(project / lock, ns=(installed, installed))
    bin_dir = project.resolve() / ".venv" / "bin"
    stamps = [str(bin_dir / ".installed"), str(bin_dir / ".store-template")]
    up_to_date = subprocess.run(["make", "-q", *stamps], cwd=project, env=make_env(""), check=False)
    assert up_to_date.returncode == 0, f"`make setup` would rebuild {VENV}: run it there first"
    return project


def make_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    """A user's shell for `make`: only this store, no flags of a make the tests run under."""
    env = project_env(tracking_uri, **extra)
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VERBOSE", config.VERBOSE_ENV):
        env.pop(name, None)
    return env


def restore_sigint() -> None:
    # A test runner started in the background (`cmd &`) inherits SIGINT ignored, and make and
    # Python keep it ignored: give make the default a user's terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_make(project: Path, target: str, env: dict[str, str], *args: str) -> subprocess.Popen:
    """`make <target>` in its own session (its pid is the session's and the group's id)."""
    log = (project.parent / f"make-{target}.log").open("wb")
    with log:
        return subprocess.Popen(
            ["make", target, *args],
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=restore_sigint,
        )


def make_output(project: Path, target: str) -> str:
    return (project.parent / f"make-{target}.log").read_text(errors="replace")


def run_make(
    project: Path, target: str, env: dict[str, str], *args: str, timeout: float = 900
) -> tuple[int, str]:
    """`make <target>` to its end (start_make): its exit code and output. Whatever it left
    running in its session is ended too."""
    make = start_make(project, target, env, *args)
    try:
        code = make.wait(timeout=timeout)
    finally:
        kill_session(make.pid)
        if make.poll() is None:
            make.kill()
            make.wait()
    return code, make_output(project, target)


def wait_for_run(tracking_uri: str, step: str, proc: subprocess.Popen, timeout: float = 900):
    """Block until a run of ``step`` is RUNNING in the store (the step has opened its run and
    tagged it), or fail if ``proc`` exits first. Returns that run."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    if tracking_uri.startswith("sqlite:///"):
        # polling a store that does not exist yet creates its schema, racing the pipeline
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        assert path.exists(), f"create {path} before starting the pipeline"

    client = MlflowClient(tracking_uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode} before {step} ran")
        experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
        if experiment is not None:
            found = client.search_runs(
                [experiment.experiment_id],
                f"tags.`{config.TAG_STEP}` = '{step}' and attributes.status = 'RUNNING'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1,
            )
            if found:
                return found[0]
        time.sleep(0.2)
    raise TimeoutError(f"no RUNNING {step} run after {timeout} s")
