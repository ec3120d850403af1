"""Unit tests for steps.runtime helpers that need no tracking store."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from steps import config

EXIT_PROBE = textwrap.dedent(
    """
    import atexit, gc, sys
    from steps import runtime

    # Registered before the freeze, so it runs after it (atexit is last-in, first-out).
    atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))
    print("frozen before exit:", gc.get_freeze_count() > 0, flush=True)
    runtime.skip_exit_collection()
    atexit.register(lambda: print("later hook ran", flush=True))
    sys.exit(3)
    """
)


def test_skip_exit_collection_freezes_only_at_exit_and_keeps_hooks_and_exit_code():
    result = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE],
        cwd=config.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines() == [
        "frozen before exit: False",
        "later hook ran",
        "frozen at exit: True",
    ]


def test_only_generated_run_names_are_replaced_by_the_step_name():
    from steps.runtime import is_generated_name

    assert is_generated_name("skittish-eel-6")
    assert is_generated_name("silent-pug-522")
    assert is_generated_name(None)
    assert not is_generated_name("three_rows-workspace")
    assert not is_generated_name("nightly-retrain")
    assert not is_generated_name("main · lightgbm · v5@champion")
