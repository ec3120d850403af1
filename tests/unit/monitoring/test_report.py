"""monitor's report (steps.monitoring.report): the champion-vs-challenger section."""

from __future__ import annotations

import pandas as pd

from steps.monitoring import live, report
from steps.monitoring.drift import Judgement
from tests.unit.monitoring.test_live import shadow_rows


def test_report_puts_the_shadow_beside_the_answers_on_the_same_rows():
    rows = shadow_rows()
    judged = Judgement(rows=len(rows), features={}, predictions={})
    shadow = live.shadow_comparison(rows)
    text = report.markdown(judged, live.accuracy(rows), "w", "ref", "1", None, None, shadow)
    section = text.split("## Champion vs challenger (shadow, same rows)")[1]
    line = next(ln for ln in section.splitlines() if ln.startswith("| v2 "))
    assert line == "| v2 | v1 | 4 | $12 | 3 | $14 | $13 | $13 | $10 |"
    plain = report.markdown(judged, live.accuracy(rows), "w", "ref", "1", None, None, None)
    assert "Champion vs challenger" not in plain
    empty = live.shadow_comparison(rows.assign(shadow_prediction=float("nan")))
    assert isinstance(empty, pd.DataFrame)
    assert "Champion vs challenger" not in report.markdown(
        judged, live.accuracy(rows), "w", "ref", "1", None, None, empty
    )
