"""Unit tests of steps.features on small synthetic frames (``raw_frame``: tests/conftest.py)."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from steps import config, features


def _xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    return frame.loc[:, list(config.FEATURES)], frame[config.TARGET]


def _neighbour_columns(pre: features.HousingFeatures) -> np.ndarray:
    names = pre.get_feature_names_out()
    return np.flatnonzero([name.startswith("nbr") for name in names])


@pytest.fixture
def fitted(raw_frame: pd.DataFrame) -> tuple[features.HousingFeatures, np.ndarray]:
    X, y = _xy(raw_frame)
    pre = features.build_preprocessor()
    return pre, pre.fit_transform(X, y)


def test_output_is_finite_numeric_and_named(fitted, raw_frame):
    pre, Z_train = fitted
    Z = pre.transform(_xy(raw_frame)[0])
    assert Z_train.dtype == np.float64 and Z.dtype == np.float64
    assert Z.shape == Z_train.shape == (len(raw_frame), len(pre.get_feature_names_out()))
    assert np.isfinite(Z_train).all() and np.isfinite(Z).all()


def test_single_row_with_missing_bedrooms_and_unknown_category(fitted, raw_frame):
    pre, _ = fitted
    row = _xy(raw_frame)[0].iloc[[0]].copy()
    row["total_bedrooms"] = np.nan
    row["ocean_proximity"] = "ON THE MOON"
    Z = pre.transform(row)
    assert Z.shape == (1, len(pre.get_feature_names_out()))
    assert np.isfinite(Z).all()
    onehot = [name.startswith("ocean_") for name in pre.get_feature_names_out()]
    assert (Z[0, onehot] == 0).all()


def test_missing_category_and_column_order_do_not_matter(fitted, raw_frame):
    pre, _ = fitted
    X = _xy(raw_frame)[0].iloc[:5].copy()
    expected = pre.transform(X)
    shuffled = X[list(reversed(X.columns))]
    np.testing.assert_array_equal(pre.transform(shuffled), expected)
    X.loc[X.index[0], "ocean_proximity"] = None
    assert np.isfinite(pre.transform(X)).all()


def test_neighbour_features_are_out_of_fold_on_training_rows(fitted, raw_frame):
    pre, Z_train = fitted
    Z_again = pre.transform(_xy(raw_frame)[0])
    nbr = _neighbour_columns(pre)
    other = np.setdiff1d(np.arange(Z_train.shape[1]), nbr)
    # Everything but the neighbour statistics is identical ...
    np.testing.assert_array_equal(Z_train[:, other], Z_again[:, other])
    # ... those differ, because transform() lets a training row see its own price.
    assert not np.allclose(Z_train[:, nbr], Z_again[:, nbr])


def test_a_rows_own_price_never_reaches_its_training_features(raw_frame):
    X, y = _xy(raw_frame)
    bumped = y.copy()
    bumped.iloc[0] *= 10
    pre = features.build_preprocessor()
    Z = pre.fit_transform(X, y)
    Z_bumped = clone(pre).fit_transform(X, bumped)
    np.testing.assert_array_equal(Z[0], Z_bumped[0])
    assert not np.array_equal(Z, Z_bumped)  # other rows do see it


def test_fit_needs_the_target_and_transform_needs_a_fit(raw_frame):
    X, _ = _xy(raw_frame)
    with pytest.raises(ValueError, match="target"):
        features.build_preprocessor().fit(X)
    with pytest.raises(NotFittedError):
        features.build_preprocessor().transform(X)


def test_missing_feature_column_is_named(fitted, raw_frame):
    pre, _ = fitted
    with pytest.raises(ValueError, match="median_income"):
        pre.transform(_xy(raw_frame)[0].drop(columns="median_income"))


def test_serialised_state_omits_the_tree_and_rebuilds_it(fitted, raw_frame):
    pre, _ = fitted
    X = _xy(raw_frame)[0]
    state = pre.__getstate__()
    assert "_tree_cache" not in state
    assert "_tree_cache" in pre.__dict__  # saving must not strip the live object
    restored = pickle.loads(pickle.dumps(pre))
    np.testing.assert_array_equal(restored.transform(X), pre.transform(X))


def test_large_batches_are_queried_in_spatial_order_with_identical_results():
    """The ordered query (cost curve fix) returns exactly what KDTree.query returns, ties
    between identical coordinates included; the real table repeats many coordinates."""
    from sklearn.neighbors import KDTree

    from tests.support import housing_csv

    raw = pd.read_csv(housing_csv())
    coords = features._coords(raw.loc[:, list(config.NUMERIC_FEATURES)].to_numpy(float))
    assert len(coords) >= features._ORDERED_QUERY_MIN_ROWS  # the ordered path runs
    assert len(np.unique(coords, axis=0)) < len(coords)  # with ties
    tree = KDTree(coords[::2])
    dist, idx = features._query(tree, coords, 32)
    want_dist, want_idx = tree.query(coords, k=32)
    np.testing.assert_array_equal(dist, want_dist)
    np.testing.assert_array_equal(idx, want_idx)


def _columns(pre: features.HousingFeatures, Z: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(pre.get_feature_names_out(), Z.T, strict=True))


def test_derived_columns_are_what_their_names_say(fitted, raw_frame):
    pre, _ = fitted
    X = _xy(raw_frame)[0].dropna()
    out = _columns(pre, pre.transform(X))
    rooms, households = X["total_rooms"].to_numpy(), X["households"].to_numpy()
    np.testing.assert_allclose(out["rooms_per_household"], rooms / households)
    np.testing.assert_allclose(out["bedrooms_per_room"], X["total_bedrooms"] / rooms)
    np.testing.assert_allclose(out["population_per_household"], X["population"] / households)
    np.testing.assert_allclose(
        out["income_per_room_per_household"], X["median_income"] / (rooms / households)
    )
    lon, lat = X["longitude"].to_numpy(), X["latitude"].to_numpy()
    for deg in (15, 45, 75):  # coordinates turned by deg degrees
        turn = np.deg2rad(deg)
        np.testing.assert_allclose(out[f"rot{deg}_u"], lon * np.cos(turn) + lat * np.sin(turn))
        np.testing.assert_allclose(out[f"rot{deg}_v"], lat * np.cos(turn) - lon * np.sin(turn))
    for value in config.OCEAN_PROXIMITY_VALUES:
        np.testing.assert_array_equal(out[f"ocean_{value}"], X["ocean_proximity"] == value)


def test_missing_values_are_filled_from_the_training_rows(fitted, raw_frame):
    pre, _ = fitted
    X = _xy(raw_frame)[0]
    known = X.dropna()
    share = np.median(known["total_bedrooms"] / known["total_rooms"])
    row = X.dropna().iloc[[0]].copy()
    row[["total_bedrooms", "median_income"]] = np.nan
    out = _columns(pre, pre.transform(row))
    # bedrooms scale with the block: the row's rooms times the training bedroom share
    np.testing.assert_allclose(out["total_bedrooms"], row["total_rooms"] * share)
    assert out["median_income"][0] == pytest.approx(X["median_income"].median())


def test_a_block_without_households_still_gives_finite_features(fitted, raw_frame):
    pre, _ = fitted
    row = _xy(raw_frame)[0].dropna().iloc[[0]].copy()
    row[["households", "total_rooms"]] = 0.0
    assert np.isfinite(pre.transform(row)).all()


@pytest.mark.parametrize("neighbors", [(32, 8), (0, 8)])
def test_neighbourhood_sizes_must_be_ascending_and_positive(raw_frame, neighbors):
    with pytest.raises(ValueError, match="ascending positive"):
        features.HousingFeatures(neighbors=neighbors).fit(*_xy(raw_frame))


def test_a_loaded_preprocessor_has_its_tree_before_the_first_request(fitted):
    pre, _ = fitted
    restored = pickle.loads(pickle.dumps(pre))
    # built at load: the first request after a swap must not pay for it
    assert restored.__dict__.get("_tree_cache") is not None
