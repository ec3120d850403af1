"""register's rules around the gate (steps.ml.promotion): the alias a version ends up with,
the thresholds it accepts, and what its run and version say."""

from __future__ import annotations

import pytest

from steps import config
from steps.infra.errors import StepError
from steps.ml.gate import KEEP, PROMOTE, Scores, Thresholds, Verdict
from steps.ml.promotion import (
    NO_ALIAS,
    AliasDecision,
    GateResult,
    check_thresholds,
    decide_alias,
    for_version,
    run_note,
    run_tags,
    summary_tags,
)

# --- the alias decision ----------------------------------------------------------------------
PASS = Verdict(PROMOTE, "beats the champion")
FAIL = Verdict(KEEP, "no better than the champion")


def test_a_new_version_that_won_is_champion():
    decision = decide_alias(5, 5, PASS, reused=False)
    assert decision == AliasDecision(config.CHAMPION_ALIAS, "beats the champion", False)


def test_a_new_version_that_lost_becomes_challenger_and_register_sets_it():
    decision = decide_alias(5, 4, FAIL, reused=False)
    assert decision == AliasDecision(config.CHALLENGER_ALIAS, "no better than the champion", True)


def test_the_settled_champion_overrules_the_verdict_and_says_so():
    lost = decide_alias(5, 6, PASS, reused=False)
    assert lost.alias == config.CHALLENGER_ALIAS and lost.set_challenger
    assert lost.reason == "beats the champion (settled: champion is v6)"
    won = decide_alias(5, 5, FAIL, reused=False)
    assert won.alias == config.CHAMPION_ALIAS and not won.set_challenger
    assert won.reason == "no better than the champion (settled: champion is v5)"


def test_a_reused_version_keeps_the_alias_it_has():
    kept = decide_alias(3, 4, FAIL, reused=True, current_aliases=(config.CHALLENGER_ALIAS,))
    assert kept == AliasDecision(
        config.CHALLENGER_ALIAS,
        "already registered; its gate said: no better than the champion",
        False,
    )
    moved_on = decide_alias(3, 4, FAIL, reused=True)
    assert moved_on.alias == NO_ALIAS and not moved_on.set_challenger
    champion = decide_alias(3, 3, PASS, reused=True)
    assert champion.alias == config.CHAMPION_ALIAS and not champion.set_challenger
    assert champion.reason == "already registered; its gate said: beats the champion"


# --- thresholds, summaries, register's run ---------------------------------------------------
def test_thresholds_out_of_range_are_refused():
    assert check_thresholds(400.0, 0.01, 0.1, 1000) == Thresholds(400.0, 0.01, 0.1, 1000)
    for bad in ((-1.0, 0.01, 0.1, 1), (0.0, 1.0, 0.1, 1), (0.0, 0.0, 1.0, 1), (0.0, 0.0, 0.0, 0)):
        with pytest.raises(StepError):
            check_thresholds(*bad)


def test_the_version_number_is_filled_into_a_verdict_decided_before_it_existed():
    result = GateResult(
        None, Scores(3, 1.0, None, 2.0), Verdict(KEEP, "run -P version=<this version>")
    )
    assert for_version(result, 7).verdict == Verdict(KEEP, "run -P version=7")
    tags = summary_tags(for_version(result, 7), Thresholds())
    p = config.VERSION_TAG_GATE_PREFIX
    assert tags[f"{p}champion_version"] == "" and tags[f"{p}champion_rmse"] == ""
    assert tags[f"{p}candidate_rmse"] == "1.00" and tags[f"{p}rows"] == "3"


def test_register_run_tags_say_where_the_champion_moved_only_when_it_did():
    result = GateResult(4, Scores(3, 1.0, 2.0, 3.0), PASS)
    decision = AliasDecision(config.CHAMPION_ALIAS, "won", False)
    moved = run_tags(5, decision, result, False, champion=5, before=4)
    assert moved[config.TAG_CHAMPION_FROM] == "4" and moved[config.TAG_CHAMPION_TO] == "5"
    assert moved[config.TAG_REGISTRY_REUSED_VERSION] == "false"
    first = run_tags(1, decision, result, False, champion=1, before=None)
    assert first[config.TAG_CHAMPION_FROM] == ""
    stayed = run_tags(5, decision, result, True, champion=4, before=4)
    assert config.TAG_CHAMPION_TO not in stayed
    assert run_note("summary", 5, False, "r1") == "summary"
    assert run_note("summary", 5, True, "r1").startswith("Train run `r1` was already v5")
