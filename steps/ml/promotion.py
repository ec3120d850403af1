"""register's rules around the gate: pure functions, no MLflow, no file I/O.

In: the gate's thresholds as register's options give them, a gate result (``GateResult``:
the champion it was gated against, the scores, the verdict), the version number and the
settled ``@champion``. Out: checked ``Thresholds``, the version's ``gate.*`` tags and
markdown description (as text: ``steps.tracking.versions`` writes them), the alias the
version ends up with and why (``AliasDecision``), and the register run's ``registry.*`` tags
and description (``register`` sets them). Nothing is written here.
"""

from __future__ import annotations

from dataclasses import dataclass

from steps import config
from steps.infra.errors import StepError
from steps.ml.gate import Scores, Thresholds, Verdict

NO_ALIAS = "none"


@dataclass(frozen=True)
class GateResult:
    champion: int | None
    scores: Scores
    verdict: Verdict


@dataclass(frozen=True)
class AliasDecision:
    alias: str  # the alias the version holds once settled (or NO_ALIAS)
    reason: str  # why, for the run's tag and the log line
    set_challenger: bool  # register points @challenger at the version itself


def check_thresholds(
    min_improvement_abs: float,
    min_improvement_rel: float,
    baseline_min_improvement_rel: float,
    min_gate_rows: int,
) -> Thresholds:
    if min_improvement_abs < 0 or not 0 <= min_improvement_rel < 1:
        raise StepError("min_improvement_abs must be >= 0 and min_improvement_rel in [0, 1)")
    if not 0 <= baseline_min_improvement_rel < 1 or min_gate_rows < 1:
        raise StepError("baseline_min_improvement_rel must be in [0, 1) and min_gate_rows >= 1")
    return Thresholds(
        min_improvement_abs, min_improvement_rel, baseline_min_improvement_rel, min_gate_rows
    )


def for_version(result: GateResult, version: int) -> GateResult:
    """The result with the version number filled into its reason (decided before it existed)."""
    reason = result.verdict.reason.replace("<this version>", str(version))
    return GateResult(result.champion, result.scores, Verdict(result.verdict.outcome, reason))


# --- the version's gate summary ---------------------------------------------------------------
def summary_tags(result: GateResult, limits: Thresholds) -> dict[str, str]:
    """The gate's summary as version tags (``gate.*``)."""
    s = result.scores
    p = config.VERSION_TAG_GATE_PREFIX

    def money(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    return {
        f"{p}verdict": result.verdict.outcome,
        f"{p}reason": result.verdict.reason,
        f"{p}champion_version": "" if result.champion is None else str(result.champion),
        f"{p}rows": str(s.rows),
        f"{p}candidate_rmse": money(s.candidate),
        f"{p}champion_rmse": money(s.champion),
        f"{p}baseline_rmse": money(s.baseline),
        f"{p}thresholds": (
            f"min_abs={limits.min_abs:g} min_rel={limits.min_rel:g} "
            f"baseline_min_rel={limits.baseline_min_rel:g} min_rows={limits.min_rows}"
        ),
    }


def summary_markdown(
    model_name: str, version: int, result: GateResult, limits: Thresholds, alias: str
) -> str:
    s = result.scores

    def money(value: float | None) -> str:
        return "—" if value is None else f"${value:,.0f}"

    champion = "none" if result.champion is None else f"v{result.champion}"
    return "\n".join(
        [
            f"**{model_name} v{version} → @{alias}** ({result.verdict.outcome})",
            "",
            result.verdict.reason,
            "",
            f"Scored on {s.rows} rows that neither this version nor the champion "
            f"({champion}) was trained on:",
            "",
            "| model | RMSE |",
            "|---|---|",
            f"| candidate v{version} | {money(s.candidate)} |",
            f"| champion {champion} | {money(s.champion)} |",
            f"| linear baseline | {money(s.baseline)} |",
            "",
            f"Thresholds: beat the champion by ≥ ${limits.min_abs:,.0f} and ≥ "
            f"{limits.min_rel:.1%}; beat the baseline by ≥ {limits.baseline_min_rel:.0%}; "
            f"≥ {limits.min_rows} comparable rows.",
        ]
    )


# --- the alias decision -----------------------------------------------------------------------
def decide_alias(
    version: int,
    champion: int | None,
    verdict: Verdict,
    reused: bool,
    current_aliases: tuple[str, ...] = (),
) -> AliasDecision:
    """The alias a version ends up with once the registry settled (``champion``: the
    settled @champion), and the reason to record. A new version that did not win becomes
    @challenger; a reused version keeps whatever alias it has (``current_aliases``), since
    @challenger may have moved on. A settled champion that disagrees with the gate's verdict
    (another registration or a manual promotion decided meanwhile) is said so."""
    won = champion == version
    if won:
        alias = config.CHAMPION_ALIAS
    elif reused:
        alias = config.CHALLENGER_ALIAS if config.CHALLENGER_ALIAS in current_aliases else NO_ALIAS
    else:
        alias = config.CHALLENGER_ALIAS
    reason = verdict.reason
    if reused:
        reason = f"already registered; its gate said: {reason}"
    if won != verdict.promote:
        reason += f" (settled: champion is v{champion})"
    return AliasDecision(alias, reason, set_challenger=not won and not reused)


# --- register's own run -----------------------------------------------------------------------
def run_tags(
    version: int,
    decision: AliasDecision,
    result: GateResult,
    reused: bool,
    champion: int | None,
    before: int | None,
) -> dict[str, str]:
    """What register did, as its run's ``registry.*`` tags; ``champion_from``/``_to`` only
    when the settled ``champion`` is not the one there was ``before``."""
    tags = {
        config.TAG_REGISTRY_VERSION: str(version),
        config.TAG_REGISTRY_ALIAS: decision.alias,
        config.TAG_REGISTRY_VERDICT: result.verdict.outcome,
        config.TAG_REGISTRY_REASON: decision.reason,
        config.TAG_REGISTRY_REUSED_VERSION: str(reused).lower(),
    }
    if champion is not None and champion != before:
        tags[config.TAG_CHAMPION_FROM] = "" if before is None else str(before)
        tags[config.TAG_CHAMPION_TO] = str(champion)
    return tags


def run_note(summary: str, version: int, reused: bool, train_run_id: str) -> str:
    """register's run description: the version's gate summary, said to be a reuse if it is."""
    if not reused:
        return summary
    return (
        f"Train run `{train_run_id}` was already v{version}: reused, not registered again.\n\n"
        + summary
    )
