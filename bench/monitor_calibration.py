"""The numbers behind monitor's drift thresholds (steps/monitoring/drift.py, docs/monitoring.md).

Windows of real rows drawn at random from housing.csv (unshifted traffic from the data the
champion came from) are judged against the profile the data contract keeps for that data
(``contract.profile`` of the whole file, as load_data logs it); the share of windows judged
``drift`` is the false-alarm rate. Then the same windows with a silent unit change in one
column (median_income x10, total_rooms / 1000, housing_median_age in months, population x1000)
must be judged ``drift`` naming that column and no other. Predictions: a model trained on an
80% split (as train does), its predictions on the other 20% as the reference, the windows'
predictions judged against them.

Run: ``.venv/bin/python bench/monitor_calibration.py [--windows 1000]`` (the data as ``make
data`` fetches it). Prints one line per window size and shift.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: make `steps` and `tests` importable
    sys.path.insert(0, str(PROJECT_ROOT))

from steps import config  # noqa: E402
from steps.data import contract, schema  # noqa: E402
from steps.monitoring import drift  # noqa: E402
from tests.support import demo_pipeline, housing_csv  # noqa: E402

SHIFTS = {
    "median_income x10": ("median_income", lambda v: v * 10),
    "total_rooms / 1000": ("total_rooms", lambda v: v / 1000),
    "housing_median_age in months": ("housing_median_age", lambda v: v * 12),
    "population x1000": ("population", lambda v: v * 1000),
}


def windows(df: pd.DataFrame, size: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(len(df), size, replace=False) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=1000, help="windows per size")
    parser.add_argument("--sizes", default="500,1000,2000,5000")
    args = parser.parse_args()

    df = schema.validate_raw(pd.read_csv(housing_csv()))
    profile = contract.profile(df)
    test = df.sample(frac=0.2, random_state=42)
    train = df.drop(test.index)
    started = time.perf_counter()
    model = demo_pipeline(train[list(config.FEATURES)], train[config.TARGET].to_numpy())
    reference = {"1": model.predict(test[list(config.FEATURES)])}
    predictions = model.predict(df[list(config.FEATURES)])
    print(f"model fitted and scored in {time.perf_counter() - started:.1f} s", flush=True)
    rows = df[list(config.FEATURES)].assign(model_version="1", prediction=predictions)

    print(
        f"{'window':>7} {'shift':<30} {'windows':>7} {'drift':>6} {'rate':>7} "
        f"{'only that column':>16} {'worst ok-window PSI / threshold':>32}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        picks = windows(rows, size, args.windows, seed=size)
        alarms, worst = 0, (0.0, "")
        by_cause: dict[str, int] = {}
        started = time.perf_counter()
        for pick in picks:
            judged = drift.judge(rows.iloc[pick], profile, reference)
            if judged.verdict == "drift":
                alarms += 1
                for cause in judged.drifted_features + [
                    f"pred v{v}" for v in judged.drifted_versions
                ]:
                    by_cause[cause] = by_cause.get(cause, 0) + 1
            for name, f in judged.features.items():
                ratio = f.psi.value / f.psi.threshold
                if ratio > worst[0]:
                    worst = (ratio, f"{name} {f.psi.value:.4f}/{f.psi.threshold:.4f}")
        seconds = (time.perf_counter() - started) / len(picks)
        causes = ", ".join(f"{k}: {v}" for k, v in by_cause.items()) or "–"
        print(
            f"{size:>7} {'none (real rows)':<30} {len(picks):>7} {alarms:>6} "
            f"{alarms / len(picks):>7.2%} {'':>16} {worst[1]:>32}   alarms by cause: {causes}; "
            f"{seconds * 1000:.1f} ms a window",
            flush=True,
        )
        for label, (column, change) in SHIFTS.items():
            hits = only = 0
            for pick in picks[: max(1, len(picks) // 5)]:
                window = rows.iloc[pick].copy()
                window[column] = change(window[column])
                window["prediction"] = model.predict(window[list(config.FEATURES)])
                judged = drift.judge(window, profile, reference)
                hits += judged.verdict == "drift"
                only += judged.drifted_features == [column]
            n = max(1, len(picks) // 5)
            print(f"{size:>7} {label:<30} {n:>7} {hits:>6} {hits / n:>7.2%} {only / n:>16.2%}")


if __name__ == "__main__":
    main()
