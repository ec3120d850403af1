"""`main` under faults: the tracking server dies mid-run, the pipeline is interrupted by a
signal. (Pipelines running at once against one server: test_postgres.py, with this file's
``run_concurrent_mains``.)

Timings are printed (run with ``-s`` to see them); docs/reliability.md records them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from steps import config
from steps.ml import gate
from steps.ml.hyperparams import DEFAULT_HYPERPARAMS
from steps.tracking import registry
from tests.support import (
    copy_project,
    free_port,
    latest_run,
    mlflow_run_local,
    project_env,
    run_main,
    run_processes,
    start_mlflow_server,
    stop,
    wait_for_run,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = ("load_data", "preprocess", "train", "register")
# Fail fast when the server is gone: 2 retries, 1 s backoff factor (sleeps 0 s then 2 s) and a
# 10 s socket timeout, instead of mlflow's 7 retries x factor 2 (~4 minutes per request).
FAST_FAIL_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


# --- helpers shared with test_postgres.py --------------------------------------------------
@dataclass
class Pipeline:
    """A `mlflow run . -e main` launched in its own session, its output in files."""

    proc: subprocess.Popen
    out: Path
    err: Path
    started: float
    project: Path

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def processes(self) -> list[psutil.Process]:
        """Every live process of this pipeline (launcher, main, step children), in its
        session or run by the step server for it."""
        return run_processes(self.proc.pid, self.project)

    def kill(self) -> None:
        """Best-effort cleanup: SIGKILL the whole session."""
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def start_main(project: Path, tracking_uri: str, *args: str, **env: str) -> Pipeline:
    out = project.parent / f"{project.name}.main.out"
    err = project.parent / f"{project.name}.main.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            mlflow_run_local("main", *args),
            cwd=project,
            env=project_env(tracking_uri, **env),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            # A test runner started in the background (`cmd &`) inherits SIGINT ignored, and
            # Python then never turns SIGINT into KeyboardInterrupt: give the pipeline the
            # default disposition a user's terminal would.
            preexec_fn=restore_sigint,
        )
    return Pipeline(proc, out, err, time.monotonic(), project)


def restore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def all_runs(client: MlflowClient) -> list:
    experiments = client.search_experiments(view_type=ViewType.ALL)
    return client.search_runs(
        [e.experiment_id for e in experiments], run_view_type=ViewType.ALL, max_results=5000
    )


def latest_parent(client: MlflowClient):
    return latest_run(client, "main")


def run_concurrent_mains(tmp_path: Path, tracking_uri: str, n: int = 4) -> float:
    """n `main` pipelines at once, each in its own project copy with its own hyperparameters;
    asserts they all succeed, get distinct registry versions and one consistent champion.
    Returns the wall time."""
    pipelines = []
    for i in range(1, n + 1):
        project = copy_project(tmp_path / f"project{i}")
        pipelines.append(
            (
                i,
                project,
                # n_estimators differs so test_rmse differs; small to keep 2 cores usable
                ["-P", f"n_estimators={20 + 15 * i}", "-P", f"random_state={i}"],
            )
        )
    started = time.monotonic()
    running = [start_main(project, tracking_uri, *args) for _, project, args in pipelines]
    try:
        for pipeline in running:
            pipeline.proc.wait(timeout=1800)
    finally:
        for pipeline in running:
            if pipeline.proc.poll() is None:
                pipeline.kill()
    wall = time.monotonic() - started
    for pipeline in running:
        assert pipeline.proc.returncode == 0, pipeline.stderr[-4000:]

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    parents = client.search_runs([experiment.experiment_id], f"tags.`{config.TAG_STEP}` = 'main'")
    assert len(parents) == n
    assert all(p.info.status == "FINISHED" for p in parents)
    versions = {p.data.tags["registry.version"] for p in parents}
    assert len(versions) == n, versions
    rmse_by_version = {
        p.data.tags["registry.version"]: p.data.metrics["test_rmse"] for p in parents
    }
    best = min(rmse_by_version, key=rmse_by_version.get)
    champion = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    # Same split for all: the gate compares test RMSEs and moves @champion only by a margin
    # beyond seed noise, so the champion is the best or within that margin of it, it passed
    # its gate, and the settle rule would not move it (one consistent answer).
    own = rmse_by_version[str(champion.version)]
    margin = max(
        config.DEFAULT_GATE_MIN_ABS_IMPROVEMENT, config.DEFAULT_GATE_MIN_REL_IMPROVEMENT * own
    )
    assert own <= rmse_by_version[best] + margin, (champion.version, rmse_by_version)
    assert champion.tags["gate.verdict"] in gate.PASSING
    assert float(champion.tags["test_rmse"]) == pytest.approx(own)
    state = registry.read_state(client, config.MODEL_NAME)
    assert state.champion == int(champion.version)
    assert gate.settle_target(state.champion, state.records, state.floor, state.pinned) == (
        state.champion
    )
    assert not [r.info.run_id for r in all_runs(client) if r.info.status == "RUNNING"]
    print(f"\n{n} concurrent mains: {wall:.0f} s wall; test_rmse by version {rmse_by_version}")
    return wall


# --- tracking server killed mid-run --------------------------------------------------------
def test_server_killed_mid_run_fails_fast_and_rerun_reuses_finished_steps(tmp_path):
    port = free_port()
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    artifacts = tmp_path / "artifacts"
    server, url = start_mlflow_server(backend, artifacts, port)
    project = copy_project(tmp_path / "project")
    pipeline = start_main(project, url, "-P", "n_estimators=60", **FAST_FAIL_ENV)
    try:
        wait_for_run(url, "train", pipeline.proc)  # train has opened its run
        os.killpg(server.pid, signal.SIGKILL)  # a crash, not a shutdown
        server.wait()
        killed = time.monotonic()
        pipeline.proc.wait(timeout=600)
        time_to_fail = time.monotonic() - killed
    finally:
        pipeline.kill()
        stop(server)
    stderr = pipeline.stderr
    assert pipeline.proc.returncode != 0
    assert "error: main: " in stderr, stderr[-4000:]
    # how fast is for bench/ and docs/reliability.md; here only that it ended on its own
    print(f"\nserver killed → main exited {pipeline.proc.returncode} after {time_to_fail:.1f} s")
    assert not pipeline.processes()

    # Same backend store, same port: the rerun reuses what finished before the crash.
    server, url2 = start_mlflow_server(backend, artifacts, port)
    try:
        assert url2 == url
        client = MlflowClient(url)
        stuck = [r for r in all_runs(client) if r.info.status == "RUNNING"]
        print(
            f"runs left RUNNING by the crash: {[r.data.tags.get(config.TAG_STEP) for r in stuck]}"
        )
        run_main(project, url, "-P", "n_estimators=60")
        parent = latest_parent(client)
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["pipeline.load_data.reused"] == "true"
        assert parent.data.tags["pipeline.preprocess.reused"] == "true"
        assert parent.data.tags["pipeline.train.reused"] == "false"
        assert parent.data.tags["pipeline.register.reused"] == "false"
        champion = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
        assert champion.run_id == parent.data.tags["pipeline.train.run_id"]
    finally:
        stop(server)


# --- signals -------------------------------------------------------------------------------
def signal_target(pipeline: Pipeline, target: str) -> None:
    if target == "group-SIGINT":  # Ctrl-C in the terminal that ran `mlflow run`
        os.killpg(pipeline.proc.pid, signal.SIGINT)
        return
    if target == "launcher-SIGTERM":  # `kill <pid of mlflow run>`: it dies at once
        pipeline.proc.send_signal(signal.SIGTERM)
        return
    main = next(p for p in pipeline.processes() if "steps.main" in " ".join(p.cmdline()))
    if target == "main-SIGTERM":  # a process manager stopping the pipeline driver
        main.send_signal(signal.SIGTERM)
    elif target == "main-SIGINT":
        main.send_signal(signal.SIGINT)
    else:
        raise ValueError(target)


@pytest.mark.parametrize("target", ["group-SIGINT", "main-SIGTERM", "launcher-SIGTERM"])
def test_signal_while_a_child_runs_stops_everything_and_ends_every_run(tmp_path, target):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    project = copy_project(tmp_path / "project")
    # The store exists before main starts: this test's polling and the launcher would
    # otherwise both create the new SQLite schema at once, which MLflow does not survive.
    MlflowClient(uri).search_experiments()
    # Ten times the default trees: the signal lands while train fits, however slow the machine
    # is between the run appearing and the signal being sent.
    trees = 10 * DEFAULT_HYPERPARAMS["n_estimators"]
    pipeline = start_main(project, uri, "-P", f"n_estimators={trees}")
    try:
        wait_for_run(uri, "train", pipeline.proc)
        children = [p for p in pipeline.processes() if "steps.train" in " ".join(p.cmdline())]
        assert children, "train child not found"
        signalled = time.monotonic()
        signal_target(pipeline, target)
        pipeline.proc.wait(timeout=120)
        deadline = time.monotonic() + 60
        while pipeline.processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        time_to_stop = time.monotonic() - signalled
        leftovers = [" ".join(p.cmdline()) for p in pipeline.processes()]
    finally:
        pipeline.kill()
    print(f"\n{target}: exit {pipeline.proc.returncode}, all stopped after {time_to_stop:.1f} s")
    assert pipeline.proc.returncode != 0
    assert not leftovers, leftovers
    assert not any(c.is_running() and c.status() != "zombie" for c in children)

    client = MlflowClient(uri)
    runs = all_runs(client)
    by_step = {}
    for run in runs:
        # a step still waiting for its upstream has not tagged itself yet: its run name says
        step = run.data.tags.get(config.TAG_STEP) or run.info.run_name
        by_step.setdefault(step if step in (*STEPS, "main") else "launcher", []).append(run)
    statuses = {step: sorted(r.info.status for r in rs) for step, rs in by_step.items()}
    print(f"{target}: run statuses {statuses}")
    assert not [s for s, st in statuses.items() if "RUNNING" in st], statuses
    assert statuses["train"] in (["KILLED"], ["FAILED"])
    # register, started ahead of its turn, was waiting for train: it ends KILLED too
    assert statuses.get("register", ["KILLED"]) == ["KILLED"], statuses
    assert statuses["launcher"] in (["FAILED"], ["KILLED"]), statuses
    assert statuses["main"] in (["KILLED"], ["FAILED"])
    assert "error: main: interrupted" in pipeline.stderr
    assert not list(client.search_registered_models())  # register never ran
