"""Model kinds and hyperparameter defaults, and the click options built from them.

Kept apart from ``steps.models`` so that commands which only need the names and defaults
(``steps.main`` passes them on to ``train``) do not import scikit-learn and LightGBM: that
import is ~1.2 s of every pipeline run's start-up. ``steps.models`` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

MODEL_KINDS: tuple[str, ...] = ("lightgbm", "hgb", "random_forest", "linear")
DEFAULT_MODEL_KIND = "lightgbm"

# One default per hyperparameter, shared by every kind. Serving cost decides the tree count:
# LightGBM scores ~0.06 µs per tree-row, so 2000 trees cost 122 ms per 1000 rows (the API's
# 1000-row target is 50 ms) and 2 min per million (target 20 s); 250 trees of 63 leaves at
# lr 0.09 cost ~15 ms / 1000 rows and score within noise of 2000 x 31 (docs/model.md).
# Bagging 80% of rows per tree is worth ~$500 of RMSE for LightGBM.
DEFAULT_HYPERPARAMS: dict[str, Any] = {
    "n_estimators": 250,
    "learning_rate": 0.09,
    "max_leaves": 63,
    "min_samples_leaf": 20,
    "subsample": 0.8,
    "random_state": 42,
}


def hyperparameter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """One click option per hyperparameter, typed and defaulted from DEFAULT_HYPERPARAMS,
    plus ``--model-kind``."""
    for name, default in reversed(DEFAULT_HYPERPARAMS.items()):
        func = click.option(
            f"--{name.replace('_', '-')}",
            name,
            type=type(default),
            default=default,
            show_default=True,
        )(func)
    return click.option(
        "--model-kind",
        type=click.Choice(MODEL_KINDS),
        default=DEFAULT_MODEL_KIND,
        show_default=True,
    )(func)
