"""Step ``register``: register the train run's logged model and decide, fairly, its alias.

In: the ``train`` run (``--upstream-run-id``; empty = the latest finished one) and the gate
thresholds (defaults in ``steps.config``, justified in docs/pipeline.md).
Out (registry): a version of ``CaliforniaHousingRegressor`` whose source is the logged model
(``models:/<model_id>``), tagged ``train_run_id``, ``git_commit``, ``dataset.dvc_md5``,
``test_rmse``, ``model.kind``, ``logged_model_id`` and the gate's summary ``gate.*`` (also its
description). A train run already registered reuses its version (no duplicate). The gate
(``steps.ml.gate``) scores candidate, champion and a linear baseline on the same rows neither
model trained on; ``@champion`` moves only when the candidate clears it, else the version
gets ``@challenger``. Aliases only, never stages. The registered model gets a description
if it has none.
Out (MLflow run): tags ``lineage.upstream_run_id``, ``dataset.dvc_md5``, ``registry.version``,
``registry.alias``, ``registry.verdict``, ``registry.reason``, ``registry.reused_version``,
``registry.model_name`` and, when the champion moved, ``registry.champion_from``/``_to``;
metrics ``test_rmse``, ``gate_rows``, ``gate_{candidate,champion,baseline}_rmse``; input
dataset ``gate_comparable_rows`` (context ``gate``); a markdown description with the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click
import pandas as pd

from steps import config
from steps.data.schema import features_and_target
from steps.infra.errors import StepError, one_line
from steps.ml import gate
from steps.ml.gate import Scores, Thresholds, Verdict
from steps.tracking import lineage, loading, outputs, registry, steprun, storerace

STEP = "register"
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


@dataclass(frozen=True)
class GateResult:
    champion: int | None
    scores: Scores
    verdict: Verdict


# --- pure core ----------------------------------------------------------------------------
def for_version(result: GateResult, version: int) -> GateResult:
    """The result with the version number filled into its reason (decided before it existed)."""
    reason = result.verdict.reason.replace("<this version>", str(version))
    return GateResult(result.champion, result.scores, Verdict(result.verdict.outcome, reason))


def summary_tags(result: GateResult, limits: Thresholds) -> dict[str, str]:
    """The gate's summary as version tags (``gate.*``)."""
    s = result.scores
    p = config.VERSION_TAG_GATE_PREFIX

    def money(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    return {
        f"{p}verdict": result.verdict.outcome,
        f"{p}reason": result.verdict.reason,
        f"{p}champion_version": "" if result.champion is None else str(result.champion),
        f"{p}rows": str(s.rows),
        f"{p}candidate_rmse": money(s.candidate),
        f"{p}champion_rmse": money(s.champion),
        f"{p}baseline_rmse": money(s.baseline),
        f"{p}thresholds": (
            f"min_abs={limits.min_abs:g} min_rel={limits.min_rel:g} "
            f"baseline_min_rel={limits.baseline_min_rel:g} min_rows={limits.min_rows}"
        ),
    }


def summary_markdown(
    model_name: str, version: int, result: GateResult, limits: Thresholds, alias: str
) -> str:
    s = result.scores

    def money(value: float | None) -> str:
        return "—" if value is None else f"${value:,.0f}"

    champion = "none" if result.champion is None else f"v{result.champion}"
    return "\n".join(
        [
            f"**{model_name} v{version} → @{alias}** ({result.verdict.outcome})",
            "",
            result.verdict.reason,
            "",
            f"Scored on {s.rows} rows that neither this version nor the champion "
            f"({champion}) was trained on:",
            "",
            "| model | RMSE |",
            "|---|---|",
            f"| candidate v{version} | {money(s.candidate)} |",
            f"| champion {champion} | {money(s.champion)} |",
            f"| linear baseline | {money(s.baseline)} |",
            "",
            f"Thresholds: beat the champion by ≥ ${limits.min_abs:,.0f} and ≥ "
            f"{limits.min_rel:.1%}; beat the baseline by ≥ {limits.baseline_min_rel:.0%}; "
            f"≥ {limits.min_rows} comparable rows.",
        ]
    )


# --- I/O + MLflow -------------------------------------------------------------------------
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


# --- the alias decision (pure) ---------------------------------------------------------------
NO_ALIAS = "none"


@dataclass(frozen=True)
class AliasDecision:
    alias: str  # the alias the version holds once settled (or NO_ALIAS)
    reason: str  # why, for the run's tag and the log line
    set_challenger: bool  # register points @challenger at the version itself


def decide_alias(
    version: int,
    champion: int | None,
    verdict: Verdict,
    reused: bool,
    current_aliases: tuple[str, ...] = (),
) -> AliasDecision:
    """The alias a version ends up with once the registry settled (``champion``: the
    settled @champion), and the reason to record. A new version that did not win becomes
    @challenger; a reused version keeps whatever alias it has (``current_aliases``), since
    @challenger may have moved on. A settled champion that disagrees with the gate's verdict
    (another registration or a manual promotion decided meanwhile) is said so."""
    won = champion == version
    if won:
        alias = config.CHAMPION_ALIAS
    elif reused:
        alias = config.CHALLENGER_ALIAS if config.CHALLENGER_ALIAS in current_aliases else NO_ALIAS
    else:
        alias = config.CHALLENGER_ALIAS
    reason = verdict.reason
    if reused:
        reason = f"already registered; its gate said: {reason}"
    if won != verdict.promote:
        reason += f" (settled: champion is v{champion})"
    return AliasDecision(alias, reason, set_challenger=not won and not reused)


# --- register's steps (MLflow) ---------------------------------------------------------------
def check_thresholds(
    min_improvement_abs: float,
    min_improvement_rel: float,
    baseline_min_improvement_rel: float,
    min_gate_rows: int,
) -> Thresholds:
    if min_improvement_abs < 0 or not 0 <= min_improvement_rel < 1:
        raise StepError("min_improvement_abs must be >= 0 and min_improvement_rel in [0, 1)")
    if not 0 <= baseline_min_improvement_rel < 1 or min_gate_rows < 1:
        raise StepError("baseline_min_improvement_rel must be in [0, 1) and min_gate_rows >= 1")
    return Thresholds(
        min_improvement_abs, min_improvement_rel, baseline_min_improvement_rel, min_gate_rows
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
            STEP, f"train run {train_run_id} is already {model_name} v{version}: reusing it"
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
        steprun.echo(STEP, f"champion moved to v{state.champion} while gating: gating again")
        result = for_version(run_gate(client, model_name, train_run_id, limits), version)
        write_gate(client, model_name, version, result, limits, "pending")
        state = registry.settle_champion(client, model_name)
    return state, result


def log_register_run(
    run_tags: dict[str, str], result: GateResult, new_rmse: float, note: str
) -> None:
    """register's own run: what it did (tags), the gate's numbers (metrics), a description."""
    import mlflow

    mlflow.set_tags(run_tags)
    s = result.scores
    metrics = {"test_rmse": new_rmse, "gate_rows": s.rows}
    for key, value in (
        ("gate_candidate_rmse", s.candidate),
        ("gate_champion_rmse", s.champion),
        ("gate_baseline_rmse", s.baseline),
    ):
        if value is not None:
            metrics[key] = value
    mlflow.log_metrics(metrics)
    mlflow.set_tag(config.TAG_MLFLOW_NOTE, note)


@click.command(help="Register the train run's logged model; it takes @champion only if it wins.")
@click.option("--upstream-run-id", default="", help="train run (empty: latest finished).")
@click.option("--model-name", default=config.MODEL_NAME, show_default=True)
@click.option(
    "--min-improvement-abs",
    type=float,
    default=config.DEFAULT_GATE_MIN_ABS_IMPROVEMENT,
    show_default=True,
    help="dollars of RMSE the candidate must gain over the champion",
)
@click.option(
    "--min-improvement-rel",
    type=float,
    default=config.DEFAULT_GATE_MIN_REL_IMPROVEMENT,
    show_default=True,
    help="fraction of the champion's RMSE the candidate must gain",
)
@click.option(
    "--baseline-min-improvement-rel",
    type=float,
    default=config.DEFAULT_GATE_BASELINE_MIN_REL_IMPROVEMENT,
    show_default=True,
    help="fraction of the linear baseline's RMSE the candidate must gain",
)
@click.option(
    "--min-gate-rows",
    type=int,
    default=config.DEFAULT_GATE_MIN_ROWS,
    show_default=True,
    help="fewest rows neither model trained on for an automatic promotion",
)
@steprun.as_step(STEP, warm=("skops.io", "sklearn.pipeline"))
def cli(
    upstream_run_id: str,
    model_name: str,
    min_improvement_abs: float,
    min_improvement_rel: float,
    baseline_min_improvement_rel: float,
    min_gate_rows: int,
) -> None:
    import mlflow

    loading.quiet_downloads()
    limits = check_thresholds(
        min_improvement_abs, min_improvement_rel, baseline_min_improvement_rel, min_gate_rows
    )
    client = mlflow.MlflowClient()
    upstream = lineage.resolve_upstream(upstream_run_id, "train")
    lineage.link(upstream)
    train_run_id = upstream.info.run_id
    new_rmse = upstream.data.metrics.get("test_rmse")
    if new_rmse is None:
        raise StepError(f"train run {train_run_id} has no test_rmse metric")
    model_id = registry.logged_model_id(upstream)
    mlflow.set_tag(config.TAG_REGISTRY_MODEL, model_name)
    before = registry.champion_version(client, model_name)
    before_number = int(before.version) if before is not None else None

    version, reused, result = register_or_reuse(client, model_name, upstream, model_id, limits)
    state, result = settle(client, model_name, version, reused, result, train_run_id, limits)
    current: tuple[str, ...] = ()
    if reused and state.champion != version:
        current = tuple(client.get_model_version(model_name, str(version)).aliases or ())
    decision = decide_alias(version, state.champion, result.verdict, reused, current)
    alias, reason = decision.alias, decision.reason
    if decision.set_challenger:
        registry.set_alias(client, model_name, config.CHALLENGER_ALIAS, version)
    note = summary_markdown(model_name, version, result, limits, alias)
    if not reused:
        client.update_model_version(model_name, str(version), description=note)
    label = "reused" if reused else "registered"
    steprun.echo(STEP, f"{model_name} v{version} ({label}) → @{alias}: {reason}")

    run_tags = {
        config.TAG_REGISTRY_VERSION: str(version),
        config.TAG_REGISTRY_ALIAS: alias,
        config.TAG_REGISTRY_VERDICT: result.verdict.outcome,
        config.TAG_REGISTRY_REASON: reason,
        config.TAG_REGISTRY_REUSED_VERSION: str(reused).lower(),
    }
    if state.champion is not None and state.champion != before_number:
        run_tags[config.TAG_CHAMPION_FROM] = "" if before_number is None else str(before_number)
        run_tags[config.TAG_CHAMPION_TO] = str(state.champion)
    if reused:
        note = (
            f"Train run `{train_run_id}` was already v{version}: reused, not registered again.\n\n"
            + note
        )
    log_register_run(run_tags, result, new_rmse, note)


if __name__ == "__main__":
    cli()
