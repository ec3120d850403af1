"""Follow a registry alias: when ``models:/NAME@ALIAS`` points at another version, load that
version in the background and swap it in; a version that fails to load is never swapped in.

In: the alias URI, the served version (None: none yet, e.g. a shadow alias that does not
exist yet: the first version it names is loaded), a poll interval and three functions:
``resolve`` (URI -> ``loading.ModelRef``), ``load`` (ref -> fitted pipeline, checked on a
probe row by the caller's function) and ``swap`` (pipeline, ref -> None; the caller's atomic
assignment).
Out: nothing logged; ``status()`` says what was last seen, loaded or refused, for ``/ready``,
the log and the metrics (``on_event``).

A failed version is remembered and not retried until the alias moves again (its artifacts
do not change). A registry that does not answer is only a failed check: the served model stays.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from steps.tracking.loading import ModelRef

# Seconds between two looks at the registry: a moved alias is served within this plus the
# load (~1 s), and a check is one small registry read.
DEFAULT_RELOAD_INTERVAL_S = 30.0


@dataclass
class FollowStatus:
    interval_s: float
    serving: str
    checks: int = 0
    loads: int = 0
    failures: int = 0
    last_check_unix: float | None = None
    last_error: str | None = None
    refused_version: str | None = None


class ModelFollower:
    def __init__(
        self,
        uri: str,
        serving: ModelRef | None,
        interval_s: float,
        resolve: Callable[[str], ModelRef],
        load: Callable[[ModelRef], Any],
        swap: Callable[[Any, ModelRef], None],
        on_event: Callable[[str, ModelRef | None, str | None], None] | None = None,
    ) -> None:
        self.uri, self.interval_s = uri, interval_s
        self._resolve, self._load, self._swap = resolve, load, swap
        self._on_event = on_event or (lambda event, ref, error: None)
        version = serving.version if serving is not None else ""
        self._status = FollowStatus(interval_s=interval_s, serving=version)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def status(self) -> dict[str, Any]:
        return asdict(self._status)

    def check(self) -> str:
        """One look at the registry: 'unchanged', 'swapped', 'refused' or 'unreachable'."""
        status = self._status
        status.checks += 1
        status.last_check_unix = time.time()
        try:
            ref = self._resolve(self.uri)
        except Exception as exc:  # the registry may be down: keep serving what we have
            status.last_error = f"cannot resolve {self.uri}: {exc}"[:500]
            self._on_event("unreachable", None, status.last_error)
            return "unreachable"
        if ref.version == status.serving or ref.version == status.refused_version:
            if ref.version == status.serving:
                status.refused_version = None
            return "unchanged"
        try:
            pipeline = self._load(ref)
        except Exception as exc:
            status.failures += 1
            status.refused_version = ref.version
            status.last_error = f"v{ref.version} not loaded: {exc}"[:500]
            self._on_event("failed", ref, status.last_error)
            return "refused"
        self._swap(pipeline, ref)
        status.serving, status.refused_version, status.last_error = ref.version, None, None
        status.loads += 1
        self._on_event("loaded", ref, None)
        return "swapped"

    def start(self) -> None:
        """Check every ``interval_s`` in a daemon thread until ``stop``."""

        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.check()

        self._thread = threading.Thread(target=loop, name="model-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
