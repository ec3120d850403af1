"""A step that gets interrupted twice, run by tests/unit/interrupt_probe.py (in a fork, as the
fork server runs steps) or on its own (``python -m tests.unit.interrupt_step``).

Its body opens nothing of its own: ``steprun.as_step`` opens the run, logs the options as
params (``case`` identifies the run) and must end it KILLED with exit code 130. How the two
signals reach it (``--how``):

- ``hook``: the body sends itself ``--first``; ``--second`` is sent at the ``--at``-th
  Python call or return event after that (``sys.setprofile``). A sweep over ``--at`` puts
  the second signal at each point of the exit path in turn, i.e. while the first one is
  being handled, which a signal from outside hits only by chance.
- ``failing``: the body raises StepError; ``--first`` comes at the ``--at``-th event after
  that, ``--second`` ``SECOND_AFTER`` events later, while the failure is being handled.
- ``pending``: both are sent while the signals are blocked, as if the step were in C code
  (LightGBM, SQLite) when they came, and arrive together when unblocked.
- ``wait``: the body prints ``ready`` and runs Python code until the signals, sent from
  outside, stop it.

A body that is still running after ``BODY_TIMEOUT`` returns, and its run ends FINISHED:
the signals did not arrive, which the tests report as the failure it is.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import click

from steps.infra.errors import StepError
from steps.tracking import steprun

BODY_TIMEOUT = 20.0
SECOND_AFTER = 5
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


def send_at(plan: dict[int, int]) -> None:
    """Send this process each signal of ``plan`` ({event number: signal}) at that profile
    event (call or return, of Python or C functions) from now."""
    seen = 0

    def profile(_frame: object, _event: str, _arg: object) -> None:
        nonlocal seen
        seen += 1
        if seen in plan:
            if seen == max(plan):
                sys.setprofile(None)
            os.kill(os.getpid(), plan[seen])

    sys.setprofile(profile)


def keep_busy() -> None:
    deadline = time.monotonic() + BODY_TIMEOUT
    while time.monotonic() < deadline:
        sum(range(1000))


@click.command()
@click.option("--case", required=True)
@click.option("--how", type=click.Choice(["hook", "failing", "pending", "wait"]), required=True)
@click.option("--first", type=click.Choice(list(SIGNALS)), default="SIGINT")
@click.option("--second", type=click.Choice(list(SIGNALS)), default="SIGTERM")
@click.option("--at", type=int, default=1)
@steprun.as_step("train")
def cli(case: str, how: str, first: str, second: str, at: int) -> None:
    if how == "hook":
        send_at({at: SIGNALS[second]})
        os.kill(os.getpid(), SIGNALS[first])
    elif how == "failing":
        send_at({at: SIGNALS[first], at + SECOND_AFTER: SIGNALS[second]})
        raise StepError("failing on purpose")
    elif how == "pending":
        both = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, both)
        os.kill(os.getpid(), SIGNALS[first])
        os.kill(os.getpid(), SIGNALS[second])
        signal.pthread_sigmask(signal.SIG_UNBLOCK, both)
    else:
        print("ready", flush=True)
    keep_busy()


if __name__ == "__main__":
    cli()
