"""The scheduled retraining workflow (.github/workflows/retrain.yml) runs the entry point."""

from __future__ import annotations

import re
import shlex

import yaml
from mlflow.projects import _project_spec

from steps import config

WORKFLOW = config.PROJECT_ROOT / ".github" / "workflows" / "retrain.yml"


def test_retrain_workflow_is_scheduled_and_runs_the_retrain_entry_point():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the bare key `on` as a boolean
    assert triggers["schedule"][0]["cron"].count(" ") == 4
    assert "workflow_dispatch" in triggers
    (job,) = workflow["jobs"].values()
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert job["env"][name] == f"${{{{ secrets.{name} }}}}"
    runs = [step["run"] for step in job["steps"] if "mlflow run" in step.get("run", "")]
    assert len(runs) == 1
    words = shlex.split(re.sub(r"\$\{\{[^}]*\}\}", "X", runs[0]))
    assert words[words.index("-e") + 1] == "retrain"
    assert words[words.index("--env-manager") + 1] == "local"
    entry = _project_spec.load_project(str(config.PROJECT_ROOT)).get_entry_point("retrain")
    given = {words[i + 1].split("=")[0] for i, w in enumerate(words) if w == "-P"}
    assert given and given <= set(entry.parameters), given
