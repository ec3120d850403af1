"""`mlflow run . -e main` for real: nested runs, lineage, metrics, registry, reuse, bad data.

The project is a fresh copy of the work tree without data/, so the data arrives through
load_data's acquisition path (HOUSING_DATA_URL → the shared .tgz via file://).
"""

from __future__ import annotations

import math
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from steps import config
from steps.ml import gate
from tests.support import (
    copy_project,
    housing_csv,
    latest_run,
    launched_run_id,
    mlflow_run_local,
    project_env,
    run_cmd,
    run_main,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEPS = ("load_data", "preprocess", "train", "register")


def dvc_md5(project: Path) -> str:
    return yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]


def pipeline_runs(client: MlflowClient, parent_id: str) -> dict[str, object]:
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    return {run.data.tags[config.TAG_STEP]: run for run in children}


def latest_parent(client: MlflowClient):
    return latest_run(client, "main")


@pytest.fixture(scope="module")
def sqlite_pipeline(tmp_path_factory):
    """One cold `mlflow run . -e main` into a temp SQLite store, shared by this module."""
    root = tmp_path_factory.mktemp("pipeline")
    project = copy_project(root / "project")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = run_main(project, uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    return project, uri, client, result


def test_bare_run_groups_the_tree_under_the_pipeline_experiment(sqlite_pipeline):
    _, _, client, result = sqlite_pipeline
    parent = latest_parent(client)
    assert parent.info.status == "FINISHED"
    launcher_id = parent.data.tags["pipeline.launcher_run_id"]
    launcher = client.get_run(launcher_id)
    assert launcher.info.experiment_id == "0"  # what `mlflow run` made before main started
    assert launcher.data.tags["pipeline.moved_to_run_id"] == parent.info.run_id
    assert parent.data.tags["mlflow.source.git.commit"]
    for step in STEPS:
        assert step in result.stdout  # the summary table


def test_children_are_nested_and_linked(sqlite_pipeline):
    project, _, client, _ = sqlite_pipeline
    parent = latest_parent(client)
    runs = pipeline_runs(client, parent.info.run_id)
    assert set(runs) == set(STEPS)
    md5 = dvc_md5(project)
    upstream = None
    for step in STEPS:
        run = runs[step]
        assert run.info.status == "FINISHED", step
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags[config.TAG_DVC_MD5] == md5, step
        assert run.data.tags[config.TAG_GIT_DIRTY] == "false"
        assert parent.data.tags[f"pipeline.{step}.run_id"] == run.info.run_id
        if upstream is None:
            assert config.TAG_UPSTREAM not in run.data.tags
        else:
            assert run.data.tags[config.TAG_UPSTREAM] == upstream.info.run_id
            assert run.data.params["upstream_run_id"] == upstream.info.run_id
        upstream = run


def test_load_data_logs_verified_dataset(sqlite_pipeline):
    project, _, client, _ = sqlite_pipeline
    run = pipeline_runs(client, latest_parent(client).info.run_id)["load_data"]
    inputs = run.inputs.dataset_inputs
    raw = [d.dataset for d in inputs if d.dataset.name == config.RAW_DATASET_NAME]
    assert raw and raw[0].digest == dvc_md5(project)
    assert run.data.tags[config.TAG_FILE_MD5] == "d1c47305887e2252bf1ccbd74ff159a6"
    assert run.data.metrics["n_rows"] == 20640
    assert run.data.metrics["n_missing_total_bedrooms"] == 207
    # the data contract ran (first load: no reference) and its report is on the run
    assert run.data.tags["data_contract.status"] == "passed"
    assert run.data.tags["data_contract.accept_drift"] == "false"
    assert run.data.tags["data_contract.reference"].startswith("none")
    report = {f.path for f in client.list_artifacts(run.info.run_id, "data_report")}
    assert report == {
        "data_report/report.md",
        "data_report/histograms.png",
        "data_report/profile.json",
    }
    # the download landed in the workspace and the DVC cache, hash-verified
    assert (project / "data" / "housing.csv").exists()
    assert any((project / ".dvc" / "cache").rglob("*.dir"))


def test_train_logs_metrics_splits_and_one_raw_row_model(sqlite_pipeline):
    _, _, client, _ = sqlite_pipeline
    runs = pipeline_runs(client, latest_parent(client).info.run_id)
    train = runs["train"]
    for split in ("train", "test"):
        for metric in ("rmse", "mae", "r2"):
            assert math.isfinite(train.data.metrics[f"{split}_{metric}"])
    assert 0.75 < train.data.metrics["test_r2"] <= 1
    for run in (train, runs["preprocess"]):
        contexts = {
            tag.value
            for d in run.inputs.dataset_inputs
            for tag in d.tags
            if tag.key == "mlflow.data.context"
        }
        assert {"train", "test"} <= contexts
    artifacts = {a.path for a in client.list_artifacts(runs["preprocess"].info.run_id)}
    assert {config.SPLITS_ARTIFACT_DIR, config.PREPROCESSOR_ARTIFACT} <= artifacts
    # the evaluation report, built beside the model's logging, all of it in the run
    report = {a.path for a in client.list_artifacts(train.info.run_id, "evaluation")}
    figures = ("predicted_vs_actual", "residual_histogram", "residual_map")
    tables = ("permutation_importance", "error_by_ocean_proximity", "error_by_price_band")
    assert {f"evaluation/{name}.png" for name in (*figures, *tables)} <= report
    assert {f"evaluation/{name}.json" for name in tables} | {"evaluation/summary.md"} <= report
    assert train.data.metrics["eval_test_root_mean_squared_error"] == pytest.approx(
        train.data.metrics["test_rmse"]
    )


def test_champion_loads_and_predicts_dollars_for_raw_rows(sqlite_pipeline):
    _, _, client, _ = sqlite_pipeline
    parent = latest_parent(client)
    version = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert parent.data.tags["registry.version"] == str(version.version)
    assert parent.data.tags["registry.alias"] == config.CHAMPION_ALIAS
    assert math.isclose(float(version.tags["test_rmse"]), parent.data.metrics["test_rmse"])
    assert version.tags["git_commit"] == parent.data.tags["mlflow.source.git.commit"]
    assert version.tags[config.TAG_DVC_MD5] == parent.data.tags[config.TAG_DVC_MD5]

    model = mlflow.pyfunc.load_model(f"models:/{config.MODEL_NAME}@{config.CHAMPION_ALIAS}")
    rows = pd.read_csv(housing_csv(), nrows=len(config.OCEAN_PROXIMITY_VALUES))
    rows = rows.loc[:, list(config.FEATURES)]
    rows["ocean_proximity"] = list(config.OCEAN_PROXIMITY_VALUES)
    rows.loc[0, "total_bedrooms"] = float("nan")
    predictions = model.predict(rows)
    assert len(predictions) == len(rows)
    assert all(math.isfinite(p) and 10_000 < p < 1_000_000 for p in predictions)


def test_warm_rerun_reuses_every_step_but_register(sqlite_pipeline):
    project, uri, client, _ = sqlite_pipeline
    first = latest_parent(client)
    run_main(project, uri)
    second = latest_parent(client)
    assert second.info.run_id != first.info.run_id
    for step in ("load_data", "preprocess", "train"):
        assert second.data.tags[f"pipeline.{step}.reused"] == "true"
        assert (
            second.data.tags[f"pipeline.{step}.run_id"]
            == first.data.tags[f"pipeline.{step}.run_id"]
        )
    assert second.data.tags["pipeline.register.reused"] == "false"
    assert set(pipeline_runs(client, second.info.run_id)) == {"register"}
    # the same logged model is not registered twice: register reuses its version
    assert second.data.tags["registry.version"] == first.data.tags["registry.version"]
    assert second.data.tags["registry.alias"] == config.CHAMPION_ALIAS
    register = client.get_run(second.data.tags["pipeline.register.run_id"])
    assert register.data.tags["registry.reused_version"] == "true"
    assert len(client.search_model_versions(f"name = '{config.MODEL_NAME}'")) == 1
    champion = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert str(champion.version) == first.data.tags["registry.version"]


def test_hyperparameter_change_reruns_train_and_register_only(sqlite_pipeline):
    project, uri, client, _ = sqlite_pipeline
    before = latest_parent(client)
    run_main(project, uri, "-P", "random_state=7")
    after = latest_parent(client)
    assert after.data.tags["pipeline.load_data.reused"] == "true"
    assert after.data.tags["pipeline.preprocess.reused"] == "true"
    assert after.data.tags["pipeline.train.reused"] == "false"
    assert set(pipeline_runs(client, after.info.run_id)) == {"train", "register"}
    assert after.data.tags["pipeline.train.run_id"] != before.data.tags["pipeline.train.run_id"]


def test_pipeline_against_a_real_tracking_server(tmp_path, mlflow_server):
    project = copy_project(tmp_path / "project")
    result = run_main(project, mlflow_server)
    assert f"{mlflow_server}/#/experiments/" in result.stdout
    client = MlflowClient(mlflow_server)
    parent = latest_parent(client)
    runs = pipeline_runs(client, parent.info.run_id)
    assert set(runs) == set(STEPS)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    version = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    assert version.run_id == runs["train"].info.run_id


def test_tune_logs_nested_trials_and_best_params(sqlite_pipeline):
    project, uri, client, _ = sqlite_pipeline

    def tune(*params: str):
        args = ["--experiment-name", config.EXPERIMENT_NAME, "-P", "cv_folds=2"]
        for param in params:
            args += ["-P", param]
        return run_cmd(mlflow_run_local("tune", *args), cwd=project, env=project_env(uri))

    result = tune("n_trials=2")
    assert result.returncode == 0, result.stderr[-3000:]
    # the default study storage: a SQLite file beside the SQLite tracking store
    assert (Path(uri.removeprefix("sqlite:///")).parent / "optuna.db").exists()
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    tune_run = client.search_runs(
        [experiment.experiment_id], f"tags.`{config.TAG_STEP}` = 'tune'", max_results=1
    )[0]
    trials = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{tune_run.info.run_id}'"
    )
    assert sorted(t.data.tags["optuna.trial_number"] for t in trials) == ["0", "1"]
    # two trials: too few for the pruner to judge, so both complete
    assert {t.data.tags["optuna.trial_state"] for t in trials} == {"COMPLETE"}
    best = min(trials, key=lambda t: t.data.metrics["cv_rmse_mean"])
    assert tune_run.data.metrics["best_cv_rmse"] == best.data.metrics["cv_rmse_mean"]
    assert tune_run.data.tags["tune.best_trial_run_id"] == best.info.run_id
    assert tune_run.data.params["best_learning_rate"] == best.data.params["learning_rate"]
    assert f"-P learning_rate={best.data.params['learning_rate']} " in result.stdout
    preprocess = latest_parent(client).data.tags["pipeline.preprocess.run_id"]
    assert tune_run.data.tags[config.TAG_UPSTREAM] == preprocess
    assert tune_run.data.tags["optuna.study_name"] == f"tune-lightgbm-{preprocess}"

    # the default study's budget is fixed: asking for more is one clear error, a FAILED run
    more = tune("n_trials=3")
    assert more.returncode != 0
    assert "error: tune: study 'tune-lightgbm-" in more.stderr
    assert "n_trials=2 (this run: 3): pass the same values or another study_name" in more.stderr
    failed = client.get_run(launched_run_id(more.stderr))
    assert failed.info.status == "FAILED"
    assert not client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{failed.info.run_id}'"
    )


def test_reuse_follows_the_code_on_disk_not_the_commit(sqlite_pipeline):
    project, uri, client, _ = sqlite_pipeline
    first = latest_parent(client)
    readme = project / "README.md"
    readme.write_text(readme.read_text() + "\nA typo, fixed and not committed.\n")
    run_main(project, uri)
    docs_only = latest_parent(client)
    assert docs_only.data.tags[config.TAG_GIT_DIRTY] == "true"
    for step in ("load_data", "preprocess", "train"):
        assert docs_only.data.tags[f"pipeline.{step}.reused"] == "true", step

    # a module in a subpackage that only train imports: the hash follows imports into it
    evaluation = project / "steps" / "ml" / "evaluation.py"
    evaluation.write_text(evaluation.read_text() + "\n# a change to the training code\n")
    run_main(project, uri)
    code_change = latest_parent(client)
    assert code_change.data.tags["pipeline.load_data.reused"] == "true"
    assert code_change.data.tags["pipeline.preprocess.reused"] == "true"
    assert code_change.data.tags["pipeline.train.reused"] == "false"
    new_train = client.get_run(code_change.data.tags["pipeline.train.run_id"])
    old_train = client.get_run(first.data.tags["pipeline.train.run_id"])
    assert new_train.data.tags[config.TAG_CODE_HASH] != old_train.data.tags[config.TAG_CODE_HASH]


def test_runs_read_well_in_the_ui(sqlite_pipeline):
    _, _, client, result = sqlite_pipeline
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = latest_parent(client)
    version, alias = parent.data.tags["registry.version"], parent.data.tags["registry.alias"]
    assert parent.info.run_name == f"main · lightgbm · v{version}@{alias}"
    description = parent.data.tags["mlflow.note.content"]
    # the runs table's Dataset and Models columns are filled on the pipeline's row too
    assert [d.dataset.name for d in parent.inputs.dataset_inputs] == [config.RAW_DATASET_NAME]
    train = client.get_run(parent.data.tags["pipeline.train.run_id"])
    assert [m.model_id for m in parent.outputs.model_outputs] == [
        m.model_id for m in train.outputs.model_outputs
    ]
    assert all(f"| {step} | `" in description for step in STEPS)
    for step, run in pipeline_runs(client, parent.info.run_id).items():
        assert run.info.run_name == step
        logs = [a.path for a in client.list_artifacts(run.info.run_id, "logs")]
        assert logs == [f"logs/{step}.log"], step
    # quiet: a row per step and where to look; the steps' own output went to their logs
    assert len(result.stdout.splitlines()) <= 8, result.stdout
    assert "Downloading artifacts" not in result.stderr
    step_lines = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert step_lines == [
        "[main] pipeline runs are grouped in experiment 'california_housing_price'"
    ]


def read_lines(stream, into: list[tuple[float, str]]) -> threading.Thread:
    """Collect ``stream``'s lines with the wall-clock time each arrived (a reader thread)."""

    def read() -> None:
        for line in stream:
            into.append((time.time(), line.rstrip("\n")))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_verbose_run_streams_each_step_and_still_keeps_its_log(tmp_path):
    """`make run VERBOSE=1` (PIPELINE_VERBOSE=1): a step's output reaches the terminal while
    the step runs, and every step run still keeps all of it as its artifact logs/<step>.log."""
    project = copy_project(tmp_path / "project")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        mlflow_run_local("main"),
        cwd=project,
        env=project_env(uri, PIPELINE_VERBOSE="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout: list[tuple[float, str]] = []
    stderr: list[tuple[float, str]] = []
    readers = [read_lines(proc.stdout, stdout), read_lines(proc.stderr, stderr)]
    try:
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for reader in readers:
            reader.join(timeout=30)
    terminal = [line for _, line in stdout + stderr]
    assert proc.returncode == 0, "\n".join(terminal)[-5000:]

    shown = {line: at for at, line in reversed(stderr)}  # when each line first appeared
    client = MlflowClient(uri)
    runs = pipeline_runs(client, latest_parent(client).info.run_id)
    assert set(runs) == set(STEPS)
    for step, run in runs.items():
        run_id = run.info.run_id
        logs = [a.path for a in client.list_artifacts(run_id, "logs")]
        assert logs == [f"logs/{step}.log"], step
        path = client.download_artifacts(run_id, f"logs/{step}.log", str(tmp_path))
        log = Path(path).read_text(errors="replace").splitlines()
        # the step's own lines (steprun.echo: "[<step>] …"), and no other step's
        own = [line for line in log if line.startswith(f"[{step}] ")]
        assert own, (step, log[-40:])
        others = [line for line in log if line.startswith(tuple(f"[{s}] " for s in STEPS))]
        assert others == own, step
        assert not [line for line in own if line not in shown], (step, own)
        if step in ("load_data", "train"):
            # Their first line comes seconds before they end (download, fit): it reached the
            # terminal while the step ran, streamed, not replayed once the step was done.
            assert shown[own[0]] < run.info.end_time / 1000, (step, own[0])


def test_use_cache_false_reruns_every_step(sqlite_pipeline):
    project, uri, client, _ = sqlite_pipeline
    before = latest_parent(client)
    run_main(project, uri, "-P", "use_cache=false")
    after = latest_parent(client)
    assert set(pipeline_runs(client, after.info.run_id)) == set(STEPS)
    for step in STEPS:
        assert after.data.tags[f"pipeline.{step}.reused"] == "false", step
        assert (
            after.data.tags[f"pipeline.{step}.run_id"]
            != before.data.tags[f"pipeline.{step}.run_id"]
        )
    # the same data, code and parameters give the same model: the champion stays
    register = client.get_run(after.data.tags["pipeline.register.run_id"])
    assert register.data.tags["registry.verdict"] == gate.KEEP
