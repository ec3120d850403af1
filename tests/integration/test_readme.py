"""The README's commands, verbatim, the way a new user runs them (tests/cleanshell.py: a
fresh clone, an empty HOME, a plain PATH). Change a command in the README and this test runs
the new one. The second command, `make test`, is tests/integration/test_ci_paths.py's.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from steps import config
from steps.serve import DEFAULT_PORT as SERVE_PORT
from tests.cleanshell import (
    STEPS,
    Shell,
    commands,
    ok,
    pyenv_root,
    readme_blocks,
    statuses,
)
from tests.support import (
    clean_shell_env,
    housing_csv,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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
    np.testing.assert_allclose(predictions[config.PREDICTION_COLUMN], expected, rtol=0, atol=0.01)


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
