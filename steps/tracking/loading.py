"""Registry URIs to loaded pipelines, shared by train, register, promote, serve and predict.

In: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a logged model's ``models:/<model_id>``
(the current tracking URI's registry and artifact store). Out: the fitted sklearn Pipeline,
deserialised by ``skops.io.load`` with the code's explicit ``models.SKOPS_TRUSTED_TYPES``
(never pickle, never the type list recorded in the artifact), and for registry URIs a
``ModelRef``: the version the URI resolved to, pinned by number, with its tags. Writes nothing
(downloads go to temp dirs, removed after loading).

Imports nothing heavy at module level: serve imports it on its start-up path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steps import config
from steps.infra.errors import one_line
from steps.tracking import refusals

SKOPS_FORMAT = "skops"
DEFAULT_MODEL_URI = f"models:/{config.MODEL_NAME}@{config.CHAMPION_ALIAS}"


class ModelLoadError(RuntimeError):
    """The model cannot be resolved, downloaded or safely deserialised."""


# --- loading --------------------------------------------------------------------------------
def quiet_downloads() -> None:
    """No per-file progress bars: they bury the step's one-line verdict on stderr."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def load_skops_pipeline(model_dir: Path, trusted_types: Sequence[str] | None = None) -> Any:
    """Deserialise the sklearn flavour of a downloaded MLflow model with skops only.

    ``trusted_types`` defaults to ``models.SKOPS_TRUSTED_TYPES``: the code's explicit list,
    never the list recorded in the artifact (whoever can write artifacts could extend that).
    """
    import skops.io
    from mlflow.models import Model

    from steps import models

    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise ModelLoadError(f"{model_dir} is not an MLflow model (no MLmodel file)")
    flavor = Model.load(str(mlmodel)).flavors.get("sklearn")
    if flavor is None:
        raise ModelLoadError(f"{model_dir} has no sklearn flavour")
    if flavor.get("serialization_format") != SKOPS_FORMAT:
        # Anything but skops means pickle: running arbitrary code from the artifact store.
        raise ModelLoadError(
            f"model is serialised as {flavor.get('serialization_format')!r}; only skops is served"
        )
    trusted = models.SKOPS_TRUSTED_TYPES if trusted_types is None else trusted_types
    try:
        return skops.io.load(model_dir / flavor["pickled_model"], trusted=list(trusted))
    except Exception as exc:  # skops raises several types; all mean "cannot serve this"
        raise ModelLoadError(f"cannot load {flavor['pickled_model']}: {exc}") from exc


def load_model_uri(model_uri: str) -> Any:
    """Download ``models:/NAME/VERSION`` or ``models:/<model_id>`` and load it with skops."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="registry-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            problem = refusals.refusal(exc) or one_line(exc)
            raise ModelLoadError(f"cannot download {model_uri}: {problem}") from exc
        return load_skops_pipeline(Path(local))


# --- registry versions ---------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    """Registry facts about the served version; plain data, so it can go to worker processes."""

    name: str
    version: str
    uri: str
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def parse_registry_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, version, alias)."""
    prefix = "models:/"
    rest = model_uri[len(prefix) :].strip("/") if model_uri.startswith(prefix) else ""
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias:
            return name, None, alias
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, version, None
    raise ModelLoadError(
        f"model_uri must be a registry URI models:/NAME@ALIAS or models:/NAME/VERSION, "
        f"got {model_uri!r}"
    )


def resolve_model_version(model_uri: str) -> ModelRef:
    """Look the URI up in the registry (the current tracking URI) and pin its version.

    Everything after this uses the version NUMBER, so an alias moved meanwhile cannot make
    the reported version differ from the served one.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_registry_uri(model_uri)
    client = mlflow.MlflowClient()
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            mv = client.get_model_version(name, version)
    except MlflowException as exc:
        problem = refusals.refusal(exc) or exc.message
        raise ModelLoadError(f"cannot resolve {model_uri}: {problem}") from exc
    return ModelRef(
        name=mv.name,
        version=str(mv.version),
        uri=model_uri,
        run_id=mv.run_id,
        tags=dict(mv.tags or {}),
    )


def download_model(ref: ModelRef, dst: Path) -> Path:
    """Download the pinned version's artifacts into ``dst``; returns the model directory."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{ref.name}/{ref.version}", dst_path=str(dst)
        )
    except MlflowException as exc:
        problem = refusals.refusal(exc) or exc.message
        raise ModelLoadError(f"cannot download {ref.name} v{ref.version}: {problem}") from exc
    return Path(local)


def load_version(
    model_uri: str, trusted_types: Sequence[str] | None = None
) -> tuple[Any, ModelRef]:
    """Resolve ``model_uri`` to a version, download it to a temp dir and load it."""
    ref = resolve_model_version(model_uri)
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        return load_skops_pipeline(download_model(ref, Path(tmp)), trusted_types), ref
