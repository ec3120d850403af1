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


def run_processes(sid: int, project: Path) -> list[Any]:
    """Every live process of a pipeline started in session ``sid`` from ``project``: the
    session's, and the steps the step server runs for it outside the session (main's
    ``python -m steps.<step>`` children and the server's workers, named ``steps.<step>``;
    not the server itself, which outlives runs by design)."""
    import psutil

    found = {proc.pid: proc for proc in session_processes(sid)}
    for proc in psutil.process_iter(["cmdline", "name", "cwd"]):
        try:
            if proc.info["cwd"] != str(project) or proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        cmdline = proc.info["cmdline"] or []
        served = "-m" in cmdline and any(arg.startswith("steps.") for arg in cmdline)
        if "steps.infra.forkserver" in cmdline:
            served = False
        if served or (proc.info["name"] or "").startswith("steps."):
            found[proc.pid] = proc
    return list(found.values())


def kill_session(sid: int) -> None:
    """SIGTERM, then SIGKILL, whatever a session left running (servers sent to background)."""

    terminate(session_processes(sid), timeout=15)


def terminate(procs: list[Any], timeout: float) -> None:
    """SIGTERM each process, then SIGKILL those still alive after ``timeout`` seconds."""
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def restore_sigint() -> None:
    # A test runner started in the background (`cmd &`) inherits SIGINT ignored, and make and
    # Python keep it ignored: give make the default a user's terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def step_servers(under: Path | None = None, since: float = 0.0) -> list[Any]:
    """Live step servers (``steps.infra.forkserver daemon``) started at ``since`` or later
    whose interpreter or socket lies under ``under`` (None: anywhere)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "create_time", "name"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline[1:4] != ["-m", "steps.infra.forkserver", "daemon"] or len(cmdline) < 5:
            continue
        if (proc.info["name"] or "").startswith("steps."):
            continue  # a worker running a step: forked from the server, with its command line
        if proc.info["create_time"] < since:
            continue
        interpreter, socket_path = Path(cmdline[0]), Path(cmdline[4])
        if under is None or interpreter.is_relative_to(under) or socket_path.is_relative_to(under):
            found.append(proc)
    return found


def stop_step_servers(under: Path | None = None, since: float = 0.0) -> None:
    """End the step servers a test started (they outlive the runs they served by design)."""

    terminate(step_servers(under, since), timeout=10)
