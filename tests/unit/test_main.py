"""main's pure core: parameter forwarding, the cache key, the summary table."""

from __future__ import annotations

from types import SimpleNamespace

from steps import config
from steps.main import CacheKey, StepResult, as_mlflow_params, reusable, step_params, summary_table

OPTS = {
    "source_url": "",
    "accept_drift": False,
    "test_size": 0.2,
    "split_seed": 42,
    "split_strategy": "income_stratified",
    "model_kind": "hgb",
    "n_estimators": 300,
    "learning_rate": 0.05,
    "hyperparam_names": ["n_estimators", "learning_rate"],
}


def fake_run(
    step="train", params=None, commit="abc", dirty="false", md5="m.dir", status="FINISHED"
):
    """A stored-run record as MLflow returns it (all params are strings)."""
    tags = {
        config.TAG_STEP: step,
        "mlflow.source.git.commit": commit,
        config.TAG_GIT_DIRTY: dirty,
        config.TAG_DVC_MD5: md5,
    }
    return SimpleNamespace(
        info=SimpleNamespace(status=status), data=SimpleNamespace(tags=tags, params=params or {})
    )


def test_params_are_compared_as_mlflow_stores_them():
    assert as_mlflow_params({"n": 300, "lr": 0.05, "flag": True, "s": "x"}) == {
        "n": "300",
        "lr": "0.05",
        "flag": "true",
        "s": "x",
    }


def test_step_params_carry_upstream_and_only_the_step_options():
    assert step_params("load_data", None, OPTS) == {"source_url": "", "accept_drift": "false"}
    params = step_params("train", "run123", OPTS)
    assert params == {
        "model_kind": "hgb",
        "n_estimators": "300",
        "learning_rate": "0.05",
        "upstream_run_id": "run123",
    }
    assert step_params("register", "t1", OPTS) == {"upstream_run_id": "t1"}


def test_reuse_requires_every_part_of_the_key():
    params = step_params("train", "up1", OPTS)
    key = CacheKey("train", params, "abc", True, "m.dir")
    assert reusable(fake_run(params=params), key)
    empty = CacheKey("load_data", {"source_url": ""}, "abc", True, "m.dir")
    assert reusable(fake_run("load_data", {"source_url": "''"}), empty)  # as `mlflow run` logs it
    assert not reusable(fake_run(params=params | {"learning_rate": "0.1"}), key)
    assert not reusable(fake_run(params=params | {"upstream_run_id": "up2"}), key)
    assert not reusable(fake_run(params=params, commit="def"), key)
    assert not reusable(fake_run(params=params, dirty="true"), key)
    assert not reusable(fake_run(params=params, md5="other.dir"), key)
    assert not reusable(fake_run(params=params, status="FAILED"), key)
    assert not reusable(fake_run(step="preprocess", params=params), key)
    dirty_now = CacheKey("train", params, "abc", False, "m.dir")
    assert not reusable(fake_run(params=params), dirty_now)


def test_summary_table_lists_each_step():
    table = summary_table(
        [
            StepResult("load_data", "r1", True, 0.1, "rows=10"),
            StepResult("train", "r2", False, 12.3, "test_rmse=1"),
        ]
    )
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["step", "run", "id"]
    assert "reused" in lines[1] and "ran" in lines[2] and "12.3" in lines[2]
