"""Getting a verified copy of the raw table: ``data/`` → the local DVC cache → a DVC remote →
a download (file:// or http(s)://, .csv or .tgz).

In: ``data.dvc`` (the md5 of ``data/``), a source URL, and a gate (load_data's data contract)
that sees every version before it is written. Out: ``data/`` checked out or written, the DVC
cache filled, only with content whose DVC md5 is the one in ``data.dvc`` and whose rows pass
the schema. No MLflow run: load_data logs what it got; ``python -m steps.data.fetch`` uses the
same path for ``make data``.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from steps import config
from steps.data import schema
from steps.infra.errors import StepError
from steps.tracking import provenance, steprun

ECHO_AS = "load_data"  # progress lines read as load_data's, whoever acquires
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


def read_from_dvc(root: Path) -> tuple[bytes, str] | None:
    """The versioned housing.csv from the local DVC cache, else a configured remote.

    Read through DVC's filesystem, so nothing is written: ``data/`` is checked out (and a
    remote's copy pulled into the cache) only after the data passed the contract.
    """
    from dvc.exceptions import DvcException
    from dvc.fs import DVCFileSystem

    repo = _dvc_repo(root)
    in_cache = repo.cache.local.exists(provenance.expected_md5(root))
    has_remote = bool(repo.config.get("core", {}).get("remote"))
    if not (in_cache or has_remote):
        return None
    path = f"{config.DATA_DIR_NAME}/{config.RAW_FILE_NAME}"
    try:
        with DVCFileSystem(repo=repo).open(path, "rb") as handle:
            return handle.read(), "dvc-cache" if in_cache else "dvc-remote"
    except (DvcException, OSError) as exc:
        if has_remote:
            steprun.echo(ECHO_AS, f"DVC has no readable copy, falling back to download: {exc}")
        return None


def materialise_from_dvc(root: Path, origin: str) -> None:
    """Check ``data/`` out of the cache (``dvc pull`` first when it came from the remote)."""
    from dvc.exceptions import DvcException

    repo = _dvc_repo(root)
    target = str(config.dvc_file(root))
    try:
        if origin == "dvc-remote":
            repo.pull(targets=[target])
        else:
            repo.checkout(targets=[target])
    except DvcException as exc:
        raise StepError(f"dvc could not restore {config.DATA_DIR_NAME}/: {exc}") from exc


Gate = Callable[[pd.DataFrame], None]


def acquire(root: Path, source_url: str, gate: Gate) -> tuple[pd.DataFrame, str, str]:
    """Materialise ``data/`` and return (validated frame, where it came from, csv md5).

    ``gate`` (the data contract) sees every version before it is written to ``data/`` or
    the DVC cache, and stops the load by raising.
    """
    want = provenance.expected_md5(root)
    data_dir = config.data_dir(root)

    if config.raw_data_path(root).exists():
        payload = config.raw_data_path(root).read_bytes()
        df = parse_raw(payload)
        got = dvc_md5(data_dir)
        if got != want:
            raise StepError(
                f"{data_dir} has DVC md5 {got}, but data.dvc expects {want} "
                "(run `dvc add data` to version the change, or `dvc checkout data.dvc` to undo it)"
            )
        gate(df)
        return df, "workspace", hashlib.md5(payload).hexdigest()

    from_dvc = read_from_dvc(root)
    if from_dvc is not None:
        payload, origin = from_dvc
        df = parse_raw(payload)
        gate(df)
        materialise_from_dvc(root, origin)
        got = dvc_md5(data_dir)
        if got != want:
            raise StepError(
                f"{data_dir} from {origin} has DVC md5 {got}, but data.dvc expects {want}"
            )
        return df, origin, hashlib.md5(payload).hexdigest()

    url = config.resolve_source_url(source_url)
    steprun.echo(ECHO_AS, f"downloading {url}")
    payload = extract_csv(download(url), url)
    df = parse_raw(payload)
    # Stage beside data/ so the final move is a rename: data/ is either absent or whole.
    staging = Path(tempfile.mkdtemp(prefix=".acquire-", dir=root))
    try:
        (staging / config.RAW_FILE_NAME).write_bytes(payload)
        got = dvc_md5(staging)
        if got != want:
            raise StepError(f"data from {url} has DVC md5 {got}, but data.dvc expects {want}")
        gate(df)
        staging.rename(data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Verified content only: cache it so the next run needs no network.
    _dvc_repo(root).commit(str(config.dvc_file(root)), force=True)
    return df, url, hashlib.md5(payload).hexdigest()


# --- a new version at the source (retrain) --------------------------------------------------
def source_version(source_url: str) -> tuple[bytes, str]:
    """What the source serves now: (housing.csv's bytes, their DVC directory md5), hashed
    exactly as a download is hashed before it may enter ``data/``. The bytes pass the schema
    first, so a broken source is a ``StepError`` and is never taken for a new version."""
    url = config.resolve_source_url(source_url)
    payload = extract_csv(download(url), url)
    parse_raw(payload)
    with tempfile.TemporaryDirectory(prefix=".source-") as staging:
        (Path(staging) / config.RAW_FILE_NAME).write_bytes(payload)
        return payload, dvc_md5(Path(staging))


def adopt_version(root: Path, payload: bytes) -> str:
    """Version ``payload`` the way a user does (housing.csv into ``data/``, ``dvc add data``:
    ``data.dvc`` rewritten, the DVC cache filled), so load_data finds it; returns the md5.
    ``data/`` is replaced by a rename, whole or not at all."""
    data_dir = config.data_dir(root)
    staging = Path(tempfile.mkdtemp(prefix=".adopt-", dir=root))
    old = root / f".adopt-old-{staging.name}"
    try:
        (staging / config.RAW_FILE_NAME).write_bytes(payload)
        if data_dir.exists():
            data_dir.rename(old)
        staging.rename(data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    _dvc_repo(root).add([str(data_dir)])
    return provenance.expected_md5(root)


def restore_version(root: Path, dvc_file_text: str) -> None:
    """Undo ``adopt_version``: ``data.dvc`` as it was and no ``data/`` (load_data checks the
    old version out of the DVC cache again)."""
    shutil.rmtree(config.data_dir(root), ignore_errors=True)
    config.dvc_file(root).write_text(dvc_file_text)
