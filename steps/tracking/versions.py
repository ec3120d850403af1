"""register's registry work: gate a train run's model, register it (or find it registered)
and settle ``@champion``, through an ``MlflowClient``.

In: the client, the registered model's name, the train run (its gate predictions and, for
the champion, the training rows it logged; ``steps.tracking.outputs``), its logged model id
and the gate's ``Thresholds``. Out: the version number, whether it was reused, its
``GateResult`` (``steps.ml.promotion``) and the settled registry state
(``steps.tracking.registry``).
Written: a new version of the model (source ``models:/<model_id>``) with the tags
``train_run_id``, ``git_commit``, ``dataset.dvc_md5``, ``test_rmse``, ``model.kind``,
``logged_model_id``, the gate's ``gate.*`` tags, ``gate.record`` (last) and its markdown
description; the registered model's description if it has none; on the active run, the
input dataset ``gate_comparable_rows`` (context ``gate``) when there were rows to compare.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from steps import config
from steps.data.schema import features_and_target
from steps.infra.errors import StepError, one_line
from steps.ml import gate
from steps.ml.gate import Scores, Thresholds, Verdict
from steps.ml.promotion import GateResult, for_version, summary_markdown, summary_tags
from steps.tracking import loading, outputs, registry, steprun, storerace

ECHO_AS = "register"  # progress lines read as register's, whoever registers
# A fresh version re-gates when the champion moved to an unrelated version while it was
# being gated (a manual promotion, a concurrent contest); bounded so a storm cannot loop.
MAX_REGATES = 3
MODEL_DESCRIPTION = (
    "Median house value of a California census block group (1990 census), in US dollars. "
    "Input: one row per block group with the raw columns "
    + ", ".join(f"`{c}`" for c in config.FEATURES)
    + " (`total_bedrooms` may be missing). A scikit-learn Pipeline (feature engineering + "
    "regressor) trained by this project's `main`; `@champion` is the version to serve."
)


# --- the gate -------------------------------------------------------------------------------
def score_champion(pipeline: Any, rows: pd.DataFrame, label: str) -> float:
    """The champion's RMSE on ``rows``; a champion that cannot score them is a clear error."""
    X, y = features_and_target(rows)
    try:
        return gate.rmse(y, pipeline.predict(X))
    except Exception as exc:  # any failure to predict means it cannot be compared
        raise StepError(f"{label} cannot score the comparison rows: {one_line(exc, 200)}") from exc


def log_comparable_rows(rows: pd.DataFrame) -> None:
    """The rows the gate compared on, as the register run's input (context ``gate``)."""
    import mlflow

    dataset = mlflow.data.from_pandas(
        rows.loc[:, list(config.RAW_COLUMNS)].reset_index(drop=True),
        targets=config.TARGET,
        name="gate_comparable_rows",
    )
    storerace.with_unique_race_retry(lambda: mlflow.log_input(dataset, context="gate"))


def run_gate(client, model_name: str, candidate_run_id: str, limits: Thresholds) -> GateResult:
    """Score candidate, champion and baseline on the rows neither model trained on.

    The candidate's and the baseline's predictions on its test rows come from the train run
    (``config.GATE_PREDICTIONS_FILE``); only the champion is loaded and asked to predict.
    """
    scored = outputs.read_gate_predictions(candidate_run_id)
    champion = registry.champion_version(client, model_name)
    champion_pipeline = None
    if champion is None:
        rows = scored
    else:
        label = f"champion v{champion.version}"
        champion_run = champion.tags.get(config.VERSION_TAG_TRAIN_RUN)
        if not champion_run:
            raise StepError(f"{label} has no {config.VERSION_TAG_TRAIN_RUN} tag; promote by hand")
        try:
            (champion_train,) = outputs.read_train_splits(champion_run, config.TRAIN_SPLIT_FILE)
        except StepError as exc:
            raise StepError(f"{label}: training rows unavailable: {exc}") from exc
        try:
            champion_pipeline = loading.load_model_uri(f"models:/{model_name}/{champion.version}")
        except loading.ModelLoadError as exc:
            raise StepError(f"{label} cannot be loaded: {exc}") from exc
        rows = gate.comparable_rows(scored, champion_train)
    champion_number = int(champion.version) if champion is not None else None
    if len(rows) == 0:
        scores = Scores(0, None, None, None)
        return GateResult(champion_number, scores, gate.decide(scores, limits, champion_number))

    actual = rows[config.TARGET]
    champ_rmse = None
    if champion_pipeline is not None:
        champ_rmse = score_champion(champion_pipeline, rows, f"champion v{champion_number}")
    scores = Scores(
        len(rows),
        gate.rmse(actual, rows[config.GATE_CANDIDATE_COLUMN]),
        champ_rmse,
        gate.rmse(actual, rows[config.GATE_BASELINE_COLUMN]),
    )
    log_comparable_rows(rows)
    return GateResult(champion_number, scores, gate.decide(scores, limits, champion_number))


# --- versions -------------------------------------------------------------------------------
def find_existing(client, model_name: str, model_id: str, train_run_id: str) -> Any | None:
    """The version already registered for this logged model or train run (oldest first)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = registry.all_versions(client, model_name)
    except MlflowException:
        return None
    same = [
        v
        for v in versions
        if v.source == f"models:/{model_id}"
        or getattr(v, "model_id", None) == model_id
        or v.tags.get(config.VERSION_TAG_TRAIN_RUN) == train_run_id
    ]
    return min(same, key=lambda v: int(v.version), default=None)


def ensure_description(client, model_name: str) -> None:
    if not (client.get_registered_model(model_name).description or "").strip():
        client.update_registered_model(model_name, description=MODEL_DESCRIPTION)


def write_gate(client, model_name: str, version: int, result: GateResult, limits, alias) -> None:
    """The gate's summary onto the version: one atomic record tag, readable tags, description."""
    record = gate.record_for(version, result.champion, result.scores, result.verdict)
    for key, value in summary_tags(result, limits).items():
        client.set_model_version_tag(model_name, str(version), key, value)
    client.update_model_version(
        model_name,
        str(version),
        description=summary_markdown(model_name, version, result, limits, alias),
    )
    # Last: the settle rule reads this tag, so the readable ones are in place first.
    client.set_model_version_tag(
        model_name, str(version), config.VERSION_TAG_GATE_RECORD, record.to_tag()
    )


def stored_result(version: Any) -> GateResult:
    """The gate result a reused version was registered with (from its tags)."""
    tags = version.tags
    p = config.VERSION_TAG_GATE_PREFIX

    def number(key: str) -> float | None:
        value = tags.get(f"{p}{key}")
        return float(value) if value else None

    champion = tags.get(f"{p}champion_version")
    return GateResult(
        int(champion) if champion else None,
        Scores(
            int(tags.get(f"{p}rows") or 0),
            number("candidate_rmse"),
            number("champion_rmse"),
            number("baseline_rmse"),
        ),
        Verdict(
            tags.get(f"{p}verdict", "unknown"),
            tags.get(f"{p}reason", "registered before the gate existed"),
        ),
    )


def register_or_reuse(
    client: Any, model_name: str, upstream: Any, model_id: str, limits: Thresholds
) -> tuple[int, bool, GateResult]:
    """(version, reused, gate result): the version the train run already is, else a new one,
    gated before it is registered (a champion that cannot be scored leaves the registry as
    it was)."""
    import mlflow

    train_run_id = upstream.info.run_id
    existing = find_existing(client, model_name, model_id, train_run_id)
    if existing is not None:
        version = int(existing.version)
        steprun.echo(
            ECHO_AS, f"train run {train_run_id} is already {model_name} v{version}: reusing it"
        )
        return version, True, stored_result(existing)
    result = run_gate(client, model_name, train_run_id, limits)
    tags = {
        config.VERSION_TAG_TRAIN_RUN: train_run_id,
        config.VERSION_TAG_GIT_COMMIT: upstream.data.tags.get(
            config.TAG_MLFLOW_GIT_COMMIT, "unknown"
        ),
        config.TAG_DVC_MD5: upstream.data.tags.get(config.TAG_DVC_MD5, "unknown"),
        config.VERSION_TAG_TEST_RMSE: repr(upstream.data.metrics["test_rmse"]),
        config.TAG_MODEL_KIND: upstream.data.tags.get(config.TAG_MODEL_KIND, "unknown"),
        config.VERSION_TAG_LOGGED_MODEL: model_id,
    }
    created = mlflow.register_model(f"models:/{model_id}", model_name, tags=tags)
    version = int(created.version)
    result = for_version(result, version)
    ensure_description(client, model_name)
    write_gate(client, model_name, version, result, limits, "pending")
    return version, False, result


def settle(
    client: Any,
    model_name: str,
    version: int,
    reused: bool,
    result: GateResult,
    train_run_id: str,
    limits: Thresholds,
) -> tuple[Any, GateResult]:
    """Settle the champion; a new version whose gate went stale meanwhile (the champion
    moved) is gated again, at most MAX_REGATES times. (settled state, latest gate result)"""
    state = registry.settle_champion(client, model_name)
    for _ in range(MAX_REGATES):
        record = state.records.get(version)
        if reused or record is None or version <= state.floor:
            break
        if not gate.is_stale(record, state.champion, state.records):
            break
        steprun.echo(ECHO_AS, f"champion moved to v{state.champion} while gating: gating again")
        result = for_version(run_gate(client, model_name, train_run_id, limits), version)
        write_gate(client, model_name, version, result, limits, "pending")
        state = registry.settle_champion(client, model_name)
    return state, result
