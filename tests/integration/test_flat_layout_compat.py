"""Models registered by the flat ``steps/`` layout keep loading and predicting after the move
into subpackages.

The last commit of the flat layout (FLAT_LAYOUT_COMMIT) runs its own pipeline (`mlflow run .
-e main`, a small model) into a temp SQLite store and scores rows with its own ``predict``
step. This code then loads that champion the way serve and predict do (registry URI →
pinned version → skops with ``models.SKOPS_TRUSTED_TYPES``) and must predict the same
numbers: the class paths stored in the model (``steps.features.HousingFeatures``,
``steps.models.*``) still exist, and the trusted types still cover them. Needs the git
history (CI clones have it): the commit is read with ``git archive``.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from steps import config
from steps.serving import api
from steps.tracking import loading
from tests.support import (
    PROJECT_ROOT,
    commit,
    housing_sample,
    predict_env,
    run_main,
    run_predict,
    tracking,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The last commit with every module flat in steps/ (this layout's merge base with main).
FLAT_LAYOUT_COMMIT = "ca4e8e1c897753aacc0665b0ff10edbea21671df"
CHAMPION_URI = f"models:/{config.MODEL_NAME}@{config.CHAMPION_ALIAS}"
N_ROWS = 300


def flat_layout_tree(dest):
    """FLAT_LAYOUT_COMMIT's files in ``dest``, as a fresh clean git repo."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", FLAT_LAYOUT_COMMIT],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.fail(
            f"git archive {FLAT_LAYOUT_COMMIT} failed (a shallow clone? fetch the history): "
            + archive.stderr.decode(errors="replace")[-500:]
        )
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    commit(dest, "flat layout")
    return dest


@pytest.fixture(scope="module")
def flat_layout_run(tmp_path_factory):
    """(tracking URI, raw rows, the flat layout's own predictions of them)."""
    root = tmp_path_factory.mktemp("flat-layout")
    old = flat_layout_tree(root / "project")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_main(old, uri, "-P", "n_estimators=20", "-P", "model_kind=lightgbm")
    X, _ = housing_sample(n_rows=N_ROWS, seed=7)
    inputs = root / "rows.csv"
    X.to_csv(inputs, index=False)
    output = root / "old.parquet"
    env = predict_env(uri, PYTHONPATH=str(old))
    done = subprocess.run(
        [sys.executable, "-m", "steps.predict", "--input", str(inputs), "--output", str(output)],
        cwd=old,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return uri, inputs, X, pd.read_parquet(output)


def old_predictions(frame: pd.DataFrame) -> np.ndarray:
    return frame.sort_values(config.ROW_COLUMN)[config.PREDICTION_COLUMN].to_numpy()


def test_the_flat_layouts_champion_loads_and_predicts_the_same(flat_layout_run):
    uri, _, X, old = flat_layout_run
    with tracking(uri):
        pipeline, ref = loading.load_version(CHAMPION_URI)
    assert ref.name == config.MODEL_NAME
    np.testing.assert_allclose(pipeline.predict(X), old_predictions(old), rtol=1e-9)


def test_the_new_serving_app_answers_with_the_flat_layouts_model(flat_layout_run):
    uri, _, X, old = flat_layout_run
    with tracking(uri):
        pipeline, ref = loading.load_version(CHAMPION_URI)
    body = {"data": X.head(50).astype(object).where(X.head(50).notna(), None).to_dict("records")}
    with TestClient(api.create_app(api.ServedModel(pipeline, ref))) as client:
        reply = client.post("/predict", json=body)
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(reply.json()["predictions"], old_predictions(old)[:50], rtol=1e-9)


def test_the_new_predict_step_scores_the_flat_layouts_model_the_same(flat_layout_run, tmp_path):
    uri, inputs, _, old = flat_layout_run
    output = tmp_path / "new.parquet"
    done = run_predict(uri, tmp_path, "--input", str(inputs), "--output", str(output))
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(
        old_predictions(pd.read_parquet(output)), old_predictions(old), rtol=1e-9
    )
