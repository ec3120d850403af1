"""Unit tests for the step-run, process and upstream-wait helpers that need no tracking store
(steps.tracking.steprun, steps.infra.processes, steps.orchestration.upstream_wait)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from steps import config
from steps.infra import processes
from steps.orchestration import upstream_wait

EXIT_PROBE = textwrap.dedent(
    """
    import atexit, gc, sys
    from steps.infra import processes
    from steps.orchestration import upstream_wait

    # Registered before the freeze, so it runs after it (atexit is last-in, first-out).
    atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))
    print("frozen before exit:", gc.get_freeze_count() > 0, flush=True)
    processes.skip_exit_collection()
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
    from steps.tracking.steprun import is_generated_name

    assert is_generated_name("skittish-eel-6")
    assert is_generated_name("silent-pug-522")
    assert is_generated_name(None)
    assert not is_generated_name("three_rows-workspace")
    assert not is_generated_name("nightly-retrain")
    assert not is_generated_name("main · lightgbm · v5@champion")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_during_a_launch_is_raised_once_the_launch_is_done(signum):
    done = []
    saved = signal.signal(signal.SIGTERM, processes.raise_interrupt)
    # a shell that starts the suite in the background hands it SIGINT ignored: set Python's own
    saved_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), processes.interrupts_deferred():
            os.kill(os.getpid(), signum)
            done.append("launched")  # the signal did not cut the block short
        assert signal.getsignal(signal.SIGTERM) is processes.raise_interrupt
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, saved)
        signal.signal(signal.SIGINT, saved_int)
    assert done == ["launched"]


WAITER = textwrap.dedent(
    """
    import os
    from steps import config
    from steps.infra import processes
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


SIGNALS_PROBE = textwrap.dedent(
    """
    import os, signal
    from steps.infra import processes
    from steps.orchestration import upstream_wait

    processes.take_interrupts()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        print("not interrupted", flush=True)
    except KeyboardInterrupt as exc:
        print("interrupted by", exc, flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
        os.kill(os.getpid(), signum)
    print("later signals dropped", flush=True)
    """
)


def test_only_the_first_signal_interrupts():
    # The second signal of a Ctrl-C'd pipeline must not interrupt the first one's handling.
    result = subprocess.run(
        [sys.executable, "-c", SIGNALS_PROBE],
        cwd=config.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert result.stdout.splitlines() == [
        f"interrupted by signal {int(signal.SIGTERM)}",
        "later signals dropped",
    ], result.stderr
    assert result.returncode == 0
