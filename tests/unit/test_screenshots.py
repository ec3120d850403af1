"""docs/screenshots.py without a browser: its command line, the request policy the browser
runs under, the pipeline command and environment it builds, and the PNG shrinking.

Taking the screenshots needs Chromium and minutes of pipeline runs, so it is `make
screenshots`, not a test.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from steps import config

SCRIPT = config.PROJECT_ROOT / "docs" / "screenshots.py"


@pytest.fixture(scope="module")
def screenshots():
    spec = importlib.util.spec_from_file_location("docs_screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module is executing.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_help_describes_the_command(screenshots):
    result = CliRunner().invoke(screenshots.cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert "--out" in result.output and "--keep" in result.output
    assert "screenshots" in result.output.lower()


def test_makefile_target_runs_the_script():
    makefile = (config.PROJECT_ROOT / "Makefile").read_text()
    target = re.search(r"^screenshots:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target, "no screenshots target"
    assert "docs/screenshots.py" in target.group(1)
    assert "apt-get install chromium" in target.group(1)


def test_every_screenshot_is_used_by_the_quickstart(screenshots):
    quickstart = (config.PROJECT_ROOT / "docs" / "quickstart.md").read_text()
    for name in screenshots.SHOTS.values():
        assert f"(img/{name})" in quickstart, name


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:5000/#/experiments/1/runs", True),
        ("http://localhost:8000/docs", True),
        ("http://[::1]:8000/openapi.json", True),
        ("data:image/png;base64,AAAA", True),
        ("blob:http://127.0.0.1:5000/78aeee6b", True),
        ("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css", False),
        ("https://fastapi.tiangolo.com/img/favicon.png", False),
        ("http://10.0.0.1:5000/", False),
        ("http://127.0.0.1.example.com/", False),
    ],
)
def test_browser_reaches_only_loopback(screenshots, url, allowed):
    assert screenshots.is_loopback(url) is allowed


def test_swagger_cdn_files_come_from_the_local_bundle(screenshots, tmp_path):
    (tmp_path / "swagger-ui-bundle.js").write_text("// bundle")
    (tmp_path / "swagger-ui.css").write_text("/* css */")
    cdn = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/"
    assert (
        screenshots.swagger_asset(cdn + "swagger-ui.css", tmp_path) == tmp_path / "swagger-ui.css"
    )
    js = screenshots.swagger_asset(cdn + "swagger-ui-bundle.js", tmp_path)
    assert js == tmp_path / "swagger-ui-bundle.js"
    assert screenshots.content_type(js) == "application/javascript"
    assert screenshots.swagger_asset(cdn + "not-bundled.js", tmp_path) is None
    assert screenshots.swagger_asset("https://example.com/swagger-ui.css", tmp_path) is None


def test_the_installed_swagger_bundle_has_what_fastapi_docs_loads(screenshots):
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    html = get_swagger_ui_html(openapi_url="/openapi.json", title="t").body.decode()
    urls = re.findall(r"https://cdn\.jsdelivr\.net/[^\"']+", html)
    assert urls
    for url in urls:
        assert screenshots.swagger_asset(url, Path(swagger_ui_path)) is not None, url


def test_pipeline_command_is_the_documented_one(screenshots):
    argv = screenshots.main_argv("model_kind=linear")
    assert argv[:2] == [sys.executable, "-m"]
    command = " ".join(argv[2:])
    assert command == (
        "mlflow run . -e main --env-manager local "
        f"--experiment-name {config.EXPERIMENT_NAME} -P model_kind=linear"
    )
    quickstart = (config.PROJECT_ROOT / "docs" / "quickstart.md").read_text()
    assert f"--experiment-name {config.EXPERIMENT_NAME}" in quickstart
    assert f"-P model_kind={screenshots.CHALLENGER_KIND}" in quickstart


def test_pipeline_env_uses_this_interpreter_and_the_temp_store(screenshots):
    base = {
        "PATH": "/usr/bin:/bin",
        "MLFLOW_TRACKING_URI": "http://elsewhere:5000",
        "MLFLOW_EXPERIMENT_NAME": "other",
        "HOUSING_DATA_URL": "file:///data/housing.tgz",
    }
    env = screenshots.pipeline_env("sqlite:////tmp/x/mlflow.db", base)
    assert env["MLFLOW_TRACKING_URI"] == "sqlite:////tmp/x/mlflow.db"
    assert "MLFLOW_EXPERIMENT_NAME" not in env
    assert env["HOUSING_DATA_URL"] == "file:///data/housing.tgz"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["PATH"].endswith("/usr/bin:/bin")


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_shrink_png_keeps_small_images_lossless(screenshots):
    pixels = np.zeros((90, 140, 3), dtype=np.uint8)
    pixels[20:40, 30:100] = (14, 83, 139)
    original = Image.fromarray(pixels)
    shrunk = Image.open(io.BytesIO(screenshots.shrink_png(png_bytes(original))))
    assert np.array_equal(np.asarray(shrunk.convert("RGB")), pixels)


def test_shrink_png_brings_a_large_image_under_the_limit(screenshots):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    data = png_bytes(Image.fromarray(pixels))
    limit = len(data) // 2
    shrunk = screenshots.shrink_png(data, limit=limit)
    assert len(shrunk) < limit
    image = Image.open(io.BytesIO(shrunk))
    assert image.size == (400, 300)
    assert image.mode == "P"
