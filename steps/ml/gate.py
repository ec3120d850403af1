"""The champion gate and the alias settle rule: pure functions, no MLflow, no file I/O.

In: raw split tables (the nine feature columns plus the target), RMSE scores and the gate
records that ``register`` writes on model versions. Out: the rows a fair comparison may use,
a ``Verdict`` (promote or not, and why) and the version ``@champion`` should point at.

Fair comparison: champion and candidate are scored on the candidate's test rows minus every
row the champion was trained on, rows identified by a hash of the whole raw row (target
included), so neither model has seen them. The candidate takes ``@champion`` only if, on
those rows, its RMSE beats the champion's by ``min_abs`` dollars AND by ``min_rel`` of the
champion's RMSE, and beats a linear baseline (fitted on the candidate's train rows) by
``baseline_min_rel``: the semantics of MLflow's ``MetricThreshold(min_absolute_change=,
min_relative_change=, greater_is_better=False)`` (tests/unit/ml/test_gate.py checks the two
agree). Fewer than ``min_rows`` comparable rows: no automatic promotion.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from steps import config

# Verdict outcomes (also the version tag ``gate.verdict``).
FIRST = "first"  # no champion yet: promoted if it clears the baseline floor
PROMOTE = "promote"
KEEP = "keep_champion"
TOO_FEW_ROWS = "too_few_rows"
BELOW_FLOOR = "below_baseline_floor"
PASSING = frozenset({FIRST, PROMOTE})


@dataclass(frozen=True)
class Thresholds:
    min_abs: float = config.DEFAULT_GATE_MIN_ABS_IMPROVEMENT
    min_rel: float = config.DEFAULT_GATE_MIN_REL_IMPROVEMENT
    baseline_min_rel: float = config.DEFAULT_GATE_BASELINE_MIN_REL_IMPROVEMENT
    min_rows: int = config.DEFAULT_GATE_MIN_ROWS


@dataclass(frozen=True)
class Scores:
    """RMSE (dollars) of each model on the same ``rows`` comparable rows; None = not scored."""

    rows: int
    candidate: float | None
    champion: float | None
    baseline: float | None


@dataclass(frozen=True)
class Verdict:
    outcome: str
    reason: str

    @property
    def promote(self) -> bool:
        return self.outcome in PASSING


@dataclass(frozen=True)
class GateRecord:
    """What a version's ``gate.record`` tag says: whom it was gated against and how it did.

    ``against`` is the champion version at gating time (None: there was none); ``rank``
    orders versions gated against the same champion (lower is better): the candidate/champion
    RMSE ratio, or the candidate's RMSE when there was no champion.
    """

    version: int
    against: int | None
    passed: bool
    rank: float

    def to_tag(self) -> str:
        data = asdict(self)
        del data["version"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_tag(cls, version: int, text: str | None) -> GateRecord | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            against = data["against"]
            return cls(
                version,
                None if against is None else int(against),
                bool(data["passed"]),
                float(data["rank"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


# --- rows -----------------------------------------------------------------------------------
def row_keys(rows: pd.DataFrame) -> np.ndarray:
    """A stable 64-bit key per raw row (features + target), independent of index and order."""
    return pd.util.hash_pandas_object(rows.loc[:, list(config.RAW_COLUMNS)], index=False).to_numpy()


def comparable_rows(candidate_test: pd.DataFrame, champion_train: pd.DataFrame) -> pd.DataFrame:
    """The candidate's test rows the champion was not trained on (the candidate never was)."""
    seen = row_keys(champion_train)
    return candidate_test.loc[~np.isin(row_keys(candidate_test), seen)]


def rmse(actual: Any, predicted: Any) -> float:
    """Root mean squared error in dollars; the one metric every gate score uses."""
    error = np.asarray(predicted, dtype=float) - np.asarray(actual, dtype=float)
    return float(np.sqrt(np.mean(error**2)))


def prediction_table(test: pd.DataFrame, predicted: Any, baseline_predicted: Any) -> pd.DataFrame:
    """The raw test rows with the candidate's and the baseline's predictions beside them."""
    table = test.loc[:, list(config.RAW_COLUMNS)].reset_index(drop=True)
    table[config.GATE_CANDIDATE_COLUMN] = np.asarray(predicted, dtype=float)
    table[config.GATE_BASELINE_COLUMN] = np.asarray(baseline_predicted, dtype=float)
    return table


def baseline_model():
    """The floor: ordinary least squares on the raw columns (imputed, scaled, one-hot).

    Deliberately plain and independent of ``steps.features``: a model that cannot clearly
    beat it on the same rows is broken, whatever its own metrics say.
    """
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return make_pipeline(
        make_column_transformer(
            (
                make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                list(config.NUMERIC_FEATURES),
            ),
            (OneHotEncoder(handle_unknown="ignore"), [config.CATEGORICAL_FEATURE]),
        ),
        LinearRegression(),
    )


# --- decision -------------------------------------------------------------------------------
def beats(candidate: float, reference: float, min_abs: float | None, min_rel: float | None) -> bool:
    """MetricThreshold semantics for a lower-is-better metric: every given margin must hold."""
    ok = True
    if min_abs:
        ok = ok and candidate <= reference - min_abs
    if min_rel:
        ok = ok and candidate <= reference - min_rel * abs(reference)
    return ok


def decide(scores: Scores, limits: Thresholds, champion_version: int | None) -> Verdict:
    """Promote, keep the champion, or refuse, with a reason a person can act on."""
    if scores.rows < limits.min_rows or scores.candidate is None:
        where = (
            f"rows that v{champion_version} was not trained on"
            if champion_version is not None
            else "test rows"
        )
        return Verdict(
            TOO_FEW_ROWS,
            f"only {scores.rows} {where} (minimum {limits.min_rows}): the gate cannot tell "
            f"the models apart; compare them by hand and, if it should serve, run "
            f'`mlflow run . -e promote -P version=<this version> -P reason="..."`',
        )
    assert scores.baseline is not None
    if not beats(scores.candidate, scores.baseline, None, limits.baseline_min_rel):
        return Verdict(
            BELOW_FLOOR,
            f"RMSE ${scores.candidate:,.0f} is not {limits.baseline_min_rel:.0%} better than "
            f"the linear baseline's ${scores.baseline:,.0f} on the same {scores.rows} rows",
        )
    if champion_version is None or scores.champion is None:
        return Verdict(
            FIRST,
            f"no champion yet; RMSE ${scores.candidate:,.0f} on {scores.rows} test rows "
            f"clears the linear baseline (${scores.baseline:,.0f})",
        )
    gain = scores.champion - scores.candidate
    versus = (
        f"RMSE ${scores.candidate:,.0f} vs champion v{champion_version}'s "
        f"${scores.champion:,.0f} on the same {scores.rows} rows neither trained on"
    )
    if beats(scores.candidate, scores.champion, limits.min_abs, limits.min_rel):
        return Verdict(PROMOTE, f"{versus}: ${gain:,.0f} better")
    if gain <= 0:
        return Verdict(KEEP, f"{versus}: the champion is ${-gain:,.0f} better")
    return Verdict(
        KEEP,
        f"{versus}: improvement ${gain:,.0f} is below the required "
        f"${limits.min_abs:,.0f} and {limits.min_rel:.1%}",
    )


def record_for(version: int, champion_version: int | None, scores: Scores, verdict: Verdict):
    candidate = scores.candidate if scores.candidate is not None else float("inf")
    if champion_version is not None and scores.champion:
        rank = candidate / scores.champion
    else:
        rank = candidate
    return GateRecord(version, champion_version, verdict.promote, rank)


# --- which version is champion ----------------------------------------------------------------
def _best(records: list[GateRecord]) -> GateRecord:
    return min(records, key=lambda r: (r.rank, r.version))


def settle_target(
    current: int | None,
    records: Mapping[int, GateRecord],
    floor: int = 0,
    pinned: int | None = None,
) -> int | None:
    """The version ``@champion`` should point at, given every version's gate record.

    Candidates gated against the same champion are rivals: the best of them (rank, then
    lower version) wins, and versions that passed against that winner come next. Versions
    at or below ``floor`` (set by a manual promotion, which also ``pinned`` its choice) no
    longer compete. A function of the records, the floor and the alias only, and a fixed
    point once reached (``settle_target(t) == t``), so concurrent registers that re-read
    until nothing changes all end on the same version whatever order they ran in.
    """
    live = {v: r for v, r in records.items() if v > floor}
    target = current
    if target is None or (target <= floor and target != pinned):
        target = pinned
    seen: set[int | None] = set()
    while target not in seen:
        seen.add(target)
        own = live.get(target) if target is not None else None
        if own is not None and own.passed:
            target = _best([r for r in live.values() if r.passed and r.against == own.against])
            target = target.version
        successors = [r for r in live.values() if r.passed and r.against == target]
        if not successors:
            return target
        target = _best(successors).version
    return target


def lineage_of(version: int, records: Mapping[int, GateRecord]) -> list[int | None]:
    """``version`` and the champions it descends from through gate records (oldest last)."""
    chain: list[int | None] = [version]
    current: int | None = version
    while current is not None and current in records:
        current = records[current].against
        if current in chain:
            break
        chain.append(current)
    return chain


def is_stale(record: GateRecord, champion: int | None, records: Mapping[int, GateRecord]) -> bool:
    """Was the version gated against a champion the current one does not descend from?

    Then its verdict compares it with a model that no longer matters (a manual promotion or
    a concurrent contest moved the alias meanwhile) and it must be gated again.
    """
    if champion is None:
        return record.against is not None
    return record.against not in lineage_of(champion, records)
