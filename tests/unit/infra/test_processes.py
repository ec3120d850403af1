"""Signals and process ids (steps.infra.processes): exit without garbage collection, one
interrupt per process, interrupts held back during a launch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from steps import config
from steps.infra import processes

EXIT_PROBE = textwrap.dedent(
    """
    import atexit, gc, sys
    from steps.infra import processes

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


SIGNALS_PROBE = textwrap.dedent(
    """
    import os, signal
    from steps.infra import processes

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
