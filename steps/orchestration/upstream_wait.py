"""A step started ahead of its turn by main waits here until its upstream step finished."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

from steps import config
from steps.infra.processes import interrupt, parent_pid, process_alive

READY_SUFFIX = ".ready"


def wait_for_upstream(warm: Sequence[str] = ()) -> None:
    """Under main, a step may be started while the step before it still runs, so that its
    imports and tracking-store set-up overlap that work. It imports ``warm`` (modules the
    step would otherwise import later, lazily) and waits here, with its run open, until main
    creates the gate file: the upstream finished. Main stops it (SIGTERM → KILLED) if the
    upstream fails. Run on its own, a step does neither."""
    gate = os.environ.pop(config.START_AFTER_ENV, None)
    if not gate:
        return
    main_pid = int(os.environ.get(config.MAIN_PID_ENV) or parent_pid())
    for module in warm:
        importlib.import_module(module)
    Path(f"{gate}{READY_SUFFIX}").touch()  # main may start the step after this one now
    while not os.path.exists(gate):
        # main may die before it could stop us (or before it knew we had started)
        if not process_alive(main_pid):
            interrupt("main is gone")
        time.sleep(0.02)
