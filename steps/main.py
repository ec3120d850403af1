"""Entry point ``main``: run load_data → preprocess → train → register as nested MLflow runs.

In: every step's parameters (defaults shared with the steps), ``env_manager`` for the
children and ``use_cache``.
Out: a parent run in experiment ``california_housing_price`` (tagged
``mlflow.experimentKind=custom_model_development`` so the UI opens its classic ML view)
whose children are the step runs (``mlflow.parentRunId``), each fed its upstream run id. A
step is reused instead of rerun when a FINISHED run of it exists with the same parameters
(as MLflow stores them), the same code hash (``steps.orchestration.fingerprint``: the step's
modules in any subpackage, MLproject, the lock file — read from the work tree, so a dirty
tree still reuses), the same upstream run and the same data md5; register is never reused
(``steps.orchestration.reuse``). Parent tags:
``pipeline.<step>.run_id``, ``pipeline.<step>.reused``, ``registry.version``,
``registry.alias``, ``dataset.dvc_md5``; parent metric ``test_rmse``; the parent is named
``main · <kind> · v<N>@<alias>`` and its description (``mlflow.note.content``) is the step
table. Each step's output goes to the artifact ``logs/<step>.log`` of its run; the terminal
gets one line per step (``PIPELINE_VERBOSE=1``: everything as well, as it happens). Steps that run
are started ahead of their turn and wait for their upstream (``steps.orchestration.launch``),
so their start-up overlaps the work before them; when the pipeline stops early, those still
waiting end KILLED. The step table: ``steps.orchestration.summary``; the chain:
``steps.orchestration.pipeline``; the parent run: ``steps.orchestration.parent``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from steps import config
from steps.infra import forkserver, processes
from steps.infra.errors import StepError, one_line
from steps.ml.hyperparams import DEFAULT_HYPERPARAMS, hyperparameter_options
from steps.orchestration.launch import child_environment
from steps.orchestration.parent import STEP, end_orphaned_launcher_run
from steps.orchestration.pipeline import finish_pipeline, open_pipeline, run_steps, stop_pipeline
from steps.orchestration.summary import TABLE_HEADER, table_row
from steps.tracking import refusals, steprun


@click.command(help="Run the whole pipeline as nested MLflow runs, reusing finished steps.")
@click.option("--source-url", default=config.DEFAULT_SOURCE_URL, show_default=True)
@click.option("--accept-drift", type=bool, default=config.DEFAULT_ACCEPT_DRIFT, show_default=True)
@click.option("--test-size", type=float, default=config.DEFAULT_TEST_SIZE, show_default=True)
@click.option("--split-seed", type=int, default=config.DEFAULT_SPLIT_SEED, show_default=True)
@click.option(
    "--split-strategy",
    type=click.Choice(config.SPLIT_STRATEGIES),
    default=config.DEFAULT_SPLIT_STRATEGY,
    show_default=True,
)
@hyperparameter_options
@click.option("--env-manager", default=config.DEFAULT_ENV_MANAGER, show_default=True)
@click.option("--use-cache", type=bool, default=config.DEFAULT_USE_CACHE, show_default=True)
def cli(env_manager: str, use_cache: bool, **opts: Any) -> None:
    for name, value in config.HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    processes.take_interrupts()
    processes.die_with_parent()
    processes.skip_exit_collection()
    child_environment(env_manager, config.verbose())
    with forkserver.running():  # before our own MLflow import: the two overlap
        try:
            run_pipeline(env_manager, use_cache, opts)
        except Exception as exc:
            refused = refusals.refusal(exc)
            if not refused and not refusals.tracking_unreachable(exc):
                raise
            from mlflow.entities import RunStatus

            steprun.end_run_safely(RunStatus.to_string(RunStatus.FAILED))
            problem = refused or f"tracking server unreachable: {one_line(exc)}"
            click.echo(f"error: {STEP}: {problem}", err=True)
            raise SystemExit(1) from None


def run_pipeline(env_manager: str, use_cache: bool, opts: dict[str, Any]) -> None:
    import mlflow

    mlflow.set_tracking_uri(config.tracking_uri())
    # an interrupt before the loop below leaves the parent run to the exit hook: KILLED then
    steprun.end_open_run_at_exit()
    launcher_id, launcher_pid = os.environ.get("MLFLOW_RUN_ID"), processes.parent_pid()
    opts["hyperparam_names"] = list(DEFAULT_HYPERPARAMS)
    pipeline = open_pipeline(opts)
    gates = Path(tempfile.mkdtemp(prefix="pipeline-gates-"))
    click.echo(table_row(TABLE_HEADER))
    try:
        results = run_steps(pipeline, env_manager, use_cache, opts, gates)
    except StepError as exc:
        stop_pipeline(pipeline, "FAILED")
        click.echo(f"error: {STEP}: {exc}", err=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        processes.ignore_interrupts()
        stop_pipeline(pipeline, "KILLED")
        end_orphaned_launcher_run(launcher_id, launcher_pid)
        click.echo(f"error: {STEP}: interrupted", err=True)
        raise SystemExit(130) from None
    except Exception:
        # The parent may be our own run (not the launcher's): nobody else would end it.
        stop_pipeline(pipeline, "FAILED", tolerant=True)
        raise
    finally:
        shutil.rmtree(gates, ignore_errors=True)
    finish_pipeline(pipeline, results, opts)


if __name__ == "__main__":
    cli()
