"""The data contract's core (steps/data/contract.py) and the downstream size guards."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from steps import config, features
from steps.data import contract, schema
from steps.infra.errors import StepError
from steps.preprocess import split_data
from steps.train import check_trainable
from tests.support import synthetic_housing

N = 4_000


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return schema.validate_raw(synthetic_housing(N, seed=1))


@pytest.fixture(scope="module")
def reference(table) -> dict:
    # through JSON, as load_data logs it and the next run reads it back
    return json.loads(json.dumps(contract.profile(table)))


def rules_failed(result: contract.Result) -> list[tuple[str, str | None]]:
    return [(f.rule, f.column) for f in result.verdict.failures]


def test_first_load_checks_the_table_rules_only(table):
    result = contract.check(table, None)
    assert result.findings == []
    assert result.drift is None
    assert result.profile["n_rows"] == N
    assert set(result.profile["columns"]) == set(config.RAW_COLUMNS)


def test_shuffled_rows_and_reordered_columns_pass_against_the_logged_profile(table, reference):
    variant = table.sample(frac=1.0, random_state=3)[list(reversed(table.columns))]
    result = contract.check(variant, reference)
    assert result.findings == []
    assert all(c["psi"] < 1e-9 for c in result.drift["columns"].values())


def test_a_few_percent_more_rows_from_the_same_population_pass(reference):
    # same generator, other rows: 4% more of them
    more = schema.validate_raw(synthetic_housing(int(N * 1.04), seed=2))
    assert contract.check(more, reference).verdict.failures == []


def test_three_rows_fail_on_min_rows_first(table, reference):
    result = contract.check(table.head(3), reference)
    assert result.verdict.failures[0].rule == "min_rows"
    line = result.verdict.error_line()
    assert line.startswith(
        f"data contract: rule min_rows: 3 rows < {schema.TABLE_RULES.min_rows} (and "
    )
    assert "\n" not in line


def test_doubled_table_fails_on_duplicates_and_growth(table, reference):
    doubled = pd.concat([table, table], ignore_index=True)
    result = contract.check(doubled, reference)
    assert rules_failed(result) == [("duplicate_rows", None), ("row_count_growth", None)]
    assert result.verdict.error_line().startswith(
        "data contract: rule duplicate_rows: 50.0% of rows are exact duplicates of another "
        "row > 1.0% (and 1 more failure(s): see data_report/report.md); pass accept_drift=true"
    )


def test_unit_change_fails_on_that_column_unless_accepted(table, reference):
    changed = table.assign(median_income=table["median_income"] * 10)
    result = contract.check(changed, reference)
    assert rules_failed(result) == [("feature_psi", "median_income")]
    failure = result.verdict.failures[0]
    assert failure.statistic > schema.DRIFT_RULES.feature_psi.fail
    assert result.verdict.error_line() == (
        f"data contract: rule feature_psi, column 'median_income': PSI {failure.statistic:.3f}"
        f" > {schema.DRIFT_RULES.feature_psi.fail:g}; pass accept_drift=true if the change is "
        "deliberate"
    )
    accepted = contract.check(changed, reference, accept_drift=True)
    assert accepted.verdict.failures == []
    assert [(f.rule, f.accepted) for f in accepted.verdict.warnings] == [("feature_psi", True)]


def test_accept_drift_does_not_waive_table_rules(table, reference):
    doubled = pd.concat([table, table], ignore_index=True)
    result = contract.check(doubled, reference, accept_drift=True)
    assert rules_failed(result) == [("duplicate_rows", None)]


def test_target_unit_change_is_a_target_rule(table, reference):
    result = contract.check(table.assign(median_house_value=table[config.TARGET] / 1000), reference)
    assert rules_failed(result) == [("target_psi", config.TARGET)]


def test_constant_feature_fails_even_without_reference(table):
    result = contract.check(table.assign(housing_median_age=52.0), None)
    assert rules_failed(result) == [("near_constant", "housing_median_age")]
    assert "one value (52.0) fills 100.0% of rows > 95%" in result.verdict.error_line()
    # a table rule cannot be accepted as drift: the line does not offer it
    assert "accept_drift" not in result.verdict.error_line()


def test_exactly_the_minimum_of_rows_is_enough(table):
    rows = schema.TABLE_RULES.min_rows
    assert contract.check(table.head(rows), None).findings == []
    assert rules_failed(contract.check(table.head(rows - 1), None)) == [("min_rows", None)]


def test_the_most_basic_problem_comes_first_whatever_order_the_checks_ran_in(table, reference):
    # three copies of one row: too few, duplicated, every column constant, and drifted
    copies = pd.concat([table.head(1)] * 3, ignore_index=True)
    rules = [f.rule for f in contract.check(copies, reference).verdict.failures]
    assert rules[:2] == ["min_rows", "duplicate_rows"]
    assert rules == sorted(rules, key=contract.RULE_ORDER.index)
    assert {"near_constant", "row_count_drop", "feature_psi"} <= set(rules)


def test_nullable_column_is_not_a_constant_candidate():
    assert "total_bedrooms" not in contract.constant_candidates()
    assert config.TARGET not in contract.constant_candidates()


def test_truncation_fails_on_row_drop_and_small_drop_only_warns(table, reference):
    cut = contract.check(table.iloc[: int(N * 0.9)], reference)
    assert ("row_count_drop", None) in rules_failed(cut)
    trimmed = contract.check(table.iloc[: int(N * 0.98)], reference)
    assert trimmed.verdict.failures == []
    assert [f.rule for f in trimmed.verdict.warnings] == ["row_count_drop"]


def test_the_target_has_its_own_drift_band(table, reference):
    shifted = table.assign(median_house_value=table[config.TARGET] * 1.2)
    (finding,) = contract.check(shifted, reference).verdict.failures
    assert (finding.rule, finding.column) == ("target_psi", config.TARGET)
    # a target band wider than this shift, the feature band unchanged: nothing fails
    band = schema.Band(warn=finding.statistic * 2, fail=finding.statistic * 3)
    wide = replace(schema.DRIFT_RULES, target_psi=band)
    assert finding.statistic > wide.feature_psi.fail
    assert contract.check(shifted, reference, drift_rules=wide).findings == []


def test_a_category_the_reference_never_had_is_drift(table):
    category = config.CATEGORICAL_FEATURE
    absent = table[category].iloc[0]
    without = json.loads(json.dumps(contract.profile(table[table[category] != absent])))
    result = contract.check(table, without)
    assert ("feature_psi", category) in rules_failed(result)


def test_fewer_missing_values_are_a_change_too(table, reference):
    filled = table.assign(total_bedrooms=table["total_bedrooms"].fillna(400.0))
    assert reference["columns"]["total_bedrooms"]["missing_rate"] > 0.02
    result = contract.check(filled, reference)
    assert ("missing_rate_change", "total_bedrooms") in rules_failed(result)


def test_a_reference_profile_of_another_format_is_not_compared(table, reference):
    changed = table.assign(median_income=table["median_income"] * 10)
    result = contract.check(changed, reference | {"format": contract.PROFILE_FORMAT + 1})
    assert result.drift is None and result.findings == []


def test_a_value_on_a_bin_edge_counts_in_the_bin_above_it():
    # as in every profile logged so far: a later version must bin the same way
    shares = contract.shares_between(np.array([1.0, 2.0, 2.0, 3.0]), np.array([2.0]))
    assert shares.tolist() == [0.25, 0.75]


def test_missing_rate_change_is_reported_per_column(table, reference):
    rng = np.random.default_rng(0)
    more_missing = table.assign(total_bedrooms=table["total_bedrooms"].mask(rng.random(N) < 0.04))
    result = contract.check(more_missing, reference)
    assert ("missing_rate_change", "total_bedrooms") in rules_failed(result)


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift():
    ref = np.full(10, 0.1)
    assert contract.psi(ref, ref) == 0.0
    small = contract.psi(ref, np.r_[0.12, 0.08, np.full(8, 0.1)])
    large = contract.psi(ref, np.r_[0.5, 0.0, np.full(8, 0.0625)])
    assert 0 < small < 0.01 < large
    # empty bins get a floor instead of log(0), in the new shares and the reference's
    assert np.isfinite(contract.psi(ref, np.r_[1.0, np.zeros(9)]))
    assert np.isfinite(contract.psi(np.r_[1.0, np.zeros(9)], ref))


def test_report_lists_findings_thresholds_and_both_versions(table, reference):
    changed = table.assign(median_income=table["median_income"] * 10)
    result = contract.check(changed, reference)
    text = contract.report_markdown(result, reference, "abc.dir", "the champion's data")
    assert "contract: **FAILED** — 1 failure(s)" in text
    assert "| fail | feature_psi | median_income |" in text
    assert f"feature_psi: warn above {schema.DRIFT_RULES.feature_psi.warn:g}" in text
    assert "| median_income |" in text
    assert "![overlay histograms](histograms.png)" in text
    figure = contract.histograms_figure(result.profile, reference)
    assert isinstance(figure, Figure)
    assert len([ax for ax in figure.axes if ax.get_visible()]) == len(config.RAW_COLUMNS)


# --- downstream guards ------------------------------------------------------------------
def test_preprocess_refuses_too_few_rows_with_one_line(table):
    with pytest.raises(StepError) as err:
        split_data(table.head(3), 0.2, 42, "income_stratified")
    message = str(err.value)
    assert message.startswith("3 rows are too few: a 0.2 test split leaves 2 training rows")
    assert f"needs {features.min_fit_rows()} training rows" in message


def test_preprocess_refuses_an_impossible_stratified_split(table):
    rich = table[table["median_income"] > 6.0].head(60)
    lone_poor = table[table["median_income"] < 1.5].head(1)
    with pytest.raises(StepError, match="income band 0 has 1 row"):
        split_data(pd.concat([rich, lone_poor]), 0.2, 42, "income_stratified")
    train, test = split_data(pd.concat([rich, lone_poor]), 0.2, 42, "random")
    assert len(train) + len(test) == 61


def test_train_refuses_splits_too_small_for_the_preprocessor(table):
    pre = features.build_preprocessor()
    with pytest.raises(StepError, match=r"^2 training / 1 test rows are too few"):
        check_trainable(table.head(2), table.head(1), pre)
    check_trainable(table.head(features.min_fit_rows()), table.head(2), pre)


def test_preprocessor_fits_at_its_minimum(table):
    n = features.min_fit_rows()
    part = table.head(n)
    out = features.build_preprocessor().fit_transform(
        part.loc[:, list(config.FEATURES)], part[config.TARGET]
    )
    assert out.shape[0] == n
    assert np.isfinite(out).all()
