"""monitor's command on bad input: one ``error: monitor:`` line, exit 1, a FAILED run, and
no report (a real process on a real, empty SQLite store)."""

from __future__ import annotations

import subprocess

import pytest

from steps import config
from tests.support import run_entry_module, tracking


def run_monitor(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return run_entry_module(tmp_path, "steps.monitor", *args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "error: monitor: --since 'yesterday' is not an ISO-8601 time"),
        (
            ["--log-dir", "."],
            "error: monitor: cannot resolve models:/CaliforniaHousingRegressor@champion",
        ),
    ],
    ids=["bad-time", "no-champion"],
)
def test_bad_input_is_one_line_and_a_failed_run(tmp_path, args, message):
    import mlflow

    result = run_monitor(tmp_path, *args)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr
    with tracking(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        (run,) = mlflow.search_runs(experiment_names=[config.EXPERIMENT_NAME], output_format="list")
    assert run.info.status == "FAILED" and run.data.tags[config.TAG_STEP] == "monitor"
    assert "monitor.verdict" not in run.data.tags


def test_shadow_comparison_metrics_are_named_by_shadow_version():
    from steps import monitor
    from steps.monitoring import live
    from tests.unit.monitoring.test_live import shadow_rows

    found = monitor.shadow_metrics(live.shadow_comparison(shadow_rows()))
    assert set(found) == {
        "shadow_rows.v2",
        "shadow_mean_abs_difference.v2",
        "rows_with_actuals.shadow.v2",
        "live_rmse.shadow.v2",
        "live_mae.shadow.v2",
        "live_rmse.answered.v2",
        "live_mae.answered.v2",
    }
    assert found["live_rmse.shadow.v2"] > found["live_rmse.answered.v2"]
    assert monitor.shadow_metrics(None) == {}
