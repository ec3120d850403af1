"""Where a run's inputs come from: the git state of the work tree, the data version
``data.dvc`` asks for, and MLflow dataset sources. Reads git and ``data.dvc``; writes nothing."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steps import config
from steps.infra.errors import StepError


@dataclass(frozen=True)
class GitState:
    commit: str | None
    dirty: bool


def git_state(root: Path = config.PROJECT_ROOT) -> GitState:
    """Commit and cleanliness of the work tree; a tree outside git counts as dirty."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=normal")
    return GitState(commit=commit, dirty=commit is None or status is None or bool(status))


def expected_md5(root: Path = config.PROJECT_ROOT) -> str:
    """The md5 data.dvc records for ``data/``: the data version this checkout asks for."""
    import yaml

    path = config.dvc_file(root)
    try:
        outs = yaml.safe_load(path.read_text())["outs"]
        return next(o["md5"] for o in outs if o["path"] == config.DATA_DIR_NAME)
    except (OSError, KeyError, TypeError, StopIteration, yaml.YAMLError) as exc:
        raise StepError(f"{path} is missing or does not track {config.DATA_DIR_NAME}/") from exc


def dataset_source(uri: str) -> Any:
    """An MLflow dataset source for a URL or local path, chosen explicitly.

    A plain string is ambiguous to MLflow's registry (two local sources claim it), so pick.
    """
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if uri.startswith(("http://", "https://")):
        return HTTPDatasetSource(uri)
    local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
    return local(uri)
