"""retrain's decision (steps.orchestration.trigger): reasons, accept_drift, name, description."""

from __future__ import annotations

import pytest

from steps.orchestration import trigger
from steps.orchestration.trigger import Decision, MonitorVerdict, decide

OK = MonitorVerdict("m1", "ok")
DRIFT = MonitorVerdict("m1", "drift", ("median_income", "population"))
NONE = MonitorVerdict(None, None, problem="no finished monitor run")
OLD, NEW = "a" * 32 + ".dir", "b" * 32 + ".dir"


def test_nothing_changed_is_nothing_to_do():
    for monitor in (OK, NONE):
        decision = decide(monitor, OLD, OLD, force=False)
        assert decision == Decision((), False, False)
        assert not decision.runs_main and decision.label == "nothing_to_do"
        assert trigger.run_name(decision) == "retrain · nothing to do"


def test_each_reason_alone_runs_main():
    assert decide(DRIFT, OLD, OLD, False).reasons == ("drift in median_income, population",)
    assert decide(OK, NEW, OLD, False).reasons == ("data version changed: aaaaaaaa -> bbbbbbbb",)
    assert decide(OK, OLD, OLD, True).reasons == ("forced",)
    assert decide(NONE, OLD, None, False).reasons == ("no champion yet (source data aaaaaaaa)",)
    # drift only in the predictions: no feature named
    assert decide(MonitorVerdict("m", "drift"), OLD, OLD, False).reasons == (
        "drift in predictions",
    )


def test_reasons_come_in_a_fixed_order():
    decision = decide(DRIFT, NEW, OLD, True)
    assert decision.reasons == (
        "drift in median_income, population",
        "data version changed: aaaaaaaa -> bbbbbbbb",
        "forced",
    )
    assert decision.label == "retrain"
    assert trigger.run_name(decision, "3", "champion").endswith(" · v3@champion")


@pytest.mark.parametrize(
    ("monitor", "source", "asked", "accepted"),
    [
        (DRIFT, NEW, False, True),  # traffic and data moved together: the shift is real
        (OK, NEW, False, False),  # the data moved alone: the contract still judges it
        (NONE, NEW, False, False),  # no verdict is not a drift verdict
        (DRIFT, OLD, False, False),  # same data: nothing for the contract to accept
        (OK, NEW, True, True),  # asked for explicitly
    ],
)
def test_accept_drift_only_when_traffic_and_data_moved_together(monitor, source, asked, accepted):
    assert decide(monitor, source, OLD, False, accept_drift=asked).accept_drift is accepted


def test_the_description_says_what_was_checked_and_what_the_gate_did():
    decision = decide(DRIFT, NEW, OLD, False)
    text = trigger.describe(
        decision, DRIFT, "file:///src/housing.csv", NEW, "1", OLD,
        {"main_run_id": "r9", "version": "2", "alias": "champion", "reason": "promote: better"},
    )  # fmt: skip
    assert text.startswith("## Retrain: ran main")
    assert "| traffic verdict | drift (drifted: median_income, population) |" in text
    assert f"| champion | v1 (data md5 {OLD}) |" in text
    assert "| load_data accept_drift | true |" in text
    assert "main run r9: version v2 → @champion" in text
    assert "Gate: promote: better" in text
    idle = trigger.describe(decide(NONE, OLD, OLD, False), NONE, "u", OLD, "1", OLD)
    assert "no verdict (no finished monitor run)" in idle and "Reasons: none" in idle
