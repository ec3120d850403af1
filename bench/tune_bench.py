"""Tuning benchmark: the old random search against TPE with fold-by-fold pruning, same budget.

Usage (from the project root)::

    python bench/tune_bench.py [--csv PATH] [--trials 16] [--folds 3] [--seeds 2]

Both arms run tune's own trial loop (steps.ml.search: the search space, the folds, the reports;
steps.ml.study: the budget) on the default split's train rows, in an in-memory study:

* ``random``: Optuna's RandomSampler, no pruning (what tune did before: uniform draws from
  the same space, every fold of every trial);
* ``tpe+prune``: what tune runs now (TPE after TPE_STARTUP_TRIALS random trials, median
  pruning after PRUNER_STARTUP_TRIALS finished ones).

Printed per arm and seed: best CV RMSE, folds fitted, trials pruned, wall and CPU seconds;
then the means and the TPE/random ratios (measured in this run). CPU seconds are the steadier
figure on a shared machine: LightGBM fits on one thread, so wall time also counts waiting
for a core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # run as a script without installing the project

from steps import config, features, models, tune  # noqa: E402
from steps.ml import search, study  # noqa: E402
from steps.preprocess import split_data  # noqa: E402
from tests.support import housing_csv  # noqa: E402

ARMS = ("random", "tpe+prune")


@dataclass
class ArmResult:
    arm: str
    seed: int
    best_cv_rmse: float
    folds_fitted: int
    pruned: int
    wall_s: float
    cpu_s: float


def run_arm(arm: str, train: pd.DataFrame, n_trials: int, folds: int, seed: int) -> ArmResult:
    import optuna

    tpe = arm == "tpe+prune"
    the_study = optuna.create_study(
        direction="minimize",
        sampler=search.make_sampler(seed, tpe=tpe),
        pruner=search.make_pruner(enabled=tpe),
    )
    preprocessor = features.build_preprocessor()
    kind = models.DEFAULT_MODEL_KIND
    fitted = pruned = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while (trial := study.ask_within_budget(the_study, n_trials)) is not None:
        params = search.suggest_params(trial)
        scores = search.fold_rmses(train, preprocessor, kind, params, folds, seed)
        outcome = search.run_folds(trial, scores, folds)
        fitted += len(outcome.fold_rmses)
        pruned += outcome.pruned
        if outcome.pruned:
            the_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            the_study.tell(trial, outcome.mean)
    return ArmResult(
        arm,
        seed,
        the_study.best_value,
        fitted,
        pruned,
        time.perf_counter() - wall,
        time.process_time() - cpu,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--csv", type=Path, default=None, help="default: data/housing.csv, as make data fetches it"
    )
    parser.add_argument("--trials", type=int, default=16, help="budget per arm and seed")
    parser.add_argument("--folds", type=int, default=tune.DEFAULT_CV_FOLDS)
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..n-1 (sampler and folds)")
    args = parser.parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    df = pd.read_csv(args.csv or housing_csv())
    train, _ = split_data(
        df, config.DEFAULT_TEST_SIZE, config.DEFAULT_SPLIT_SEED, config.DEFAULT_SPLIT_STRATEGY
    )
    print(
        f"{len(train)} train rows, {args.trials} trials x {args.folds} folds per arm, "
        f"seeds 0..{args.seeds - 1}, model {models.DEFAULT_MODEL_KIND}"
    )
    print(
        f"{'arm':<10} {'seed':>4} {'best CV RMSE':>13} {'folds':>6} {'pruned':>6} "
        f"{'wall s':>7} {'CPU s':>7}"
    )
    results: list[ArmResult] = []
    for seed in range(args.seeds):
        for arm in ARMS:
            r = run_arm(arm, train, args.trials, args.folds, seed)
            results.append(r)
            print(
                f"{r.arm:<10} {r.seed:>4} {r.best_cv_rmse:>13,.0f} {r.folds_fitted:>6} "
                f"{r.pruned:>6} {r.wall_s:>7.1f} {r.cpu_s:>7.1f}",
                flush=True,
            )

    def mean(arm: str, field: str) -> float:
        return statistics.mean(getattr(r, field) for r in results if r.arm == arm)

    print("\nmeans over seeds:")
    for arm in ARMS:
        print(
            f"{arm:<10} best CV RMSE {mean(arm, 'best_cv_rmse'):>9,.0f}   "
            f"folds {mean(arm, 'folds_fitted'):5.1f}   wall {mean(arm, 'wall_s'):6.1f} s   "
            f"CPU {mean(arm, 'cpu_s'):6.1f} s"
        )
    base, new = ARMS
    print(
        f"tpe+prune / random: best CV RMSE "
        f"{mean(new, 'best_cv_rmse') - mean(base, 'best_cv_rmse'):+,.0f} $, "
        f"wall x{mean(new, 'wall_s') / mean(base, 'wall_s'):.2f}, "
        f"CPU x{mean(new, 'cpu_s') / mean(base, 'cpu_s'):.2f}, "
        f"folds x{mean(new, 'folds_fitted') / mean(base, 'folds_fitted'):.2f}"
    )


if __name__ == "__main__":
    main()
