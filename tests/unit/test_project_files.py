"""MLproject, click commands and environment files must agree: every default lives once."""

from __future__ import annotations

import importlib
import re

import click
import pytest
from mlflow.projects import _project_spec
from mlflow.utils.environment import _PythonEnv

from steps import config

ENTRY_POINTS = (
    "load_data",
    "preprocess",
    "train",
    "register",
    "promote",
    "tune",
    "main",
    "serve",
    "predict",
    "monitor",
    "retrain",
)


@pytest.fixture(scope="module")
def project():
    return _project_spec.load_project(str(config.PROJECT_ROOT))


def click_params(entry_point: str) -> dict[str, click.Parameter]:
    """Options keyed the way MLproject names them: by their --flag, dashes as underscores."""
    command = importlib.import_module(f"steps.{entry_point}").cli
    return {p.opts[0].lstrip("-").replace("-", "_"): p for p in command.params}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_mlproject_defaults_equal_click_defaults(project, entry_point):
    mlproject = project.get_entry_point(entry_point)
    options = click_params(entry_point)
    assert set(mlproject.parameters) == set(options), "parameter names differ"
    for name, param in mlproject.parameters.items():
        option = options[name]
        # Compare the way the command will see it: MLflow passes the YAML default as text.
        if option.required:
            assert param.default is None, f"{name} is required in click but has a default"
            continue
        assert option.type.convert(str(param.default), option, None) == option.default, name


def import_graph() -> dict[str, set[str]]:
    """Module → the modules it imports (lazy imports included), keyed as the code hash keys
    them (dotted, relative to ``steps``)."""
    from steps.orchestration import fingerprint

    sources = fingerprint.package_sources(config.PROJECT_ROOT)
    known = set(sources)
    return {
        name: fingerprint.imported_modules(source, known) - {name}
        for name, source in sources.items()
    }


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_entry_points_import_library_modules_only(entry_point):
    assert import_graph()[entry_point] & set(ENTRY_POINTS) == set()


def test_library_modules_import_no_entry_point():
    for name, imported in import_graph().items():
        if name not in ENTRY_POINTS:
            assert imported & set(ENTRY_POINTS) == set(), name


def test_entry_points_sit_at_the_top_and_everything_else_in_a_subpackage():
    top = {name for name in import_graph() if "." not in name}
    assert top == {*ENTRY_POINTS, "__init__", "config", "features", "models"}


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join((*path[path.index(name) :], name)))
        if name in done:
            return
        for imported in sorted(graph.get(name, ())):
            visit(imported, (*path, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_command_passes_every_parameter(project, entry_point):
    mlproject = project.get_entry_point(entry_point)
    placeholders = set(re.findall(r"\{(\w+)\}", mlproject.command))
    assert placeholders == set(mlproject.parameters)
    for name in mlproject.parameters:
        assert f"--{name.replace('_', '-')} {{{name}}}" in mlproject.command


LOCK_ENTRY = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)(?:\s*;\s*([^\\\n]+?))?\s*\\?$", re.M)


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            # `mlflow[auth]`: the lock pins the package, not the extra
            found[name.split("[")[0].strip().lower()] = version.strip()
    return found


def lock_entries(path) -> dict[tuple[str, str], str]:
    """(package, environment marker) → version, for every package a lock file pins."""
    text = (config.PROJECT_ROOT / path).read_text()
    return {(m[1].lower(), m[3] or ""): m[2] for m in LOCK_ENTRY.finditer(text)}


def test_every_installer_reads_the_one_lock_file():
    python_env = _PythonEnv.from_yaml(str(config.PROJECT_ROOT / "python_env.yaml"))
    conda = _PythonEnv.from_conda_yaml(str(config.PROJECT_ROOT / "conda.yaml"))
    assert python_env.dependencies == conda.dependencies == ["-r requirements.lock"]
    # an exact patch, so an installed interpreter is reused instead of the newest 3.11.x
    assert python_env.python == conda.python == "3.11.7"
    makefile = (config.PROJECT_ROOT / "Makefile").read_text()
    setup = re.search(r"^\t@uv pip install (.*?)-r (\S+)$", makefile, re.M | re.S)
    assert setup and "--require-hashes" in setup[1] and setup[2] == "requirements-dev.lock"


def test_lock_pins_the_top_level_requirements_with_hashes():
    top = pins((config.PROJECT_ROOT / "requirements.in").read_text().splitlines())
    assert top["mlflow"] == "3.17.2"
    locked = lock_entries("requirements.lock")
    for name, version in top.items():
        assert {v for (n, _), v in locked.items() if n == name} == {version}, name
    text = (config.PROJECT_ROOT / "requirements.lock").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)


@pytest.mark.parametrize("extension", ["requirements-docs.lock", "requirements-spark.lock"])
def test_dev_and_optional_locks_agree_with_the_locks_they_extend(extension):
    runtime = lock_entries("requirements.lock")
    dev = lock_entries("requirements-dev.lock")
    assert {k: dev.get(k) for k in runtime} == runtime
    extra = lock_entries(extension)
    shared = {k: v for k, v in extra.items() if k in dev}
    assert shared == {k: dev[k] for k in shared}


def test_makefile_repeats_no_default_of_the_steps():
    """The Make targets name the experiment and port that steps/ defines, not their own."""
    makefile = (config.PROJECT_ROOT / "Makefile").read_text()
    assert re.search(r"^PIPELINE_EXPERIMENT \?= (\S+)$", makefile, re.M)[1] == (
        config.EXPERIMENT_NAME
    )
    # make serve passes a port only when SERVE_PORT is given: serve's default stays the one
    assert re.search(r"^SERVE_PORT \?=\s*$", makefile, re.M)
    assert "$(if $(SERVE_PORT),-P port=$(SERVE_PORT))" in makefile
    # make predict: the engine and Spark master only when given (predict's defaults stay)
    assert re.search(r"^ENGINE \?=\s*$", makefile, re.M)
    assert re.search(r"^SPARK_MASTER \?=\s*$", makefile, re.M)


def test_the_longest_first_order_names_existing_test_files():
    from tests.conftest import LONGEST_FIRST

    files = {path.name for path in (config.PROJECT_ROOT / "tests").rglob("test_*.py")}
    assert set(LONGEST_FIRST) <= files, set(LONGEST_FIRST) - files


def test_http_retry_defaults_are_the_same_in_make_and_the_k8s_job():
    """main sets config.HTTP_RETRY_DEFAULTS for its children; the Makefile sets them for the
    `mlflow run` launcher, the k8s Job template for every pod: all three the same."""
    import yaml

    makefile = (config.PROJECT_ROOT / "Makefile").read_text()
    in_make = dict(re.findall(r"^export (MLFLOW_HTTP_REQUEST_\w+) \?= (\S+)$", makefile, re.M))
    assert in_make == config.HTTP_RETRY_DEFAULTS
    template = yaml.safe_load(
        (config.PROJECT_ROOT / "k8s" / "kubernetes_job_template.yaml").read_text()
    )
    (container,) = template["spec"]["template"]["spec"]["containers"]
    in_job = {
        e["name"]: e["value"] for e in container["env"] if e["name"].startswith("MLFLOW_HTTP")
    }
    assert in_job == config.HTTP_RETRY_DEFAULTS


MAX_FUNCTION_LINES = 80


def function_lengths() -> dict[str, int]:
    """Every function and method in steps/**/*.py → its length in lines, from ``def`` to its
    last line (docstring included, decorators not), keyed ``path:qualified name``."""
    import ast

    lengths: dict[str, int] = {}
    for path in sorted((config.PROJECT_ROOT / "steps").rglob("*.py")):
        tree = ast.parse(path.read_text())
        where = path.relative_to(config.PROJECT_ROOT).as_posix()

        def visit(node: ast.AST, prefix: str, where: str = where) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        lengths[f"{where}:{name}"] = child.end_lineno - child.lineno + 1
                    visit(child, f"{name}.")
                else:
                    visit(child, prefix)

        visit(tree, "")
    return lengths


def test_no_function_is_longer_than_80_lines():
    lengths = function_lengths()
    assert "steps/serving/api.py:create_app" in lengths
    too_long = {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert too_long == {}
