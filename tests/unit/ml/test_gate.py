"""steps.ml.gate's rules, each broken by some test here: which rows a fair comparison uses, the
verdict's margins and their order, the record a verdict leaves and the settle rule that
reads those records."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from steps import config
from steps.ml import gate
from steps.ml.gate import GateRecord, Scores, Thresholds, Verdict
from tests.support import synthetic_housing

LIMITS = Thresholds(min_abs=400.0, min_rel=0.01, baseline_min_rel=0.10, min_rows=1000)


# --- rows -----------------------------------------------------------------------------------
def test_comparable_rows_drop_every_row_the_champion_trained_on(raw_frame):
    champion_train = raw_frame.iloc[:200]
    candidate_test = raw_frame.iloc[150:260]
    # order and index must not matter: the key is the row's content
    shuffled = champion_train.sample(frac=1.0, random_state=1).reset_index(drop=True)
    rows = gate.comparable_rows(candidate_test, shuffled)
    assert list(rows.index) == list(range(200, 260))


def test_row_key_includes_the_target(raw_frame):
    changed = raw_frame.copy()
    changed.loc[0, config.TARGET] += 1.0
    keys, changed_keys = gate.row_keys(raw_frame), gate.row_keys(changed)
    assert keys[0] != changed_keys[0]
    assert (keys[1:] == changed_keys[1:]).all()


def test_row_key_ignores_column_order_and_extra_columns(raw_frame):
    # a table read back with its columns in another order, predictions beside them
    shuffled = raw_frame.loc[:, list(reversed(config.RAW_COLUMNS))].assign(extra=1.0)
    assert (gate.row_keys(shuffled) == gate.row_keys(raw_frame)).all()


def test_comparable_rows_keep_the_candidates_own_rows_whole(raw_frame):
    candidate_test = raw_frame.iloc[100:160]
    rows = gate.comparable_rows(candidate_test, raw_frame.iloc[:130])
    assert rows.equals(candidate_test.iloc[30:])
    assert len(gate.comparable_rows(candidate_test, raw_frame.iloc[:0])) == 60


def test_the_baseline_fits_and_predicts_rows_with_gaps_and_unseen_categories():
    train = synthetic_housing(200, seed=1)
    train = train[train[config.CATEGORICAL_FEATURE] != "ISLAND"]
    test = synthetic_housing(40, seed=2)
    test.loc[test.index[:5], config.CATEGORICAL_FEATURE] = "ISLAND"
    test.loc[test.index[5:10], "total_bedrooms"] = np.nan
    features = [c for c in config.RAW_COLUMNS if c != config.TARGET]
    model = gate.baseline_model().fit(train[features], train[config.TARGET])
    predicted = model.predict(test[features])
    assert np.isfinite(predicted).all()
    # a plain linear fit: clearly better than predicting the mean on rows like its own
    mean = np.full(len(test), train[config.TARGET].mean())
    assert gate.rmse(test[config.TARGET], predicted) < 0.8 * gate.rmse(test[config.TARGET], mean)


# --- verdict --------------------------------------------------------------------------------
def test_first_model_is_champion_when_it_clears_the_baseline():
    verdict = gate.decide(Scores(4000, 40_000.0, None, 50_000.0), LIMITS, None)
    assert verdict.outcome == gate.FIRST and verdict.promote


def test_a_model_not_clearly_better_than_the_baseline_is_not_promoted():
    verdict = gate.decide(Scores(4000, 46_000.0, None, 50_000.0), LIMITS, None)
    assert verdict.outcome == gate.BELOW_FLOOR and not verdict.promote
    assert "baseline" in verdict.reason
    # the floor applies with a champion too, before the champion comparison
    verdict = gate.decide(Scores(4000, 46_000.0, 60_000.0, 50_000.0), LIMITS, 3)
    assert verdict.outcome == gate.BELOW_FLOOR


def test_promotion_needs_both_the_absolute_and_the_relative_margin():
    def outcome(candidate: float, champion: float) -> str:
        return gate.decide(Scores(4000, candidate, champion, 80_000.0), LIMITS, 7).outcome

    assert outcome(38_000.0, 39_000.0) == gate.PROMOTE  # $1,000 and 2.6%
    assert outcome(38_700.0, 39_000.0) == gate.KEEP  # $300 < $400
    assert outcome(59_500.0, 60_000.0) == gate.KEEP  # $500 but only 0.8%
    assert outcome(39_500.0, 39_000.0) == gate.KEEP  # worse
    verdict = gate.decide(Scores(4000, 38_700.0, 39_000.0, 80_000.0), LIMITS, 7)
    assert "v7" in verdict.reason and "$300" in verdict.reason and "4000 rows" in verdict.reason


def test_too_few_rows_is_no_promotion_and_says_what_to_do():
    verdict = gate.decide(Scores(999, 30_000.0, 45_000.0, 80_000.0), LIMITS, 2)
    assert verdict.outcome == gate.TOO_FEW_ROWS and not verdict.promote
    assert "999" in verdict.reason and "-e promote" in verdict.reason
    assert gate.decide(Scores(0, None, None, None), LIMITS, 2).outcome == gate.TOO_FEW_ROWS


def test_exactly_the_minimum_of_rows_is_enough():
    verdict = gate.decide(Scores(1000, 38_000.0, 39_000.0, 80_000.0), LIMITS, 7)
    assert verdict.outcome == gate.PROMOTE


def test_a_candidate_that_was_not_scored_is_never_promoted():
    verdict = gate.decide(Scores(4000, None, 45_000.0, 80_000.0), LIMITS, 2)
    assert verdict.outcome == gate.TOO_FEW_ROWS and not verdict.promote
    assert "rows that v2 was not trained on" in verdict.reason


def test_exactly_the_baseline_margin_clears_the_floor():
    assert gate.decide(Scores(4000, 45_000.0, None, 50_000.0), LIMITS, None).promote
    assert not gate.decide(Scores(4000, 45_001.0, None, 50_000.0), LIMITS, None).promote


def test_a_champion_that_could_not_be_scored_is_like_no_champion():
    verdict = gate.decide(Scores(4000, 40_000.0, None, 50_000.0), LIMITS, 3)
    assert verdict.outcome == gate.FIRST and verdict.promote


def test_keeping_the_champion_says_whether_the_candidate_was_worse_or_only_not_enough_better():
    worse = gate.decide(Scores(4000, 39_500.0, 39_000.0, 80_000.0), LIMITS, 7)
    assert worse.outcome == gate.KEEP and "the champion is $500 better" in worse.reason
    small = gate.decide(Scores(4000, 38_700.0, 39_000.0, 80_000.0), LIMITS, 7)
    assert small.outcome == gate.KEEP
    assert "$300 is below the required $400 and 1.0%" in small.reason


@pytest.mark.parametrize(
    ("candidate", "reference", "min_abs", "min_rel"),
    [
        case
        for case in itertools.product(
            (37_000.0, 38_599.0, 38_600.0, 38_601.0, 39_000.0, 41_000.0),
            (39_000.0, 40_000.0),
            (None, 400.0),
            (None, 0.01),
        )
        if case[2] or case[3]  # MetricThreshold needs at least one margin
    ],
)
def test_margins_have_mlflow_metric_threshold_semantics(candidate, reference, min_abs, min_rel):
    from mlflow.exceptions import MlflowException
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import validate_evaluation_results

    threshold = MetricThreshold(
        min_absolute_change=min_abs, min_relative_change=min_rel, greater_is_better=False
    )
    try:
        validate_evaluation_results(
            {"rmse": threshold},
            EvaluationResult({"rmse": candidate}, {}),
            EvaluationResult({"rmse": reference}, {}),
        )
        mlflow_passes = True
    except MlflowException:
        mlflow_passes = False
    assert gate.beats(candidate, reference, min_abs, min_rel) == mlflow_passes


# --- settle rule ----------------------------------------------------------------------------
def rec(version: int, against: int | None, passed: bool = True, rank: float = 1.0):
    return GateRecord(version, against, passed, rank)


def test_gate_record_round_trips_through_its_tag():
    record = rec(5, 3, True, 0.97)
    assert GateRecord.from_tag(5, record.to_tag()) == record
    first = rec(1, None, False, 41_000.0)
    assert GateRecord.from_tag(1, first.to_tag()) == first
    assert GateRecord.from_tag(2, None) is None
    assert GateRecord.from_tag(2, "not json") is None


def test_a_tag_missing_a_field_or_of_the_wrong_type_is_no_record():
    assert GateRecord.from_tag(2, '{"against": 1, "passed": true}') is None
    assert GateRecord.from_tag(2, '{"against": "one", "passed": true, "rank": 1.0}') is None
    assert GateRecord.from_tag(2, "[]") is None
    # the version is the model version's own, never the tag's
    assert "version" not in GateRecord(9, 1, True, 0.9).to_tag()


def test_the_record_ranks_against_the_champion_by_ratio_and_a_first_model_by_rmse():
    promote = Verdict(gate.PROMOTE, "")
    assert gate.record_for(5, 3, Scores(4000, 38_000.0, 40_000.0, 80_000.0), promote) == (
        GateRecord(5, 3, True, 0.95)
    )
    first = Verdict(gate.FIRST, "")
    assert gate.record_for(1, None, Scores(4000, 41_000.0, None, 80_000.0), first) == (
        GateRecord(1, None, True, 41_000.0)
    )
    keep = Verdict(gate.KEEP, "")
    assert not gate.record_for(6, 3, Scores(4000, 40_000.0, 39_000.0, 80_000.0), keep).passed


def test_an_unscored_candidate_ranks_behind_every_scored_one():
    refused = Verdict(gate.TOO_FEW_ROWS, "")
    record = gate.record_for(4, 2, Scores(10, None, None, None), refused)
    assert record.rank == float("inf") and not record.passed


def test_no_records_keep_whatever_is_champion():
    assert gate.settle_target(None, {}) is None
    assert gate.settle_target(4, {}) == 4


def test_concurrent_first_models_agree_on_the_best_whatever_the_order():
    records = {1: rec(1, None, rank=40_500.0), 2: rec(2, None, rank=40_000.0)}
    records[3] = rec(3, None, rank=40_000.0)  # tie: the lower version wins
    for current in (None, 1, 2, 3):
        assert gate.settle_target(current, records) == 2


def test_rivals_against_the_same_champion_then_their_successors():
    records = {
        1: rec(1, None, rank=41_000.0),
        2: rec(2, 1, rank=0.97),
        3: rec(3, 1, rank=0.95),  # best rival against v1
        4: rec(4, 1, passed=False, rank=1.01),
        5: rec(5, 3, rank=0.98),  # passed against v3: takes over from it
        6: rec(6, 2, rank=0.90),  # passed against v2, which lost: out of the contest
    }
    for current in (None, 1, 2, 3, 5):
        assert gate.settle_target(current, records) == 5
    # the answer is a fixed point: settling again from it changes nothing
    assert gate.settle_target(5, records) == 5


def test_every_arrival_order_converges_to_one_fixed_point():
    records = {
        1: rec(1, None, rank=41_000.0),
        2: rec(2, 1, rank=0.97),
        3: rec(3, 1, rank=0.95),
        4: rec(4, 3, rank=0.99),
    }
    finals = set()
    for order in itertools.permutations(records):
        current: int | None = None
        seen: dict[int, GateRecord] = {}
        for version in order:  # versions become visible one at a time; each settles
            seen[version] = records[version]
            current = gate.settle_target(current, seen)
        finals.add(gate.settle_target(current, records))
    assert finals == {4}


def test_a_manual_promotion_pins_until_a_later_version_passes_against_it():
    records = {1: rec(1, None, rank=41_000.0), 2: rec(2, 1, rank=0.95)}
    # rolled back to v1 with floor 2: v2 no longer competes, even if a register re-set it
    assert gate.settle_target(1, records, floor=2, pinned=1) == 1
    assert gate.settle_target(2, records, floor=2, pinned=1) == 1
    records[3] = rec(3, 1, rank=0.97)  # registered after the rollback, passed against v1
    assert gate.settle_target(1, records, floor=2, pinned=1) == 3
    records[4] = rec(4, 2, rank=0.90)  # gated against the demoted v2: ignored
    assert gate.settle_target(1, records, floor=2, pinned=1) == 3


def test_stale_when_the_champion_does_not_descend_from_the_gated_against_version():
    records = {1: rec(1, None), 2: rec(2, 1), 3: rec(3, 1, passed=False), 4: rec(4, 9)}
    assert not gate.is_stale(records[3], 1, records)
    assert not gate.is_stale(records[3], 2, records)  # v2 descends from v1
    assert gate.is_stale(records[4], 2, records)  # gated against v9, not in v2's lineage
    assert not gate.is_stale(records[1], 2, records)


def test_a_failed_version_never_wins_however_well_it_ranks():
    records = {
        1: rec(1, None, rank=41_000.0),
        2: rec(2, 1, rank=0.97),
        3: rec(3, 1, passed=False, rank=0.50),  # a rival that did not pass
        4: rec(4, 2, passed=False, rank=0.50),  # a successor that did not pass
    }
    for current in (None, 1, 2):
        assert gate.settle_target(current, records) == 2


def test_a_first_model_that_failed_the_floor_does_not_take_an_empty_alias():
    records = {1: rec(1, None, passed=False, rank=60_000.0), 2: rec(2, None, rank=61_000.0)}
    assert gate.settle_target(None, records) == 2


def test_lineage_follows_gate_records_back_to_the_first_champion():
    records = {1: rec(1, None), 2: rec(2, 1), 4: rec(4, 2), 5: rec(5, 9)}
    assert gate.lineage_of(4, records) == [4, 2, 1, None]
    assert gate.lineage_of(5, records) == [5, 9]  # v9's record is unknown: the chain ends
    assert gate.lineage_of(3, records) == [3]


def test_without_a_champion_only_a_first_model_verdict_is_fresh():
    assert not gate.is_stale(rec(1, None), None, {})
    assert gate.is_stale(rec(2, 1), None, {1: rec(1, None)})


def test_gate_scores_recorded_predictions_by_the_same_rmse():
    from steps import config
    from steps.ml import gate

    test = synthetic_housing(50, seed=3).sample(frac=1, random_state=0)
    actual = test[config.TARGET].to_numpy()
    table = gate.prediction_table(test, actual, actual + 100.0)
    # rows stay whole: each prediction sits beside the row it was made for
    assert list(table.columns) == [
        *config.RAW_COLUMNS,
        config.GATE_CANDIDATE_COLUMN,
        config.GATE_BASELINE_COLUMN,
    ]
    assert gate.rmse(table[config.TARGET], table[config.GATE_BASELINE_COLUMN]) == 100.0
    assert gate.rmse([1.0, 2.0], [1.0, 4.0]) == pytest.approx(2**0.5)
    # what the champion never trained on is found by row content, predictions ignored
    champion_train = test.iloc[:20]
    assert len(gate.comparable_rows(table, champion_train)) == 30
