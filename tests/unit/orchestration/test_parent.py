"""The parent run's name (steps.orchestration.parent) and description (its step table)."""

from __future__ import annotations

from steps.orchestration.parent import parent_run_name
from steps.orchestration.summary import StepResult, run_description


def test_parent_run_is_named_and_described():
    results = [StepResult("train", "r2", False, 12.3, "test_rmse=$1")]
    assert parent_run_name("lightgbm", "5", "champion") == "main · lightgbm · v5@champion"
    description = run_description(results, "CaliforniaHousingRegressor v5 @champion")
    assert "| train | `r2` | ran | 12.3 | test_rmse=$1 |" in description
