"""Estimator factory: a model kind and hyperparameters in, an unfitted sklearn regressor out."""

from __future__ import annotations

from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge

MODEL_KINDS: tuple[str, ...] = ("hgb", "random_forest", "linear")


def build_estimator(
    kind: str,
    n_estimators: int,
    learning_rate: float,
    max_leaves: int,
    min_samples_leaf: int,
    random_state: int,
):
    if kind == "hgb":
        return HistGradientBoostingRegressor(
            max_iter=n_estimators,
            learning_rate=learning_rate,
            max_leaf_nodes=max_leaves,
            min_samples_leaf=min_samples_leaf,
            random_state=random_state,
        )
    if kind == "random_forest":
        return RandomForestRegressor(
            n_estimators=n_estimators,
            min_samples_leaf=min_samples_leaf,
            random_state=random_state,
            n_jobs=-1,
        )
    if kind == "linear":
        return Ridge()
    raise ValueError(f"unknown model_kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")

# Placeholder contract values until the model work lands (see docs/model.md).
DEFAULT_MODEL_KIND = "hgb"
DEFAULT_HYPERPARAMS = {
    "n_estimators": 300,
    "learning_rate": 0.1,
    "max_leaves": 31,
    "min_samples_leaf": 20,
    "random_state": 42,
}
SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.neighbors._kd_tree.KDTree",
    "steps.features.HousingFeatures",
    "steps.features._ratios",
)
