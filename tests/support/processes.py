"""A new user's shell and the process sessions a test started."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

from tests.support.data import housing_tgz

# What a plain login shell on a fresh machine has: no virtualenv, no project tools on PATH.
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"


def clean_shell_env(home: Path, **extra: str) -> dict[str, str]:
    """`env -i` plus a HOME of its own and the one variable the README asks offline users to
    set (HOUSING_DATA_URL). Everything else a command needs, it must find by itself."""
    return {
        "HOME": str(home),
        "PATH": PLAIN_PATH,
        "LANG": "C.UTF-8",
        "HOUSING_DATA_URL": housing_tgz().as_uri(),
        **extra,
    }


def job_runners(sid: int) -> list[str]:
    """Command lines of MLflow's GenAI job runners (huey consumers) in a session."""
    found = []
    for proc in session_processes(sid):
        try:
            cmdline = " ".join(proc.cmdline())
        except Exception:  # psutil.Error: it exited meanwhile
            continue
        if "huey" in cmdline:
            found.append(cmdline)
    return found


def session_processes(sid: int) -> list[Any]:
    """Every live process of a session (a command started with ``start_new_session``)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return found


def kill_session(sid: int) -> None:
    """SIGTERM, then SIGKILL, whatever a session left running (servers sent to background)."""
    import psutil

    procs = session_processes(sid)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def restore_sigint() -> None:
    # A test runner started in the background (`cmd &`) inherits SIGINT ignored, and make and
    # Python keep it ignored: give make the default a user's terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
