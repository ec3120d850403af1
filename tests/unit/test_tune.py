"""tune, the entry point: importing it costs no Optuna (its search: tests/unit/ml/test_search.py,
its study: tests/unit/ml/test_study.py)."""

from __future__ import annotations

import subprocess
import sys

from steps import config


def test_importing_tune_does_not_import_optuna():
    code = "import sys, steps.tune; print('optuna' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=config.PROJECT_ROOT, capture_output=True, text=True
    )
    assert out.stdout.strip() == "False", out.stderr
