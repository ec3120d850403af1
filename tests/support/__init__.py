"""Helpers shared by the tests and the benchmarks (plain modules: no fixtures here).

Synthetic, real and resampled (larger) data, copies of the project as fresh git repos, new
data versions in them (`dvc add`, commit), `mlflow run` argv and environments, free loopback
ports, waiting for HTTP, a static HTTP server, MLflow servers, Make targets run in a project
copy that shares this venv, and a demo model logged and registered like the train and
register steps do.
``tests/conftest.py`` wraps some of these as fixtures; ``bench/`` imports them directly.

One module per concern: ``data``, ``projects``, ``servers``, ``mlflow_helpers``,
``predicting``, ``processes``, ``make``; every helper is re-exported here, so
``from tests.support import X`` works for all of them.
"""

from tests.support.data import (
    PROJECT_ROOT,
    RESAMPLE_COORD_JITTER,
    RESAMPLE_REL_JITTER,
    housing_csv,
    housing_sample,
    housing_tgz,
    resample_housing,
    synthetic_housing,
)
from tests.support.make import (
    VENV,
    end_make,
    make_env,
    make_output,
    project_with_venv,
    run_make,
    start_make,
    wait_for_run,
)
from tests.support.mlflow_helpers import (
    DEMO_TAGS,
    assert_nothing_moved,
    demo_pipeline,
    latest_run,
    register_demo_model,
    tracking,
)
from tests.support.predicting import error_lines, messy_rows, predict_env, run_predict
from tests.support.processes import (
    PLAIN_PATH,
    clean_shell_env,
    job_runners,
    kill_session,
    restore_sigint,
    session_processes,
)
from tests.support.projects import (
    MLFLOW_RUN,
    commit,
    copy_project,
    launched_run_id,
    mlflow_kubernetes,
    mlflow_run_local,
    new_data_version,
    project_env,
    run_cmd,
    run_main,
)
from tests.support.servers import (
    AUTH_ADMIN_PASSWORD,
    NO_JOB_RUNNERS,
    TEST_ACCOUNTS,
    apply_accounts,
    auth_env,
    auth_server_secrets,
    free_port,
    rest,
    serve_directory,
    server_args,
    start_auth_server,
    start_mlflow_server,
    stop,
    stop_auth_server,
    wait_http,
    write_accounts,
)

__all__ = [
    "AUTH_ADMIN_PASSWORD",
    "DEMO_TAGS",
    "MLFLOW_RUN",
    "NO_JOB_RUNNERS",
    "PLAIN_PATH",
    "PROJECT_ROOT",
    "RESAMPLE_COORD_JITTER",
    "RESAMPLE_REL_JITTER",
    "TEST_ACCOUNTS",
    "VENV",
    "apply_accounts",
    "assert_nothing_moved",
    "auth_env",
    "auth_server_secrets",
    "clean_shell_env",
    "commit",
    "copy_project",
    "demo_pipeline",
    "end_make",
    "error_lines",
    "free_port",
    "housing_csv",
    "housing_sample",
    "housing_tgz",
    "job_runners",
    "kill_session",
    "latest_run",
    "launched_run_id",
    "make_env",
    "make_output",
    "messy_rows",
    "mlflow_kubernetes",
    "mlflow_run_local",
    "new_data_version",
    "predict_env",
    "project_env",
    "project_with_venv",
    "register_demo_model",
    "resample_housing",
    "rest",
    "restore_sigint",
    "run_cmd",
    "run_main",
    "run_make",
    "run_predict",
    "serve_directory",
    "server_args",
    "session_processes",
    "start_auth_server",
    "start_make",
    "start_mlflow_server",
    "stop",
    "stop_auth_server",
    "synthetic_housing",
    "tracking",
    "wait_for_run",
    "wait_http",
    "write_accounts",
]
