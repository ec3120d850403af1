"""Model-quality benchmark: test RMSE / MAE / R² / fit seconds per model kind, plus latency.

Usage (from the project root)::

    python bench/model_quality.py [--csv PATH] [--seeds 5] [--kinds lightgbm,hgb] [--json out.json]

Protocols:

* ``default``: income-stratified split (``pd.cut(median_income, [0, 1.5, 3, 4.5, 6, inf])``),
  test_size 0.2; seeds vary the split's random_state (42, 43, ...), so seed 42 is the
  project's default split.
* ``tabr``: rows in file order, ``train_test_split(test_size=0.2, random_state=0)`` (the
  TabR paper's California protocol); the split is fixed, seeds vary the model/fold seed.

Also prints the single-row predict latency of the default pipeline (raw DataFrame row in,
dollars out; median of many calls, one thread). The CSV defaults to the clone's
``data/housing.csv``, fetched and verified as ``make data`` does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # run as a script without installing the project

from steps import config, features, models  # noqa: E402
from steps.models import build_pipeline  # noqa: E402
from steps.preprocess import split_data  # noqa: E402
from steps.train import fit_and_score  # noqa: E402

TABR_RANDOM_STATE = 0
ANCHORS_RMSE: dict[str, float] = {  # test RMSE in dollars, for the printed comparison
    "plain HistGradientBoosting (default split)": 45_700,
    "Geron final model (default split)": 41_400,
    "TabR best published (TabR split)": 39_980,
}


def default_csv_path() -> Path:
    """data/housing.csv of this clone, fetched and verified as `make data` does."""
    from tests.support import housing_csv

    return housing_csv()


def pipeline_for(kind: str, random_state: int) -> Pipeline:
    """Unfitted preprocessor + estimator of ``kind`` with default hyperparameters."""
    return build_pipeline(
        features.build_preprocessor(random_state=random_state),
        models.build_estimator(kind, random_state=random_state),
    )


@dataclass
class RunResult:
    protocol: str
    kind: str
    seed: int
    rmse: float
    mae: float
    r2: float
    fit_seconds: float


def evaluate(
    kind: str, train: pd.DataFrame, test: pd.DataFrame, model_seed: int, threads: int
) -> tuple[float, float, float, float]:
    """Fit on train, score on test, with at most ``threads`` OpenMP/BLAS threads.

    Returns (rmse, mae, r2, fit_seconds)."""
    # OpenMP pools (HGB) capped: on a shared 2-core box, 2 spinning threads run several
    # times slower than 1 whenever the other core is busy. LightGBM is 1-thread anyway.
    with threadpool_limits(limits=threads):
        _, metrics = fit_and_score(pipeline_for(kind, model_seed), train, test)
    return metrics["test_rmse"], metrics["test_mae"], metrics["test_r2"], metrics["fit_seconds"]


def protocol_runs(
    df: pd.DataFrame, protocol: str, seeds: int
) -> list[tuple[int, pd.DataFrame, pd.DataFrame, int]]:
    """(seed, train, test, model_seed) per repetition of a protocol."""
    if protocol == "default":
        runs = []
        for i in range(seeds):
            split_seed = config.DEFAULT_SPLIT_SEED + i
            train, test = split_data(df, config.DEFAULT_TEST_SIZE, split_seed, "income_stratified")
            runs.append((split_seed, train, test, models.DEFAULT_HYPERPARAMS["random_state"]))
        return runs
    if protocol == "tabr":
        train, test = split_data(df, 0.2, TABR_RANDOM_STATE, "random")
        base = models.DEFAULT_HYPERPARAMS["random_state"]
        return [(base + i, train, test, base + i) for i in range(seeds)]
    raise ValueError(f"unknown protocol {protocol!r}")


def single_row_latency_ms(df: pd.DataFrame, calls: int = 2000) -> dict[str, float]:
    """Wall median / p99 and CPU median (ms) of predicting ONE raw row with the default
    pipeline on one thread."""
    train, test = split_data(
        df, config.DEFAULT_TEST_SIZE, config.DEFAULT_SPLIT_SEED, "income_stratified"
    )
    x_cols = list(config.FEATURES)
    pipe = pipeline_for(models.DEFAULT_MODEL_KIND, models.DEFAULT_HYPERPARAMS["random_state"])
    pipe.fit(train[x_cols], train[config.TARGET].to_numpy())
    rows = [test[x_cols].iloc[[i]] for i in range(50)]  # realistic: a fresh 1-row frame
    wall, cpu = [], []
    with threadpool_limits(limits=1):
        for i in range(calls):
            row = rows[i % len(rows)]
            start_wall, start_cpu = time.perf_counter(), time.thread_time()
            pipe.predict(row)
            cpu.append(time.thread_time() - start_cpu)
            wall.append(time.perf_counter() - start_wall)
    # Wall time includes waiting for a core on a shared box; thread CPU time does not.
    wall_ms, cpu_ms = np.asarray(wall[100:]) * 1e3, np.asarray(cpu[100:]) * 1e3  # no warm-up
    return {
        "median_ms": float(np.median(wall_ms)),
        "p99_ms": float(np.percentile(wall_ms, 99)),
        "median_cpu_ms": float(np.median(cpu_ms)),
    }


def summarise(results: list[RunResult]) -> list[dict[str, Any]]:
    """Mean ± std of each metric per (protocol, kind)."""
    rows = []
    keys = sorted({(r.protocol, r.kind) for r in results}, key=lambda k: (k[0], k[1]))
    for protocol, kind in keys:
        group = [r for r in results if r.protocol == protocol and r.kind == kind]
        row: dict[str, Any] = {"protocol": protocol, "kind": kind, "n": len(group)}
        for metric in ("rmse", "mae", "r2", "fit_seconds"):
            values = [getattr(r, metric) for r in group]
            row[metric] = statistics.fmean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def format_row(row: dict[str, Any]) -> str:
    """One summary row as an aligned text line."""
    return (
        f"{row['protocol']:<8} {row['kind']:<14} n={row['n']}  "
        f"RMSE {row['rmse']:>9,.0f} ± {row['rmse_std']:>6,.0f}  "
        f"MAE {row['mae']:>9,.0f} ± {row['mae_std']:>6,.0f}  "
        f"R² {row['r2']:.4f} ± {row['r2_std']:.4f}  "
        f"fit {row['fit_seconds']:>6.1f}s ± {row['fit_seconds_std']:.1f}"
    )


def _log(message: str) -> None:
    print(message, flush=True)  # flush: runs are long, show progress as it happens


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=default_csv_path())
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--kinds", default=",".join(models.MODEL_KINDS))
    parser.add_argument("--protocols", default="default,tabr")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1, help="OpenMP/BLAS thread cap")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    df = pd.read_csv(args.csv)
    kinds = [k for k in args.kinds.split(",") if k]
    _log(f"default model: {models.DEFAULT_MODEL_KIND} {models.DEFAULT_HYPERPARAMS}")
    results: list[RunResult] = []
    for protocol in args.protocols.split(","):
        for seed, train, test, model_seed in protocol_runs(df, protocol, args.seeds):
            for kind in kinds:
                rmse, mae, r2, secs = evaluate(kind, train, test, model_seed, args.threads)
                results.append(RunResult(protocol, kind, seed, rmse, mae, r2, secs))
                _log(f"  {protocol} seed={seed} {kind}: RMSE {rmse:,.0f} R² {r2:.4f} {secs:.1f}s")
    summary = summarise(results)
    _log("\nsummary (mean ± std over seeds)")
    for row in summary:
        _log(format_row(row))
    _log("\nanchors: " + "; ".join(f"{k} ${v:,.0f}" for k, v in ANCHORS_RMSE.items()))
    latency = single_row_latency_ms(df)
    _log(
        f"single-row predict, default pipeline: median {latency['median_ms']:.3f} ms wall "
        f"(p99 {latency['p99_ms']:.3f} ms), median {latency['median_cpu_ms']:.3f} ms CPU"
    )
    if args.json:
        payload = {
            "default_model_kind": models.DEFAULT_MODEL_KIND,
            "default_hyperparams": models.DEFAULT_HYPERPARAMS,
            "runs": [asdict(r) for r in results],
            "summary": summary,
            "latency": latency,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
