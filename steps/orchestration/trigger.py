"""retrain's decision: whether a scheduled check has a reason to run main, and how.

In: what monitor said about the served traffic (a verdict, or none and why), the DVC md5 of
what the data source serves now, the md5 of the data the champion was trained on (none: no
champion), and whether the run was forced. Out: a ``Decision`` (the reasons, whether main
runs, whether load_data is told to accept drift) and the markdown retrain logs as its run's
description. Pure: no MLflow, no I/O.

Why drift plus new data means ``accept_drift``: the data contract fails a new data version
that drifted from the champion's data, which is right when nothing else moved (a broken
export looks just like that). When the served traffic drifted too, the new data shows the
same world the API already sees, so the shift is taken as real. New data without traffic
drift is still checked by the contract; traffic drift without new data retrains on the
same data (main reuses what did not change; the gate decides).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_FORCE = False
# monitor_run: "" runs monitor on the window, "latest" takes the latest finished monitor run
DEFAULT_MONITOR_RUN = ""
LATEST = "latest"
RUN = "retrain"
NOTHING_TO_DO = "nothing_to_do"


@dataclass(frozen=True)
class MonitorVerdict:
    """A monitor run's outcome: ``verdict`` ``ok``/``drift``, or None with ``problem`` saying
    why there is none (no run, too few rows, a failed run)."""

    run_id: str | None
    verdict: str | None
    drifted_features: tuple[str, ...] = ()
    problem: str = ""


@dataclass(frozen=True)
class Decision:
    reasons: tuple[str, ...]
    accept_drift: bool
    data_changed: bool

    @property
    def runs_main(self) -> bool:
        return bool(self.reasons)

    @property
    def label(self) -> str:
        return RUN if self.runs_main else NOTHING_TO_DO


def short_md5(md5: str | None) -> str:
    return md5[:8] if md5 else "none"


def decide(
    monitor: MonitorVerdict,
    source_md5: str,
    champion_md5: str | None,
    force: bool,
    accept_drift: bool = False,
) -> Decision:
    """The reasons to run main, in a fixed order (drift, data, forced); none: nothing to do.

    ``accept_drift`` (the caller's own) is kept; it is also turned on when the traffic
    drifted and the data changed (module docstring)."""
    reasons: list[str] = []
    drifted = monitor.verdict == "drift"
    if drifted:
        what = ", ".join(monitor.drifted_features) or "predictions"
        reasons.append(f"drift in {what}")
    data_changed = source_md5 != champion_md5
    if champion_md5 is None:
        reasons.append(f"no champion yet (source data {short_md5(source_md5)})")
    elif data_changed:
        reasons.append(
            f"data version changed: {short_md5(champion_md5)} -> {short_md5(source_md5)}"
        )
    if force:
        reasons.append("forced")
    return Decision(tuple(reasons), accept_drift or (drifted and data_changed), data_changed)


def run_name(decision: Decision, version: str | None = None, alias: str | None = None) -> str:
    """``retrain · nothing to do`` or ``retrain · <reasons> · v<N>@<alias>``."""
    if not decision.runs_main:
        return f"{RUN} · nothing to do"
    why = "; ".join(decision.reasons)
    name = f"{RUN} · {why[:80]}"
    return f"{name} · v{version}@{alias}" if version else name


def describe(
    decision: Decision,
    monitor: MonitorVerdict,
    source: str,
    source_md5: str,
    champion: str | None,
    champion_md5: str | None,
    outcome: dict[str, str] | None = None,
) -> str:
    """The retrain run's description (markdown): what was checked, why main ran or did not,
    and what main's gate decided (``outcome``: main's run id, registry version, alias,
    reason)."""
    verdict = monitor.verdict or f"no verdict ({monitor.problem or 'not judged'})"
    drifted = ", ".join(monitor.drifted_features) or "-"
    judged = f"v{champion}" if champion else "none"
    lines = [
        f"## Retrain: {'ran main' if decision.runs_main else 'nothing to do'}",
        "",
        "| check | value |",
        "| --- | --- |",
        f"| monitor run | {monitor.run_id or '-'} |",
        f"| traffic verdict | {verdict} (drifted: {drifted}) |",
        f"| data source | {source} |",
        f"| source data md5 | {source_md5} |",
        f"| champion | {judged} (data md5 {champion_md5 or '-'}) |",
        f"| load_data accept_drift | {str(decision.accept_drift).lower()} |",
        "",
        "Reasons: " + ("; ".join(decision.reasons) if decision.reasons else "none"),
    ]
    if outcome:
        lines += [
            "",
            f"main run {outcome.get('main_run_id', '-')}: version "
            f"v{outcome.get('version', '?')} → @{outcome.get('alias', '?')}",
            "",
            f"Gate: {outcome.get('reason') or '-'}",
        ]
    return "\n".join(lines) + "\n"
