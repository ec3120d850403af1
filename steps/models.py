"""Estimator factory: a model kind and hyperparameters in, an unfitted sklearn regressor out.

Every kind takes the same small set of hyperparameters (``DEFAULT_HYPERPARAMS``, defined in
``steps.ml.hyperparams`` with ``MODEL_KINDS`` and re-exported here) and maps
them onto its own parameters; a hyperparameter a kind has no use for is ignored (documented
in ``build_estimator``). All kinds predict dollars.

``SKOPS_TRUSTED_TYPES`` lists the non-default types a fitted pipeline of any kind
(``steps.features.HousingFeatures`` + estimator) contains, for
``skops.io.load(path, trusted=list(SKOPS_TRUSTED_TYPES))``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import numpy as np
from lightgbm import LGBMRegressor
from lightgbm.basic import _LIB, _safe_call
from sklearn.base import RegressorMixin, clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from steps.ml.hyperparams import DEFAULT_HYPERPARAMS, DEFAULT_MODEL_KIND, MODEL_KINDS

# Fixed per-kind settings (not tuned per run).
FEATURE_FRACTION = 0.7  # columns sampled per tree (LightGBM) / per split (HGB)
# LightGBM trains single-threaded: on a shared 2-core box OpenMP with 2 threads was 8x
# *slower* (threads spin while the other core is busy), and the default fits in seconds.
LIGHTGBM_N_JOBS = 1
RANDOM_FOREST_MAX_TREES = 200  # bagging gains little past a few hundred trees; memory grows
RANDOM_FOREST_MAX_FEATURES = 0.5
RANDOM_FOREST_N_JOBS = 2
LINEAR_ALPHA = 1.0
# Batches up to this many rows skip the sklearn wrapper of LightGBM (see FastLGBMRegressor).
SMALL_BATCH_ROWS = 64

# Exactly what skops.io.get_untrusted_types reports over fitted pipelines of all kinds
# (tests/unit/test_models.py checks it). Only load files you produced: skops notes that the
# tree types hold raw node indices that a crafted file could point out of bounds.
SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    "collections.OrderedDict",  # inside LightGBM's Booster state
    "lightgbm.basic.Booster",  # lightgbm (pickled state is the model text, no code)
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",  # hgb
    "sklearn.tree._tree.Tree",  # random_forest
    "steps.features.HousingFeatures",  # every kind: the preprocessor
    "steps.models.FastLGBMRegressor",  # lightgbm
)


# LightGBM's C API constants (c_api.h): float64 input, row-major, normal prediction.
_C_FLOAT64, _C_ROW_MAJOR, _C_PREDICT_NORMAL = 1, 1, 0
_ONE_THREAD = b"num_threads=1"


def booster_predict_small(booster: Any, X: np.ndarray) -> np.ndarray:
    """``booster.predict(X, num_threads=1)`` for a C-contiguous float64 matrix, as the C call
    that ``Booster.predict`` ends in; a booster with more than one output per row (not a
    regression) goes the normal way.

    ``Booster.predict`` spends ~80 us in Python around that call on every batch (copying its
    parameters, dispatching on the input type, a second C call for the result size): more
    than LightGBM needs to score a few rows. Same arguments, same result to the bit
    (tests/unit/test_models.py); the C side still checks the column count.
    """
    if booster.num_model_per_iteration() != 1:
        return booster.predict(X, num_threads=1)
    n_rows, n_cols = X.shape
    out = np.empty(n_rows, dtype=np.float64)
    written = ctypes.c_int64(0)
    _safe_call(
        _LIB.LGBM_BoosterPredictForMat(
            booster._handle,
            X.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_int(_C_FLOAT64),
            ctypes.c_int32(n_rows),
            ctypes.c_int32(n_cols),
            ctypes.c_int(_C_ROW_MAJOR),
            ctypes.c_int(_C_PREDICT_NORMAL),
            ctypes.c_int(0),  # start iteration
            ctypes.c_int(booster.best_iteration),  # what Booster.predict uses when not told
            ctypes.c_char_p(_ONE_THREAD),
            ctypes.byref(written),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        )
    )
    return out


class FastLGBMRegressor(LGBMRegressor):
    """``LGBMRegressor`` whose predict on a small numpy batch goes straight to the booster.

    The sklearn wrapper of LightGBM re-reads its parameters (``inspect.signature``) and
    re-validates the input on every predict: ~0.35 ms, 4x the cost of scoring 2000 trees
    for one row; ``Booster.predict`` adds ~80 us more. Small numpy batches (the online API's
    case) skip both (``booster_predict_small``) and run on one thread (no OpenMP start-up).
    Anything else uses the normal path. Fitting is unchanged.
    """

    def predict(self, X: Any, **kwargs: Any) -> np.ndarray:
        """Predict dollars for the rows of X (array-like of shape (n, n_features))."""
        small = isinstance(X, np.ndarray) and X.ndim == 2 and len(X) <= SMALL_BATCH_ROWS
        if small and not kwargs:
            # float64 is what LightGBM scores in; a copy of a few rows costs nothing
            return booster_predict_small(self.booster_, np.ascontiguousarray(X, np.float64))
        return super().predict(X, **kwargs)


def _lightgbm(hp: dict[str, Any]) -> RegressorMixin:
    return FastLGBMRegressor(
        n_estimators=hp["n_estimators"],
        learning_rate=hp["learning_rate"],
        num_leaves=hp["max_leaves"],
        min_child_samples=hp["min_samples_leaf"],
        subsample=hp["subsample"],
        subsample_freq=1 if hp["subsample"] < 1.0 else 0,  # 0 would disable bagging silently
        colsample_bytree=FEATURE_FRACTION,
        random_state=hp["random_state"],
        n_jobs=LIGHTGBM_N_JOBS,
        verbose=-1,
    )


def _hgb(hp: dict[str, Any]) -> RegressorMixin:
    # No row subsampling in HGB: `subsample` is ignored. Early stopping off so the model
    # uses all training rows and n_estimators means the same as for LightGBM.
    return HistGradientBoostingRegressor(
        max_iter=hp["n_estimators"],
        learning_rate=hp["learning_rate"],
        max_leaf_nodes=hp["max_leaves"],
        min_samples_leaf=hp["min_samples_leaf"],
        max_features=FEATURE_FRACTION,
        early_stopping=False,
        random_state=hp["random_state"],
    )


def _random_forest(hp: dict[str, Any]) -> RegressorMixin:
    # learning_rate and max_leaves have no forest meaning (fully grown trees, leaf size
    # bounded by min_samples_leaf); n_estimators is capped, subsample = bootstrap size.
    return RandomForestRegressor(
        n_estimators=min(hp["n_estimators"], RANDOM_FOREST_MAX_TREES),
        min_samples_leaf=hp["min_samples_leaf"],
        max_features=RANDOM_FOREST_MAX_FEATURES,
        max_samples=hp["subsample"] if hp["subsample"] < 1.0 else None,
        n_jobs=RANDOM_FOREST_N_JOBS,
        random_state=hp["random_state"],
    )


def _linear(hp: dict[str, Any]) -> RegressorMixin:
    # Ridge on standardised features, fitted to log price (the neighbour features are log
    # prices, so the relation is near-linear there); predictions are exp'd back to dollars.
    # Ignores every tree hyperparameter.
    ridge = Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=LINEAR_ALPHA))])
    return TransformedTargetRegressor(regressor=ridge, func=np.log, inverse_func=np.exp)


_BUILDERS: dict[str, Callable[[dict[str, Any]], RegressorMixin]] = {
    "lightgbm": _lightgbm,
    "hgb": _hgb,
    "random_forest": _random_forest,
    "linear": _linear,
}


def build_estimator(kind: str = DEFAULT_MODEL_KIND, **hyperparams: Any) -> RegressorMixin:
    """An unfitted regressor of ``kind`` taking the preprocessor's numeric matrix.

    ``hyperparams`` override ``DEFAULT_HYPERPARAMS`` (names: n_estimators, learning_rate,
    max_leaves, min_samples_leaf, subsample, random_state); an unknown name or kind raises
    ValueError. Kinds ignore what they cannot use: hgb ignores subsample; random_forest
    ignores learning_rate and max_leaves and caps n_estimators at RANDOM_FOREST_MAX_TREES;
    linear ignores all of them.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    unknown = sorted(set(hyperparams) - set(DEFAULT_HYPERPARAMS))
    if unknown:
        valid = ", ".join(DEFAULT_HYPERPARAMS)
        raise ValueError(f"unknown hyperparameters {unknown}; expected some of {valid}")
    return _BUILDERS[kind]({**DEFAULT_HYPERPARAMS, **hyperparams})


def build_pipeline(preprocessor: Any, estimator: Any) -> Pipeline:
    """One pipeline from raw rows to dollars; the preprocessor is cloned (refitted inside).

    Refitting inside the pipeline keeps out-of-fold target features honest: Pipeline.fit
    calls fit_transform, which computes them out of fold, exactly as at preprocess time.
    """
    return Pipeline([("preprocess", clone(preprocessor)), ("model", estimator)])
