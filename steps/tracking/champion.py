"""What ``monitor`` judges served rows against, from the tracking store.

In: a tracking client; served version numbers. Out: ``champion_reference``: the registry's
``@champion``, the profile the data contract keeps for its data version
(``steps.tracking.reference``) and a label (``ModelLoadError`` without a champion,
``StepError`` without a profile); ``version_predictions``: each version's predictions on its
own test rows (``steps.tracking.outputs.test_predictions``) and, for versions without, why.
Reads only. Imports nothing heavy at module level.
"""

from __future__ import annotations

from typing import Any

from steps import config
from steps.tracking.reference import data_profile, data_run


def champion_reference(client: Any) -> tuple[str, dict[str, Any], str]:
    """(the champion's version, its data version's profile, a label saying which)."""
    from steps.infra.errors import StepError
    from steps.tracking.loading import DEFAULT_MODEL_URI, resolve_model_version

    champion = resolve_model_version(DEFAULT_MODEL_URI)
    md5 = champion.tags.get(config.TAG_DVC_MD5)
    run = data_run(client, md5) if md5 else None
    if run is None:
        raise StepError(
            f"champion v{champion.version} has no reference: no finished load_data run of its "
            f"data version ({config.TAG_DVC_MD5}={md5 or 'unset'})"
        )
    label = f"v{champion.version}'s data (md5 {md5}, load_data run {run.info.run_id})"
    return champion.version, data_profile(run.info.run_id), label


def version_predictions(client: Any, versions: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """({version: its predictions on its own test rows}, {version: why there are none})."""
    from mlflow.exceptions import MlflowException

    from steps.infra.errors import StepError
    from steps.tracking.outputs import test_predictions

    found, problems = {}, {}
    for version in versions:
        try:
            mv = client.get_model_version(config.MODEL_NAME, version)
            found[version] = test_predictions(mv.tags[config.VERSION_TAG_TRAIN_RUN])
        except (MlflowException, KeyError, StepError) as exc:
            problems[version] = str(exc)
    return found, problems
