"""What a valid request row is (steps.serving.rowschema): the raw-row array the pipeline
scores, and agreement with the raw table's schema and the batch validation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from steps import config
from steps.data import schema
from steps.serving import batching, rowschema
from tests.unit.serving.app import good_row, records


def test_raw_row_array_predicts_exactly_like_the_training_frame(pipeline, sample):
    """The API scores rows as a raw-value array, not a DataFrame: same numbers to the bit,
    missing bedrooms included."""
    X = sample[0].head(200)
    assert X["total_bedrooms"].isna().any()
    rows = [rowschema.HousingRow(**r) for r in records(X)]
    array = rowschema.rows_to_array(rows)
    assert array.shape == (200, len(config.FEATURES))
    np.testing.assert_array_equal(pipeline.predict(array), pipeline.predict(X))
    np.testing.assert_array_equal(
        batching.predict_rows(batching.scorer(pipeline), rows[:1]), pipeline.predict(X[:1])
    )


def test_raw_row_array_must_have_every_column(pipeline):
    with pytest.raises(ValueError, match="9 columns"):
        pipeline.predict(rowschema.rows_to_array([rowschema.PROBE_ROW])[:, :8])


# --- schema agreement ---------------------------------------------------------------------
def test_row_fields_and_bounds_come_from_config_and_schema():
    fields = rowschema.HousingRow.model_fields
    assert tuple(fields) == config.FEATURES
    for name in config.NUMERIC_FEATURES:
        col = schema.NUMERIC_BY_NAME[name]
        bounds = {type(m).__name__: m for m in fields[name].metadata}
        assert ("Ge" in bounds) == (col.minimum is not None)
        assert ("Le" in bounds) == (col.maximum is not None)
        assert fields[name].is_required() == (not col.nullable)


BATCH_CASES = [
    {},
    {"latitude": 50.0},
    {"longitude": -130.0},
    {"population": -1.0},
    {"total_bedrooms": None},
    {"total_bedrooms": -1.0},
    {"median_income": None},
    {"median_income": float("inf")},
    {"ocean_proximity": "MARS"},
    {"ocean_proximity": None},
    {"households": "many"},
]


@pytest.mark.parametrize("change", BATCH_CASES, ids=lambda c: ",".join(c) or "valid")
def test_batch_validation_agrees_with_the_api(change):
    """A row the API accepts is a row steps.predict accepts, and vice versa."""
    row = good_row() | change
    api_ok = True
    try:
        rowschema.HousingRow.model_validate_json(json.dumps(row))
    except ValueError:
        api_ok = False
    frame = pd.DataFrame([row])
    assert (schema.rejection_reasons(frame).iloc[0] == "") == api_ok
