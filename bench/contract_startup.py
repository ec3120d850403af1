"""What the data contract's libraries add to load_data's start-up (each step is a process).

Prints, for each import set, the median wall and CPU (user+sys) seconds of
``python -c "import ..."`` over N fresh processes, and the difference to the baseline (what
load_data imports anyway: the step module, mlflow's dataset API and DVC). CPU time is the
steadier number on a shared machine. Run: ``.venv/bin/python bench/contract_startup.py [N]``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# steps.load_data imports steps.data.contract, which imports only numpy/pandas at module level:
# pandera and matplotlib are imported when the contract runs, and counted here.
BASE = "steps.load_data, mlflow, mlflow.data.pandas_dataset, dvc.repo"
SETS = {
    "baseline (load_data's imports)": BASE,
    "+ pandera.pandas": f"{BASE}, pandera.pandas",
    "+ scipy.stats": f"{BASE}, scipy.stats",
    "+ matplotlib.figure": f"{BASE}, matplotlib.figure",
    "+ matplotlib.pyplot": f"{BASE}, matplotlib.pyplot",
    "+ pandera + matplotlib.figure": f"{BASE}, pandera.pandas, matplotlib.figure",
}


BASELINE = next(iter(SETS))


def measure(modules: str) -> tuple[float, float]:
    started = time.perf_counter()
    before = os.times()
    subprocess.run([sys.executable, "-c", f"import {modules}"], check=True, cwd=PROJECT_ROOT)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return time.perf_counter() - started, cpu


def main(n: int) -> None:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in SETS}
    for _ in range(n):  # interleaved, so load changes hit every set alike
        for name, modules in SETS.items():
            results[name].append(measure(modules))
    base_wall = statistics.median(w for w, _ in results[BASELINE])
    base_cpu = statistics.median(c for _, c in results[BASELINE])
    print(f"{'imports':32} {'wall s':>7} {'cpu s':>7} {'+wall':>7} {'+cpu':>7}  (median of {n})")
    for name, rows in results.items():
        wall = statistics.median(w for w, _ in rows)
        cpu = statistics.median(c for _, c in rows)
        print(f"{name:32} {wall:7.2f} {cpu:7.2f} {wall - base_wall:+7.2f} {cpu - base_cpu:+7.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
