"""A registry version's reference data: the profile the data contract keeps for it.

In: a tracking store and a data version (the ``dataset.dvc_md5`` a version carries). Out:

* ``data_run``: the latest FINISHED load_data run of that data version, in any experiment
  (the data contract's reference for the champion: load_data and monitor look it up alike);
* ``data_profile``: that run's ``data_report/profile.json`` (``steps.data.contract.profile``),
  or the profile of its raw CSV for runs from before profiles were logged.

What monitor judges against, built on these: ``steps.tracking.champion``.

Reads only; writes nothing. Imports nothing heavy at module level.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from steps import config

LOAD_STEP = "load_data"


def data_run(client: Any, md5: str) -> Any | None:
    """The latest FINISHED load_data run that loaded data version ``md5`` (all experiments)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(
        ids,
        f"tags.`{config.TAG_STEP}` = '{LOAD_STEP}' and attributes.status = 'FINISHED' "
        f"and tags.`{config.TAG_DVC_MD5}` = '{md5}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def data_profile(run_id: str) -> dict[str, Any]:
    """A load_data run's logged profile; runs from before profiles existed: its raw CSV's."""
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from steps.data import contract, schema

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=contract.PROFILE_PATH, dst_path=tmp
            )
            return json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=f"{config.RAW_ARTIFACT_DIR}/{config.RAW_FILE_NAME}",
                dst_path=tmp,
            )
            return contract.profile(schema.validate_raw(pd.read_csv(path)))
