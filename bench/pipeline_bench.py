"""Benchmark step reuse in ``main`` against a monolithic script doing the same work.

In a temp dir, on a fresh copy of the work tree without data/ (committed, so the tree is clean
and reuse is allowed) and a fresh SQLite store, it times:

* cold main       — ``mlflow run . -e main``: every step runs, data arrives via HOUSING_DATA_URL;
  no step server runs (TMPDIR is the bench's own), so the launcher starts one as it starts
* warm main       — the same command again: load_data/preprocess/train reused, register runs
* changed main    — ``-P random_state=7``: train and register rerun
* cold main, server up — every step runs (another copy, an empty store) while the step server
  started above is still up, as for a user's next pipeline within its idle time;
* each step's own duration (run end − run start) and how long main waited for it;
* process overhead: ``python -c "import mlflow, sklearn"`` and a standalone
  ``mlflow run . -e register`` (wall time vs its run's duration);
* the floor — ``mlflow run`` of a one-entry project (a git repo) whose command is only
  ``python -c "import mlflow"``: what any MLflow Projects step costs (median of 3);
* the cold monolith — ``python bench/monolith.py`` into its own fresh store: one script that
  reads the CSV, fits the same Pipeline, logs and registers it.

Targets, as ratios measured in the same run (numbers depend on the machine and its load,
reported with them; not a timed test):

* warm main (nothing changed) ≤ 1.25 × the floor;
* cold main ≤ 1.3 × the cold monolith (both cold mains are compared);
* main with only train's parameters changed ≤ train's own run + the floor + register's run.

    python bench/pipeline_bench.py [--json] [--keep]
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: make `steps` and `tests` importable
    sys.path.insert(0, str(PROJECT_ROOT))

from steps import config  # noqa: E402
from tests.support import copy_project, housing_csv, housing_tgz, latest_run  # noqa: E402

STEPS = ("load_data", "preprocess", "train", "register")
WARM_OVER_FLOOR_TARGET = 1.25
COLD_OVER_MONOLITH_TARGET = 1.3
FLOOR_COMMAND = "python -c 'import mlflow'"
FLOOR_REPEATS = 3
SUMMARY_ROW = re.compile(r"^(\w+)\s+([0-9a-f]{32})\s+(ran|reused)\s+([\d.]+)\b", re.MULTILINE)
IMPORT_PROBE = "import mlflow, sklearn"
MLFLOW_RUN = [sys.executable, "-m", "mlflow", "run"]
SERVER_UP = "cold, server up"


@dataclass
class StepTiming:
    step: str
    run_id: str
    reused: bool
    run_s: float | None  # the step run's end − start (None when reused: it did not run now)
    waited_s: float | None  # how long main spent on the step (its summary table)


@dataclass
class MainTiming:
    label: str
    wall_s: float
    cpu_s: float  # user + sys of the whole process tree: what the load of others cannot inflate
    steps: list[StepTiming] = field(default_factory=list)


@dataclass
class Timed:
    wall_s: float
    cpu_s: float
    stdout: str


# --- processes ----------------------------------------------------------------------------
def project_env(tracking_uri: str, data_url: str, tmp: Path) -> dict[str, str]:
    """The environment a user would run with: no inherited MLflow state, this venv first.

    TMPDIR inside the bench dir, so the scratch dirs `mlflow run` leaves behind go with it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return env | {
        "TMPDIR": str(tmp),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
        "HOUSING_DATA_URL": data_url,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
    }


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> Timed:
    """Run a command to completion: wall time, CPU time of its whole process tree, stdout.
    (The step server's workers are not in that tree: a main's CPU column counts the launcher
    and the processes it started, not the steps the server ran for them.)

    Fails loudly on a non-zero exit.
    """
    cpu, started = children_cpu(), time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - started, children_cpu() - cpu
    if result.returncode != 0:
        raise click.ClickException(
            f"{' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}"
        )
    return Timed(wall, cpu, result.stdout)


def mlflow_run(project: Path, env: dict[str, str], entry_point: str, *args: str) -> Timed:
    """`mlflow run . -e <entry_point> --env-manager local <args>` in the project copy."""
    return timed(
        [*MLFLOW_RUN, ".", "-e", entry_point, "--env-manager", "local", *args], project, env
    )


# --- reading the store --------------------------------------------------------------------
def run_seconds(run: Any) -> float | None:
    info = run.info
    return (info.end_time - info.start_time) / 1000 if info.end_time else None


def main_timing(label: str, run: Timed, client: Any) -> MainTiming:
    """Per-step timings of the latest main run: its tags, its summary table, the step runs."""
    parent = latest_run(client, "main")
    waited = {m.group(1): float(m.group(4)) for m in SUMMARY_ROW.finditer(run.stdout)}
    timing = MainTiming(label, run.wall_s, run.cpu_s)
    for step in STEPS:
        run_id = parent.data.tags[f"pipeline.{step}.run_id"]
        reused = parent.data.tags[f"pipeline.{step}.reused"] == "true"
        seconds = None if reused else run_seconds(client.get_run(run_id))
        timing.steps.append(StepTiming(step, run_id, reused, seconds, waited.get(step)))
    return timing


# --- measurements -------------------------------------------------------------------------
def import_seconds(env: dict[str, str], repeats: int = 3) -> dict[str, float]:
    """Best of ``repeats`` interpreter starts that import mlflow and sklearn (wall and CPU)."""
    probes = [
        timed([sys.executable, "-c", IMPORT_PROBE], PROJECT_ROOT, env) for _ in range(repeats)
    ]
    return {"wall_s": min(p.wall_s for p in probes), "cpu_s": min(p.cpu_s for p in probes)}


def standalone_register(project: Path, env: dict[str, str], client: Any) -> dict[str, float]:
    """`mlflow run . -e register` (upstream: latest train): wall time vs its run's duration."""
    run = mlflow_run(project, env, "register", "--experiment-name", config.EXPERIMENT_NAME)
    experiment = client.get_experiment_by_name(config.EXPERIMENT_NAME)
    registered = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{config.TAG_STEP}` = 'register'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    in_run = run_seconds(registered) or 0.0
    return {"wall_s": run.wall_s, "cpu_s": run.cpu_s, "run_s": in_run}


def floor(root: Path, env: dict[str, str]) -> dict[str, float]:
    """Median of FLOOR_REPEATS `mlflow run`s of an entry point that only imports mlflow.

    The project is a committed git repo like the real one (the launcher's git checks are
    part of every step's cost); runs go to the same store, in an experiment of their own.
    """
    project = root / "floor"
    project.mkdir()
    (project / "MLproject").write_text(
        f'name: floor\nentry_points:\n  main:\n    command: "{FLOOR_COMMAND}"\n'
    )
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "floor"]):
        subprocess.run([*git, *args], cwd=project, check=True, capture_output=True)
    runs = [
        mlflow_run(project, env, "main", "--experiment-name", "bench-floor")
        for _ in range(FLOOR_REPEATS)
    ]
    middle = FLOOR_REPEATS // 2
    return {
        "wall_s": sorted(r.wall_s for r in runs)[middle],
        "cpu_s": sorted(r.cpu_s for r in runs)[middle],
    }


def stop_step_server(env: dict[str, str]) -> None:
    """End the step server the runs started (it would otherwise outlive the benchmark)."""
    stop = [sys.executable, "-m", "steps.infra.forkserver", "stop"]
    subprocess.run(stop, cwd=PROJECT_ROOT, env=env, check=True)


def targets(mains: list[MainTiming], floor_s: float, mono_s: float) -> dict[str, Any]:
    """The three ratios the benchmark states, each with its limit and whether it is met
    (cold main twice: with no step server, and with one up)."""
    by_label = {m.label: m for m in mains}
    cold, warm, changed = by_label["cold"], by_label["warm"], by_label["random_state=7"]
    steps = {s.step: s for s in changed.steps}
    changed_limit = (steps["train"].run_s or 0.0) + floor_s + (steps["register"].run_s or 0.0)
    rows = {
        "warm_over_floor": (warm.wall_s / floor_s, WARM_OVER_FLOOR_TARGET),
        "cold_over_monolith": (cold.wall_s / mono_s, COLD_OVER_MONOLITH_TARGET),
        "cold_server_up_over_monolith": (
            by_label[SERVER_UP].wall_s / mono_s,
            COLD_OVER_MONOLITH_TARGET,
        ),
        "changed_over_train_floor_register": (changed.wall_s / changed_limit, 1.0),
    }
    return {
        name: {"ratio": ratio, "target": limit, "met": ratio <= limit}
        for name, (ratio, limit) in rows.items()
    }


def monolith(root: Path, csv: Path, env: dict[str, str]) -> dict[str, Any]:
    """Cold `python bench/monolith.py` into a store of its own."""
    store = root / "monolith"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    script = PROJECT_ROOT / "bench" / "monolith.py"
    run = timed(
        [sys.executable, str(script), "--tracking-uri", uri, "--csv", str(csv), "--json"],
        store,
        env | {"MLFLOW_TRACKING_URI": uri},
    )
    return {"wall_s": run.wall_s, "cpu_s": run.cpu_s, **json.loads(run.stdout)}


def benchmark(root: Path, csv: Path, data_url: str) -> dict[str, Any]:
    from mlflow import MlflowClient

    load_at_start = os.getloadavg()[0]
    project = copy_project(root / "project")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    (root / "tmp").mkdir()
    env = project_env(uri, data_url, root / "tmp")
    client = MlflowClient(uri)

    mains = []
    for label, args in (("cold", ()), ("warm", ()), ("random_state=7", ("-P", "random_state=7"))):
        click.echo(f"… main ({label})", err=True)
        mains.append(main_timing(label, mlflow_run(project, env, "main", *args), client))
    # Every step runs again (another work tree, an empty store), but the step server the runs
    # above started is still up, as it is for a user's next pipeline within its idle time.
    click.echo(f"… main ({SERVER_UP})", err=True)
    uri_up = f"sqlite:///{root / 'mlflow-server-up.db'}"
    env_up = env | {"MLFLOW_TRACKING_URI": uri_up}
    run_up = mlflow_run(copy_project(root / "project-server-up"), env_up, "main")
    mains.append(main_timing(SERVER_UP, run_up, MlflowClient(uri_up)))
    click.echo("… overhead probes", err=True)
    overhead = {
        "python_import_mlflow_sklearn": import_seconds(env),
        "standalone_register": standalone_register(project, env, client),
    }
    click.echo("… floor (an entry point that only imports mlflow)", err=True)
    overhead["floor"] = floor(root, env)
    click.echo("… monolith (cold)", err=True)
    mono = monolith(root, csv, env)
    stop_step_server(env)
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1m_at_start": load_at_start,
            "loadavg_1m_at_end": os.getloadavg()[0],
        },
        "main": [asdict(m) for m in mains],
        "overhead": overhead,
        "monolith": mono,
        "targets": targets(mains, overhead["floor"]["wall_s"], mono["wall_s"]),
    }


# --- output -------------------------------------------------------------------------------
TARGET_LABELS = {
    "warm_over_floor": "warm main / floor",
    "cold_over_monolith": "cold main / cold monolith",
    "cold_server_up_over_monolith": "cold main, step server up / cold monolith",
    "changed_over_train_floor_register": "random_state=7 main / (train + floor + register)",
}


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def wall_cpu(timing: dict[str, Any]) -> str:
    return f"{timing['wall_s']:6.1f} s wall {timing['cpu_s']:6.1f} s cpu"


def report(result: dict[str, Any]) -> str:
    """The human-readable table: per main run, wall/CPU and each step's run/waited seconds."""
    cell = 20
    lines = [
        f"{'main':<16}{'wall s':>8}{'cpu s':>8}  " + "".join(f"{s:>{cell}}" for s in STEPS),
        f"{'':<32}  " + "".join(f"{'run s / waited s':>{cell}}" for _ in STEPS),
    ]
    for m in result["main"]:
        cells = [
            "reused" if s["reused"] else f"{fmt(s['run_s'])} / {fmt(s['waited_s'])}"
            for s in m["steps"]
        ]
        lines.append(
            f"{m['label']:<16}{m['wall_s']:>8.1f}{m['cpu_s']:>8.1f}  "
            + "".join(f"{c:>{cell}}" for c in cells)
        )
    over, mono, machine = result["overhead"], result["monolith"], result["machine"]
    imp, reg = over["python_import_mlflow_sklearn"], over["standalone_register"]
    lines += [
        "",
        f"{'python -c ' + repr(IMPORT_PROBE):<38}{wall_cpu(imp)}",
        f"{'mlflow run . -e register (standalone)':<38}{wall_cpu(reg)}"
        f"  ({reg['run_s']:.1f} s between its run's start and end)",
        f"{'floor (mlflow run: import mlflow)':<38}{wall_cpu(over['floor'])}"
        f"  (median of {FLOOR_REPEATS})",
        f"{'monolith, cold':<38}{wall_cpu(mono)}  (test RMSE {mono['test_rmse']:,.0f})",
        "",
        *(
            f"{TARGET_LABELS[name]:<54}{t['ratio']:5.2f}  (target <= {t['target']}: "
            f"{'met' if t['met'] else 'NOT met'})"
            for name, t in result["targets"].items()
        ),
        f"{machine['cpus']} CPUs; 1-min load average "
        f"{machine['loadavg_1m_at_start']:.1f} at start, {machine['loadavg_1m_at_end']:.1f} at end",
    ]
    return "\n".join(lines)


@click.command(help="Time cold/warm/changed `main`, per-step costs and a monolithic baseline.")
@click.option(
    "--csv",
    "csv",
    type=click.Path(path_type=Path),
    default=None,
    help="The real CSV (default: data/housing.csv, fetched as make data does).",
)
@click.option(
    "--data-url",
    default=None,
    help="What load_data downloads (default: $HOUSING_DATA_URL, else the fetched data as .tgz).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--keep", is_flag=True, help="Keep the temp dir (project, stores) and print it.")
def cli(csv: Path | None, data_url: str | None, as_json: bool, keep: bool) -> None:
    csv = csv or housing_csv()
    url = data_url or os.environ.get(config.DATA_URL_ENV) or housing_tgz().as_uri()
    root = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    try:
        result = benchmark(root, csv, url)
    finally:
        if keep:
            click.echo(f"kept {root}", err=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    click.echo(json.dumps(result, indent=2) if as_json else report(result))


if __name__ == "__main__":
    cli()
