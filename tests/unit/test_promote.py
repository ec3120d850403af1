"""Promote's version argument and the rollback target (the gate's own rules:
tests/unit/ml/test_gate.py; register's alias decision: tests/unit/ml/test_promotion.py)."""

from __future__ import annotations

import pytest

from steps import config
from steps.infra.errors import StepError
from steps.promote import PREVIOUS, parse_version
from steps.tracking.registry import Move, previous_champion


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
