"""The numbers behind the data contract's thresholds (steps/data/schema.py, docs/reliability.md).

Builds legitimate and broken versions of the real housing.csv, runs the contract
(steps/data/contract.py) against a reference profile and prints, per variant, the largest
statistic of each rule and the verdict. Legitimate variants must pass, broken ones must fail.
Run: ``.venv/bin/python bench/contract_calibration.py`` (the data as ``make data`` fetches it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: make `steps` and `tests` importable
    sys.path.insert(0, str(PROJECT_ROOT))

from steps import config  # noqa: E402
from steps.data import contract, schema  # noqa: E402
from tests.support import housing_csv  # noqa: E402


def real() -> pd.DataFrame:
    return schema.validate_raw(pd.read_csv(housing_csv()))


def subset(df: pd.DataFrame, frac: float, seed: int) -> pd.DataFrame:
    return df.sample(frac=frac, random_state=seed).sort_index()


def stats_row(name: str, new: pd.DataFrame, ref: pd.DataFrame, expect: str) -> dict:
    started = time.process_time()
    result = contract.check(new, contract.profile(ref))
    seconds = time.process_time() - started
    findings, verdict = result.findings, result.verdict
    stats = result.drift
    cols = stats["columns"]
    features = [c for c in cols if c != config.TARGET]
    worst = max(features, key=lambda c: cols[c]["psi"])
    table = [f.rule for f in findings if f.kind == "table"]
    return {
        "variant": name,
        "expect": expect,
        "verdict": "fail" if verdict.failures else ("warn" if verdict.warnings else "pass"),
        "rows": len(new),
        "row_change": f"{stats['row_count_change']:+.3f}",
        "max_feature_psi": f"{cols[worst]['psi']:.4f} ({worst})",
        "target_psi": f"{cols[config.TARGET]['psi']:.4f}",
        "max_missing_change": f"{max(abs(c['missing_rate_change']) for c in cols.values()):.4f}",
        "dup_share": f"{contract.duplicate_fraction(new):.3f}",
        "table_rules": ",".join(table) or "–",
        "failed": ",".join(sorted({f.rule for f in verdict.failures})) or "–",
        "cpu_s": f"{seconds:.2f}",
    }


def main() -> None:
    df = real()
    n = len(df)
    cols = list(df.columns)
    variants: list[tuple[str, Callable[[], pd.DataFrame], Callable[[], pd.DataFrame], str]] = [
        # (name, new version, reference version, expected)
        ("identical", lambda: df, lambda: df, "pass"),
        ("rows shuffled", lambda: df.sample(frac=1, random_state=0), lambda: df, "pass"),
        ("columns reordered", lambda: df[cols[::-1]][cols], lambda: df, "pass"),
        ("+2% rows (ref = 98% sample)", lambda: df, lambda: subset(df, 1 / 1.02, 1), "pass"),
        ("+5% rows (ref = 95% sample)", lambda: df, lambda: subset(df, 1 / 1.05, 2), "pass"),
        (
            "+5% rows, shuffled, reordered",
            lambda: df.sample(frac=1, random_state=3)[cols[::-1]][cols],
            lambda: subset(df, 1 / 1.05, 3),
            "pass",
        ),
    ]
    for seed in range(3):  # sampling noise: two disjoint random halves of the same population
        half = df.sample(frac=0.5, random_state=10 + seed)
        variants.append(
            (
                f"random half vs other half (seed {seed})",
                lambda h=half: h,
                lambda h=half: df.drop(h.index),
                "pass",
            )
        )
    broken = [
        ("median_income x10 (unit)", lambda: df.assign(median_income=df.median_income * 10)),
        ("median_income x1000 (unit)", lambda: df.assign(median_income=df.median_income * 1000)),
        (
            "target in $1000s (unit)",
            lambda: df.assign(median_house_value=df.median_house_value / 1000),
        ),
        (
            "housing_median_age in months",
            lambda: df.assign(housing_median_age=df.housing_median_age * 12),
        ),
        ("total_rooms in hundreds", lambda: df.assign(total_rooms=df.total_rooms / 100)),
        ("truncated at 98% (row boundary)", lambda: df.iloc[: int(n * 0.98)]),
        ("truncated at 97%", lambda: df.iloc[: int(n * 0.97)]),
        ("truncated at 95%", lambda: df.iloc[: int(n * 0.95)]),
        ("truncated at 90%", lambda: df.iloc[: int(n * 0.90)]),
        ("truncated at 75%", lambda: df.iloc[: int(n * 0.75)]),
        ("truncated at 50%", lambda: df.iloc[: n // 2]),
        ("doubled table", lambda: pd.concat([df, df], ignore_index=True)),
        ("doubled, shuffled", lambda: pd.concat([df, df]).sample(frac=1, random_state=0)),
        ("3% rows duplicated", lambda: pd.concat([df, df.sample(frac=0.03, random_state=0)])),
        ("housing_median_age stuck at 52", lambda: df.assign(housing_median_age=52.0)),
        ("three rows", lambda: df.head(3)),
        (
            "total_bedrooms 4% missing",
            lambda: df.assign(
                total_bedrooms=df.total_bedrooms.mask(np.random.default_rng(0).random(n) < 0.03)
            ),
        ),
    ]
    variants += [
        # the limit: a cut losing only 2% of rows is a warning (row_count_drop warn), no more
        (name, build, lambda: df, "warn" if name.startswith("truncated at 98%") else "fail")
        for name, build in broken
    ]
    variants.append(
        ("99% rows (1% bad rows dropped)", lambda: subset(df, 0.99, 4), lambda: df, "pass")
    )
    rows = [stats_row(name, new(), ref(), expect) for name, new, ref, expect in variants]
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False))
    bad = table[table.verdict != table.expect]
    print(f"\nthresholds: {schema.TABLE_RULES}\n            {schema.DRIFT_RULES}")
    print(f"variants behaving against expectation: {len(bad)}")


if __name__ == "__main__":
    main()
