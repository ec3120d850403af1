"""Entry point ``retrain``: for schedulers. Run main when there is a reason, and say why.

In: the served traffic's verdict, from a ``monitor`` run that retrain launches on the window
``--log-dir``/``--since``/``--until`` (monitor's defaults: the 24 hours before now), or from
``--monitor-run latest`` (the latest finished monitor run) or ``--monitor-run <run id>``;
the data source ``--source-url`` (load_data's: empty means ``$HOUSING_DATA_URL``, else the
public URL); ``--force``; ``--accept-drift``; ``--env-manager`` (main's and monitor's,
passed explicitly: children do not inherit it).

The decision (``steps.orchestration.trigger``): drift in the traffic; the data the source
serves now has another DVC md5 than the champion's ``dataset.dvc_md5`` (hashed with
load_data's own acquisition code); forced. None: nothing to do, exit 0. Otherwise a new
data version is versioned first (``data/``, ``dvc add``: ``data.dvc`` changes in the work
tree, undone if main fails), then ``main`` runs through MLflow Projects as a child run of
retrain's (its steps are its own children) with ``accept_drift=true`` when the traffic
drifted and the data changed too; register's gate decides whether ``@champion`` moves.
A monitor run that cannot judge (too few rows, no log) is a missing verdict, not an error.

Out (MLflow, a run tagged ``pipeline.step=retrain``, named ``retrain · nothing to do`` or
``retrain · <reasons> · v<N>@<alias>``): tags ``retrain.decision`` (``retrain`` /
``nothing_to_do``), ``retrain.reasons``, ``retrain.monitor_run_id``,
``retrain.source_md5``, ``retrain.champion_md5``, ``retrain.accept_drift``,
``retrain.main_run_id``, ``registry.version``, ``registry.alias`` (main's outcome),
``registry.verdict``, ``registry.reason`` (the gate's, from main's register run); the
description (``mlflow.note.content``) says what was checked and what the gate decided. main
failing: FAILED run, exit 1, one line.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from steps import config
from steps.data import acquisition
from steps.infra.errors import StepError
from steps.orchestration import trigger
from steps.orchestration.launch import (
    attach_log,
    child_environment,
    new_log,
    output_to,
    project_run_args,
)
from steps.orchestration.parent import ensure_experiment
from steps.serving.inferencelog import DEFAULT_LOG_DIR
from steps.tracking import provenance, steprun

STEP = trigger.RUN
MONITOR = "monitor"
MAIN = "main"
REGISTER = "register"


def launch(
    entry_point: str,
    params: dict[str, str],
    env_manager: str,
    experiment_id: str,
    log: Path | None = None,
):
    """Run one entry point of this project as a child of retrain's run; (run id, succeeded).
    ``log``: its output goes there (kept as its run's ``logs/<entry>.log``), not to ours."""
    import mlflow.projects
    from mlflow.exceptions import ExecutionException

    args = project_run_args(entry_point, params, env_manager, experiment_id)
    try:
        with output_to(log) if log else contextlib.nullcontext():
            submitted = mlflow.projects._run(**args)
    except ExecutionException as exc:
        raise StepError(f"cannot start {entry_point}: {exc}") from exc
    return submitted.run_id, submitted.wait()


def run_monitor(client, params: dict[str, str], env_manager: str, experiment_id: str):
    """monitor on the window, its output in its run's log; (run id, succeeded, its last line).
    A monitor that cannot judge prints ``error: monitor: …``: for retrain that is a missing
    verdict, so it is shown as monitor's line, not as an error of ours."""
    log = new_log(MONITOR)
    run_id, succeeded = launch(MONITOR, params, env_manager, experiment_id, log)
    lines = [
        line.removeprefix(f"[{MONITOR}] ").removeprefix(f"error: {MONITOR}: ")
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith((f"[{MONITOR}] ", f"error: {MONITOR}: "))
    ]
    attach_log(client, run_id, log)
    return run_id, succeeded, lines[-1] if lines else ""


def monitor_verdict(
    client, monitor_run: str, params: dict[str, str], env_manager: str, experiment_id: str
) -> trigger.MonitorVerdict:
    """The traffic's verdict: from a monitor run launched now, or an existing one."""
    from mlflow.exceptions import MlflowException

    said = ""
    if monitor_run == trigger.LATEST:
        # a monitor run by hand (`mlflow run . -e monitor`) lands in Default
        found = client.search_runs(
            sorted({experiment_id, config.DEFAULT_EXPERIMENT_ID}),
            f"tags.`{config.TAG_STEP}` = '{MONITOR}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not found:
            return trigger.MonitorVerdict(None, None, problem="no finished monitor run")
        run_id, succeeded = found[0].info.run_id, True
    elif monitor_run:
        run_id, succeeded = monitor_run, True
    else:
        run_id, succeeded, said = run_monitor(client, params, env_manager, experiment_id)
        steprun.echo(STEP, f"monitor {run_id}: {said}")
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise StepError(f"no monitor run {run_id}: {exc.message}") from exc
    if run.data.tags.get(config.TAG_STEP) != MONITOR:
        raise StepError(f"run {run_id} is not a monitor run")
    verdict = run.data.tags.get(config.TAG_MONITOR_VERDICT)
    if not succeeded or verdict is None:
        problem = f"monitor run {run_id} did not judge" + (f": {said}" if said else "")
        return trigger.MonitorVerdict(run_id, None, problem=problem)
    drifted = tuple(f for f in run.data.tags.get(config.TAG_MONITOR_DRIFTED, "").split(",") if f)
    return trigger.MonitorVerdict(run_id, verdict, drifted)


def champion_data(client) -> tuple[str | None, str | None]:
    """(the champion's version, the md5 of the data it was trained on); (None, None) if none."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    except MlflowException:
        return None, None
    return version.version, version.tags.get(config.TAG_DVC_MD5)


def pipeline_run(client, run_id: str):
    """main's parent run: the launched run, or the one it moved to (another experiment)."""
    run = client.get_run(run_id)
    moved = run.data.tags.get(config.TAG_MOVED_TO_RUN)
    return client.get_run(moved) if moved else run


@click.command(help="Run main when monitor saw drift or the data changed; record why.")
@click.option("--log-dir", default=DEFAULT_LOG_DIR, show_default=True, help="serve's log.")
@click.option("--since", default="", help="monitor's window start (empty: its default).")
@click.option("--until", default="", help="monitor's window end (empty: now).")
@click.option(
    "--monitor-run",
    default=trigger.DEFAULT_MONITOR_RUN,
    help="empty: run monitor on the window; 'latest': the latest finished monitor run; a run id.",
)
@click.option("--source-url", default=config.DEFAULT_SOURCE_URL, show_default=True)
@click.option("--force", type=bool, default=trigger.DEFAULT_FORCE, show_default=True)
@click.option("--accept-drift", type=bool, default=config.DEFAULT_ACCEPT_DRIFT, show_default=True)
@click.option("--env-manager", default=config.DEFAULT_ENV_MANAGER, show_default=True)
@steprun.as_step(STEP)
def cli(
    log_dir: str,
    since: str,
    until: str,
    monitor_run: str,
    source_url: str,
    force: bool,
    accept_drift: bool,
    env_manager: str,
) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    root = config.PROJECT_ROOT
    child_environment(env_manager, config.verbose())
    experiment_id = ensure_experiment()
    window = {"log_dir": log_dir, "since": since, "until": until}
    monitor = monitor_verdict(client, monitor_run, window, env_manager, experiment_id)
    champion, champion_md5 = champion_data(client)
    payload, source_md5 = acquisition.source_version(source_url)
    decision = trigger.decide(monitor, source_md5, champion_md5, force, accept_drift)
    source = config.resolve_source_url(source_url)
    tags = {
        config.TAG_RETRAIN_DECISION: decision.label,
        config.TAG_RETRAIN_REASONS: "; ".join(decision.reasons),
        config.TAG_RETRAIN_MONITOR_RUN: monitor.run_id or "",
        config.TAG_RETRAIN_SOURCE_MD5: source_md5,
        config.TAG_RETRAIN_CHAMPION_MD5: champion_md5 or "",
        config.TAG_RETRAIN_ACCEPT_DRIFT: str(decision.accept_drift).lower(),
    }

    def record(outcome: dict[str, str] | None = None, version=None, alias=None) -> None:
        note = trigger.describe(
            decision, monitor, source, source_md5, champion, champion_md5, outcome
        )
        name = trigger.run_name(decision, version, alias)
        mlflow.set_tags(tags | {config.TAG_MLFLOW_NOTE: note, config.TAG_MLFLOW_RUN_NAME: name})

    if not decision.runs_main:
        record()
        steprun.echo(STEP, f"nothing to do (traffic: {monitor.verdict or monitor.problem})")
        return
    steprun.echo(STEP, "running main: " + "; ".join(decision.reasons))
    versioned = None
    if source_md5 != provenance.expected_md5(root):
        versioned = config.dvc_file(root).read_text()
        acquisition.adopt_version(root, payload)
        steprun.echo(STEP, f"new data version {source_md5} in data/ and data.dvc")
    params = {
        "source_url": source_url,
        "accept_drift": str(decision.accept_drift).lower(),
        "env_manager": env_manager,
    }
    main_id, succeeded = launch(MAIN, params, env_manager, experiment_id)
    main = pipeline_run(client, main_id)
    tags[config.TAG_RETRAIN_MAIN_RUN] = main.info.run_id
    if not succeeded:
        if versioned is not None:
            acquisition.restore_version(root, versioned)
        record({"main_run_id": main.info.run_id, "reason": "main failed"})
        raise StepError(f"main run {main.info.run_id} failed; the champion did not move")
    version = main.data.tags.get(config.TAG_REGISTRY_VERSION, "")
    alias = main.data.tags.get(config.TAG_REGISTRY_ALIAS, "")
    # the gate's verdict and reason are on main's register run
    register_id = main.data.tags.get(config.tag_pipeline_step(REGISTER, "run_id"))
    gate = client.get_run(register_id).data.tags if register_id else {}
    verdict = gate.get(config.TAG_REGISTRY_VERDICT, "")
    reason = gate.get(config.TAG_REGISTRY_REASON, "")
    tags |= {
        config.TAG_REGISTRY_VERSION: version,
        config.TAG_REGISTRY_ALIAS: alias,
        config.TAG_REGISTRY_VERDICT: verdict,
        config.TAG_REGISTRY_REASON: reason[:5000],
    }
    outcome = {"main_run_id": main.info.run_id, "version": version, "alias": alias}
    record(outcome | {"reason": f"{verdict}: {reason}"}, version, alias)
    steprun.echo(STEP, f"main {main.info.run_id}: v{version} -> @{alias}")


if __name__ == "__main__":
    cli()
