"""An interrupted step ends its run KILLED with exit 130, never FINISHED, whatever the number
and order of SIGINT/SIGTERM and wherever they land after the run is open.

A pipeline stopped by Ctrl-C sends a running step two signals: SIGINT from the terminal's
process group and SIGTERM from main cancelling it. Each case below runs a real step
(``tests.unit.interrupt_step``, through ``steprun.as_step``) against a SQLite tracking store,
in a worker forked by the fork server's own code (``tests.unit.interrupt_probe``), and the
store says how its run ended. The "hook" and "failing" sweeps put the signals at every few
Python calls of the exit path, so the moments a signal from outside hits only now and then
(the second while the first is being handled) are each hit every time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from steps import config

pytestmark = pytest.mark.slow

ORDERS = [("SIGINT", "SIGTERM"), ("SIGTERM", "SIGINT")]


def restore_sigint() -> None:
    # a test runner started in the background hands its children SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def new_store(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # the schema exists before the forks race for it
    return uri


def statuses(uri: str) -> dict[str, str]:
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=5000)
    return {run.data.params["case"]: run.info.status for run in runs if "case" in run.data.params}


def run_cases(tmp_path: Path, cases: list[dict]) -> list[tuple[str, int, str | None]]:
    """Run the cases; (case, exit code, run status) for each that did not end KILLED / 130."""
    uri = new_store(tmp_path)
    probe = subprocess.run(
        [sys.executable, "-m", "tests.unit.interrupt_probe", json.dumps(cases)],
        cwd=config.PROJECT_ROOT,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=restore_sigint,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    exits = {r["case"]: r["exit"] for r in map(json.loads, probe.stdout.splitlines())}
    assert set(exits) == {c["case"] for c in cases}, probe.stderr[-3000:]
    ended = statuses(uri)
    return [
        (case, code, ended.get(case))
        for case, code in exits.items()
        if (code, ended.get(case)) != (130, "KILLED")
    ]


def cases(how: str, pairs: list[tuple[str, str]], points: range | list[int]) -> list[dict]:
    return [
        {"case": f"{how}-{first}-{second}-{at}", "how": how, "first": first, "second": second}
        | {"at": at}
        for first, second in pairs
        for at in points
    ]


def test_a_second_signal_while_the_first_is_being_handled_changes_nothing(tmp_path):
    # The step sends itself the first signal; the second comes at the at-th Python call or
    # return after it: on the way out of the step's code, in step_run's except clause,
    # while ignore_interrupts is setting the dispositions, while the run is being ended.
    sweep = cases("hook", ORDERS, range(1, 49, 3))
    sweep += cases("hook", [("SIGINT", "SIGINT"), ("SIGTERM", "SIGTERM")], [8, 14, 20])
    assert run_cases(tmp_path, sweep) == []


def test_signals_while_a_failure_is_being_handled_end_the_run_killed(tmp_path):
    # The step fails (StepError); both signals land while step_run ends its run FAILED.
    assert run_cases(tmp_path, cases("failing", ORDERS, range(1, 60, 6))) == []


def test_two_signals_back_to_back(tmp_path):
    # Both pending at once (the step was in C code when they came), and sent from outside
    # to a step running Python code, back to back or 100 µs apart.
    back_to_back = cases("pending", ORDERS, [0])
    back_to_back += [
        {**case, "case": f"{case['case']}-{i}"}
        for i in range(3)
        for case in cases("wait", ORDERS, [0])
    ]
    back_to_back += cases("wait", ORDERS, [100])
    assert run_cases(tmp_path, back_to_back) == []


@pytest.mark.parametrize(("first", "second"), ORDERS)
def test_a_step_in_a_process_of_its_own_ends_killed(tmp_path, first, second):
    # Not forked: the interpreter's own exit, with MLflow's exit hook, as under `mlflow run`.
    uri = new_store(tmp_path)
    args = ["--case=own", "--how=pending", f"--first={first}", f"--second={second}"]
    step = subprocess.run(
        [sys.executable, "-m", "tests.unit.interrupt_step", *args],
        cwd=config.PROJECT_ROOT,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=restore_sigint,
    )
    assert (step.returncode, statuses(uri)) == (130, {"own": "KILLED"}), step.stderr[-3000:]
    assert "error: train: interrupted" in step.stderr


OPEN_RUN_AT_EXIT = textwrap.dedent(
    """
    import sys
    import mlflow
    from steps.infra import processes
    from steps.tracking import steprun

    steprun.end_open_run_at_exit()
    mlflow.start_run(tags={"case": sys.argv[1]})
    if sys.argv[1] == "interrupted":
        processes.interrupt("left without ending the run")
    sys.exit(1)
    """
)


@pytest.mark.parametrize(("how", "status"), [("interrupted", "KILLED"), ("failed", "FAILED")])
def test_a_run_left_open_at_exit_does_not_end_finished(tmp_path, how, status):
    # MLflow's own exit hook would end it FINISHED.
    uri = new_store(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", OPEN_RUN_AT_EXIT, how],
        cwd=config.PROJECT_ROOT,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    runs = MlflowClient(uri).search_runs(["0"], run_view_type=ViewType.ALL)
    assert [(r.data.tags["case"], r.info.status) for r in runs] == [(how, status)], proc.stderr
