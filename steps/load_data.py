"""Step ``load_data``: materialise the DVC-tracked raw dataset, validate it, log it.

In: ``data.dvc`` (the versioned hash of ``data/``), optionally ``--source-url`` and
``--accept-drift``. Acquisition order: a workspace copy → the local DVC cache → a configured
DVC remote → a download from the source URL (file:// or http(s)://, .csv or .tgz). Whatever
arrives must pass the declared schema, hash exactly to the md5 in ``data.dvc`` and pass the
data contract (steps/contract.py: table rules, and drift against the reference — the data
the ``@champion`` was trained on, else the last finished load); only then is ``data/``
written (checkout, pull or download) and the DVC cache filled. ``--accept-drift true`` turns
drift failures into warnings; table rules always stop the load.

Out (MLflow): artifact ``raw/housing.csv``; the data report ``data_report/report.md``,
``data_report/histograms.png`` (overlay with the reference) and ``data_report/profile.json``
(what the next version is compared against), also on a failed run; input dataset
``california_housing_raw`` (digest = the data.dvc md5); tags ``dataset.dvc_md5``,
``dataset.file_md5``, ``dataset.acquired_from``, ``data_contract.status``
(passed/warnings/failed), ``data_contract.accept_drift``, ``data_contract.reference``,
``data_contract.reference_run_id``, ``data_contract.warnings``; the run description is the
report; metrics ``n_rows``, ``n_missing_total_bedrooms``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pandas as pd

from steps import config, contract, runtime, schema
from steps.runtime import StepError

STEP = "load_data"
DOWNLOAD_TIMEOUT_S = 60
TAG_CONTRACT_STATUS = "data_contract.status"
TAG_ACCEPT_DRIFT = "data_contract.accept_drift"
TAG_REFERENCE = "data_contract.reference"
TAG_REFERENCE_RUN = "data_contract.reference_run_id"
TAG_WARNINGS = "data_contract.warnings"
NOTE_LIMIT = 7_900  # MLflow rejects tag values over 8,000 characters; the artifact is whole


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
    in_cache = repo.cache.local.exists(runtime.expected_md5(root))
    has_remote = bool(repo.config.get("core", {}).get("remote"))
    if not (in_cache or has_remote):
        return None
    path = f"{config.DATA_DIR_NAME}/{config.RAW_FILE_NAME}"
    try:
        with DVCFileSystem(repo=repo).open(path, "rb") as handle:
            return handle.read(), "dvc-cache" if in_cache else "dvc-remote"
    except (DvcException, OSError) as exc:
        if has_remote:
            runtime.echo(STEP, f"DVC has no readable copy, falling back to download: {exc}")
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
    want = runtime.expected_md5(root)
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
        gate(df)
        staging.rename(data_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Verified content only: cache it so the next run needs no network.
    _dvc_repo(root).commit(str(config.dvc_file(root)), force=True)
    return df, url, hashlib.md5(payload).hexdigest()


# --- the data contract's reference and report (MLflow) --------------------------------------
@dataclass(frozen=True)
class Reference:
    profile: dict[str, Any] | None
    run_id: str | None
    label: str


def reference_profile(run_id: str) -> dict[str, Any]:
    """A load_data run's logged profile; runs from before profiles existed: its raw CSV."""
    import mlflow
    from mlflow.exceptions import MlflowException

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


def find_reference(experiment_id: str) -> Reference:
    """The data the champion was trained on, else the last finished load; else none.

    The champion's load_data run is looked for in every experiment (a load run by hand may
    sit in Default); the fallback only in this run's experiment.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    base = f"tags.`{config.TAG_STEP}` = '{STEP}' and attributes.status = 'FINISHED'"

    def latest(extra: str = "", everywhere: bool = False) -> Any:
        ids = [e.experiment_id for e in client.search_experiments()] if everywhere else []
        found = client.search_runs(
            ids or [experiment_id],
            base + extra,
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return found[0] if found else None

    try:
        champion = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    except MlflowException:
        champion = None
    md5 = champion.tags.get(config.TAG_DVC_MD5) if champion else None
    run = latest(f" and tags.`{config.TAG_DVC_MD5}` = '{md5}'", everywhere=True) if md5 else None
    if run is not None:
        label = f"the champion's data (v{champion.version}, md5 {md5}, run {run.info.run_id})"
    else:
        run = latest()
        if run is None:
            return Reference(None, None, "none (first load: absolute rules only)")
        label = (
            f"the last finished load (md5 {run.data.tags.get(config.TAG_DVC_MD5)}, "
            f"run {run.info.run_id})"
        )
    try:
        prof = reference_profile(run.info.run_id)
    except (MlflowException, OSError, ValueError, schema.SchemaError) as exc:
        runtime.echo(STEP, f"reference run {run.info.run_id} has no usable data: {exc}")
        return Reference(None, None, f"none (run {run.info.run_id} has no usable data)")
    return Reference(prof, run.info.run_id, label)


def run_contract(df: pd.DataFrame, md5: str, reference: Reference, accept_drift: bool) -> None:
    """Check ``df``, log the data report and tags, and stop the load on a hard violation."""
    import mlflow

    result = contract.check(df, reference.profile, accept_drift=accept_drift)
    verdict = result.verdict
    markdown = contract.report_markdown(result, reference.profile, md5, reference.label)
    mlflow.log_text(markdown, contract.REPORT_PATH)
    mlflow.log_dict(result.profile, contract.PROFILE_PATH)
    figure = contract.histograms_figure(result.profile, reference.profile, result.drift)
    mlflow.log_figure(figure, contract.HISTOGRAMS_PATH)
    status = "failed" if verdict.failures else ("warnings" if verdict.warnings else "passed")
    tags = {
        TAG_CONTRACT_STATUS: status,
        TAG_ACCEPT_DRIFT: str(accept_drift).lower(),
        TAG_REFERENCE: reference.label[:500],
        # the run description: the report without its image (which only resolves as artifact)
        "mlflow.note.content": markdown.replace("![overlay histograms](histograms.png)", "")[
            :NOTE_LIMIT
        ],
    }
    if reference.run_id:
        tags[TAG_REFERENCE_RUN] = reference.run_id
    if verdict.warnings:
        tags[TAG_WARNINGS] = " | ".join(f.message for f in verdict.warnings)[:5000]
    mlflow.set_tags(tags)
    for finding in verdict.warnings:
        runtime.echo(STEP, f"warning: {finding.message}")
    if verdict.failures:
        raise StepError(verdict.error_line())
    runtime.echo(STEP, f"data contract {status} (reference: {reference.label})")


@click.command(help="Materialise, verify and log the raw housing dataset.")
@click.option(
    "--source-url",
    default=config.DEFAULT_SOURCE_URL,
    show_default=True,
    help=f"Download URL when DVC has no copy (empty: ${config.DATA_URL_ENV}, else public URL).",
)
@click.option(
    "--accept-drift",
    type=bool,
    default=config.DEFAULT_ACCEPT_DRIFT,
    show_default=True,
    help="Accept a deliberate shift: drift failures become warnings (table rules still fail).",
)
@runtime.as_step(STEP)
def cli(source_url: str, accept_drift: bool) -> None:
    import mlflow

    root = config.PROJECT_ROOT
    md5 = runtime.expected_md5(root)
    reference = find_reference(mlflow.active_run().info.experiment_id)
    df, origin, file_md5 = acquire(
        root, source_url, lambda new: run_contract(new, md5, reference, accept_drift)
    )
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
