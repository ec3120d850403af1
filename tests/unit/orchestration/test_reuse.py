"""Step reuse (steps.orchestration.reuse): parameter forwarding and the cache key."""

from __future__ import annotations

from types import SimpleNamespace

from steps import config
from steps.orchestration.reuse import CacheKey, as_mlflow_params, reusable, step_params

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


def fake_run(step="train", params=None, code="c1", md5="m.dir", status="FINISHED", dirty="false"):
    """A stored-run record as MLflow returns it (all params are strings)."""
    params = params or {}
    tags = {
        config.TAG_UPSTREAM: params.get("upstream_run_id"),
        config.TAG_STEP: step,
        config.TAG_CODE_HASH: code,
        config.TAG_GIT_DIRTY: dirty,
        config.TAG_DVC_MD5: md5,
    }
    return SimpleNamespace(
        info=SimpleNamespace(status=status), data=SimpleNamespace(tags=tags, params=params)
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
    key = CacheKey("train", params, "c1", "m.dir")
    assert reusable(fake_run(params=params), key)
    empty = CacheKey("load_data", {"source_url": ""}, "c1", "m.dir")
    assert reusable(fake_run("load_data", {"source_url": "''"}), empty)  # as `mlflow run` logs it
    assert not reusable(fake_run(params=params | {"learning_rate": "0.1"}), key)
    assert not reusable(fake_run(params=params | {"upstream_run_id": "up2"}), key)
    assert not reusable(fake_run(params=params, code="c2"), key)
    assert not reusable(fake_run(params=params, md5="other.dir"), key)
    assert not reusable(fake_run(params=params, status="FAILED"), key)
    assert not reusable(fake_run(step="preprocess", params=params), key)
    # the code hash is read from the files, so a run from a dirty tree is as good as any
    assert reusable(fake_run(params=params, dirty="true"), key)
    # a step run alone ("latest upstream": param '') counts with the upstream it consumed
    alone = fake_run(params=params | {"upstream_run_id": "''"})
    alone.data.tags[config.TAG_UPSTREAM] = "up1"
    assert reusable(alone, key)
    alone.data.tags[config.TAG_UPSTREAM] = "up0"
    assert not reusable(alone, key)
