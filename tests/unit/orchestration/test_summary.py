"""main's summary table and failed-step lines (steps.orchestration.summary)."""

from __future__ import annotations

from steps.orchestration.summary import (
    TABLE_HEADER,
    StepResult,
    error_lines,
    result_row,
    summary_table,
    table_row,
)


def test_rows_line_up_when_printed_one_by_one():
    rows = [
        table_row(TABLE_HEADER),
        result_row(StepResult("load_data", "a" * 32, True, 0.1, "rows=10")),
        result_row(StepResult("register", "b" * 32, False, 12.3, "v2 @challenger")),
    ]
    starts = {
        row.index(word) for row, word in zip(rows, ("key metric", "rows=", "v2"), strict=True)
    }
    assert len(starts) == 1


def test_failed_step_shows_its_error_lines_else_its_tail():
    log = "INFO noise\nerror: train: upstream run x not found\nmore\n"
    assert error_lines(log) == ["error: train: upstream run x not found"]
    tail = "\n".join(f"line {i}" for i in range(40))
    assert error_lines(tail, tail=3) == ["line 37", "line 38", "line 39"]


def test_summary_table_lists_each_step():
    table = summary_table(
        [
            StepResult("load_data", "r1", True, 0.1, "rows=10"),
            StepResult("train", "r2", False, 12.3, "test_rmse=1"),
        ]
    )
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["step", "run", "id"]
    assert "reused" in lines[1] and "ran" in lines[2] and "12.3" in lines[2]
