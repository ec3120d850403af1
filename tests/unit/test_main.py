"""main's pure core: parameter forwarding, the cache key, the summary table."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

from steps import config
from steps.main import (
    TABLE_HEADER,
    CacheKey,
    StepResult,
    as_mlflow_params,
    error_lines,
    parent_run_name,
    project_run_args,
    result_row,
    reusable,
    run_description,
    step_params,
    summary_table,
    table_row,
)

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


def test_rows_line_up_when_printed_one_by_one():
    rows = [
        table_row(TABLE_HEADER),
        result_row(StepResult("load_data", "a" * 32, True, 0.1, "rows=10")),
        result_row(StepResult("register", "b" * 32, False, 12.3, "v2 @challenger")),
    ]
    starts = {
        row.index(word) for row, word in zip(rows, ("key metric", "rows=", "v2"), strict=True)
    }
    assert len(starts) == 1


def test_failed_step_shows_its_error_lines_else_its_tail():
    log = "INFO noise\nerror: train: upstream run x not found\nmore\n"
    assert error_lines(log) == ["error: train: upstream run x not found"]
    tail = "\n".join(f"line {i}" for i in range(40))
    assert error_lines(tail, tail=3) == ["line 37", "line 38", "line 39"]


def test_parent_run_is_named_and_described():
    results = [StepResult("train", "r2", False, 12.3, "test_rmse=$1")]
    assert parent_run_name("lightgbm", "5", "champion") == "main · lightgbm · v5@champion"
    description = run_description(results, "CaliforniaHousingRegressor v5 @champion")
    assert "| train | `r2` | ran | 12.3 | test_rmse=$1 |" in description


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


def test_launch_arguments_fit_mlflows_run_helper():
    """main starts steps through the private ``mlflow.projects._run``; an MLflow upgrade that
    changes it must fail here, not in the middle of a pipeline."""
    import mlflow.projects

    helper = inspect.signature(mlflow.projects._run)
    args = project_run_args("train", {"upstream_run_id": "abc"}, "local", "1")
    helper.bind(**args)  # raises TypeError on a missing, renamed or unknown argument
    assert set(args) == set(helper.parameters)
    # the waiting is done by ``mlflow.projects.run`` itself, after ``_run`` has returned
    source = inspect.getsource(mlflow.projects.run)
    assert "if synchronous:\n        _wait_for(submitted_run_obj)" in source
