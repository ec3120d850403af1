"""main's summary: one table row per step (reused or ran, seconds, key metric), the parent
run's description, and the error lines of a failed step's log. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steps import config


@dataclass
class StepResult:
    step: str
    run_id: str
    reused: bool
    seconds: float
    metric: str = ""


TABLE_HEADER = ("step", "run id", "status", "seconds", "key metric")
# Fixed widths, so rows can be printed one by one as the steps finish and still line up.
TABLE_WIDTHS = (10, 32, 6, 7)


def table_row(cells: tuple[str, ...]) -> str:
    padded = [c.ljust(w) for c, w in zip(cells, TABLE_WIDTHS, strict=False)]
    return "  ".join([*padded, *cells[len(TABLE_WIDTHS) :]]).rstrip()


def result_row(r: StepResult) -> str:
    return table_row(
        (r.step, r.run_id, "reused" if r.reused else "ran", f"{r.seconds:.1f}", r.metric)
    )


def summary_table(results: list[StepResult]) -> str:
    return "\n".join([table_row(TABLE_HEADER), *(result_row(r) for r in results)])


def run_description(results: list[StepResult], model: str) -> str:
    """The parent run's markdown description: what ran, what was reused, what it produced."""
    lines = [
        f"Pipeline run: **{model}**.",
        "",
        "| step | run | status | seconds | key figure |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.step} | `{r.run_id}` | {'reused' if r.reused else 'ran'} "
        f"| {r.seconds:.1f} | {r.metric} |"
        for r in results
    ]
    return "\n".join(lines) + "\n"


def error_lines(log: str, tail: int = 15) -> list[str]:
    """What to show of a failed step's output: its one-line errors, else the last lines."""
    lines = log.rstrip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    return errors or lines[-tail:]


def key_metric(step: str, run: Any) -> str:
    metrics, tags = run.data.metrics, run.data.tags
    if step == "load_data":
        return f"rows={metrics.get('n_rows', 0):,.0f}"
    if step == "preprocess":
        return f"train/test={metrics.get('n_train', 0):,.0f}/{metrics.get('n_test', 0):,.0f}"
    if step == "train":
        return f"test_rmse=${metrics.get('test_rmse', float('nan')):,.0f}"
    return f"v{tags.get(config.TAG_REGISTRY_VERSION)} @{tags.get(config.TAG_REGISTRY_ALIAS)}"
