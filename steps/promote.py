"""Entry point ``promote``: move ``@champion`` by hand, or back to the previous champion.

In: ``--version`` (a version number, ``models:/NAME/N``, or ``previous`` = the champion before
the current one, from the recorded history), ``--reason`` (required), ``--model-name``.
Out (registry): ``@champion`` → that version, after checking it loads (skops, trusted types)
and scores its own test rows. Registered-model tags ``registry.settle_floor`` (the highest
version number now) and ``registry.pinned_version``: versions registered before this
promotion no longer compete automatically, so a concurrent or later register cannot undo
it; versions registered afterwards are gated against the promoted one as usual.
Out (MLflow run): tags ``registry.model_name``, ``registry.champion_from``,
``registry.champion_to``, ``registry.reason``, ``registry.version`` (who: ``mlflow.user``;
when: the run's times); metric ``promoted_test_rmse``; a description with the champion's
history. Bad input (unknown version, another model's version, no reason, a version that
cannot be loaded or scored, nothing to roll back to): one error line, FAILED run, aliases
untouched.
"""

from __future__ import annotations

import click
import numpy as np

from steps import config
from steps.data.schema import features_and_target
from steps.infra.errors import StepError, one_line
from steps.ml import gate
from steps.tracking import loading, outputs, registry, steprun

STEP = "promote"
PREVIOUS = "previous"


# --- pure core ----------------------------------------------------------------------------
def parse_version(text: str, model_name: str) -> int | str:
    """``N``, ``vN``, ``models:/NAME/N`` (NAME must be ``model_name``) or ``previous``."""
    value = text.strip()
    if value == PREVIOUS:
        return PREVIOUS
    prefix = "models:/"
    if value.startswith(prefix):
        name, _, number = value[len(prefix) :].rpartition("/")
        if name != model_name:
            raise StepError(f"{value} is a version of {name or '?'}, not of {model_name}")
        value = number
    value = value.removeprefix("v")
    if not value.isdigit() or int(value) < 1:
        raise StepError(
            f"version must be a number, models:/{model_name}/N or previous, got {text!r}"
        )
    return int(value)


# --- I/O + MLflow -------------------------------------------------------------------------
def check_servable(model_name: str, version) -> float:
    """Load the version like serve does and score its own test rows; returns the RMSE."""
    label = f"v{version.version}"
    try:
        pipeline = loading.load_model_uri(f"models:/{model_name}/{version.version}")
    except loading.ModelLoadError as exc:
        raise StepError(f"{label} cannot be loaded: {exc}") from exc
    train_run = version.tags.get(config.VERSION_TAG_TRAIN_RUN)
    if not train_run:
        raise StepError(f"{label} has no {config.VERSION_TAG_TRAIN_RUN} tag: cannot score it")
    (test,) = outputs.read_train_splits(train_run, config.TEST_SPLIT_FILE)
    X, y = features_and_target(test)
    try:
        predicted = np.asarray(pipeline.predict(X), dtype=float)
    except Exception as exc:  # any failure to predict means it must not serve
        raise StepError(f"{label} cannot score its test rows: {one_line(exc, 200)}") from exc
    if not np.isfinite(predicted).all():
        raise StepError(f"{label} predicts non-finite values on its test rows")
    return gate.rmse(y, predicted)


@click.command(help="Move @champion to a version (or back to the previous one), with a reason.")
@click.option("--version", "version_arg", required=True, help="N, models:/NAME/N or previous.")
@click.option("--reason", default="", help="Why (required; recorded on the run).")
@click.option("--model-name", default=config.MODEL_NAME, show_default=True)
@steprun.as_step(STEP)
def cli(version_arg: str, reason: str, model_name: str) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    loading.quiet_downloads()
    if not reason.strip():
        raise StepError('a reason is required: -P reason="why this version should serve"')
    wanted = parse_version(version_arg, model_name)
    client = mlflow.MlflowClient()
    mlflow.set_tag(config.TAG_REGISTRY_MODEL, model_name)
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        raise StepError(f"no registered model named {model_name}") from exc
    current = registry.champion_version(client, model_name)
    current_number = int(current.version) if current is not None else None
    moves = registry.champion_history(client, model_name)
    if wanted == PREVIOUS:
        wanted = registry.previous_champion(moves, current_number)
        if wanted is None:
            raise StepError(f"no earlier champion of {model_name} is recorded to roll back to")
    try:
        target = client.get_model_version(model_name, str(wanted))
    except MlflowException as exc:
        raise StepError(f"{model_name} has no version {wanted}") from exc
    if current_number == int(target.version):
        raise StepError(f"v{target.version} is already @champion of {model_name}")
    rmse = check_servable(model_name, target)

    # Close every earlier contest before moving the alias, so settles that read the state
    # from now on lead back here instead of to an automatic pick.
    floor = max(int(v.version) for v in registry.all_versions(client, model_name))
    client.set_registered_model_tag(model_name, config.MODEL_TAG_SETTLE_FLOOR, str(floor))
    client.set_registered_model_tag(model_name, config.MODEL_TAG_PINNED, str(target.version))
    registry.set_alias(client, model_name, config.CHAMPION_ALIAS, target.version)
    state = registry.settle_champion(client, model_name)
    source = f"v{current_number}" if current_number else "none"
    steprun.echo(
        STEP, f"{model_name} @champion: {source} → v{target.version} (test RMSE ${rmse:,.0f})"
    )
    if state.champion != int(target.version):
        steprun.echo(
            STEP, f"a version registered meanwhile passed the gate: @champion is v{state.champion}"
        )
    mlflow.set_tags(
        {
            config.TAG_CHAMPION_FROM: "" if current_number is None else str(current_number),
            config.TAG_CHAMPION_TO: str(target.version),
            config.TAG_REGISTRY_VERSION: str(target.version),
            config.TAG_REGISTRY_ALIAS: config.CHAMPION_ALIAS,
            config.TAG_REGISTRY_REASON: reason.strip(),
        }
    )
    mlflow.log_metric("promoted_test_rmse", rmse)
    history = registry.champion_history(client, model_name)
    user = client.get_run(mlflow.active_run().info.run_id).data.tags.get(
        config.TAG_MLFLOW_USER, "?"
    )
    mlflow.set_tag(
        config.TAG_MLFLOW_NOTE,
        f"**{model_name} @champion: {source} → v{target.version}** by {user}\n\n"
        f"Why: {reason.strip()}\n\n"
        f"Test RMSE of v{target.version} on its own test rows: ${rmse:,.0f}\n\n"
        f"Earlier moves (newest first):\n\n{registry.history_markdown(history)}",
    )


if __name__ == "__main__":
    cli()
