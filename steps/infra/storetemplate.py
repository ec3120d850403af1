"""An empty, fully migrated SQLite tracking store, built once per virtualenv.

A new SQLite store costs MLflow about 1.6 s of CPU before the first run (its ~60 Alembic
migrations, replayed on an empty schema by the `mlflow run` launcher). ``make setup`` builds
one empty store with the installed MLflow (``build``) and ``make run`` copies it into place
when ``./mlflow.db`` does not exist yet (``place``); from there MLflow uses it as the store it
would have created (same schema version, same ``Default`` experiment). The template's name
carries the MLflow version, so an upgraded venv never copies an older schema.

In: ``MLFLOW_TRACKING_URI`` (only a ``sqlite:///`` file that does not exist is touched).
Out: ``<venv>/mlflow-<version>-empty-store.db``; the store file, created atomically.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

from steps import config

SQLITE = "sqlite:///"


def template_path() -> Path:
    return Path(sys.prefix) / f"mlflow-{version('mlflow')}-empty-store.db"


def build(root: Path = config.PROJECT_ROOT) -> Path:
    """Create the template (from ``root``: MLflow records ``Default``'s artifact location
    relative to the working directory, as the launcher would)."""
    target = template_path()
    if target.exists():
        return target
    from mlflow import MlflowClient

    partial = target.with_name(f".{target.name}.{os.getpid()}")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        MlflowClient(f"{SQLITE}{partial}").search_experiments()
        os.replace(partial, target)
    finally:
        os.chdir(cwd)
        partial.unlink(missing_ok=True)
    return target


def place(tracking_uri: str) -> bool:
    """Copy the template to the store file of ``tracking_uri`` if that is a SQLite file that
    does not exist yet; True if it was placed. Never replaces an existing store."""
    template = template_path()
    if not tracking_uri.startswith(SQLITE) or not template.exists():
        return False
    store = Path(tracking_uri.removeprefix(SQLITE))
    if store.exists() or not store.parent.is_dir():
        return False
    partial = store.with_name(f".{store.name}.{os.getpid()}")
    try:
        shutil.copyfile(template, partial)
        os.link(partial, store)  # fails if a store appeared meanwhile: that one is kept
    except FileExistsError:
        return False
    finally:
        partial.unlink(missing_ok=True)
    return True


if __name__ == "__main__":
    if sys.argv[1:] == ["build"]:
        build()  # quietly: `make run`'s first output is the set-up's two lines and the table
    elif sys.argv[1:] == ["place"]:
        place(config.tracking_uri())
    else:
        print("usage: python -m steps.infra.storetemplate build | place", file=sys.stderr)
        sys.exit(2)
