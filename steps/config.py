"""Names, paths and defaults shared by every step.

Nothing here touches the disk, the network or MLflow at import time: values are constants
or small pure functions. Every default a step exposes (click option, MLproject parameter)
is defined once: here, or beside the code it configures (``steps.ml.hyperparams``,
``steps.features``, a step's ``DEFAULT_*``); ``tests/unit/test_project_files.py`` checks that
MLproject agrees with every click default.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT: Path = Path(__file__).resolve().parents[1]

# --- MLflow names -------------------------------------------------------------------------
EXPERIMENT_NAME = "california_housing_price"
MODEL_NAME = "CaliforniaHousingRegressor"
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
RAW_DATASET_NAME = "california_housing_raw"
MODEL_ARTIFACT = "model"  # name of the logged pipeline model inside a train run
PREPROCESSOR_ARTIFACT = "preprocessor"
PREPROCESSOR_FILE = "preprocessor.skops"
SPLITS_ARTIFACT_DIR = "splits"
RAW_ARTIFACT_DIR = "raw"
# The candidate's and the linear baseline's predictions on the test rows, logged by train
# and scored by register's gate (so register loads neither model).
GATE_PREDICTIONS_FILE = "gate/test_predictions.parquet"
GATE_CANDIDATE_COLUMN = "candidate_prediction"
GATE_BASELINE_COLUMN = "baseline_prediction"
TRAIN_SPLIT_FILE = "train.parquet"
TEST_SPLIT_FILE = "test.parquet"

# What a logged model needs to load and predict, pinned as requirements.lock pins them.
LOCK_FILE = "requirements.lock"
MODEL_PACKAGES: tuple[str, ...] = (
    "mlflow",
    "scikit-learn",
    "lightgbm",
    "skops",
    "numpy",
    "pandas",
)

# Fail in ~15 s instead of ~4 min per request when the tracking server is gone (mlflow's
# defaults: 7 retries, backoff factor 2, capped at 120 s). main sets them for its children
# unless the user did; the Makefile (for the `mlflow run` launcher, which reads them before
# main starts) and k8s/kubernetes_job_template.yaml repeat them, and
# tests/unit/test_project_files.py fails if either differs.
HTTP_RETRY_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

# MLflow's own experiment (every store has it): where the launcher files a run without a name.
DEFAULT_EXPERIMENT_ID = "0"

# --- tags ---------------------------------------------------------------------------------
TAG_UPSTREAM = "lineage.upstream_run_id"
TAG_DVC_MD5 = "dataset.dvc_md5"
TAG_FILE_MD5 = "dataset.file_md5"
TAG_DATA_SOURCE = "dataset.acquired_from"
TAG_GIT_DIRTY = "git.dirty"
TAG_STEP = "pipeline.step"
TAG_CODE_HASH = "pipeline.code_hash"
# MLflow's own run tags that the steps write or read (names from mlflow.utils.mlflow_tags,
# repeated so that config imports nothing).
TAG_MLFLOW_RUN_NAME = "mlflow.runName"
TAG_MLFLOW_NOTE = "mlflow.note.content"  # the run's description
TAG_MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
TAG_MLFLOW_SOURCE_NAME = "mlflow.source.name"
TAG_MLFLOW_USER = "mlflow.user"
TAG_MLFLOW_PROJECT_ENV = "mlflow.project.env"  # where MLflow ran the entry point (docker, …)


def tag_pipeline_step(step: str, field: str) -> str:
    """main's parent-run tags per step: ``pipeline.<step>.run_id``, ``pipeline.<step>.reused``."""
    return f"pipeline.{step}.{field}"


# Registry version tags written by register and read by serve.
VERSION_TAG_TRAIN_RUN = "train_run_id"
VERSION_TAG_GIT_COMMIT = "git_commit"
VERSION_TAG_TEST_RMSE = "test_rmse"
VERSION_TAG_LOGGED_MODEL = "logged_model_id"
# The gate's summary on a version (written by register, see steps/ml/gate.py).
VERSION_TAG_GATE_RECORD = "gate.record"  # JSON: the settle rule's input, one atomic tag
VERSION_TAG_GATE_PREFIX = "gate."
# Train run: the logged model it produced (``models:/<id>``).
TAG_LOGGED_MODEL = "model.logged_model_id"
# Register and promote runs: champion history (``steps.tracking.registry.champion_history``).
TAG_REGISTRY_MODEL = "registry.model_name"
TAG_CHAMPION_FROM = "registry.champion_from"
TAG_CHAMPION_TO = "registry.champion_to"
# Registered-model tags written by promote: versions <= floor no longer compete.
MODEL_TAG_SETTLE_FLOOR = "registry.settle_floor"
MODEL_TAG_PINNED = "registry.pinned_version"
# Register and promote runs, and main's parent run: what register did and why.
TAG_REGISTRY_VERSION = "registry.version"
TAG_REGISTRY_ALIAS = "registry.alias"
TAG_REGISTRY_REASON = "registry.reason"
TAG_REGISTRY_VERDICT = "registry.verdict"
TAG_REGISTRY_REUSED_VERSION = "registry.reused_version"
# Train and register runs: the model kind trained.
TAG_MODEL_KIND = "model.kind"
# main: the launcher's run points at the pipeline's parent run (and back).
TAG_MOVED_TO_RUN = "pipeline.moved_to_run_id"
TAG_LAUNCHER_RUN = "pipeline.launcher_run_id"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # an experiment tag: the UI's view
# load_data runs: the data contract's outcome (steps.data.contract).
TAG_CONTRACT_STATUS = "data_contract.status"
TAG_CONTRACT_ACCEPT_DRIFT = "data_contract.accept_drift"
TAG_CONTRACT_REFERENCE = "data_contract.reference"
TAG_CONTRACT_REFERENCE_RUN = "data_contract.reference_run_id"
TAG_CONTRACT_WARNINGS = "data_contract.warnings"
# monitor runs: the window's verdict (read by retrain, so defined here, not in steps/monitor.py).
TAG_MONITOR_VERDICT = "monitor.verdict"
TAG_MONITOR_DRIFTED = "monitor.drifted_features"
# retrain runs: why it ran main (or did not), and what came of it (steps.orchestration.trigger).
TAG_RETRAIN_DECISION = "retrain.decision"
TAG_RETRAIN_REASONS = "retrain.reasons"
TAG_RETRAIN_MONITOR_RUN = "retrain.monitor_run_id"
TAG_RETRAIN_MAIN_RUN = "retrain.main_run_id"
TAG_RETRAIN_SOURCE_MD5 = "retrain.source_md5"
TAG_RETRAIN_CHAMPION_MD5 = "retrain.champion_md5"
TAG_RETRAIN_ACCEPT_DRIFT = "retrain.accept_drift"
# predict runs: the model version that scored, and where the predictions went.
TAG_PREDICT_MODEL_NAME = "model.name"
TAG_PREDICT_MODEL_VERSION = "model.version"
TAG_PREDICT_MODEL_RUN_ID = "model.run_id"
TAG_PREDICT_OUTPUT = "predict.output"
TAG_PREDICT_REJECTED_OUTPUT = "predict.rejected_output"
# tune runs and their trial runs (steps.ml.study).
TAG_OPTUNA_STUDY = "optuna.study_name"
TAG_OPTUNA_STORAGE = "optuna.storage"
TAG_OPTUNA_TRIAL_NUMBER = "optuna.trial_number"
TAG_OPTUNA_TRIAL_STATE = "optuna.trial_state"
TAG_TUNE_BEST_TRIAL_RUN = "tune.best_trial_run_id"

# --- data ---------------------------------------------------------------------------------
DATA_DIR_NAME = "data"
RAW_FILE_NAME = "housing.csv"
DVC_FILE_NAME = "data.dvc"
PUBLIC_DATA_URL = (
    "https://raw.githubusercontent.com/ageron/handson-ml2/master/datasets/housing/housing.tgz"
)
DATA_URL_ENV = "HOUSING_DATA_URL"
# Set by main for a step it starts before the step's upstream has finished: the path of the
# file main creates once it has (upstream_wait.wait_for_upstream).
START_AFTER_ENV = "PIPELINE_START_AFTER"
# main's pid, for its children: a step waiting for its upstream gives up if main is gone.
MAIN_PID_ENV = "PIPELINE_MAIN_PID"
# Set by main for its children: the Unix socket of its fork server (steps.infra.forkserver).
FORKSERVER_ENV = "PIPELINE_FORKSERVER"
# How long the step server (steps.infra.forkserver) outlives the last run it served, in
# seconds: a rerun within it starts with MLflow and the steps' libraries already imported.
# 0: it stops with the run that started it.
STEP_SERVER_IDLE_ENV = "PIPELINE_STEP_SERVER_IDLE_S"
DEFAULT_STEP_SERVER_IDLE_S = 900.0
# 1/true/yes: main streams every step's output as it happens (make run VERBOSE=1).
VERBOSE_ENV = "PIPELINE_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() in {"1", "true", "yes"}


TARGET = "median_house_value"
NUMERIC_FEATURES: tuple[str, ...] = (
    "longitude",
    "latitude",
    "housing_median_age",
    "total_rooms",
    "total_bedrooms",
    "population",
    "households",
    "median_income",
)
CATEGORICAL_FEATURE = "ocean_proximity"
FEATURES: tuple[str, ...] = (*NUMERIC_FEATURES, CATEGORICAL_FEATURE)
RAW_COLUMNS: tuple[str, ...] = (*NUMERIC_FEATURES, TARGET, CATEGORICAL_FEATURE)  # file order
OCEAN_PROXIMITY_VALUES: tuple[str, ...] = (
    "<1H OCEAN",
    "INLAND",
    "ISLAND",
    "NEAR BAY",
    "NEAR OCEAN",
)

# --- batch predictions (steps.predict, both engines: one output schema) -------------------
PREDICTION_COLUMN = "predicted_median_house_value"
ROW_COLUMN = "row"  # 0-based position of the row in the input
REASON_COLUMN = "reason"  # rejected rows: why (steps.data.schema.rejection_reasons)
TABLE_SUFFIXES: dict[str, str] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def local_path(location: str) -> Path | None:
    """The filesystem path of a plain path or ``file://`` URI; None for remote URLs."""
    from urllib.parse import urlparse

    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # 1 letter: a Windows drive
        return Path(location)
    return None


def table_format_by_name(path_or_uri: str) -> str | None:
    """'csv' or 'parquet' from the name's extension ('.csv.gz' counts as csv), else None."""
    from urllib.parse import urlparse

    name = (urlparse(path_or_uri).path or path_or_uri).rstrip("/")
    suffixes = [s.lower() for s in Path(name).suffixes]
    return next((TABLE_SUFFIXES[s] for s in reversed(suffixes) if s in TABLE_SUFFIXES), None)


# CSV fields read as missing: pandas' defaults, spelled out so the Spark engine (whose CSV
# reader knows only one null token) treats the same fields as missing as the local engine.
CSV_MISSING_VALUES: tuple[str, ...] = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
)

# --- step defaults (MLproject must agree) ---------------------------------------------------
DEFAULT_SOURCE_URL = ""  # empty: $HOUSING_DATA_URL, else PUBLIC_DATA_URL
DEFAULT_ACCEPT_DRIFT = False  # load_data: drift failures stop the load unless accepted
DEFAULT_TEST_SIZE = 0.2
DEFAULT_SPLIT_SEED = 42
DEFAULT_SPLIT_STRATEGY = "income_stratified"
SPLIT_STRATEGIES: tuple[str, ...] = ("income_stratified", "random")
DEFAULT_ENV_MANAGER = "local"
DEFAULT_USE_CACHE = True

# --- champion gate (docs/pipeline.md "Champion and challenger" justifies the numbers) -------
# Retraining the default model with another seed moves test RMSE by $131 (std, 5 seeds, one
# split; range $333): a $400 and 1% margin is what a seed alone almost never produces.
DEFAULT_GATE_MIN_ABS_IMPROVEMENT = 400.0
DEFAULT_GATE_MIN_REL_IMPROVEMENT = 0.01
# Floor: at least 10% lower RMSE than a linear baseline on the same rows.
DEFAULT_GATE_BASELINE_MIN_REL_IMPROVEMENT = 0.10
# Below ~1,000 shared rows the sampling noise of the RMSE difference alone exceeds the margin.
DEFAULT_GATE_MIN_ROWS = 1000


def data_dir(root: Path = PROJECT_ROOT) -> Path:
    return root / DATA_DIR_NAME


def raw_data_path(root: Path = PROJECT_ROOT) -> Path:
    return data_dir(root) / RAW_FILE_NAME


def dvc_file(root: Path = PROJECT_ROOT) -> Path:
    return root / DVC_FILE_NAME


def resolve_source_url(source_url: str) -> str:
    """The URL load_data downloads from: the parameter, else $HOUSING_DATA_URL, else public."""
    return source_url or os.environ.get(DATA_URL_ENV) or PUBLIC_DATA_URL


def default_tracking_uri(root: Path = PROJECT_ROOT) -> str:
    """Absolute SQLite URI in the project root.

    Relative sqlite URIs resolve against each process's working directory, which differs
    between `mlflow run` children, git clones and the user's shell.
    """
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
