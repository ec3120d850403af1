"""A tracking server's refusal (401/403) or silence, as one line naming what was refused."""

from __future__ import annotations

import os
import re


def tracking_unreachable(exc: BaseException) -> bool:
    """Is this MLflow's "the tracking server did not answer" (not an API error)?"""
    import requests
    from mlflow.exceptions import MlflowException

    cause = exc.__cause__ or exc.__context__
    return isinstance(exc, MlflowException) and isinstance(
        cause, requests.exceptions.RequestException
    )


# MLflow's error codes for a tracking server's 401 and 403 (its basic-auth app).
REFUSED_STATUS = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}
REFUSED_ENDPOINT = re.compile(r"endpoint (/\S+) failed")
REST_PREFIX = re.compile(r"^/(?:ajax-)?api/[0-9.]+/(?:mlflow/)?")


def refusal(exc: BaseException | None) -> str | None:
    """One line for a request the tracking server refused (401/403), naming the operation
    and the account, or None for any other error. ``exc`` or the error it was raised from
    (a StepError wrapping MLflow's) may be the refusal. Never includes the password."""
    from mlflow.exceptions import MlflowException

    while exc is not None and not (
        isinstance(exc, MlflowException) and exc.error_code in REFUSED_STATUS
    ):
        exc = exc.__cause__
    if exc is None:
        return None
    code = exc.error_code
    endpoint = REFUSED_ENDPOINT.search(str(exc))
    operation = REST_PREFIX.sub("", endpoint.group(1)) if endpoint else "a request"
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    who = f"user {user!r}" if user else "anonymous user (MLFLOW_TRACKING_USERNAME unset)"
    if code == "UNAUTHENTICATED":
        why = (
            "wrong username or password"
            if user
            else "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    else:
        why = "the account lacks the permission (docs/scaling.md, accounts)"
    return f"tracking server refused {operation} for {who} ({REFUSED_STATUS[code]} {code}): {why}"
