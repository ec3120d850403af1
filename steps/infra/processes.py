"""Signals and process ids: how a step is interrupted (SIGINT/SIGTERM → KeyboardInterrupt,
once), dies with its parent, and finds the process that started it (through the fork
server). Standard library only."""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

# In a fork-server worker: the pid of the ``python -m steps.<step>`` process MLflow started,
# which handed itself over (set_client_pid, by steps.infra.forkserver); None elsewhere.
_client_pid: int | None = None


# Set when this process raises its first KeyboardInterrupt: it is on its way out from then on.
# A pipeline interrupted by Ctrl-C sends each step two signals (SIGINT from the terminal's
# group, SIGTERM from main stopping it), often at once; the second, turned into a second
# KeyboardInterrupt, would cut the first one's handling short (the run left to MLflow's exit
# hook, which ends it FINISHED). Process-wide, as signal handlers are.
_interrupted = False


def interrupt(reason: str) -> NoReturn:
    """Raise KeyboardInterrupt, and make every interrupt after it a no-op (raise_interrupt)."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt(reason)


def raise_interrupt(signum: int, _frame: Any) -> None:
    """The SIGINT/SIGTERM handler: the first signal raises KeyboardInterrupt, later ones are
    dropped. Setting the flag before raising leaves no moment (not even the first bytecode of
    an ``except``) where a second signal could raise again."""
    if not _interrupted:
        interrupt(f"signal {signum}")


def take_interrupts() -> None:
    """Route SIGTERM (what process managers and `kill` send) and SIGINT to raise_interrupt.
    SIGINT is left alone when ignored: a job started in the background inherits it ignored,
    and Python keeps it so."""
    signal.signal(signal.SIGTERM, raise_interrupt)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, raise_interrupt)


def ignore_interrupts() -> None:
    """While a run is being ended, a second Ctrl-C/SIGTERM must not abort the bookkeeping.
    The flag comes first: a signal already received, whose Python handler has not run yet,
    still reaches raise_interrupt (a no-op now) until the dispositions below are in place."""
    global _interrupted
    _interrupted = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def die_with_parent() -> None:
    """Linux: receive SIGTERM when the parent process dies.

    `mlflow run` has no SIGTERM handler: `kill <its pid>` ends it at once and would orphan
    main and the running step, which keep going while their runs stay RUNNING. With this
    they are interrupted instead, and end their runs KILLED.
    """
    if not sys.platform.startswith("linux") or _client_pid is not None:
        return  # a step server's worker: its client's death reaches it through their socket
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def skip_exit_collection() -> None:
    """Freeze the heap at interpreter exit, so CPython's finalisation skips its collections.

    A step process holds millions of objects from MLflow, SQLAlchemy, pandas and scikit-learn
    imports; the final garbage collections walk all of them for ~0.6 s per process, only for
    the OS to reclaim the memory anyway. atexit handlers still run (gc.freeze collects nothing,
    frees nothing), so MLflow's own exit hooks are unaffected.
    """
    atexit.register(gc.freeze)


def set_client_pid(pid: int) -> None:
    """In a fork-server worker: the pid of the process MLflow started, which waits for us."""
    global _client_pid
    _client_pid = pid


def client_parent_pid() -> int | None:
    """In a fork-server worker: the parent of the process MLflow started for us (1 once that
    process is gone, as for an orphan); elsewhere None."""
    if _client_pid is None:
        return None
    try:
        with open(f"/proc/{_client_pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 1


def parent_pid() -> int:
    """The pid of the process that started us: for a step run by the fork server, the parent
    of the ``python -m steps.<step>`` process MLflow started (``steps.infra.forkserver``)."""
    return client_parent_pid() or os.getppid()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for the duration of the block, then raise
    KeyboardInterrupt if one came. main starts a child inside: interrupted half-way, it
    would not know the child it must stop. Handlers, unlike a blocked signal mask, are
    reset when the child execs, so the child stays interruptible."""
    received: list[int] = []
    saved = {
        signum: signal.signal(signum, lambda got, _frame: received.append(got))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    if received and saved[received[0]] is not signal.SIG_IGN:
        interrupt(f"signal {received[0]}")


def interrupted() -> bool:
    """Has this process been interrupted (it is on its way out)?"""
    return _interrupted
