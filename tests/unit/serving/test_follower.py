"""steps.serving.follower: what a moved alias, a broken version and a silent registry lead to."""

from __future__ import annotations

import threading

from steps.serving.follower import ModelFollower
from steps.tracking.loading import ModelLoadError, ModelRef

URI = "models:/M@champion"


def ref(version: str) -> ModelRef:
    return ModelRef(name="M", version=version, uri=URI)


class Registry:
    """The alias and which versions load: what the follower's three functions see."""

    def __init__(self) -> None:
        self.alias, self.broken, self.down = "1", set(), False
        self.loads: list[str] = []
        self.served: list[tuple[str, str]] = []
        self.events: list[tuple[str, str | None]] = []

    def resolve(self, uri: str) -> ModelRef:
        assert uri == URI
        if self.down:
            raise ConnectionError("registry down")
        return ref(self.alias)

    def load(self, r: ModelRef) -> str:
        self.loads.append(r.version)
        if r.version in self.broken:
            raise ModelLoadError(f"cannot load v{r.version}")
        return f"pipeline-{r.version}"

    def swap(self, pipeline: str, r: ModelRef) -> None:
        self.served.append((pipeline, r.version))

    def event(self, name: str, r: ModelRef | None, error: str | None) -> None:
        self.events.append((name, r.version if r else None))

    def follower(self) -> ModelFollower:
        return ModelFollower(URI, ref("1"), 0.01, self.resolve, self.load, self.swap, self.event)


def test_a_moved_alias_is_loaded_and_swapped_once():
    registry = Registry()
    follower = registry.follower()
    assert follower.check() == "unchanged"
    registry.alias = "2"
    assert follower.check() == "swapped"
    assert follower.check() == "unchanged"
    assert registry.served == [("pipeline-2", "2")]
    assert registry.loads == ["2"]
    assert follower.status()["serving"] == "2"
    assert follower.status()["loads"] == 1


def test_a_broken_version_is_refused_once_and_the_old_one_keeps_serving():
    registry = Registry()
    follower = registry.follower()
    registry.alias, registry.broken = "3", {"3"}
    assert follower.check() == "refused"
    assert follower.check() == "unchanged"  # not retried: its artifacts do not change
    assert registry.loads == ["3"]
    assert registry.served == []
    status = follower.status()
    assert status["serving"] == "1" and status["refused_version"] == "3"
    assert status["failures"] == 1 and "v3" in status["last_error"]
    registry.alias = "1"  # moved back: the error is cleared, nothing to load
    assert follower.check() == "unchanged"
    assert follower.status()["refused_version"] is None
    assert registry.events == [("failed", "3")]


def test_a_silent_registry_keeps_the_model():
    registry = Registry()
    follower = registry.follower()
    registry.down = True
    assert follower.check() == "unreachable"
    assert registry.served == [] and "registry down" in follower.status()["last_error"]
    registry.down, registry.alias = False, "2"
    assert follower.check() == "swapped"
    assert follower.status()["last_error"] is None


def test_the_thread_checks_until_stopped():
    registry = Registry()
    swapped = threading.Event()
    registry.swap = lambda pipeline, r: swapped.set()
    follower = registry.follower()
    follower.start()
    registry.alias = "2"
    assert swapped.wait(5)
    follower.stop()
    # stop() returns once the loop has ended: no follower thread is left to check again
    assert not [t for t in threading.enumerate() if t.name == "model-follower"]
    assert registry.loads == ["2"]  # loaded once, not again at every later check
