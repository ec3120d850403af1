"""`mlflow run git://… -e main --version <commit>` over a real git transport, typed as it is
and, for a project in a repository subdirectory, through `make run-from-git` in a project copy
(tests/support/make.py, ``project_with_venv``).

A snapshot of the work tree is committed into a temp repository and served by `git daemon` on
a free loopback port. MLflow clones it into a temp dir (TMPDIR points inside the test's own
tmp dir, so the clone is removed with it); the clone has no data/, so the data arrives through
load_data's acquisition path (HOUSING_DATA_URL → the shared .tgz via file://). main's children
run `mlflow.projects.run(<clone dir>)`, so they must record the same commit and repo URL.

`git daemon` ships in Debian's `git` package (/usr/lib/git-core/git-daemon); the
`git-daemon-run`/`git-daemon-sysvinit` packages only wrap it as a system service.

MLflow names the children's source after its temp clone (file:///tmp/…); main re-tags
them with the URL the user ran, which the tests check along with commit and repoURL.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from steps import config
from tests.support import (
    MLFLOW_RUN,
    copy_project,
    free_port,
    latest_run,
    make_env,
    project_env,
    project_with_venv,
    run_cmd,
    run_make,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEPS = ("load_data", "preprocess", "train", "register")
GIT = ["git", "-c", "user.email=t@localhost", "-c", "user.name=tests"]
SUBDIR = "proj"


@dataclass(frozen=True)
class Served:
    """A repository served by the daemon: its git:// URL and the commit to run."""

    url: str
    commit: str


def git_daemon_available() -> bool:
    """True when this git installation has the `daemon` subcommand (Debian: package `git`)."""
    if shutil.which("git") is None:
        return False
    exec_path = subprocess.run(
        ["git", "--exec-path"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (Path(exec_path) / "git-daemon").exists()


def head_commit(repo: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def project_in_subdirectory(dest: Path, subdir: str = SUBDIR) -> Path:
    """A repository whose MLflow project lives in ``subdir/`` (the `repo#subdir` case)."""
    copy_project(dest / subdir)
    shutil.rmtree(dest / subdir / ".git")
    (dest / "README.md").write_text(f"# monorepo\n\nThe MLflow project is in `{subdir}/`.\n")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*GIT, "commit", "-qm", "monorepo snapshot"], cwd=dest, check=True)
    return dest


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"git daemon exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"git daemon did not listen on port {port}")


def stop_daemon(proc: subprocess.Popen) -> None:
    """Stop the daemon and the per-connection children it forked (its own session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def git_base(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """`git daemon` serving every repository under a temp base dir; yields (base, git:// root)."""
    if not git_daemon_available():
        pytest.skip("`git daemon` not available (Debian/Ubuntu: apt-get install git)")
    base = tmp_path_factory.mktemp("git-served")
    for _attempt in range(3):  # a free port can be taken between probing and binding
        port = free_port()
        proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                f"--base-path={base}",
                "--export-all",
                "--informative-errors",
                "--listen=127.0.0.1",
                f"--port={port}",
                str(base),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port(port, proc)
        except RuntimeError:
            continue
        except Exception:
            stop_daemon(proc)
            raise
        try:
            yield base, f"git://127.0.0.1:{port}"
        finally:
            stop_daemon(proc)
        return
    raise RuntimeError("git daemon could not bind a free loopback port")


def run_from_git(
    uri: str, commit: str, workdir: Path, tracking_uri: str, *args: str
) -> subprocess.CompletedProcess:
    """`mlflow run <uri> -e main --version <commit>` from an unrelated directory."""
    clones = workdir / "clones"
    clones.mkdir(parents=True, exist_ok=True)
    result = run_cmd(
        [*MLFLOW_RUN, uri, "-e", "main", "--version", commit, "--env-manager", "local", *args],
        cwd=workdir,
        env=project_env(tracking_uri, TMPDIR=str(clones)),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def pipeline_tree(client: MlflowClient) -> tuple[object, dict[str, object]]:
    """The (only) main run of the store and its children by step."""
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    parents = client.search_runs(
        [experiment.experiment_id], f"tags.`{config.TAG_STEP}` = 'main'", max_results=5
    )
    assert len(parents) == 1
    parent = parents[0]
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    return parent, {run.data.tags[config.TAG_STEP]: run for run in children}


def assert_provenance(run, commit: str, repo_url: str) -> None:
    """The run says which commit of which repository it ran, from a clean tree."""
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == commit, tags
    assert tags["mlflow.source.git.repoURL"] == repo_url, tags
    assert tags[config.TAG_GIT_DIRTY] == "false", tags


@dataclass(frozen=True)
class GitPipeline:
    """One `mlflow run <git URL> -e main --version <commit>` and the store it wrote."""

    served: Served
    tracking_uri: str
    client: MlflowClient
    stdout: str
    parent: object
    children: dict[str, object]


@pytest.fixture(scope="module")
def git_pipeline(git_base, tmp_path_factory) -> GitPipeline:
    base, root = git_base
    served = Served(f"{root}/housing", head_commit(copy_project(base / "housing")))
    workdir = tmp_path_factory.mktemp("git-run")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    result = run_from_git(served.url, served.commit, workdir, uri)
    client = MlflowClient(uri)
    parent, children = pipeline_tree(client)
    return GitPipeline(served, uri, client, result.stdout, parent, children)


def test_main_from_git_url_builds_the_whole_tree(git_pipeline):
    for step in STEPS:
        assert step in git_pipeline.stdout  # the summary table
    assert git_pipeline.parent.info.status == "FINISHED"
    assert set(git_pipeline.children) == set(STEPS)
    for step, run in git_pipeline.children.items():
        assert run.info.status == "FINISHED", step
        assert git_pipeline.parent.data.tags[f"pipeline.{step}.run_id"] == run.info.run_id


def test_parent_and_children_record_the_commit_and_the_git_url(git_pipeline):
    served = git_pipeline.served
    assert git_pipeline.parent.data.tags["mlflow.source.name"] == served.url
    for run in (git_pipeline.parent, *git_pipeline.children.values()):
        assert_provenance(run, served.commit, served.url)


def test_clone_without_data_acquires_it(git_pipeline):
    load_data = git_pipeline.children["load_data"]
    assert load_data.data.tags[config.TAG_DATA_SOURCE].startswith("file://")
    assert load_data.data.metrics["n_rows"] == 20640


def test_champion_alias_points_at_the_git_run(git_pipeline):
    client, children = git_pipeline.client, git_pipeline.children
    champion = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert champion.run_id == children["train"].info.run_id
    assert champion.tags["git_commit"] == git_pipeline.served.commit
    assert git_pipeline.parent.data.tags["registry.alias"] == config.CHAMPION_ALIAS


def test_children_name_the_git_url_as_their_source(git_pipeline):
    for run in git_pipeline.children.values():
        assert run.data.tags["mlflow.source.name"] == git_pipeline.served.url


def test_a_local_checkout_of_the_same_commit_reuses_the_git_runs(git_pipeline, tmp_path):
    """The cache key holds the commit, not the location the project was run from."""
    served = git_pipeline.served
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", served.url, str(checkout)], check=True)
    subprocess.run(["git", "checkout", "-q", served.commit], cwd=checkout, check=True)
    result = run_cmd(
        [*MLFLOW_RUN, ".", "-e", "main", "--env-manager", "local"],
        cwd=checkout,
        env=project_env(git_pipeline.tracking_uri, TMPDIR=str(tmp_path)),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    latest = latest_run(git_pipeline.client, "main")
    assert latest.info.run_id != git_pipeline.parent.info.run_id
    for step in ("load_data", "preprocess", "train"):
        assert latest.data.tags[f"pipeline.{step}.reused"] == "true", step
        assert latest.data.tags[f"pipeline.{step}.run_id"] == (
            git_pipeline.children[step].info.run_id
        )


def test_make_run_from_git_runs_a_project_in_a_repository_subdirectory(git_base, tmp_path):
    """`make run-from-git GIT_URL=git://host/repo#proj GIT_VERSION=<commit>`, as the README
    gives it: MLflow clones the repo and runs the project in proj/."""
    base, root = git_base
    commit = head_commit(project_in_subdirectory(base / "monorepo"))
    repo_url = f"{root}/monorepo"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    project = project_with_venv(tmp_path / "project")
    clones = tmp_path / "clones"
    clones.mkdir()
    code, output = run_make(
        project,
        "run-from-git",
        make_env(uri, TMPDIR=str(clones)),
        f"GIT_URL={repo_url}#{SUBDIR}",
        f"GIT_VERSION={commit}",
    )
    assert code == 0, output[-5000:]

    client = MlflowClient(uri)
    parent, children = pipeline_tree(client)
    assert set(children) == set(STEPS)
    assert parent.data.tags["mlflow.source.name"] == f"{repo_url}#{SUBDIR}"
    for run in (parent, *children.values()):
        assert run.info.status == "FINISHED"
        assert_provenance(run, commit, repo_url)
    champion = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert champion.run_id == children["train"].info.run_id
