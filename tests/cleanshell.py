"""A new user's shell, for the tests that run the README's and CI's commands verbatim.

A fresh ``git clone`` of the project; a scrubbed environment (``env -i``: HOME an empty temp
dir, PATH without any virtualenv, only HOUSING_DATA_URL set, as the README's offline note
says). Each code block marked ``<!-- clean-shell-test: NAME -->`` in README.md runs as one
``bash -e`` script in its own session; whatever it leaves running (the README's
``make serve &``) is killed when it ends.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from steps.tracking.loading import DEFAULT_MODEL_URI, load_version
from tests.support import PROJECT_ROOT, clean_shell_env, copy_project, kill_session

BLOCK = re.compile(
    r"<!-- clean-shell-test: (?P<name>[\w-]+) -->\n```bash\n(?P<body>.*?)```", re.DOTALL
)
ROW = re.compile(r"^(load_data|preprocess|train|register)\s+[0-9a-f]{32}\s+(ran|reused)\b", re.M)
STEPS = ("load_data", "preprocess", "train", "register")
TIMEOUT_S = 2400


def readme_blocks(readme: Path = PROJECT_ROOT / "README.md") -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK.finditer(readme.read_text())}


def commands(block: str) -> list[str]:
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def statuses(output: str) -> list[dict[str, str]]:
    """Each summary table in the output, as {step: ran|reused}."""
    tables, current = [], {}
    for step, status in ROW.findall(output):
        if step == "load_data" and current:
            tables.append(current)
            current = {}
        current[step] = status
    return [*tables, current] if current else tables


def pyenv_root() -> Path:
    """A user of the bare `mlflow run` has pyenv: this machine's, with its Pythons."""
    found = shutil.which("pyenv")
    assert found, "pyenv is not installed: the README's bare `mlflow run . -e main` needs it"
    return Path(found).resolve().parents[1]


class Shell:
    """A fresh clone and an empty HOME; runs README blocks as a new user's shell would.

    ``uv_cache``: uv's package cache (the conftest fixture: the one the checkout's own
    ``make setup`` filled), so that a clone's ``make setup`` installs without downloading.
    """

    def __init__(self, root: Path, uv_cache: Path | None = None) -> None:
        origin = copy_project(root / "origin")
        self.home = root / "home"
        self.home.mkdir()
        self.clone = root / "clone"
        self.cache = {"UV_CACHE_DIR": str(uv_cache)} if uv_cache else {}
        subprocess.run(["git", "clone", "-q", str(origin), str(self.clone)], check=True)

    def run(self, block: str, **extra: str) -> subprocess.CompletedProcess:
        # Files, not pipes: a server sent to the background keeps a pipe open forever.
        out, err = self.home.parent / "stdout", self.home.parent / "stderr"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(
                ["bash", "-e", "-c", block],
                cwd=self.clone,
                env=clean_shell_env(self.home, **self.cache, **extra),
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=TIMEOUT_S)
            finally:
                kill_session(proc.pid)
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, out.read_text(), err.read_text()
        )

    def client(self) -> MlflowClient:
        return MlflowClient(f"sqlite:///{self.clone / 'mlflow.db'}")

    def champion(self) -> tuple[Any, Any]:
        """The clone's @champion version and its pipeline, loaded as serving loads it."""
        uri = f"sqlite:///{self.clone / 'mlflow.db'}"
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            pipeline, ref = load_version(DEFAULT_MODEL_URI)
        finally:
            mlflow.set_tracking_uri(previous)
        return self.client().get_model_version(ref.name, ref.version), pipeline


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-4000:] + "\n---\n" + result.stderr[-6000:]
    assert "Traceback" not in result.stderr, result.stderr[-6000:]
