"""The commands CI runs, the way CI and a user run them: `.ci/run` ends in the README's test
command; that command passes in a fresh clone with nothing beside it (it provisions the data,
PostgreSQL and Java itself); the GitHub workflow's ``pipeline`` job runs its ``run:`` steps in
order in a clean shell, with a ``python`` 3.11 first on PATH as ``actions/setup-python``
provides.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from steps import config
from tests.cleanshell import STEPS, Shell, commands, ok, pyenv_root, readme_blocks, statuses
from tests.support import (
    PLAIN_PATH,
    PROJECT_ROOT,
    clean_shell_env,
    housing_csv,
    make_env,
    project_with_venv,
    run_make,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "ci.yml"
EXPORTED = re.compile(r'echo "(\w+)=[^"]*" >> "\$GITHUB_ENV"')


def test_ci_runs_the_readme_test_command():
    ci = (PROJECT_ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == commands(readme_blocks()["two-commands"])[1]


def workflow_job(name: str) -> tuple[dict[str, str], list[dict]]:
    """A job of the GitHub workflow: its environment (workflow-level) and its steps."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    return workflow.get("env", {}), workflow["jobs"][name]["steps"]


def test_workflow_pipeline_job_runs_in_a_clean_shell(tmp_path, uv_cache):
    env, steps = workflow_job("pipeline")
    # The data step fetches the public file and exports where it put it; offline, the harness
    # points the same variables at the local copy.
    exported = {name for step in steps for name in EXPORTED.findall(step.get("run", ""))}
    assert exported == {"HOUSING_DATA_URL"}
    # Steps gated on an event or built from ${{ }} need GitHub itself (the git-URL run is
    # tests/integration/test_git_url.py's job).
    runnable = [
        step
        for step in steps
        if "run" in step
        and "if" not in step
        and "${{" not in step["run"]
        and "GITHUB_ENV" not in step["run"]
    ]
    commands_run = [step["run"].strip() for step in runnable]
    assert commands_run[-2:] == ["make steps PYTHON=python", "make run PYTHON=python"]

    setup_python = tmp_path / "setup-python"
    setup_python.mkdir()
    found = shutil.which("python3.11", path=PLAIN_PATH)
    assert found, "no python3.11 on this machine's plain PATH"
    (setup_python / "python").symlink_to(found)
    ci = Shell(tmp_path / "runner", uv_cache)
    extra = {
        **{k: str(v) for k, v in env.items() if "${{" not in str(v)},
        "PATH": f"{setup_python}:{PLAIN_PATH}",
    }
    results = []
    for step in runnable:
        result = ci.run(step["run"], **extra)
        ok(result)
        results.append(result)

    # `make steps`: four standalone runs, each linked to the run before it
    client = ci.client()
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    standalone = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][:4]
    assert [r.data.tags[config.TAG_STEP] for r in standalone] == list(STEPS)
    assert all(r.info.status == "FINISHED" for r in standalone)
    # main after the steps: the standalone runs match main's keys (same code, data, parameters
    # and upstream), so only register runs
    reused = {**dict.fromkeys(STEPS[:3], "reused"), "register": "ran"}
    assert statuses(results[-1].stdout) == [reused]


@pytest.mark.pyenv
def test_make_test_provisions_what_the_suite_needs(tmp_path, uv_cache):
    """The README's second command in a fresh clone with nothing beside it (no data, no
    PostgreSQL, no Java the suite could borrow): it fetches the data from HOUSING_DATA_URL,
    starts PostgreSQL and Java from the lock, and the tests that use each of them pass."""
    shell = Shell(tmp_path, uv_cache)
    # beside the clone only what the harness made (the clone's origin and the empty HOME):
    # no data folder next to it to borrow from
    assert {p.name for p in shell.clone.parent.iterdir()} == {"origin", "home", "clone"}
    make_test = commands(readme_blocks()["two-commands"])[1]
    services = "tests/integration/test_services.py"

    # pyenv is the one prerequisite the venv cannot hold: without it, one line, nothing run
    no_pyenv = ":".join(d for d in PLAIN_PATH.split(":") if not (Path(d) / "pyenv").exists())
    missing = shell.run(make_test, PATH=no_pyenv)
    assert missing.returncode != 0
    assert [line for line in missing.stderr.splitlines() if line.startswith("error:")] == [
        missing.stderr.strip().splitlines()[0]
    ]
    assert "pyenv" in missing.stderr and not (shell.clone / ".venv").exists()

    root = pyenv_root()  # a pyenv user's shell: pyenv on PATH, PYENV_ROOT set
    result = shell.run(
        f"{make_test} PYTEST_ARGS='{services}'",
        PATH=f"{root / 'bin'}:{clean_shell_env(shell.home)['PATH']}",
        PYENV_ROOT=str(root),
    )
    ok(result)
    wanted = len(re.findall(r"^def test_", (PROJECT_ROOT / services).read_text(), re.M))
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(rf"\b{wanted} passed\b", summary), result.stdout[-3000:]
    assert not re.search(r"skipped|failed|error", summary), summary
    # the data came from HOUSING_DATA_URL and is the version data.dvc pins
    csv = config.raw_data_path(shell.clone)
    assert csv.read_bytes() == housing_csv().read_bytes()


def test_make_test_that_selects_no_test_fails(tmp_path):
    """pytest's exit code 5 (nothing collected) is a failure with a line that says so: a typo
    in PYTEST_ARGS must not pass as a green suite."""
    project = project_with_venv(tmp_path / "project")
    selects_nothing = "PYTEST_ARGS=tests/unit/ml/test_gate.py -k no_test_is_named_so"
    code, output = run_make(project, "test", make_env(""), selects_nothing)
    assert code != 0, output[-3000:]
    assert "no tests collected" in output, output[-3000:]
