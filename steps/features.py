"""Feature engineering: raw housing rows in, a numeric matrix out.

`build_preprocessor` returns an *unfitted* sklearn transformer that takes a DataFrame with
the nine raw feature columns of housing.csv (``config.FEATURES``: ``ocean_proximity`` as
strings, possibly unseen; ``total_bedrooms`` possibly missing) and returns a float64 array.
It is fitted on the train split only, with the target; the same object is the first stage of
the logged model pipeline, so serving never re-implements preprocessing.

The whole transformation is one numpy-only class, :class:`HousingFeatures`, rather than a
``ColumnTransformer``: a ColumnTransformer spends several hundred microseconds in pandas per
call, which would dominate single-row serving latency (this class: ~0.25 ms per row).

Output columns (see ``HousingFeatures.get_feature_names_out``):

* the eight raw numeric columns (``total_bedrooms`` imputed as rooms x median bedroom share);
* ratios: rooms / household, bedrooms / room, population / household, income / room-per-hh;
* coordinates rotated by a few angles, so axis-aligned tree splits can follow the coast;
* one-hot ``ocean_proximity`` (unknown or missing categories -> all zeros);
* geographic neighbourhood statistics of the *training* rows nearest to each row (mean log
  price at several scales, an inverse-distance-weighted mean, spread, log price-per-income,
  neighbours' income, distance to the k-th neighbour). They are computed out-of-fold in
  ``fit_transform`` (a training row never sees its own price) and against all training rows
  in ``transform`` (so one raw row at serving time works).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import KFold
from sklearn.neighbors import KDTree
from sklearn.utils.validation import check_is_fitted

from steps import config

# Defaults of the only tunable knobs; build_preprocessor and HousingFeatures share them.
# The neighbour search is most of the preprocessing cost and grows with the largest k:
# (8, 16, 32) scores like (8, 32, 64) at half the cost per predicted row (docs/model.md).
DEFAULT_NEIGHBORS: tuple[int, ...] = (8, 16, 32)
DEFAULT_OOF_FOLDS = 5
DEFAULT_RANDOM_STATE = 42

_NUMERIC: tuple[str, ...] = config.NUMERIC_FEATURES
_COL: dict[str, int] = {name: i for i, name in enumerate(_NUMERIC)}
_ROTATION_DEGREES: tuple[int, ...] = (15, 30, 45, 60, 75)
_ROTATIONS: tuple[tuple[float, float], ...] = tuple(
    (np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))) for deg in _ROTATION_DEGREES
)
# Columns between the raw numeric ones and the neighbour statistics: 4 ratios, (u, v) per
# rotation, one-hot ocean_proximity.
_N_DERIVED = 4 + 2 * len(_ROTATION_DEGREES) + len(config.OCEAN_PROXIMITY_VALUES)
# California spans ~32.5-42 degrees latitude; there one degree of longitude is about
# cos(37 deg) = 0.8 degrees of latitude, so scaling longitude makes distances roughly metric.
_LON_SCALE = float(np.cos(np.deg2rad(37.0)))
_IDW_EPS = 0.005  # degrees (~500 m): stops identical coordinates from getting infinite weight
# Rows arrive in random order (the split shuffles them), so consecutive neighbour queries land
# in random parts of the tree: past ~100k training rows the search is bound by cache misses
# and its cost per row grows with the table (docs/scaling.md, "The pipeline's cost curve").
# Querying in latitude bands, by longitude within a band, keeps consecutive queries in the
# same nodes: 3x faster at 1.3M rows, and exactly the same neighbours, since every query is
# independent of the others. Small batches (serving) are queried as they come.
_ORDERED_QUERY_MIN_ROWS = 10_000
_QUERY_BAND_DEGREES = 0.05
_STAT_NAMES: tuple[str, ...] = (
    "nbr_idw_log_price",
    "nbr_near_log_price_per_income",
    "nbr_log_price_std",
    "nbr_log_price_per_income",
    "nbr_income",
    "nbr_log_distance",
)


def _raw_arrays(X: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw rows -> (float64 matrix of the numeric columns, ocean_proximity strings).

    X is a DataFrame with the ``config.FEATURES`` columns, or a 2-D object array whose
    columns are ``config.FEATURES`` in order (the online API's rows: building a DataFrame
    for a few rows costs more than scoring them). Fast path for a DataFrame: when the
    columns are exactly ``config.FEATURES`` in order, one ``to_numpy`` (~25 us for a row)
    beats per-column selection (~12 us per column in pandas 3).
    """
    if isinstance(X, np.ndarray):
        if X.ndim != 2 or X.shape[1] != len(config.FEATURES):
            raise ValueError(
                f"raw rows as an array need {len(config.FEATURES)} columns "
                f"{config.FEATURES}, got shape {X.shape}"
            )
    elif tuple(X.columns) != config.FEATURES:
        missing = sorted(set(config.FEATURES) - set(X.columns))
        if missing:
            raise ValueError(f"missing feature columns: {missing}")
        X = X[list(config.FEATURES)]
    values = X if isinstance(X, np.ndarray) else X.to_numpy()
    n_numeric = len(_NUMERIC)
    # str(): pd.NA / None / NaN become strings matching no category (-> all-zero one-hot).
    return values[:, :n_numeric].astype(np.float64), values[:, n_numeric].astype(str)


def _coords(numeric: np.ndarray) -> np.ndarray:
    """Numeric matrix -> (n, 2) roughly isotropic planar coordinates for neighbour search."""
    return np.column_stack(
        [numeric[:, _COL["longitude"]] * _LON_SCALE, numeric[:, _COL["latitude"]]]
    )


def _reference_values(numeric: np.ndarray, y: Any) -> np.ndarray:
    """Per-training-row values that neighbours are averaged over, as an (n, 3) array:
    log price, log(price / income), income. Logs keep expensive outliers from dominating."""
    log_price = np.log(np.maximum(np.asarray(y, dtype=np.float64), 1.0))
    income = numeric[:, _COL["median_income"]]
    log_ppi = log_price - np.log(np.maximum(income, 0.1))
    return np.column_stack([log_price, log_ppi, income])


def _n_stats(neighbors: tuple[int, ...]) -> int:
    """Number of neighbour-statistic columns produced for these neighbourhood sizes."""
    return len(neighbors) + len(_STAT_NAMES)


def _query(tree: KDTree, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``tree.query(query, k=k)`` (distances, indices), large batches in spatial order."""
    if len(query) < _ORDERED_QUERY_MIN_ROWS:
        return tree.query(query, k=k)
    order = np.lexsort((query[:, 0], np.floor(query[:, 1] / _QUERY_BAND_DEGREES)))
    dist, idx = tree.query(query[order], k=k)
    dist[order], idx[order] = dist.copy(), idx.copy()  # back to the callers' row order
    return dist, idx


def _neighbour_stats(
    tree: KDTree, reference: np.ndarray, query: np.ndarray, neighbors: tuple[int, ...]
) -> np.ndarray:
    """Statistics of the reference rows nearest to each query point.

    In: a KDTree over reference coordinates, the (n_ref, 3) ``_reference_values`` of those
    rows, (n, 2) query coordinates, ascending neighbourhood sizes. Out: (n, _n_stats) array:
    mean log price for each k; then, for the smallest k, an inverse-distance-weighted mean
    log price and the mean log price-per-income; for the middle k, the log-price std, mean
    log price-per-income, mean income and log distance to the k-th neighbour.
    """
    k_max = min(max(neighbors), tree.data.shape[0])
    dist, idx = _query(tree, query, k_max)
    log_price, log_ppi, income = (reference[idx, j] for j in range(3))
    k_small, k_mid = (min(k, k_max) for k in (neighbors[0], neighbors[len(neighbors) // 2]))
    out = [log_price[:, : min(k, k_max)].mean(axis=1) for k in neighbors]
    weights = 1.0 / (dist[:, :k_small] + _IDW_EPS)
    out.append((log_price[:, :k_small] * weights).sum(axis=1) / weights.sum(axis=1))
    out.append(log_ppi[:, :k_small].mean(axis=1))
    out.append(log_price[:, :k_mid].std(axis=1))
    out.append(log_ppi[:, :k_mid].mean(axis=1))
    out.append(income[:, :k_mid].mean(axis=1))
    out.append(np.log1p(dist[:, k_mid - 1] * 100.0))
    return np.column_stack(out)


# auto_wrap_output_keys=None: skip sklearn's set_output wrapper around transform (it costs
# ~15% of single-row latency and the pipeline only ever needs numpy output).
class HousingFeatures(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Raw housing DataFrame -> float64 feature matrix with out-of-fold neighbour stats.

    Parameters
    ----------
    neighbors:
        Ascending neighbourhood sizes k for the mean-log-price features; the smallest and
        middle ones also size the other neighbour statistics.
    oof_folds:
        Number of folds for the out-of-fold neighbour features computed in ``fit_transform``.
    random_state:
        Seed of the fold assignment.
    """

    def __init__(
        self,
        neighbors: tuple[int, ...] = DEFAULT_NEIGHBORS,
        oof_folds: int = DEFAULT_OOF_FOLDS,
        random_state: int = DEFAULT_RANDOM_STATE,
    ) -> None:
        self.neighbors = neighbors
        self.oof_folds = oof_folds
        self.random_state = random_state

    # -- fitting -------------------------------------------------------------------------
    def fit(self, X: pd.DataFrame, y: Any = None) -> HousingFeatures:
        """Learn imputation constants and store the training rows for neighbour lookups."""
        if y is None:
            raise ValueError("HousingFeatures needs the target y to build neighbour features")
        if list(self.neighbors) != sorted(self.neighbors) or min(self.neighbors) < 1:
            raise ValueError(f"neighbors must be ascending positive ints, got {self.neighbors}")
        numeric, _ = _raw_arrays(X)
        rooms, bedrooms = numeric[:, _COL["total_rooms"]], numeric[:, _COL["total_bedrooms"]]
        known = ~np.isnan(bedrooms) & (rooms > 0)
        share = np.median(bedrooms[known] / rooms[known]) if known.any() else 0.2
        self.bedroom_share_ = float(share)
        self.medians_ = np.nanmedian(self._impute(numeric), axis=0)
        numeric = self._clean(numeric)
        # Only plain arrays are fitted state: the KDTree is rebuilt from them (see _tree), so
        # a skops file needs no trusted KDTree type.
        self.ref_coords_ = _coords(numeric)
        self.ref_values_ = _reference_values(numeric, y)
        self.n_features_in_ = len(config.FEATURES)
        self.feature_names_in_ = np.asarray(config.FEATURES, dtype=object)
        self._tree_cache = KDTree(self.ref_coords_)
        return self

    def fit_transform(self, X: pd.DataFrame, y: Any = None, **fit_params: Any) -> np.ndarray:
        """Fit, then transform the training rows with OUT-OF-FOLD neighbour statistics.

        Each training row's neighbour features come from a KDTree over the other folds, so
        its own price never leaks into its features (Pipeline.fit calls this, not
        fit().transform()).
        """
        self.fit(X, y)
        numeric, ocean = _raw_arrays(X)
        numeric = self._clean(numeric)
        stats = np.empty((len(numeric), _n_stats(self.neighbors)))
        folds = KFold(self.oof_folds, shuffle=True, random_state=self.random_state)
        for ref, held in folds.split(self.ref_coords_):
            stats[held] = _neighbour_stats(
                KDTree(self.ref_coords_[ref]),
                self.ref_values_[ref],
                self.ref_coords_[held],
                self.neighbors,
            )
        return self._assemble(numeric, ocean, stats)

    # -- transforming --------------------------------------------------------------------
    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """Features for new rows; neighbour statistics use all training rows."""
        # check_is_fitted's generic path (estimator tags) costs more than a small batch's
        # arithmetic; the one attribute transform needs says the same.
        if not hasattr(self, "ref_coords_"):
            check_is_fitted(self, "ref_coords_")  # raises NotFittedError with sklearn's text
        numeric, ocean = _raw_arrays(X)
        numeric = self._clean(numeric)
        stats = _neighbour_stats(self._tree, self.ref_values_, _coords(numeric), self.neighbors)
        return self._assemble(numeric, ocean, stats)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the output columns, in order."""
        names = list(_NUMERIC)
        names += ["rooms_per_household", "bedrooms_per_room", "population_per_household"]
        names += ["income_per_room_per_household"]
        names += [f"rot{deg}_{axis}" for deg in _ROTATION_DEGREES for axis in ("u", "v")]
        names += [f"ocean_{value}" for value in config.OCEAN_PROXIMITY_VALUES]
        names += [f"nbr{k}_log_price" for k in self.neighbors]
        names += list(_STAT_NAMES)
        return np.asarray(names, dtype=object)

    # -- persistence ---------------------------------------------------------------------
    @property
    def _tree(self) -> KDTree:
        """KDTree over the training coordinates, rebuilt (~10-20 ms) after unpickling/skops."""
        tree = getattr(self, "_tree_cache", None)
        if tree is None:
            tree = self._tree_cache = KDTree(self.ref_coords_)
        return tree

    def __getstate__(self) -> dict[str, Any]:
        # A copy: for non-sklearn classes BaseEstimator returns the live __dict__.
        state = dict(super().__getstate__())
        state.pop("_tree_cache", None)  # derived from ref_coords_; keeps skops types plain
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "ref_coords_" in state:
            self._tree_cache = KDTree(self.ref_coords_)  # build at load, not on first request

    # -- helpers -------------------------------------------------------------------------
    def _impute(self, numeric: np.ndarray) -> np.ndarray:
        """Missing bedrooms = rooms x the training median bedroom share (a global median
        would ignore that bedroom counts scale with block size)."""
        bedrooms = numeric[:, _COL["total_bedrooms"]]
        missing = np.isnan(bedrooms)
        if missing.any():
            numeric = numeric.copy()
            rooms = numeric[missing, _COL["total_rooms"]]
            numeric[missing, _COL["total_bedrooms"]] = rooms * self.bedroom_share_
        return numeric

    def _clean(self, numeric: np.ndarray) -> np.ndarray:
        """Impute bedrooms, then any other missing value -> training median (serving input
        may be incomplete; the training data never is)."""
        numeric = self._impute(numeric)
        if np.isnan(numeric).any():
            numeric = np.where(np.isnan(numeric), self.medians_, numeric)
        return numeric

    @staticmethod
    def _assemble(numeric: np.ndarray, ocean: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """Concatenate raw, ratio, rotated-coordinate, one-hot and neighbour columns.

        Written column by column into one array: the same arithmetic as stacking the columns,
        without ~30 temporary arrays per call (it runs once per online request batch).
        """
        n_numeric = numeric.shape[1]
        out = np.empty((len(numeric), n_numeric + _N_DERIVED + stats.shape[1]))
        out[:, :n_numeric] = numeric
        households = np.maximum(numeric[:, _COL["households"]], 1.0)
        rooms = np.maximum(numeric[:, _COL["total_rooms"]], 1.0)
        j = n_numeric
        # Absurd but schema-valid counts (1e300 households) may overflow to inf: the trees
        # treat that as "very large", which is the right reading, so no warning is due.
        with np.errstate(over="ignore"):
            rooms_per_household = rooms / households
            out[:, j] = rooms_per_household
            out[:, j + 1] = numeric[:, _COL["total_bedrooms"]] / rooms
            out[:, j + 2] = numeric[:, _COL["population"]] / households
            out[:, j + 3] = numeric[:, _COL["median_income"]] / rooms_per_household
        j += 4
        lon, lat = numeric[:, _COL["longitude"]], numeric[:, _COL["latitude"]]
        for cos, sin in _ROTATIONS:
            out[:, j] = lon * cos + lat * sin
            out[:, j + 1] = lat * cos - lon * sin
            j += 2
        for value in config.OCEAN_PROXIMITY_VALUES:
            out[:, j] = ocean == value
            j += 1
        out[:, j:] = stats
        return out


MIN_TEST_ROWS = 2  # R² is undefined on one row


def min_fit_rows(
    neighbors: tuple[int, ...] = DEFAULT_NEIGHBORS, oof_folds: int = DEFAULT_OOF_FOLDS
) -> int:
    """Fewest training rows the preprocessor can be fitted on with these settings.

    ``fit_transform`` splits the rows into ``oof_folds`` folds (KFold needs a row per fold)
    and looks up the largest neighbourhood among the other folds' rows, which must hold at
    least ``max(neighbors)`` rows: n * (folds - 1) / folds >= k.
    """
    k = max(neighbors)
    return max(oof_folds, -(-k * oof_folds // max(oof_folds - 1, 1)))


def build_preprocessor(
    neighbors: tuple[int, ...] = DEFAULT_NEIGHBORS,
    oof_folds: int = DEFAULT_OOF_FOLDS,
    random_state: int = DEFAULT_RANDOM_STATE,
) -> HousingFeatures:
    """An UNFITTED preprocessor: raw ``config.FEATURES`` DataFrame -> float64 matrix.

    Must be fitted with the target (``fit(X, y)`` / ``fit_transform(X, y)``) on the train
    split only; ``transform`` then accepts any number of raw rows, including one.
    """
    return HousingFeatures(neighbors=neighbors, oof_folds=oof_folds, random_state=random_state)
