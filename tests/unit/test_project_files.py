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


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_command_passes_every_parameter(project, entry_point):
    mlproject = project.get_entry_point(entry_point)
    placeholders = set(re.findall(r"\{(\w+)\}", mlproject.command))
    assert placeholders == set(mlproject.parameters)
    for name in mlproject.parameters:
        assert f"--{name.replace('_', '-')} {{{name}}}" in mlproject.command


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            found[name.strip().lower()] = version.strip()
    return found


def test_env_files_name_the_same_pins():
    requirements = pins((config.PROJECT_ROOT / "requirements.txt").read_text().splitlines())
    python_env = _PythonEnv.from_yaml(str(config.PROJECT_ROOT / "python_env.yaml"))
    conda = _PythonEnv.from_conda_yaml(str(config.PROJECT_ROOT / "conda.yaml"))
    assert requirements["mlflow"] == "3.17.2"
    assert pins(python_env.dependencies) == requirements
    assert pins(conda.dependencies) == requirements
    assert python_env.python == conda.python == "3.11"
