"""``python -m steps.data.fetch`` (``make data``): ``data/housing.csv`` without an MLflow run.

In: ``data.dvc``; the data from where load_data takes it (``data/`` → the local DVC cache →
a DVC remote → a download from ``$HOUSING_DATA_URL``, else the public URL). Out: ``data/``
checked out and the DVC cache filled, only with a file whose DVC md5 is the one in
``data.dvc`` and whose rows pass the schema; prints the CSV's path. The data contract's
drift check needs the tracking store and stays with load_data. No MLflow run, no tags.

The test suite and ``bench/`` read the real data through ``fetch``, so they see exactly
what a user's ``make run`` would, fetched once per clone.
"""

from __future__ import annotations

import fcntl
import sys
from pathlib import Path

import click

from steps import config
from steps.data.acquisition import acquire
from steps.infra.errors import StepError


def fetch(root: Path = config.PROJECT_ROOT) -> Path:
    """The verified ``data/housing.csv`` of the checkout at ``root`` (fetched if missing)."""
    lock_dir = root / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    # Processes started together (test workers) fetch once: the others wait, then verify.
    with (lock_dir / "fetchdata.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        acquire(root, config.DEFAULT_SOURCE_URL, gate=lambda _df: None)
    return config.raw_data_path(root)


@click.command(help="Fetch and verify data/housing.csv (as load_data does), without MLflow.")
def cli() -> None:
    try:
        click.echo(fetch())
    except StepError as exc:
        click.echo(f"error: fetchdata: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    cli()
