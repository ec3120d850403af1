"""The retraining loop end to end, with real parts only: a champion from a real pipeline run,
served by a real server that logs what it answers and follows ``@champion``; traffic with a
silent unit change; a new data version at the source; ``mlflow run . -e retrain`` (which
runs monitor, sees the drift and the new data, versions it and runs main); the gate; and the
running server answering with whatever the gate made champion."""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest

from steps import config
from steps.tracking.loading import DEFAULT_MODEL_URI
from tests.integration.test_serving import child_env, records, served_versions, server
from tests.support import (
    copy_project,
    housing_csv,
    housing_sample,
    launched_run_id,
    mlflow_run_local,
    project_env,
    resample_housing,
    run_cmd,
    run_main,
    tracking,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MODEL_URI = DEFAULT_MODEL_URI  # the champion, as serve resolves it by default
RELOAD_S = 1.0
FOLLOW_S = RELOAD_S + 30  # the interval plus a download, a skops load and a probe
FOLLOWED_STREAK = 20  # answers in a row from the new version: both workers have it
# the new data version: enough rows that the gate compares on >= min_gate_rows test rows
NEW_VERSION_FACTOR = 0.3  # of 20,640 rows: 6,192, 1,238 of them in the test split
INCOME_UNIT = 10  # median_income in thousands of dollars instead of tens of thousands


def predict_version(url: str, rows: pd.DataFrame) -> str:
    """The version that answered a /predict of ``rows`` (its x-model-version header)."""
    body = json.dumps({"data": records(rows)}).encode()
    request = urllib.request.Request(
        f"{url}/predict", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return response.headers["x-model-version"]


def logged_rows(log_dir: Path) -> int:
    """Rows in the inference log's closed files (open ones are hidden and unreadable)."""
    return sum(len(pd.read_parquet(p)) for p in log_dir.glob("*/requests-*.parquet"))


def rolling_restart(url: str, rows: int, log_dir: Path) -> None:
    """SIGHUP to the server's supervisor: uvicorn replaces each worker by a new one before
    retiring it (no downtime); a retiring worker closes its log file, so the traffic becomes
    readable to monitor now rather than when the file would close (5 minutes)."""
    (supervisor,) = {psutil.Process(int(pid)).parent() for pid in served_versions(url)}
    supervisor.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 120
    while logged_rows(log_dir) < rows:
        assert time.monotonic() < deadline, f"{logged_rows(log_dir)} logged rows, not {rows}"
        time.sleep(0.2)


def run_retrain(project: Path, uri: str, log_dir: Path, since: str, source: Path):
    """`mlflow run . -e retrain` on the log window from ``since``, with ``source`` as the data
    source; it must succeed."""
    result = run_cmd(
        mlflow_run_local(
            "retrain", "--experiment-name", config.EXPERIMENT_NAME,
            "-P", f"log_dir={log_dir}", "-P", f"since={since}",
            "-P", f"source_url={source.as_uri()}",
        ),
        cwd=project,
        env=project_env(uri),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_shift_drift_new_data_retrain_gate_and_the_server_follows(tmp_path):
    import mlflow

    started = time.monotonic()
    project = copy_project(tmp_path / "project")
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    first = run_main(project, uri)
    with tracking(uri):
        client = mlflow.MlflowClient()
        v1 = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    print(f"\nchampion v{v1.version} from main ({launched_run_id(first.stderr)})")

    log_dir = tmp_path / "inference-log"
    args = [sys.executable, "-m", "steps.serve", "--model-uri", MODEL_URI, "--workers", "2"]
    args += ["--reload-interval", str(RELOAD_S), "--log-dir", str(log_dir)]
    X, _ = housing_sample(housing_csv(), n_rows=600, seed=31)
    shifted = X.assign(median_income=X["median_income"] * INCOME_UNIT)
    with server(args, child_env(uri, allow_pickle=False), tmp_path, "/ready") as url:
        since = pd.Timestamp.now(tz="UTC").isoformat()
        assert predict_version(url, shifted) == str(v1.version)
        rolling_restart(url, len(shifted), log_dir)

        # the same unit change reaches the data: a new version at the source
        real = pd.read_csv(housing_csv())
        new = resample_housing(real, NEW_VERSION_FACTOR, seed=3)
        new["median_income"] = (new["median_income"] * INCOME_UNIT).round(4)
        source = tmp_path / "source" / config.RAW_FILE_NAME
        source.parent.mkdir()
        new.to_csv(source, index=False)

        retrain = run_retrain(project, uri, log_dir, since, source)
        with tracking(uri):
            client = mlflow.MlflowClient()
            run = client.get_run(launched_run_id(retrain.stderr))
            tags = run.data.tags
            monitor = client.get_run(tags["retrain.monitor_run_id"])
            main = client.get_run(tags["retrain.main_run_id"])
            load = client.get_run(main.data.tags["pipeline.load_data.run_id"])
            champion = client.get_model_version_by_alias(config.MODEL_NAME, "champion")
        version, alias = tags["registry.version"], tags["registry.alias"]
        print(f"monitor {monitor.info.run_id}: {monitor.data.tags['monitor.verdict']} in "
              f"{monitor.data.tags['monitor.drifted_features']}")  # fmt: skip
        print(f"retrain {run.info.run_id} ({tags['mlflow.runName']}): {tags['retrain.reasons']}")
        print(f"main {main.info.run_id}: v{version} -> @{alias}; gate {tags['registry.verdict']}: "
              f"{tags['registry.reason']}")  # fmt: skip

        # why it ran, and what it ran
        assert run.info.status == "FINISHED" and tags["pipeline.step"] == "retrain"
        assert monitor.data.tags["monitor.verdict"] == "drift"
        assert monitor.data.tags["monitor.drifted_features"] == "median_income"
        assert monitor.data.tags["mlflow.parentRunId"] == run.info.run_id
        assert tags["retrain.decision"] == "retrain"
        assert tags["retrain.reasons"].startswith("drift in median_income; data version changed")
        assert tags["retrain.champion_md5"] == v1.tags["dataset.dvc_md5"]
        assert tags["retrain.source_md5"] != tags["retrain.champion_md5"]
        assert tags["retrain.accept_drift"] == "true"
        assert "Reasons: drift in median_income" in tags["mlflow.note.content"]
        # main trained on the new version, which the contract let through as accepted drift
        assert main.info.status == "FINISHED"
        assert main.data.tags["mlflow.parentRunId"] == run.info.run_id
        assert main.data.tags["dataset.dvc_md5"] == tags["retrain.source_md5"]
        assert load.data.tags["data_contract.accept_drift"] == "true"
        assert load.data.tags["data_contract.status"] == "warnings"
        assert load.data.metrics["n_rows"] == len(new)
        # the gate decided, and the decision is recorded on retrain's run
        assert version and alias in ("champion", "challenger")
        register = main.data.tags["pipeline.register.run_id"]
        with tracking(uri):
            gate = mlflow.MlflowClient().get_run(register).data.tags
        assert tags["registry.verdict"] == gate["registry.verdict"] != ""
        assert tags["registry.reason"] == gate["registry.reason"] != ""
        assert f"Gate: {gate['registry.verdict']}: " in tags["mlflow.note.content"]
        # the champion judged against the new rows with the old unit: the new model wins
        assert alias == "champion" and str(champion.version) == version != str(v1.version)
        # the running server follows the alias
        deadline, streak = time.monotonic() + FOLLOW_S, 0
        while streak < FOLLOWED_STREAK:  # new connections: either worker answers
            answered = predict_version(url, shifted.head(1))
            streak = streak + 1 if answered == version else 0
            assert time.monotonic() < deadline, f"still v{answered}, not v{version}"
            time.sleep(0.05)
    # the new version is the project's data version now, as after `dvc add data`
    dvc = (project / "data.dvc").read_text()
    assert tags["retrain.source_md5"] in dvc

    # the next scheduled check: no traffic since (monitor cannot judge), the same data
    quiet = run_retrain(project, uri, log_dir, pd.Timestamp.now(tz="UTC").isoformat(), source)
    with tracking(uri):
        client = mlflow.MlflowClient()
        idle = client.get_run(launched_run_id(quiet.stderr))
        judged = client.get_run(idle.data.tags["retrain.monitor_run_id"])
        versions = client.search_model_versions(f"name = '{config.MODEL_NAME}'")
    print(f"retrain {idle.info.run_id} ({idle.data.tags['mlflow.runName']})")
    assert idle.info.status == "FINISHED" and judged.info.status == "FAILED"
    assert idle.data.tags["retrain.decision"] == "nothing_to_do"
    assert idle.data.tags["retrain.reasons"] == ""
    assert "retrain.main_run_id" not in idle.data.tags
    note = idle.data.tags["mlflow.note.content"]
    assert f"no verdict (monitor run {judged.info.run_id} did not judge: " in note
    with tracking(uri):
        kept = {a.path for a in mlflow.MlflowClient().list_artifacts(judged.info.run_id, "logs")}
    assert kept == {"logs/monitor.log"}
    assert "error:" not in quiet.stderr  # monitor's complaint is a missing verdict, not ours
    assert len(versions) == 2
    print(f"server answered v{version}; test took {time.monotonic() - started:.0f} s")


def test_a_failing_main_puts_the_data_version_back_and_registers_nothing(tmp_path):
    """retrain forced onto a new data version that main's load_data refuses (200 rows: the
    contract wants 1,000): retrain's run FAILED with one line naming main's run, which FAILED
    too; data.dvc as it was and no data/ left in the work tree; nothing registered."""
    import mlflow

    project = copy_project(tmp_path / "project")
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    source = tmp_path / "housing.csv"
    pd.read_csv(housing_csv()).sample(200, random_state=5).to_csv(source, index=False)
    dvc_file = (project / "data.dvc").read_text()
    result = run_cmd(
        mlflow_run_local(
            "retrain", "--experiment-name", config.EXPERIMENT_NAME,
            "-P", "force=true", "-P", f"source_url={source.as_uri()}",
            "-P", f"log_dir={tmp_path / 'no-traffic'}",
        ),
        cwd=project,
        env=project_env(uri),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-5000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error: retrain:")]
    assert line.endswith("failed; the champion did not move"), line
    assert (project / "data.dvc").read_text() == dvc_file
    assert not (project / "data").exists()
    with tracking(uri):
        client = mlflow.MlflowClient()
        (retrain,) = client.search_runs(
            [client.get_experiment_by_name(config.EXPERIMENT_NAME).experiment_id],
            f"tags.`{config.TAG_STEP}` = 'retrain'",
        )
        main = client.get_run(retrain.data.tags[config.TAG_RETRAIN_MAIN_RUN])
        assert main.info.run_id in line
        assert (retrain.info.status, main.info.status) == ("FAILED", "FAILED")
        assert "forced" in retrain.data.tags[config.TAG_RETRAIN_REASONS].split("; ")
        assert not client.search_registered_models()
