"""Step ``load_data``: materialise the DVC-tracked raw dataset, validate it, log it.

In: ``data.dvc`` (the versioned hash of ``data/``) and optionally ``--source-url``.
Acquisition order: a workspace copy → the local DVC cache (``dvc checkout``) → a configured
DVC remote (``dvc pull``) → a download from the source URL (file:// or http(s)://, .csv or
.tgz). Whatever arrives must pass the declared schema and hash exactly to the md5 in
``data.dvc``; only then does a download enter ``data/`` and the DVC cache.

Out (MLflow): artifact ``raw/housing.csv``; input dataset ``california_housing_raw`` (digest =
the data.dvc md5); tags ``dataset.dvc_md5``, ``dataset.file_md5``, ``dataset.acquired_from``;
metrics ``n_rows``, ``n_missing_total_bedrooms``.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import click
import pandas as pd
import yaml

from steps import config, runtime, schema
from steps.runtime import StepError

STEP = "load_data"
DOWNLOAD_TIMEOUT_S = 60


# --- pure core ----------------------------------------------------------------------------
def parse_raw(payload: bytes) -> pd.DataFrame:
    """CSV bytes → validated raw frame (``SchemaError``/``StepError`` name the problem)."""
    if not payload.strip():
        raise StepError("the data file is empty")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StepError(f"the data file is not UTF-8 text (byte {exc.start})") from exc
    try:
        df = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise StepError(f"the data file is not valid CSV: {str(exc).splitlines()[0]}") from exc
    if not isinstance(df.index, pd.RangeIndex):
        # pandas turns leading columns into an index when the first rows have extra fields
        raise StepError("the data file is not valid CSV: rows have more fields than the header")
    # pandas silently renames a repeated header "x" to "x.1"; restore it so the schema sees it.
    header = [h.strip() for h in text.splitlines()[0].split(",")]
    if len(header) == len(df.columns):
        df.columns = header
    try:
        return schema.validate_raw(df)
    except schema.SchemaError as exc:
        raise StepError(str(exc)) from exc


def extract_csv(blob: bytes, name: str) -> bytes:
    """The CSV inside a downloaded payload: the blob itself, or housing.csv from a .tgz."""
    if not (name.endswith(".tgz") or name.endswith(".tar.gz")):
        return blob
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            members = [m for m in tar.getmembers() if Path(m.name).name == config.RAW_FILE_NAME]
            if not members or not members[0].isfile():
                raise StepError(f"archive {name} holds no {config.RAW_FILE_NAME}")
            extracted = tar.extractfile(members[0])
            assert extracted is not None
            return extracted.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise StepError(f"archive {name} is truncated or corrupt ({exc})") from exc


# --- I/O ------------------------------------------------------------------------------------
def expected_md5(root: Path) -> str:
    """The md5 data.dvc records for ``data/``."""
    path = config.dvc_file(root)
    try:
        outs = yaml.safe_load(path.read_text())["outs"]
        return next(o["md5"] for o in outs if o["path"] == config.DATA_DIR_NAME)
    except (OSError, KeyError, TypeError, StopIteration, yaml.YAMLError) as exc:
        raise StepError(f"{path} is missing or does not track {config.DATA_DIR_NAME}/") from exc


def dvc_md5(data_dir: Path) -> str:
    """DVC's own directory hash of ``data_dir`` (computed in memory; nothing is cached)."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:
        _, _, obj = build(HashFileDB(fs, scratch), str(data_dir), fs, "md5", dry_run=True)
    return obj.hash_info.value


def download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StepError(f"cannot download {url}: {reason}") from exc


def _dvc_repo(root: Path):
    from dvc.repo import Repo

    return Repo(str(root))


def restore_from_dvc(root: Path) -> str | None:
    """Try the local DVC cache, then a configured remote; return which one worked."""
    from dvc.exceptions import DvcException

    repo = _dvc_repo(root)
    target = str(config.dvc_file(root))
    try:
        repo.checkout(targets=[target])
        if config.raw_data_path(root).exists():
            return "dvc-cache"
    except DvcException:
        pass
    if repo.config.get("core", {}).get("remote"):
        try:
            repo.pull(targets=[target])
            if config.raw_data_path(root).exists():
                return "dvc-remote"
        except DvcException as exc:
            runtime.echo(STEP, f"dvc pull failed, falling back to download: {exc}")
    return None


def acquire(root: Path, source_url: str) -> tuple[pd.DataFrame, str, str]:
    """Materialise ``data/`` and return (validated frame, where it came from, csv md5)."""
    want = expected_md5(root)
    data_dir = config.data_dir(root)
    origin = "workspace" if config.raw_data_path(root).exists() else restore_from_dvc(root)

    if origin is None:
        url = config.resolve_source_url(source_url)
        runtime.echo(STEP, f"downloading {url}")
        payload = extract_csv(download(url), url)
        df = parse_raw(payload)
        # Stage beside data/ so the final move is a rename: data/ is either absent or whole.
        staging = Path(tempfile.mkdtemp(prefix=".acquire-", dir=root))
        try:
            (staging / config.RAW_FILE_NAME).write_bytes(payload)
            got = dvc_md5(staging)
            if got != want:
                raise StepError(f"data from {url} has DVC md5 {got}, but data.dvc expects {want}")
            staging.rename(data_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        # Verified content only: cache it so the next run needs no network.
        _dvc_repo(root).commit(str(config.dvc_file(root)), force=True)
        return df, url, hashlib.md5(payload).hexdigest()

    payload = config.raw_data_path(root).read_bytes()
    df = parse_raw(payload)
    got = dvc_md5(data_dir)
    if got != want:
        raise StepError(
            f"{data_dir} has DVC md5 {got}, but data.dvc expects {want} "
            "(run `dvc add data` to version the change, or `dvc checkout data.dvc` to undo it)"
        )
    return df, origin, hashlib.md5(payload).hexdigest()


@click.command(help="Materialise, verify and log the raw housing dataset.")
@click.option(
    "--source-url",
    default=config.DEFAULT_SOURCE_URL,
    show_default=True,
    help=f"Download URL when DVC has no copy (empty: ${config.DATA_URL_ENV}, else public URL).",
)
@runtime.as_step(STEP)
def cli(source_url: str) -> None:
    import mlflow

    root = config.PROJECT_ROOT
    df, origin, file_md5 = acquire(root, source_url)
    md5 = expected_md5(root)
    runtime.echo(STEP, f"{len(df)} rows from {origin}, DVC md5 {md5}")

    mlflow.set_tags(
        {config.TAG_DVC_MD5: md5, config.TAG_FILE_MD5: file_md5, config.TAG_DATA_SOURCE: origin}
    )
    mlflow.log_metrics(
        {"n_rows": len(df), "n_missing_total_bedrooms": int(df["total_bedrooms"].isna().sum())}
    )
    dataset = mlflow.data.from_pandas(
        df,
        source=runtime.dataset_source(origin if "://" in origin else str(config.data_dir(root))),
        targets=config.TARGET,
        name=config.RAW_DATASET_NAME,
        digest=md5,
    )
    runtime.with_unique_race_retry(lambda: mlflow.log_input(dataset, context="raw"))
    mlflow.log_artifact(str(config.raw_data_path(root)), artifact_path=config.RAW_ARTIFACT_DIR)


if __name__ == "__main__":
    cli()
