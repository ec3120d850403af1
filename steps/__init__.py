"""California housing price pipeline: the MLflow Project's steps.

load_data → preprocess → train → register, chained by main.

Entry points (one per MLproject entry; each is a click command over a pure core):
``load_data``, ``preprocess``, ``train``, ``register``, ``promote``, ``main``, ``tune``,
``serve``, ``predict``.

Library modules (imported by entry points; entry points never import each other):

- ``config``: names, paths, defaults; ``hyperparams``: model kinds and their defaults
- ``schema``: the raw table's declared rules and thresholds, and the per-row rejection
  reasons both predict engines use; ``contract``: table rules and
  drift against a reference data version
- ``features``, ``models``: the classes registered models are made of (never rename or
  move them); ``report``: the evaluation report
- ``lineage``: upstream runs and their tags; ``runtime``: a step's MLflow run, errors,
  signals; ``fingerprint``: the code hash behind step reuse
- ``gate``: the champion gate and alias settle rule; ``registry``: alias state, lineage
  and history; ``loading``: registry URIs to pinned versions and skops-loaded pipelines
- ``sparkscore``: predict's Spark engine (``--engine spark``): the input checked per pandas
  batch with ``schema.rejection_reasons``, scored by MLflow's ``spark_udf``; imports PySpark
  lazily, so nothing else pays for it
- ``api``: serve's ASGI app (FastAPI, plus a lean lane for POST /predict and /invocations);
  ``apischema``: what a valid request row is; ``batching``: rows to predictions, concurrent
  requests micro-batched; ``protocols``: other clients' request bodies (MLflow's
  /invocations, V2) as rows; ``follower``: serve's alias following; ``metrics``: serve's
  Prometheus metrics; ``wire``: serve's HTTP protocol (uvicorn's, one socket write per
  response)
- ``study``: tune's Optuna study on shared storage and the trial budget its processes share
- ``refusalhook``: run at the start of every venv interpreter (a ``.pth`` from ``make setup``):
  an uncaught 401/403 from the tracking server, MLflow's own launcher included, as one line
- ``forkserver``: under main, runs each step in a fork of one process that imported the
  libraries once; ``python -m steps.<step>`` hands itself over here, before its own imports
- ``storetemplate``: the empty SQLite tracking store built at set-up, copied into place for a
  new ``./mlflow.db``
- ``apikeys``: serve's optional API-key middleware (keys from a file or the environment)

Tools for an authenticated shared tracking server (not MLproject entry points):
``authserver`` starts ``mlflow server --app-name basic-auth`` with its secrets checked;
``accounts`` creates the team's accounts and grants (``apply``) and checks an account before
``mlflow run`` (``check``). ``runtime.refusal`` turns the server's 401/403 into one line.
"""

import os as _os
import warnings as _warnings

from steps import config as _config

# With PySpark installed (`make spark-setup`), MLflow and pandera import it, and it warns on
# every import that pandas 3 is not yet fully supported; our Spark path is tested with pandas 3.
_warnings.filterwarnings(
    "ignore", message="PySpark does not yet fully support pandas", category=FutureWarning
)

if _os.environ.get(_config.FORKSERVER_ENV):  # only main sets it, for its children
    from steps import forkserver as _forkserver

    _forkserver.delegate()
