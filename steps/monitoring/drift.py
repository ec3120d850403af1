"""Drift of a window of served rows against a version's reference: the pure core of ``monitor``.

In: the window (a DataFrame with the raw feature columns, ``model_version`` and
``prediction``), the reference data profile the data contract keeps
(``steps.data.contract.profile``), each version's predictions on its own test rows, and
``MonitorRules``. Out: a ``Judgement``: per feature the PSI and missing-rate change (the
contract's ``column_drift``: one drift implementation) with the threshold each is held to,
per served version its prediction PSI, and the verdict ``ok`` or ``drift`` with the drifted
features. Nothing here logs, reads or writes.

Why the thresholds depend on the window's size: a window is a sample, and the PSI of a
sample drawn from the reference itself is about chi2(bins - 1) / n (PSI is the symmetric
Kullback-Leibler divergence, to second order Pearson's chi2 / n). A fixed threshold is
either blind on large windows or noisy on small ones. Each statistic is held to the larger of
the contract's own fail threshold (``schema.DRIFT_RULES``: what a shift worth stopping a
data version is) and its sampling noise at a false-alarm probability ``alpha``; with ``alpha``
= 1e-3 per statistic, a window of ten statistics raises a false alarm about 1% of the time at
most (bench/monitor_calibration.py measures it on the real data: docs/monitoring.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from steps import config
from steps.data import contract, schema

VERSION_COLUMN = "model_version"
PREDICTION_COLUMN = "prediction"
Verdict = Literal["ok", "drift"]


@dataclass(frozen=True)
class MonitorRules:
    """What counts as drift in a window (defaults: docs/monitoring.md, calibration)."""

    # The contract's fail thresholds: a shift that would stop a new data version.
    psi_floor: float = schema.DRIFT_RULES.feature_psi.fail
    missing_floor: float = schema.DRIFT_RULES.missing_rate_change.fail
    # False-alarm probability per statistic from sampling noise alone.
    alpha: float = 1e-3
    # Fewer rows hold too few values per bin for the chi2 approximation of the noise: random
    # windows of 200 real rows raised 1.8% false alarms (1,000 windows; rare missing
    # bedrooms and discrete ages), of 500 rows none (bench/monitor_calibration.py).
    min_rows: int = 500


RULES = MonitorRules()


@dataclass(frozen=True)
class Statistic:
    value: float
    threshold: float

    @property
    def broken(self) -> bool:
        return abs(self.value) > self.threshold


@dataclass(frozen=True)
class FeatureDrift:
    psi: Statistic
    missing_rate_change: Statistic

    @property
    def drifted(self) -> bool:
        return self.psi.broken or self.missing_rate_change.broken


@dataclass(frozen=True)
class Judgement:
    """A window judged: ``verdict`` is ``drift`` when a feature or a version's predictions
    drifted; ``drifted_features`` names the features only, in the table's column order."""

    rows: int
    features: dict[str, FeatureDrift]
    predictions: dict[str, Statistic]  # version -> prediction PSI vs its own test predictions
    versions: dict[str, int] = field(default_factory=dict)  # version -> rows served

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, drift in self.features.items() if drift.drifted]

    @property
    def drifted_versions(self) -> list[str]:
        return [version for version, stat in self.predictions.items() if stat.broken]

    @property
    def verdict(self) -> Verdict:
        return "drift" if self.drifted_features or self.drifted_versions else "ok"


class WindowError(ValueError):
    """The window cannot be judged (too few rows): the message says why, on one line."""


# --- thresholds ---------------------------------------------------------------------------
def psi_threshold(bins: int, n: int, n_reference: int, rules: MonitorRules = RULES) -> float:
    """The PSI a window of ``n`` values may reach by chance (probability ``alpha``), against
    a reference of ``n_reference`` values over ``bins`` bins; never below the floor."""
    from scipy.special import chdtri  # scipy.special only: scipy.stats costs ~0.7 s to import

    noise = chdtri(max(bins - 1, 1), rules.alpha) * (1 / max(n, 1) + 1 / max(n_reference, 1))
    return max(rules.psi_floor, float(noise))


def missing_threshold(rate: float, n: int, n_reference: int, rules: MonitorRules = RULES) -> float:
    """The |missing-rate change| a window may show by chance (binomial, two-sided ``alpha``)."""
    from scipy.special import ndtri

    z = float(ndtri(1 - rules.alpha / 2))
    noise = z * np.sqrt(rate * (1 - rate) * (1 / max(n, 1) + 1 / max(n_reference, 1)))
    return max(rules.missing_floor, float(noise))


def bins_of(column_profile: dict[str, Any]) -> int:
    if column_profile["kind"] == "categorical":
        return len(column_profile["shares"])
    return len(column_profile["psi_edges"]) + 1


# --- the window -------------------------------------------------------------------------------
def feature_drift(
    rows: pd.DataFrame, profile: dict[str, Any], rules: MonitorRules = RULES
) -> dict[str, FeatureDrift]:
    """Per feature of the reference profile: PSI and missing-rate change, and their limits."""
    n_reference = int(profile["n_rows"])
    out = {}
    for name in config.FEATURES:
        ref = profile["columns"][name]
        values = rows[name]
        stats = contract.column_drift(values, ref)
        present = int(values.notna().sum())
        rate = ref["missing_rate"]
        out[name] = FeatureDrift(
            psi=Statistic(stats["psi"], psi_threshold(bins_of(ref), present, n_reference, rules)),
            missing_rate_change=Statistic(
                stats["missing_rate_change"],
                missing_threshold(rate, len(values), n_reference, rules),
            ),
        )
    return out


def prediction_drift(
    predictions: np.ndarray, reference: np.ndarray, rules: MonitorRules = RULES
) -> Statistic:
    """PSI of served predictions over the deciles of the version's own test predictions."""
    reference = np.asarray(reference, dtype=np.float64)
    edges = np.unique(np.quantile(reference, contract.PSI_QUANTILES))
    value = contract.psi(
        contract.shares_between(reference, edges), contract.shares_between(predictions, edges)
    )
    return Statistic(value, psi_threshold(len(edges) + 1, len(predictions), len(reference), rules))


def judge(
    rows: pd.DataFrame,
    profile: dict[str, Any],
    reference_predictions: dict[str, np.ndarray],
    rules: MonitorRules = RULES,
) -> Judgement:
    """Judge a window: its features against ``profile``, and each served version's
    predictions against that version's test predictions (versions without them: skipped).

    Raises ``WindowError`` with fewer than ``rules.min_rows`` rows.
    """
    if len(rows) < rules.min_rows:
        raise WindowError(
            f"{len(rows)} served rows in the window: at least {rules.min_rows} are needed "
            "to tell drift from chance (widen the window)"
        )
    versions = rows[VERSION_COLUMN].astype(str).value_counts().sort_index()
    predictions = {}
    for version in versions.index:
        reference = reference_predictions.get(version)
        served = rows.loc[rows[VERSION_COLUMN].astype(str) == version, PREDICTION_COLUMN]
        if reference is not None and len(served) >= rules.min_rows:
            predictions[version] = prediction_drift(served.to_numpy(np.float64), reference, rules)
    return Judgement(
        rows=len(rows),
        features=feature_drift(rows, profile, rules),
        predictions=predictions,
        versions={str(k): int(v) for k, v in versions.items()},
    )
