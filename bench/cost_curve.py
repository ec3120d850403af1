"""The pipeline's cost curve: wall time and peak memory per step as the data grows.

For each scale (default ×1, ×4, ×16, ×64 the rows of housing.csv, up to ~1.3M rows) it
resamples the real CSV with small jitter (``tests.support.resample_housing``) into a temp
dir, makes that table a new data version of a fresh copy of the work tree (write data/,
`dvc add data`, commit data.dvc — what a user does), removes data/ and the DVC cache so
load_data has to fetch it from ``source_url=file://…``, and then, in a fresh SQLite store:

* ``mlflow run . -e main`` once (optional, ``--no-main``): the pipeline as users run it;
  per step, how long main spent on it (its summary table), and the largest peak RSS of any
  of its processes — not per step: the steps run as forks of main's fork server, and a
  fork's resident set counts the pages it shares with it;
* each entry point on its own, ``mlflow run . -e <step>`` in pipeline order (data/ and the
  cache removed again before load_data): per step, its run's duration in the store (end −
  start: interpreter start, imports and all its work, as ``mlflow run`` starts the run
  before the step's process), the CPU seconds of the whole command (``os.wait4``: user +
  sys of the launcher and the step, which other users' load inflates far less than wall
  time) and the peak RSS of the step's own process: its ``VmHWM`` in /proc (the kernel's
  high-water mark of that process's resident set), read every ``POLL_S`` until it exits, so
  only growth in its last ``POLL_S`` could be missed. Not ``ru_maxrss`` from ``wait4``: a
  process starts out with the high-water mark of the process that spawned it (exec keeps
  it), so it would report this bench's own RSS whenever that is larger.

It prints, per scale, rows and per step run seconds / CPU seconds / peak MiB, and the growth
exponent of each step's run and CPU seconds between consecutive scales, log(t2/t1) /
log(n2/n1): 1 is linear; a constant start-up cost pulls it below 1 at small scales
(docs/scaling.md, "The pipeline's cost curve", has the numbers and what they mean). Not a
timed test: the numbers depend on the machine and its load (the 1-minute load average is
printed with them).

    python bench/cost_curve.py [--scales 1,4,16,64] [--no-main] [--json] [--keep]
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: make `steps` and `tests` importable
    sys.path.insert(0, str(PROJECT_ROOT))

import pandas as pd  # noqa: E402

from steps import config  # noqa: E402
from steps.data import schema  # noqa: E402
from tests.support import (  # noqa: E402
    copy_project,
    housing_csv,
    latest_run,
    mlflow_run_local,
    new_data_version,
    project_env,
    resample_housing,
)

STEPS = ("load_data", "preprocess", "train", "register")
DEFAULT_SCALES = "1,4,16,64"
POLL_S = 0.25
# main's summary table: "<step>  <run id>  ran|reused  <seconds> …"
SUMMARY_ROW = r"^(\w+)\s+([0-9a-f]{32})\s+(ran|reused)\s+([\d.]+)\b"


@dataclass
class Process:
    wall_s: float
    cpu_s: float  # user + sys of the whole tree: what other users' load inflates least
    sampled_mib: dict[str, float]  # per kind of process seen in /proc: its own peak (VmHWM)


@dataclass
class StepCost:
    step: str
    run_s: float  # the step's run in the store: end − start
    wall_s: float  # the whole `mlflow run` command
    cpu_s: float  # its user + sys CPU seconds, launcher included
    peak_mib: float | None  # VmHWM of the `python -m steps.<step>` process
    launcher_mib: float | None  # VmHWM of the `mlflow run` launcher


@dataclass
class Scale:
    factor: float
    rows: int
    csv_mib: float
    steps: list[StepCost] = field(default_factory=list)
    main_wall_s: float | None = None
    main_peak_mib: float | None = None  # largest VmHWM of any of its processes
    main_waited_s: dict[str, float] = field(default_factory=dict)
    loadavg: list[float] = field(default_factory=list)  # 1-min load before, after


# --- processes ----------------------------------------------------------------------------
def vm_hwm_mib(pid: int) -> float | None:
    """A live process's own peak resident set so far (/proc/<pid>/status VmHWM)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def label(pid: int, root: int) -> str:
    """``launcher``, ``step`` (a ``python -m steps.<x>`` process) or the program's name."""
    if pid == root:
        return "launcher"
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    if any(arg.startswith(b"steps.") for arg in argv):
        return "step"
    return Path(argv[0].decode(errors="replace")).name or "?"


def measured(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> Process:
    """Run a command to completion: wall time, the tree's CPU time, per-process peaks.

    Output goes to ``log``; a non-zero exit fails the bench with the log's tail.
    """
    seen: dict[str, float] = {}
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        while True:
            # reaped here, not by Popen: wait4 hands back the tree's CPU time
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            for child in [proc.pid, *descendants(proc.pid)]:
                mib = vm_hwm_mib(child)
                if mib is not None:
                    name = label(child, proc.pid)
                    seen[name] = max(seen.get(name, 0.0), mib)
            time.sleep(POLL_S)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise click.ClickException(f"{' '.join(args)} exited {proc.returncode}:\n{tail}")
    return Process(wall, usage.ru_utime + usage.ru_stime, seen)


# --- one scale ----------------------------------------------------------------------------
def drop_local_copies(project: Path) -> None:
    """No data/ and no DVC cache: load_data must fetch the version from its source URL."""
    shutil.rmtree(project / config.DATA_DIR_NAME, ignore_errors=True)
    shutil.rmtree(project / ".dvc" / "cache", ignore_errors=True)


def run_scale(root: Path, real: pd.DataFrame, factor: float, seed: int, main: bool) -> Scale:
    from mlflow import MlflowClient

    here = root / f"x{factor:g}"
    (here / "tmp").mkdir(parents=True)
    table = resample_housing(real, factor, seed=seed)
    csv = here / config.RAW_FILE_NAME
    table.to_csv(csv, index=False)
    scale = Scale(factor, len(table), csv.stat().st_size / 2**20, loadavg=[os.getloadavg()[0]])
    del table

    project = copy_project(here / "project")
    new_data_version(project, csv.read_bytes(), f"resampled ×{factor:g}")
    uri = f"sqlite:///{(here / 'mlflow.db').resolve()}"
    # TMPDIR inside the scale's dir, so the scratch dirs `mlflow run` leaves go with it.
    env = project_env(uri, TMPDIR=str(here / "tmp"), **{config.DATA_URL_ENV: csv.as_uri()})
    experiment = ["--experiment-name", config.EXPERIMENT_NAME]
    source = ["-P", f"source_url={csv.as_uri()}"]
    client = MlflowClient(uri)

    if main:
        drop_local_copies(project)
        click.echo(f"… ×{factor:g} ({scale.rows:,} rows): main", err=True)
        log = here / "main.log"
        run = measured(mlflow_run_local("main", *experiment, *source), project, env, log)
        scale.main_wall_s, scale.main_peak_mib = (
            run.wall_s,
            max(run.sampled_mib.values(), default=None),
        )
        scale.main_waited_s = parse_summary(log.read_text(errors="replace"))

    for step in STEPS:
        click.echo(f"… ×{factor:g} ({scale.rows:,} rows): {step}", err=True)
        args = [*experiment]
        if step == "load_data":
            drop_local_copies(project)
            args += source
        run = measured(mlflow_run_local(step, *args), project, env, here / f"{step}.log")
        info = latest_run(client, step).info
        scale.steps.append(
            StepCost(
                step,
                (info.end_time - info.start_time) / 1000,
                run.wall_s,
                run.cpu_s,
                run.sampled_mib.get("step"),
                run.sampled_mib.get("launcher"),
            )
        )
    scale.loadavg.append(os.getloadavg()[0])
    return scale


def parse_summary(output: str) -> dict[str, float]:
    import re

    return {m.group(1): float(m.group(4)) for m in re.finditer(SUMMARY_ROW, output, re.M)}


# --- output -------------------------------------------------------------------------------
def exponent(a: float, b: float, n_a: int, n_b: int) -> float:
    """Growth exponent between two scales: log(b/a) / log(n_b/n_a)."""
    return math.log(b / a) / math.log(n_b / n_a)


def tag(factor: float) -> str:
    return f"×{factor:g}"


def report(scales: list[Scale]) -> str:
    """Per scale: rows and each step's run seconds, CPU seconds, peak MiB; then exponents."""
    w = 22
    lines = [
        f"{'scale':>6}{'rows':>11}{'csv MiB':>9}" + "".join(f"{s:>{w}}" for s in STEPS),
        f"{'':>26}" + "".join(f"{'run s / cpu s / MiB':>{w}}" for _ in STEPS),
    ]
    for sc in scales:
        cells = [f"{c.run_s:.1f} / {c.cpu_s:.1f} / {fmt(c.peak_mib)}" for c in sc.steps]
        lines.append(
            f"{tag(sc.factor):>6}{sc.rows:>11,}{sc.csv_mib:>9.1f}"
            + "".join(f"{c:>{w}}" for c in cells)
        )
    lines += ["", "growth exponent, log(t2/t1) / log(n2/n1) (1 = linear): run s / cpu s"]
    for a, b in itertools.pairwise(scales):
        cells = [
            f"{exponent(x.run_s, y.run_s, a.rows, b.rows):.2f} / "
            f"{exponent(x.cpu_s, y.cpu_s, a.rows, b.rows):.2f}"
            for x, y in zip(a.steps, b.steps, strict=True)
        ]
        lines.append(
            f"{tag(a.factor) + '→' + tag(b.factor):>26}" + "".join(f"{c:>{w}}" for c in cells)
        )
    lines += ["", "peak RSS of the mlflow run launcher (MiB), beside the step's"]
    for sc in scales:
        cells = [fmt(c.launcher_mib) for c in sc.steps]
        lines.append(f"{tag(sc.factor):>26}" + "".join(f"{c:>{w}}" for c in cells))
    if any(sc.main_wall_s is not None for sc in scales):
        lines += ["", "mlflow run . -e main: seconds main spent on each step; wall s, peak MiB"]
        for sc in scales:
            cells = [fmt(sc.main_waited_s.get(s)) for s in STEPS]
            lines.append(
                f"{tag(sc.factor):>26}"
                + "".join(f"{c:>{w}}" for c in cells)
                + f"{fmt(sc.main_wall_s):>10} s{fmt(sc.main_peak_mib):>7} MiB"
            )
    lines += [
        "",
        f"{os.cpu_count()} CPUs; 1-min load average per scale (before → after): "
        + ", ".join(f"{tag(sc.factor)} {sc.loadavg[0]:.1f}→{sc.loadavg[-1]:.1f}" for sc in scales),
    ]
    return "\n".join(lines)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


@click.command(help="Per-step wall time and peak memory of the pipeline on resampled data.")
@click.option("--scales", default=DEFAULT_SCALES, show_default=True, help="Row multipliers.")
@click.option("--seed", default=0, show_default=True, help="Resampling seed.")
@click.option("--main/--no-main", "with_main", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--keep", is_flag=True, help="Keep the temp dir (data, projects, stores, logs).")
def cli(scales: str, seed: int, with_main: bool, as_json: bool, keep: bool) -> None:
    factors = [float(f) for f in scales.split(",")]
    real = schema.validate_raw(pd.read_csv(housing_csv()))
    root = Path(tempfile.mkdtemp(prefix="cost-curve-"))
    done: list[Scale] = []
    try:
        for factor in factors:
            done.append(run_scale(root, real, factor, seed, with_main))
            if not keep:  # a ×64 scale leaves ~1 GB of copies behind
                shutil.rmtree(root / f"x{factor:g}", ignore_errors=True)
            click.echo(report(done), err=True)  # so far, in case a larger scale fails
    finally:
        if keep:
            click.echo(f"kept {root}", err=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    click.echo(json.dumps([asdict(s) for s in done], indent=2) if as_json else report(done))


if __name__ == "__main__":
    cli()
