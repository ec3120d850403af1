"""Run ``tests.unit.interrupt_step`` once per case, each time in a worker forked by the fork
server's own code (``forkserver._run_worker``), as main's steps run: MLflow is imported once
here, so a case costs its run's start and end, not an interpreter's start-up.

``python -m tests.unit.interrupt_probe CASES_JSON`` with MLFLOW_TRACKING_URI set; a case is
``{"case", "how", "first", "second", "at"}`` (see interrupt_step). For ``how == "wait"`` this
process sends ``first`` once the step is ready and ``second`` ``at`` microseconds later (0:
back to back). Prints one JSON line per case: the case and the worker's exit code.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time

# imported once, here: the forks inherit MLflow and its SQLite store
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

from steps import config
from steps.infra import forkserver
from tests.unit import interrupt_step

MODULE = "tests.unit.interrupt_step"


def run_case(case: dict) -> int:
    ours, theirs = socket.socketpair()
    ready_r, ready_w = os.pipe()
    request = {
        "module": MODULE,
        "args": [f"--{name}={case[name]}" for name in ("case", "how", "first", "second", "at")],
        "env": dict(os.environ),
        "cwd": str(config.PROJECT_ROOT),
        "executable": sys.executable,
        "pid": os.getpid(),
    }
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            os.close(ready_r)
            forkserver._run_worker(theirs, request, [os.open(os.devnull, os.O_RDONLY), ready_w, 2])
        finally:
            os._exit(1)
    theirs.close()
    os.close(ready_w)
    try:
        worker = int(forkserver._recv(ours)["pid"])
        if case["how"] == "wait":
            with os.fdopen(ready_r) as ready:
                if ready.readline().strip() == "ready":
                    os.kill(worker, interrupt_step.SIGNALS[case["first"]])
                    until = time.perf_counter() + case["at"] / 1e6
                    while time.perf_counter() < until:
                        pass
                    os.kill(worker, interrupt_step.SIGNALS[case["second"]])
        else:
            os.close(ready_r)
        try:
            return int(forkserver._recv(ours)["exit"])
        except EOFError:
            return -1  # the worker died without reporting (killed by a signal)
    finally:
        ours.close()
        os.waitpid(pid, 0)


def main() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for case in json.loads(sys.argv[1]):
        print(json.dumps({**case, "exit": run_case(case)}), flush=True)


if __name__ == "__main__":
    main()
