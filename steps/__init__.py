"""California housing price pipeline: the MLflow Project's steps.

load_data → preprocess → train → register, chained by main.

Top level: the entry points, one module per MLproject entry, each a thin click command over
library code (entry points never import each other): ``load_data``, ``preprocess``,
``train``, ``register``, ``promote``, ``main``, ``tune``, ``serve``, ``predict``, ``monitor``,
``retrain``.
Beside them
``config`` (names, paths, tags, defaults; no side effects at import) and ``features``,
``models``: the classes registered models are made of (never rename or move them).

Library subpackages, by concern:

- ``data``: ``schema`` (the raw table's rules, per-row rejection reasons), ``contract``
  (table rules, drift against a reference version, the data report), ``fetch`` (``python -m
  steps.data.fetch``: load_data's acquisition for ``make data``), ``acquisition`` (data/ →
  DVC cache → remote → download; a source's data version for retrain)
- ``ml``: ``hyperparams`` (model kinds and defaults), ``gate`` (champion gate, alias settle
  rule), ``promotion`` (register's alias decision and gate summaries), ``evaluation``
  (train's evaluation report), ``search`` (tune's search space and cross-validated
  objective), ``study`` (tune's Optuna study)
- ``tracking``: ``steprun`` (a step's MLflow run and its end), ``provenance`` (git state, data
  version, dataset sources), ``lineage`` (upstream runs and their outputs), ``registry``
  (alias state and history), ``versions`` (register's gating, registering and settling),
  ``loading`` (registry URIs to skops-loaded pipelines), ``reference`` (the data profile
  the contract keeps for a data version), ``champion`` (what monitor judges against),
  ``refusals`` (a server's 401/403 as one line), ``storerace`` (a store race, retried),
  ``trials`` (tune's trials as MLflow runs)
- ``orchestration``: how main chains the steps: ``fingerprint`` (the code hash behind step
  reuse), ``reuse`` (the reuse key and the run that matches it), ``launch`` (steps started
  through MLflow Projects ahead of their turn, and stopped), ``pipeline`` (the chain: each
  step reused or started, the parent's summary), ``parent`` (the parent run), ``summary``
  (the step table), ``upstream_wait`` (a step started early waits for its upstream),
  ``trigger`` (retrain's decision: drift, a new data version, forced; no I/O)
- ``serving``: ``server`` (serve's processes: loading, workers, alias following), ``api``
  (serve's ASGI app), ``rowschema`` (a valid request row), ``batching``,
  ``protocols`` (/invocations, V2), ``follower`` (alias following), ``apikeys``, ``metrics``,
  ``wire`` (one socket write per response), ``inferencelog``, ``requestindex`` (the ids the
  log holds, shared by the workers), ``feedback`` (POST /feedback), ``rejectlog`` (rows the
  API rejected), ``driftgauge`` (drift of recent rows on /metrics), ``shadow`` (a second
  alias scoring the logged requests, and a canary share answered by it)
- ``monitoring``: monitor's library: ``drift`` (a window against the reference, the
  verdict), ``live`` (actuals joined, RMSE/MAE per version), ``report``, ``sources`` (the
  log's window, feedback, batch files)
- ``batch``: ``localscore`` (predict's local engine: validation, chunked scoring, tables),
  ``sparkscore`` (predict's Spark engine; PySpark imported lazily)
- ``infra``: ``errors`` (StepError), ``processes`` (signals, process ids), ``forkserver``
  (steps forked from one process that imported the libraries once), ``starthook`` (a
  ``.pth`` hook: a 401/403 as one line in any venv interpreter; MLflow's launcher of main
  starts the step server), ``storetemplate`` (the empty
  SQLite store), ``authserver`` and ``accounts`` (the authenticated shared server's tools)
"""

import os as _os
import sys as _sys
import warnings as _warnings

from steps import config as _config

# With PySpark installed (`make spark-setup`), MLflow and pandera import it, and it warns on
# every import that pandas 3 is not yet fully supported; our Spark path is tested with pandas 3.
_warnings.filterwarnings(
    "ignore", message="PySpark does not yet fully support pandas", category=FutureWarning
)

# main's children are told the step server by main; main looks for it itself
if _os.environ.get(_config.FORKSERVER_ENV) or "steps.main" in getattr(_sys, "orig_argv", ()):
    from steps.infra import forkserver as _forkserver

    _forkserver.delegate()
