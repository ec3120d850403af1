"""Step reuse: the key a step's result is reused under (its parameters as MLflow stores
them, its code hash, its upstream run, the data md5) and the finished run that matches it.

Reads runs of the pipeline's experiment; writes nothing. ``register`` is never reused."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from steps import config

NEVER_REUSED = frozenset({"register"})


@dataclass(frozen=True)
class CacheKey:
    """What must match for a finished run to stand in for a new one."""

    step: str
    params: dict[str, str]
    code_hash: str
    data_md5: str | None = field(default=None)


def as_mlflow_params(params: dict[str, Any]) -> dict[str, str]:
    """Parameters the way MLflow stores them (strings), so comparisons can hit."""
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}


def step_params(step: str, upstream_run_id: str | None, opts: dict[str, Any]) -> dict[str, str]:
    """The parameters main passes to one step, taken from main's own options."""
    names = {
        "load_data": ["source_url", "accept_drift"],
        "preprocess": ["test_size", "split_seed", "split_strategy"],
        "train": ["model_kind", *opts["hyperparam_names"]],
        "register": [],
    }[step]
    params = {name: opts[name] for name in names}
    if upstream_run_id is not None:
        params["upstream_run_id"] = upstream_run_id
    return as_mlflow_params(params)


def reusable(run: Any, key: CacheKey) -> bool:
    """Does a FINISHED run match the key exactly (code, data, parameters, upstream)?"""
    tags = run.data.tags
    return (
        run.info.status == "FINISHED"
        and tags.get(config.TAG_STEP) == key.step
        and tags.get(config.TAG_CODE_HASH) == key.code_hash
        and (key.data_md5 is None or tags.get(config.TAG_DVC_MD5) == key.data_md5)
        and all(param_matches(run, name, value) for name, value in key.params.items())
    )


def param_matches(run: Any, name: str, value: str) -> bool:
    """A parameter as the run recorded it. The upstream run is compared with the run that
    was actually consumed (tag ``lineage.upstream_run_id``), so a step run alone with an
    empty ``upstream_run_id`` ("the latest one") is reusable once it is known which it took."""
    if name == "upstream_run_id":
        return run.data.tags.get(config.TAG_UPSTREAM) == value
    return stored_as(value) == run.data.params.get(name)


def stored_as(value: str) -> str:
    """How `mlflow run` records a parameter: shell-quoted, so "" is stored as "''"."""
    return shlex.quote(value)


def find_reusable(experiment_id: str, key: CacheKey) -> Any | None:
    """The newest run matching the key. The store narrows by step, status and code hash;
    parameters (stored shell-quoted) are compared here, page by page, so no match is missed
    however many runs the experiment holds."""
    import mlflow

    client = mlflow.MlflowClient()
    query = (
        f"tags.`{config.TAG_STEP}` = '{key.step}' and attributes.status = 'FINISHED' "
        f"and tags.`{config.TAG_CODE_HASH}` = '{key.code_hash}'"
    )
    if key.data_md5:
        query += f" and tags.`{config.TAG_DVC_MD5}` = '{key.data_md5}'"
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=query,
            order_by=["attributes.start_time DESC"],
            max_results=200,
            page_token=token,
        )
        hit = next((run for run in page if reusable(run, key)), None)
        if hit is not None or not page.token:
            return hit
        token = page.token
