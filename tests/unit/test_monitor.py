"""monitor's command on bad input: one ``error: monitor:`` line, exit 1, a FAILED run, and
no report (a real process on a real, empty SQLite store)."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import failed_entry_run, run_entry_module


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
    result = run_monitor(tmp_path, *args)
    run = failed_entry_run(tmp_path, result, "monitor", message)
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
