"""Promote's version argument and the rollback target (the gate's own rules:
tests/unit/ml/test_gate.py)."""

from __future__ import annotations

import pytest

from steps import config
from steps.infra.errors import StepError
from steps.ml.gate import KEEP, PROMOTE, Verdict
from steps.promote import PREVIOUS, parse_version
from steps.register import NO_ALIAS, AliasDecision, decide_alias
from steps.tracking.registry import Move, previous_champion


# --- promote ----------------------------------------------------------------------------------
def test_promote_version_argument():
    name = config.MODEL_NAME
    assert parse_version("3", name) == 3
    assert parse_version(" v12 ", name) == 12
    assert parse_version(f"models:/{name}/4", name) == 4
    assert parse_version("previous", name) == PREVIOUS
    for bad in ("", "0", "three", "models:/OtherModel/4", "models:/4"):
        with pytest.raises(StepError):
            parse_version(bad, name)


def test_previous_champion_is_where_the_latest_move_to_the_current_one_came_from():
    def move(source: int | None, to: int) -> Move:
        return Move("r", "register", 0, source, to, "u", "")

    newest_first = [move(2, 1), move(1, 2), move(None, 1)]
    assert previous_champion(newest_first, 1) == 2  # undo the rollback
    assert previous_champion(newest_first[1:], 2) == 1
    assert previous_champion(newest_first[2:], 1) is None  # the first champion
    assert previous_champion([], None) is None


# --- register's alias decision ------------------------------------------------------------------
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
