"""Regenerate the screenshots of docs/quickstart.md from a real pipeline run.

In a temp dir: a fresh copy of the work tree (tests/support/projects.py ``copy_project``), two real
``mlflow run . -e main --env-manager local --experiment-name california_housing_price``
runs into a temp SQLite store (the default LightGBM, which becomes ``@champion``, then
``-P model_kind=linear``, which loses and becomes ``@challenger``), the MLflow UI
(``mlflow server``) over that store and the prediction API (``python -m steps.serve``), each
on a free loopback port. Headless Chromium from Debian's ``chromium`` package, driven by
Playwright, then saves under docs/img/:

* ``runs-tree.png``      the experiment's runs table, each main run expanded to its steps;
* ``train-evaluation.png`` a train run's ``evaluation/predicted_vs_actual.png`` artifact;
* ``registry.png``       the registered model ``CaliforniaHousingRegressor``, its versions
  and their ``@champion`` / ``@challenger`` aliases;
* ``api-docs.png``       the API's interactive ``/docs`` page, ``POST /predict`` opened.

Data: ``HOUSING_DATA_URL`` as for ``make run`` (unset: the default download). Nothing
outside docs/img/ and the temp dir is written; every process started here is stopped, also
on failure or Ctrl-C. The browser reaches only loopback addresses: the Swagger UI assets that
FastAPI's /docs loads from a CDN are answered from the ``swagger-ui-bundle-v2`` package, every
other outside request is refused.

    make screenshots              # or: .venv/bin/python docs/screenshots.py [--out DIR] [--keep]
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import click

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: make `steps` and `tests` importable
    sys.path.insert(0, str(PROJECT_ROOT))

from steps import config  # noqa: E402
from tests.support import copy_project, free_port, wait_http  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox: the script usually runs as root in a container, where Chromium's sandbox
# cannot start. The rest keeps a fresh headless browser from phoning home or waiting on it.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1400, "height": 900}
MAX_PNG_BYTES = 400_000
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
# FastAPI's /docs page loads Swagger UI from this CDN path; see fastapi.openapi.docs.
SWAGGER_CDN_PREFIX = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@"
CHALLENGER_KIND = "linear"  # clearly worse than the default LightGBM: it gets @challenger
# A cold start of the MLflow server (imports, DB migrations) takes >1 min on a busy 2-core box.
SERVER_START_TIMEOUT_S = 300
UI_TIMEOUT_MS = 120_000
RUNS_TABLE_METRIC = "test_rmse"
ASSISTANT_WAIT_MS = 5_000
COLUMN_MENU_WAIT_MS = 20_000
COLUMN_MENU_ATTEMPTS = 3

SHOTS = {
    "runs": "runs-tree.png",
    "evaluation": "train-evaluation.png",
    "registry": "registry.png",
    "api_docs": "api-docs.png",
}


# --- pure helpers ---------------------------------------------------------------------------
def is_loopback(url: str) -> bool:
    """True for URLs the browser may load: this machine's loopback servers and inline data."""
    parsed = urlparse(url)
    return parsed.scheme in {"data", "blob", "about"} or parsed.hostname in LOOPBACK_HOSTS


def swagger_asset(url: str, bundle_dir: Path) -> Path | None:
    """The bundled local file standing in for a Swagger UI CDN URL, or None."""
    if not url.startswith(SWAGGER_CDN_PREFIX):
        return None
    name = urlparse(url).path.rsplit("/", 1)[-1]
    path = bundle_dir / name
    return path if name and path.is_file() else None


def exactly(text: str) -> re.Pattern[str]:
    """A whole-text match for Playwright's ``has_text`` (a plain string matches substrings)."""
    return re.compile(rf"^\s*{re.escape(text)}\s*$")


def content_type(path: Path) -> str:
    return {".js": "application/javascript", ".css": "text/css"}.get(
        path.suffix, "application/octet-stream"
    )


def main_argv(*params: str) -> list[str]:
    """The documented ``mlflow run`` command for the pipeline, as argv."""
    argv = [sys.executable, "-m", "mlflow", "run", ".", "-e", "main", "--env-manager", "local"]
    argv += ["--experiment-name", config.EXPERIMENT_NAME]
    for param in params:
        argv += ["-P", param]
    return argv


def pipeline_env(tracking_uri: str, base: dict[str, str]) -> dict[str, str]:
    """``base`` without its MLflow settings, pointed at ``tracking_uri``.

    The running interpreter's bin dir goes first on PATH so the ``python`` that ``mlflow
    run`` starts for each entry point is this virtualenv's. ``HOUSING_DATA_URL`` passes
    through unchanged.
    """
    env = {k: v for k, v in base.items() if not k.startswith("MLFLOW_")}
    env |= {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")]),
        "PYTHONUNBUFFERED": "1",
    }
    return env


def shrink_png(data: bytes, limit: int = MAX_PNG_BYTES) -> bytes:
    """Re-encode a screenshot; if still over ``limit`` bytes, as a 256-colour palette PNG.

    UI screenshots are flat colours and text: a palette image is visually the same and a
    fraction of the size.
    """
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    if out.tell() > limit:
        out = io.BytesIO()
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        palette.save(out, format="PNG", optimize=True)
    return out.getvalue()


# --- processes ------------------------------------------------------------------------------
class ScreenshotError(Exception):
    """A step of the script failed; the message names it and where its log is."""


def log(message: str) -> None:
    click.echo(f"[screenshots] {message}", err=True)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and everything it spawned (uvicorn workers): its whole process group."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def service(
    argv: list[str], cwd: Path, env: dict[str, str], health_url: str, logfile: Path
) -> Iterator[subprocess.Popen]:
    """A server process in its own process group, up (``health_url`` answers) until exit."""
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            try:
                wait_http(health_url, proc, timeout=SERVER_START_TIMEOUT_S)
            except (RuntimeError, TimeoutError) as exc:
                raise ScreenshotError(
                    f"{' '.join(argv[1:4])} did not start ({exc}); log: {logfile}"
                ) from None
            yield proc
        finally:
            stop_group(proc)


def run_pipeline(project: Path, env: dict[str, str], logfile: Path, *params: str) -> None:
    started = time.monotonic()
    with logfile.open("wb") as out:
        code = subprocess.run(
            main_argv(*params), cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    if code != 0:
        raise ScreenshotError(f"mlflow run . -e main failed (exit {code}); log: {logfile}")
    log(f"main {' '.join(params) or '(defaults)'}: {time.monotonic() - started:.0f} s")


@dataclass(frozen=True)
class Store:
    experiment_id: str
    parent_run_names: tuple[str, ...]
    champion_train_run_id: str


def describe_store(tracking_uri: str) -> Store:
    """What the pages must show, read from the store (names change with the pipeline)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    parents = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{config.TAG_STEP}` = 'main'",
        order_by=["attributes.start_time DESC"],
    )
    champion = client.get_model_version_by_alias(config.MODEL_NAME, config.CHAMPION_ALIAS)
    train_run_id = champion.tags.get("train_run_id") or champion.run_id
    return Store(experiment.experiment_id, tuple(r.info.run_name for r in parents), train_run_id)


# --- browser --------------------------------------------------------------------------------
def route_requests(context, swagger_dir: Path) -> None:
    """Loopback only; Swagger UI's CDN files from the local bundle; refuse anything else."""

    def handle(route) -> None:
        url = route.request.url
        if is_loopback(url):
            route.continue_()
        elif asset := swagger_asset(url, swagger_dir):
            route.fulfill(path=str(asset), content_type=content_type(asset))
        else:
            route.abort()

    context.route("**/*", handle)


def close_assistant(page) -> None:
    """MLflow 3.17 opens its 'Assistant' chat panel on first load; it would hide a third of
    every page."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]').first
    try:
        close.wait_for(state="visible", timeout=ASSISTANT_WAIT_MS)
    except PlaywrightTimeout:
        return  # closed already (the UI remembers it) or not part of this MLflow version
    close.click()
    close.wait_for(state="hidden")


def settle(page) -> None:
    """No hover highlight, focus ring or open tooltip in the picture."""
    page.mouse.move(VIEWPORT["width"] - 5, VIEWPORT["height"] - 5)
    page.evaluate("document.activeElement && document.activeElement.blur()")


def shoot(page, path: Path) -> int:
    settle(page)
    data = shrink_png(page.screenshot(animations="disabled", caret="hide"))
    path.write_bytes(data)
    log(f"{path.name}: {len(data) / 1000:.0f} KB")
    return len(data)


def model_training_view(page) -> None:
    """Switch the UI to its classic "Model training" navigation (runs, models, registry).

    MLflow 3.17 shows the GenAI navigation (traces, judges, prompts) for an experiment
    without ``mlflow.experimentKind``; where the toggle is already set this is a no-op.
    """
    toggle = page.get_by_text("Model training", exact=True)
    if toggle.count():
        toggle.first.click()


def show_columns(page, add: tuple[str, ...], remove: tuple[str, ...]) -> None:
    """Tick/untick runs-table columns in the "Columns" menu (searched by exact name)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(1, COLUMN_MENU_ATTEMPTS + 1):
        try:
            tick_columns(page, add, remove)
            return
        except PlaywrightTimeout:
            # Seen once on a cold server: the menu opened before the runs' metrics had
            # loaded and never listed them. Reopening it shows the current columns.
            page.keyboard.press("Escape")
            if attempt == COLUMN_MENU_ATTEMPTS:
                raise


def tick_columns(page, add: tuple[str, ...], remove: tuple[str, ...]) -> None:
    page.get_by_role("button", name="Columns").click()
    search = page.get_by_placeholder("Search columns")
    for name, wanted in [*((n, True) for n in add), *((n, False) for n in remove)]:
        search.fill(name)
        # The menu is an antd tree: a node's class says whether its checkbox is ticked.
        title = page.locator(".du-bois-light-tree-title", has_text=exactly(name))
        node = page.locator(".du-bois-light-tree-treenode", has=title).first
        node.wait_for(timeout=COLUMN_MENU_WAIT_MS)
        checked = "treenode-checkbox-checked" in (node.get_attribute("class") or "")
        if checked != wanted:
            node.locator(".du-bois-light-tree-title").click()
    page.keyboard.press("Escape")
    search.wait_for(state="hidden")


def shoot_runs(page, ui: str, store: Store, out: Path) -> None:
    page.goto(f"{ui}/#/experiments/{store.experiment_id}/runs")
    for name in store.parent_run_names:
        page.get_by_role("link", name=name, exact=True).wait_for()
    close_assistant(page)
    model_training_view(page)
    # The switch re-renders the table; the column menu lists only metrics of loaded runs.
    for name in store.parent_run_names:
        page.get_by_role("link", name=name, exact=True).wait_for()
    show_columns(page, add=(RUNS_TABLE_METRIC,), remove=("Source",))
    for name in store.parent_run_names:
        row = page.locator(".ag-row", has=page.get_by_role("link", name=name, exact=True))
        row.locator('[data-component-id*="runnamecellrenderer"]').first.click()
    # Expanded: every step's run is listed (the first, cold main ran all four).
    for step in ("load_data", "preprocess", "train", "register"):
        page.get_by_role("link", name=step, exact=True).first.wait_for()
    shoot(page, out / SHOTS["runs"])


def shoot_evaluation(page, ui: str, store: Store, out: Path) -> None:
    artifact = "evaluation/predicted_vs_actual.png"
    page.goto(
        f"{ui}/#/experiments/{store.experiment_id}/runs/"
        f"{store.champion_train_run_id}/artifactPath/{artifact}"
    )
    close_assistant(page)
    image = page.locator(f'img[alt="{artifact}"]')
    image.wait_for()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )
    shoot(page, out / SHOTS["evaluation"])


def shoot_registry(page, ui: str, out: Path) -> None:
    page.goto(f"{ui}/#/models/{config.MODEL_NAME}")
    for alias in (config.CHAMPION_ALIAS, config.CHALLENGER_ALIAS):
        page.get_by_text(alias, exact=False).first.wait_for()
    close_assistant(page)
    shoot(page, out / SHOTS["registry"])


def shoot_api_docs(page, api: str, out: Path) -> None:
    page.goto(f"{api}/docs")
    predict = page.locator(".opblock-post", has_text="/predict")
    predict.wait_for()
    predict.locator(".opblock-summary").click()
    page.locator(".opblock-post .body-param__example, .opblock-post .example").first.wait_for()
    shoot(page, out / SHOTS["api_docs"])


def take_screenshots(
    ui: str, api: str, store: Store, out: Path, profile: Path, failed_dir: Path
) -> None:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
    from swagger_ui_bundle import swagger_ui_path

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport=VIEWPORT,
            device_scale_factor=1,
            timezone_id="UTC",
            locale="en-US",
        )
        try:
            context.set_default_timeout(UI_TIMEOUT_MS)
            route_requests(context, Path(swagger_ui_path))
            page = context.new_page()
            shots = [
                (SHOTS["runs"], lambda: shoot_runs(page, ui, store, out)),
                (SHOTS["evaluation"], lambda: shoot_evaluation(page, ui, store, out)),
                (SHOTS["registry"], lambda: shoot_registry(page, ui, out)),
                (SHOTS["api_docs"], lambda: shoot_api_docs(page, api, out)),
            ]
            for name, take in shots:
                try:
                    take()
                except PlaywrightError as exc:
                    # What the browser showed when it gave up: the quickest way to see why.
                    seen = failed_dir / f"failed-{name}"
                    with contextlib.suppress(PlaywrightError):
                        page.screenshot(path=seen)
                    reason = str(exc).splitlines()[0]
                    raise ScreenshotError(f"{name}: {reason}; page as seen: {seen}") from None
        finally:
            context.close()


# --- command --------------------------------------------------------------------------------
@click.command(help=__doc__.split("\n\n")[0])
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=PROJECT_ROOT / "docs" / "img",
    show_default=True,
    help="Where the PNGs go.",
)
@click.option("--keep", is_flag=True, help="Keep the temp dir (project copy, store, logs).")
def cli(out: Path, keep: bool) -> None:
    if not CHROMIUM.exists():
        click.echo(f"error: screenshots: {CHROMIUM} not found: apt-get install chromium", err=True)
        raise SystemExit(1)
    # SIGTERM (e.g. from make or CI) unwinds like Ctrl-C, so the servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="screenshots-"))
    try:
        take_all(out, work)
    except ScreenshotError as exc:
        # The temp dir stays: it holds the logs and the failed page the message points at.
        click.echo(f"error: screenshots: {exc}", err=True)
        raise SystemExit(1) from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f} s: {', '.join(SHOTS.values())} in {out}")


def take_all(out: Path, work: Path) -> None:
    """Pipeline runs, servers, browser; every process is stopped before this returns."""
    out.mkdir(parents=True, exist_ok=True)
    project = copy_project(work / "project")
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    env = pipeline_env(tracking_uri, dict(os.environ))

    run_pipeline(project, env, work / "main-champion.log")
    run_pipeline(project, env, work / "main-challenger.log", f"model_kind={CHALLENGER_KIND}")
    store = describe_store(tracking_uri)

    ui_port, api_port = free_port(), free_port()
    ui, api = f"http://127.0.0.1:{ui_port}", f"http://127.0.0.1:{api_port}"
    server = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    server += ["--port", str(ui_port), "--backend-store-uri", tracking_uri, "--workers", "1"]
    serve = [sys.executable, "-m", "steps.serve", "--port", str(api_port), "--workers", "1"]
    with contextlib.ExitStack() as services:
        services.enter_context(service(server, project, env, f"{ui}/health", work / "ui.log"))
        services.enter_context(service(serve, project, env, f"{api}/ready", work / "api.log"))
        log(f"servers up: UI {ui}, API {api}")
        take_screenshots(ui, api, store, out, work / "chromium-profile", work)


if __name__ == "__main__":
    cli()
