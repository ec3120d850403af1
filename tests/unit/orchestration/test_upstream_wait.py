"""A step started ahead of its turn waits for its upstream (steps.orchestration.upstream_wait)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from steps import config
from steps.orchestration import upstream_wait

WAITER = textwrap.dedent(
    """
    import os
    from steps import config
    from steps.orchestration import upstream_wait

    try:
        upstream_wait.wait_for_upstream(warm=("json",))
    except KeyboardInterrupt as exc:
        print("interrupted:", exc, flush=True)
        raise SystemExit(130)
    print("through; gate handed on:", config.START_AFTER_ENV in os.environ, flush=True)
    """
)


def start_waiter(gate, main_pid: int) -> subprocess.Popen:
    """A real step-like process waiting at ``gate`` for ``main_pid``, as main starts one."""
    env = os.environ | {config.START_AFTER_ENV: str(gate), config.MAIN_PID_ENV: str(main_pid)}
    return subprocess.Popen(
        [sys.executable, "-c", WAITER],
        cwd=config.PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_at_gate(waiter: subprocess.Popen, gate) -> None:
    """Until the waiter says it reached the gate (``<gate>.ready``), then check it stays."""
    ready = gate.with_name(gate.name + upstream_wait.READY_SUFFIX)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert waiter.poll() is None, waiter.communicate()
        assert time.monotonic() < deadline, "the waiter never reached its gate"
        time.sleep(0.02)
    # the one fixed wait: a waiter that does not wait has exited well within it
    with pytest.raises(subprocess.TimeoutExpired):
        waiter.wait(timeout=1.0)


@pytest.fixture
def main_process():
    """Stands in for main: alive until the test ends it."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_step_waits_at_its_gate_while_main_lives_and_goes_on_once_it_opens(
    tmp_path, main_process
):
    gate = tmp_path / "upstream-run-id"
    waiter = start_waiter(gate, main_process.pid)
    try:
        wait_at_gate(waiter, gate)
        gate.touch()  # main: the upstream finished
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, err
    # the gate is not handed on to the step's own children
    assert out.splitlines() == ["through; gate handed on: False"]


def test_a_step_waiting_for_its_upstream_gives_up_once_main_is_gone(tmp_path, main_process):
    gate = tmp_path / "upstream-run-id"
    waiter = start_waiter(gate, main_process.pid)
    try:
        wait_at_gate(waiter, gate)
        main_process.kill()
        main_process.wait()  # reaped: a zombie would still answer kill(pid, 0)
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
    assert waiter.returncode == 130, err
    assert out.splitlines() == ["interrupted: main is gone"]
    assert not gate.exists()


def test_a_step_run_on_its_own_does_not_wait(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(config.START_AFTER_ENV, raising=False)
    monkeypatch.setenv(config.MAIN_PID_ENV, "999999999")  # would be "gone" if it were looked at
    upstream_wait.wait_for_upstream()
    assert not list(tmp_path.iterdir())  # and leaves no ready file behind
