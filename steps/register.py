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
if it has none. The registry work: ``steps.tracking.versions``; the alias decision and the
summaries it writes: ``steps.ml.promotion``.
Out (MLflow run): tags ``lineage.upstream_run_id``, ``dataset.dvc_md5``, ``registry.version``,
``registry.alias``, ``registry.verdict``, ``registry.reason``, ``registry.reused_version``,
``registry.model_name`` and, when the champion moved, ``registry.champion_from``/``_to``;
metrics ``test_rmse``, ``gate_rows``, ``gate_{candidate,champion,baseline}_rmse``; input
dataset ``gate_comparable_rows`` (context ``gate``); a markdown description with the verdict.
"""

from __future__ import annotations

import click

from steps import config
from steps.infra.errors import StepError
from steps.ml import promotion
from steps.ml.promotion import GateResult
from steps.tracking import lineage, loading, registry, steprun, versions

STEP = "register"


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
    limits = promotion.check_thresholds(
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

    version, reused, result = versions.register_or_reuse(
        client, model_name, upstream, model_id, limits
    )
    state, result = versions.settle(
        client, model_name, version, reused, result, train_run_id, limits
    )
    current: tuple[str, ...] = ()
    if reused and state.champion != version:
        current = tuple(client.get_model_version(model_name, str(version)).aliases or ())
    decision = promotion.decide_alias(version, state.champion, result.verdict, reused, current)
    if decision.set_challenger:
        registry.set_alias(client, model_name, config.CHALLENGER_ALIAS, version)
    note = promotion.summary_markdown(model_name, version, result, limits, decision.alias)
    if not reused:
        client.update_model_version(model_name, str(version), description=note)
    label = "reused" if reused else "registered"
    steprun.echo(STEP, f"{model_name} v{version} ({label}) → @{decision.alias}: {decision.reason}")
    log_register_run(
        promotion.run_tags(version, decision, result, reused, state.champion, before_number),
        result,
        new_rmse,
        promotion.run_note(note, version, reused, train_run_id),
    )


if __name__ == "__main__":
    cli()
