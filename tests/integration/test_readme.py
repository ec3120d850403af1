"""The README's commands, verbatim, the way a new user runs them, and the GitHub workflow's
pipeline job the way its runner runs it.

A fresh ``git clone`` of the project; a scrubbed environment (``env -i``: HOME an empty temp
dir, PATH without any virtualenv, only HOUSING_DATA_URL set, as the README's offline note
says). Each code block marked ``<!-- clean-shell-test: NAME -->`` in README.md is run as one
``bash -e`` script in its own session; whatever it leaves running (the README's
``make serve &``) is killed when it ends. Change a command in the README and this test runs
the new one. The workflow's ``pipeline`` job goes through the same harness: its ``run:`` steps
in order, with a ``python`` 3.11 first on PATH as ``actions/setup-python`` provides.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from steps import config
from steps.loading import DEFAULT_MODEL_URI, load_version
from steps.predict import PREDICTION_COLUMN
from steps.serve import DEFAULT_PORT as SERVE_PORT
from tests.support import (
    PLAIN_PATH,
    PROJECT_ROOT,
    clean_shell_env,
    copy_project,
    housing_csv,
    kill_session,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BLOCK = re.compile(
    r"<!-- clean-shell-test: (?P<name>[\w-]+) -->\n```bash\n(?P<body>.*?)```", re.DOTALL
)
ROW = re.compile(r"^(load_data|preprocess|train|register)\s+[0-9a-f]{32}\s+(ran|reused)\b", re.M)
STEPS = ("load_data", "preprocess", "train", "register")
TIMEOUT_S = 2400
WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "ci.yml"
EXPORTED = re.compile(r'echo "(\w+)=[^"]*" >> "\$GITHUB_ENV"')


def readme_blocks(readme: Path = PROJECT_ROOT / "README.md") -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK.finditer(readme.read_text())}


def commands(block: str) -> list[str]:
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def statuses(output: str) -> list[dict[str, str]]:
    """Each summary table in the output, as {step: ran|reused}."""
    tables, current = [], {}
    for step, status in ROW.findall(output):
        if step == "load_data" and current:
            tables.append(current)
            current = {}
        current[step] = status
    return [*tables, current] if current else tables


def pyenv_root() -> Path:
    """A user of the bare `mlflow run` has pyenv: this machine's, with its Pythons."""
    found = shutil.which("pyenv")
    assert found, "pyenv is not installed: the README's bare `mlflow run . -e main` needs it"
    return Path(found).resolve().parents[1]


class Shell:
    """A fresh clone and an empty HOME; runs README blocks as a new user's shell would.

    ``uv_cache``: uv's package cache, shared by the clones of one test module (the first
    clone fills it from PyPI as a new machine would; the others then install in seconds).
    """

    def __init__(self, root: Path, uv_cache: Path | None = None) -> None:
        origin = copy_project(root / "origin")
        self.home = root / "home"
        self.home.mkdir()
        self.clone = root / "clone"
        self.cache = {"UV_CACHE_DIR": str(uv_cache)} if uv_cache else {}
        subprocess.run(["git", "clone", "-q", str(origin), str(self.clone)], check=True)

    def run(self, block: str, **extra: str) -> subprocess.CompletedProcess:
        # Files, not pipes: a server sent to the background keeps a pipe open forever.
        out, err = self.home.parent / "stdout", self.home.parent / "stderr"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(
                ["bash", "-e", "-c", block],
                cwd=self.clone,
                env=clean_shell_env(self.home, **self.cache, **extra),
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=TIMEOUT_S)
            finally:
                kill_session(proc.pid)
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, out.read_text(), err.read_text()
        )

    def client(self) -> MlflowClient:
        return MlflowClient(f"sqlite:///{self.clone / 'mlflow.db'}")

    def champion(self) -> tuple[Any, Any]:
        """The clone's @champion version and its pipeline, loaded as serving loads it."""
        uri = f"sqlite:///{self.clone / 'mlflow.db'}"
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            pipeline, ref = load_version(DEFAULT_MODEL_URI)
        finally:
            mlflow.set_tracking_uri(previous)
        return self.client().get_model_version(ref.name, ref.version), pipeline


def first_run_train_id(shell: Shell) -> str:
    """The train run of the first `make run` (the later ones reuse it)."""
    experiment = shell.client().get_experiment_by_name(config.EXPERIMENT_NAME)
    trains = shell.client().search_runs(
        [experiment.experiment_id],
        f"tags.`{config.TAG_STEP}` = 'train' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return trains[0].info.run_id


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-4000:] + "\n---\n" + result.stderr[-6000:]
    assert "Traceback" not in result.stderr, result.stderr[-6000:]


@pytest.fixture(scope="module")
def uv_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uv-cache")


@pytest.fixture(scope="module")
def shell(tmp_path_factory, uv_cache) -> Shell:
    return Shell(tmp_path_factory.mktemp("readme"), uv_cache)


@pytest.fixture(scope="module")
def first_run(shell: Shell) -> subprocess.CompletedProcess:
    """The first of the README's two commands (the second, `make test`, is what CI runs)."""
    two = commands(readme_blocks()["two-commands"])
    assert two == ["make run", "make test"]
    result = shell.run(two[0])
    ok(result)
    return result


def test_ci_runs_the_readme_test_command():
    ci = (PROJECT_ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands(readme_blocks()["two-commands"])[1]


def test_make_run_works_from_a_plain_shell(shell, first_run):
    assert statuses(first_run.stdout) == [dict.fromkeys(STEPS, "ran")]
    assert (shell.clone / ".venv" / "bin" / "python").exists()
    version = shell.client().get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert str(version.version) == "1"
    # the launcher run is the parent: nothing stray in Default
    assert not shell.client().search_runs(["0"])
    # quiet: a table, the model line and where to look, plus make's own echo
    assert len(first_run.stdout.splitlines()) <= 10, first_run.stdout


def test_first_hour_block(shell, first_run):
    # the README serves on the default port; a server already there would answer instead
    with socket.socket() as probe:
        taken = probe.connect_ex(("127.0.0.1", SERVE_PORT)) == 0
    assert not taken, f"port {SERVE_PORT} is in use: the README's `make serve` needs it"
    result = shell.run(readme_blocks()["first-hour"])
    ok(result)
    tables = statuses(result.stdout)
    # `make run` again: everything but register reused
    assert tables[0] == {**dict.fromkeys(STEPS[:3], "reused"), "register": "ran"}
    # `curl … /predict`: the price main's champion gives the README's row, to the cent
    answer = re.search(r'\{"predictions":.*?\}', result.stdout)
    assert answer, result.stdout[-3000:]
    body = json.loads(answer[0])
    champion, pipeline = shell.champion()
    assert body["model_version"] == str(champion.version)
    assert champion.tags[config.VERSION_TAG_TRAIN_RUN] == first_run_train_id(shell)
    sent = re.search(r"-d '(\{.*?\})'", readme_blocks()["first-hour"], re.DOTALL)
    readme_row = pd.DataFrame(json.loads(sent[1])["data"])
    assert body["predictions"][0] == pytest.approx(pipeline.predict(readme_row)[0], abs=0.01)
    # `curl … /version`: lineage back to the train run, the data version and the commit
    version = re.search(r'\{"model_name":.*?\}', result.stdout)
    assert version, result.stdout[-3000:]
    info = json.loads(version[0])
    data_md5 = yaml.safe_load((shell.clone / "data.dvc").read_text())["outs"][0]["md5"]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=shell.clone, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert info["model_version"] == str(champion.version)
    assert info["run_id"] == first_run_train_id(shell)
    assert (info["dataset_dvc_md5"], info["git_commit"]) == (data_md5, head)
    # `make steps`: four standalone runs in the pipeline's experiment
    client = shell.client()
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    standalone = client.search_runs(
        [experiment.experiment_id],
        "tags.`mlflow.parentRunId` IS NULL",
        order_by=["attributes.start_time DESC"],
    )
    assert {r.data.tags.get(config.TAG_STEP) for r in standalone} >= set(STEPS)
    # `make predict`: one prediction per row of the real file, each the champion's
    predictions = pd.read_parquet(shell.clone / "predictions.parquet")
    raw = pd.read_csv(housing_csv())
    assert len(predictions) == len(raw)
    expected = pipeline.predict(raw.loc[:, list(config.FEATURES)])
    np.testing.assert_allclose(predictions[PREDICTION_COLUMN], expected, rtol=0, atol=0.01)


@pytest.mark.pyenv
def test_activated_venv_block(shell, first_run):
    root = pyenv_root()
    result = shell.run(
        readme_blocks()["activated-venv"],
        PATH=f"{root / 'bin'}:{clean_shell_env(shell.home)['PATH']}",
        PYENV_ROOT=str(root),
    )
    ok(result)
    tables = statuses(result.stdout)
    assert len(tables) == 2
    # code, data and parameters are unchanged: the env manager is not part of the key
    assert all(t == {**dict.fromkeys(STEPS[:3], "reused"), "register": "ran"} for t in tables)
    # the bare run built MLflow's own env under the (empty) HOME, from python_env.yaml
    envs = list((shell.home / ".mlflow" / "envs").iterdir())
    assert len(envs) == 1
    assert (envs[0] / "bin" / "python").exists()
    # without --experiment-name MLflow files both launchers under Default; each points at
    # the pipeline's real parent run in california_housing_price
    client = shell.client()
    launchers = client.search_runs(["0"], order_by=["attributes.start_time ASC"])
    assert len(launchers) == 2
    parents = [client.get_run(r.data.tags["pipeline.moved_to_run_id"]) for r in launchers]
    # MLflow tags only the environments it builds (none for --env-manager local)
    assert [p.data.tags.get("mlflow.project.env") for p in parents] == [None, "virtualenv"]
    assert all(p.info.status == "FINISHED" for p in parents)


def workflow_job(name: str) -> tuple[dict[str, str], list[dict]]:
    """A job of the GitHub workflow: its environment (workflow-level) and its steps."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    return workflow.get("env", {}), workflow["jobs"][name]["steps"]


def test_workflow_pipeline_job_runs_in_a_clean_shell(tmp_path, uv_cache):
    env, steps = workflow_job("pipeline")
    # The data step fetches the public file and exports where it put it; offline, the harness
    # points the same variables at the local copy.
    exported = {name for step in steps for name in EXPORTED.findall(step.get("run", ""))}
    assert exported == {"HOUSING_DATA_URL"}
    # Steps gated on an event or built from ${{ }} need GitHub itself (the git-URL run is
    # tests/integration/test_git_url.py's job).
    runnable = [
        step
        for step in steps
        if "run" in step
        and "if" not in step
        and "${{" not in step["run"]
        and "GITHUB_ENV" not in step["run"]
    ]
    commands_run = [step["run"].strip() for step in runnable]
    assert commands_run[-3:] == ["make steps PYTHON=python", *["make run PYTHON=python"] * 2]

    setup_python = tmp_path / "setup-python"
    setup_python.mkdir()
    found = shutil.which("python3.11", path=PLAIN_PATH)
    assert found, "no python3.11 on this machine's plain PATH"
    (setup_python / "python").symlink_to(found)
    ci = Shell(tmp_path / "runner", uv_cache)
    extra = {
        **{k: str(v) for k, v in env.items() if "${{" not in str(v)},
        "PATH": f"{setup_python}:{PLAIN_PATH}",
    }
    results = []
    for step in runnable:
        result = ci.run(step["run"], **extra)
        ok(result)
        results.append(result)

    # `make steps`: four standalone runs, each linked to the run before it
    client = ci.client()
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    standalone = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][:4]
    assert [r.data.tags[config.TAG_STEP] for r in standalone] == list(STEPS)
    assert all(r.info.status == "FINISHED" for r in standalone)
    # main after the steps, and again: the standalone runs match main's keys (same code, data,
    # parameters and upstream), so only register runs
    reused = {**dict.fromkeys(STEPS[:3], "reused"), "register": "ran"}
    assert [statuses(r.stdout) for r in results[-2:]] == [[reused], [reused]]


@pytest.mark.pyenv
def test_make_test_provisions_what_the_suite_needs(tmp_path, uv_cache):
    """The README's second command in a fresh clone with nothing beside it (no data, no
    PostgreSQL, no Java the suite could borrow): it fetches the data from HOUSING_DATA_URL,
    starts PostgreSQL and Java from the lock, and the tests that use each of them pass."""
    shell = Shell(tmp_path, uv_cache)
    assert not any((parent / "shared").exists() for parent in shell.clone.parents)
    make_test = commands(readme_blocks()["two-commands"])[1]
    services = "tests/integration/test_services.py"

    # pyenv is the one prerequisite the venv cannot hold: without it, one line, nothing run
    no_pyenv = ":".join(d for d in PLAIN_PATH.split(":") if not (Path(d) / "pyenv").exists())
    missing = shell.run(make_test, PATH=no_pyenv)
    assert missing.returncode != 0
    assert [line for line in missing.stderr.splitlines() if line.startswith("error:")] == [
        missing.stderr.strip().splitlines()[0]
    ]
    assert "pyenv" in missing.stderr and not (shell.clone / ".venv").exists()

    root = pyenv_root()  # a pyenv user's shell: pyenv on PATH, PYENV_ROOT set
    result = shell.run(
        f"{make_test} PYTEST_ARGS='{services}'",
        PATH=f"{root / 'bin'}:{clean_shell_env(shell.home)['PATH']}",
        PYENV_ROOT=str(root),
    )
    ok(result)
    wanted = len(re.findall(r"^def test_", (PROJECT_ROOT / services).read_text(), re.M))
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(rf"\b{wanted} passed\b", summary), result.stdout[-3000:]
    assert not re.search(r"skipped|failed|error", summary), summary
    # the data came from HOUSING_DATA_URL and is the version data.dvc pins
    csv = config.raw_data_path(shell.clone)
    assert csv.read_bytes() == housing_csv().read_bytes()
