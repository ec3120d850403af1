"""retrain's command on bad input: one ``error: retrain:`` line, exit 1, a FAILED run with no
decision, and main never started (a real process on a real, empty SQLite store)."""

from __future__ import annotations

import subprocess

import pytest

from steps import config
from tests.support import failed_entry_run, run_entry_module


def run_retrain(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return run_entry_module(tmp_path, "steps.retrain", *args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--monitor-run", "0123abc"], "error: retrain: no monitor run 0123abc"),
        (
            ["--monitor-run", "latest", "--source-url", "file:///nonexistent/housing.csv"],
            "error: retrain: cannot download file:///nonexistent/housing.csv",
        ),
    ],
    ids=["unknown-monitor-run", "unreachable-source"],
)
def test_bad_input_is_one_line_and_a_failed_run(tmp_path, args, message):
    dvc_file = config.dvc_file().read_text()
    result = run_retrain(tmp_path, *args)
    run = failed_entry_run(tmp_path, result, "retrain", message)
    assert config.TAG_RETRAIN_DECISION not in run.data.tags
    assert config.dvc_file().read_text() == dvc_file
