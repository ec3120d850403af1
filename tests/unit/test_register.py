"""register's decision rule: champion moves only on a strict improvement."""

from steps import config
from steps.register import decide_alias


def test_first_model_becomes_champion():
    assert decide_alias(50_000.0, None).alias == config.CHAMPION_ALIAS


def test_better_model_takes_champion():
    decision = decide_alias(40_000.0, 41_000.0)
    assert decision.alias == config.CHAMPION_ALIAS
    assert "beats" in decision.reason


def test_equal_or_worse_model_is_challenger_with_reason():
    for rmse in (41_000.0, 45_000.0):
        decision = decide_alias(rmse, 41_000.0)
        assert decision.alias == config.CHALLENGER_ALIAS
        assert "does not beat" in decision.reason


def test_choose_champion_picks_the_best_and_keeps_ties_stable():
    from steps.register import Candidate, choose_champion

    current = Candidate(3, 40_000.0)
    assert choose_champion(None, []) is None
    assert choose_champion(None, [Candidate(1, 5.0)]) == Candidate(1, 5.0)
    assert choose_champion(current, []) == current
    assert choose_champion(current, [Candidate(4, 40_000.0)]) == current
    newer = [Candidate(6, 39_000.0), Candidate(4, 39_500.0), Candidate(5, 39_000.0)]
    assert choose_champion(current, newer) == Candidate(5, 39_000.0)
    # every concurrent register sees the same versions in some order and agrees
    assert choose_champion(current, list(reversed(newer))) == Candidate(5, 39_000.0)
