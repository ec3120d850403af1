"""The data contract: rules on a whole raw table and on how it changed since a reference.

In: a raw table that already passed ``schema.validate_raw`` (column by column), optionally
the profile of a reference version, and the rules declared in ``steps/data/schema.py``
(``TABLE_RULES``, ``DRIFT_RULES``). Out (``check`` → ``Result``): a compact, JSON-ready
**profile** of the table (row count; per column missing rate, summary statistics, its
deciles and the shares of rows between them, a histogram; category shares), the drift
statistics, and ``Finding``s — each a rule, a column, a statistic and the threshold it
broke, ``fail`` or ``warn`` — sorted into a ``Verdict``. Also the data report: markdown and
an overlay-histogram figure.

Comparisons need only the reference's profile, never its rows: load_data logs the profile
of every version it loads, so the next version is compared without downloading the old CSV.

Statistics are numpy: the population stability index (PSI) over the reference's deciles is
a few lines, and scipy.stats would add ~1.4 s of CPU to load_data's start-up
(bench/contract_startup.py). The absolute table rules are a pandera schema validated lazily,
so every broken rule is reported, not only the first. Nothing here logs, reads or writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from steps import config
from steps.data import schema

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PROFILE_FORMAT = 1
PSI_QUANTILES = np.linspace(0.1, 0.9, 9)  # decile edges of the reference
PSI_FLOOR = 1e-4  # share given to an empty bin, so PSI stays finite
HIST_BINS = 40
Severity = Literal["fail", "warn"]


@dataclass(frozen=True)
class Finding:
    """One broken rule. ``kind`` is ``table`` (absolute) or ``drift`` (vs the reference)."""

    rule: str
    kind: Literal["table", "drift"]
    severity: Severity
    statistic: float
    threshold: float
    detail: str
    column: str | None = None
    accepted: bool = False  # a drift failure the user accepted (accept_drift): reported only

    @property
    def message(self) -> str:
        where = f", column {self.column!r}" if self.column else ""
        return f"rule {self.rule}{where}: {self.detail}"


@dataclass
class Verdict:
    """Findings sorted into what stops the load and what is only reported."""

    failures: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    def error_line(self) -> str:
        """The one line load_data fails with (requires at least one failure)."""
        first = self.failures[0]
        line = f"data contract: {first.message}"
        if len(self.failures) > 1:
            line += f" (and {len(self.failures) - 1} more failure(s): see {REPORT_PATH})"
        if any(f.kind == "drift" for f in self.failures):
            line += "; pass accept_drift=true if the change is deliberate"
        return line


DRIFT_RULE_NAMES = (
    "row_count_drop",
    "row_count_growth",
    "feature_psi",
    "target_psi",
    "missing_rate_change",
)
# The order findings are reported in: the most basic problem first (three rows also make
# every column look shifted; the one line should say "too few rows").
RULE_ORDER = ("min_rows", "duplicate_rows", "near_constant", *DRIFT_RULE_NAMES)
REPORT_DIR = "data_report"
REPORT_PATH = f"{REPORT_DIR}/report.md"
PROFILE_PATH = f"{REPORT_DIR}/profile.json"
HISTOGRAMS_PATH = f"{REPORT_DIR}/histograms.png"


# --- profile ------------------------------------------------------------------------------
def _numeric_profile(values: pd.Series) -> dict[str, Any]:
    present = values.dropna().to_numpy(dtype=np.float64)
    out: dict[str, Any] = {"kind": "numeric", "missing_rate": float(values.isna().mean())}
    if not len(present):
        return out | {"psi_edges": [], "psi_shares": [1.0], "hist_edges": [], "hist_shares": []}
    edges = np.unique(np.quantile(present, PSI_QUANTILES))
    lo, hi = float(present.min()), float(present.max())
    hist_edges = np.linspace(lo, hi if hi > lo else lo + 1.0, HIST_BINS + 1)
    hist, _ = np.histogram(present, bins=hist_edges)
    return out | {
        "mean": float(present.mean()),
        "std": float(present.std()),
        "min": lo,
        "p50": float(np.median(present)),
        "max": hi,
        "psi_edges": edges.tolist(),
        "psi_shares": shares_between(present, edges).tolist(),
        "hist_edges": hist_edges.tolist(),
        "hist_shares": (hist / len(present)).tolist(),
    }


def _categorical_profile(values: pd.Series) -> dict[str, Any]:
    shares = values.dropna().astype(str).value_counts(normalize=True)
    return {
        "kind": "categorical",
        "missing_rate": float(values.isna().mean()),
        "shares": {str(k): float(v) for k, v in shares.sort_index().items()},
    }


def profile(df: pd.DataFrame, names: Sequence[str] = config.RAW_COLUMNS) -> dict[str, Any]:
    """The table's profile: everything a later version is compared against (JSON-ready);
    ``names``: the columns profiled (the monitor's windows have no target)."""
    columns: dict[str, Any] = {}
    for name in names:
        if name == config.CATEGORICAL_FEATURE:
            columns[name] = _categorical_profile(df[name])
        else:
            columns[name] = _numeric_profile(df[name])
    return {"format": PROFILE_FORMAT, "n_rows": len(df), "columns": columns}


def shares_between(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each of the len(edges)+1 bins the (inner) edges make."""
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(len(values), 1)


def psi(reference: np.ndarray, new: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    ref = np.maximum(np.asarray(reference, dtype=np.float64), PSI_FLOOR)
    cur = np.maximum(np.asarray(new, dtype=np.float64), PSI_FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


# --- absolute table rules -------------------------------------------------------------------
def duplicate_fraction(df: pd.DataFrame) -> float:
    return float(df.duplicated().mean()) if len(df) else 0.0


def top_value_share(values: pd.Series) -> float:
    counts = values.value_counts(normalize=True, dropna=False)
    return float(counts.iloc[0]) if len(counts) else 0.0


def constant_candidates() -> tuple[str, ...]:
    """Non-nullable features: a (nearly) constant one carries no information."""
    nullable = {c.name for c in schema.NUMERIC_COLUMNS if c.nullable}
    return tuple(c for c in config.FEATURES if c not in nullable)


def table_findings(
    df: pd.DataFrame, rules: schema.TableRules = schema.TABLE_RULES
) -> list[Finding]:
    """Every absolute rule the table breaks (pandera, lazy: all of them, not the first)."""
    import pandera.pandas as pa

    checks = {
        "min_rows": pa.Check(lambda d: len(d) >= rules.min_rows, name="min_rows"),
        "duplicate_rows": pa.Check(
            lambda d: duplicate_fraction(d) <= rules.max_duplicate_fraction,
            name="duplicate_rows",
        ),
    }
    near_constant = pa.Check(
        lambda s: top_value_share(s) <= rules.max_top_value_share, name="near_constant"
    )
    table = pa.DataFrameSchema(
        {c: pa.Column(nullable=True, checks=near_constant) for c in constant_candidates()},
        checks=list(checks.values()),
    )
    try:
        table.validate(df, lazy=True)
    except pa.errors.SchemaErrors as exc:
        broken = exc.failure_cases[["check", "column"]].drop_duplicates()
        return [_table_finding(df, rules, row.check, row.column) for row in broken.itertuples()]
    return []


def _table_finding(df: pd.DataFrame, rules: schema.TableRules, check: str, column: Any) -> Finding:
    if check == "min_rows":
        n = len(df)
        return Finding(
            "min_rows", "table", "fail", n, rules.min_rows, f"{n} rows < {rules.min_rows}"
        )
    if check == "duplicate_rows":
        share = duplicate_fraction(df)
        return Finding(
            "duplicate_rows",
            "table",
            "fail",
            share,
            rules.max_duplicate_fraction,
            f"{share:.1%} of rows are exact duplicates of another row "
            f"> {rules.max_duplicate_fraction:.1%}",
        )
    share = top_value_share(df[column])
    value = df[column].value_counts(dropna=False).index[0]
    value = value.item() if isinstance(value, np.generic) else value  # 52.0, not np.float64
    return Finding(
        "near_constant",
        "table",
        "fail",
        share,
        rules.max_top_value_share,
        f"one value ({value!r}) fills {share:.1%} of rows > {rules.max_top_value_share:.0%}",
        column=str(column),
    )


# --- comparison with the reference -----------------------------------------------------------
def _banded(
    rule: str, value: float, band: schema.Band, detail: str, column: str | None = None
) -> Finding | None:
    if value > band.fail:
        return Finding(rule, "drift", "fail", value, band.fail, f"{detail} > {band.fail:g}", column)
    if value > band.warn:
        return Finding(rule, "drift", "warn", value, band.warn, f"{detail} > {band.warn:g}", column)
    return None


def drift_statistics(
    df: pd.DataFrame, new: dict[str, Any], reference: dict[str, Any]
) -> dict[str, Any]:
    """Row-count change, and per column PSI and missing-rate change, new vs reference.

    ``new`` is ``profile(df)``; numeric PSI needs the new rows themselves, binned on the
    reference's deciles (the reference needs only its profile).
    """
    stats: dict[str, Any] = {
        "row_count_change": new["n_rows"] / max(reference["n_rows"], 1) - 1.0,
        "columns": {},
    }
    for name, ref in reference["columns"].items():
        stats["columns"][name] = column_drift(df[name], ref)
    return stats


def column_drift(values: pd.Series, reference: dict[str, Any]) -> dict[str, float]:
    """One column's PSI and missing-rate change against the column's reference profile.

    The one drift computation: the contract (a new data version) and the monitor (a window
    of served rows, ``steps.monitoring.drift``) both call it.
    """
    missing_rate = float(values.isna().mean()) if len(values) else 0.0
    if reference["kind"] == "categorical":
        shares = values.dropna().astype(str).value_counts(normalize=True)
        keys = sorted(set(reference["shares"]) | set(shares.index))
        value = psi(
            [reference["shares"].get(k, 0.0) for k in keys],
            [float(shares.get(k, 0.0)) for k in keys],
        )
    else:
        present = values.dropna().to_numpy(dtype=np.float64)
        edges = np.asarray(reference["psi_edges"], dtype=np.float64)
        value = psi(reference["psi_shares"], shares_between(present, edges))
    return {"psi": value, "missing_rate_change": missing_rate - reference["missing_rate"]}


def drift_findings(
    stats: dict[str, Any],
    new: dict[str, Any],
    reference: dict[str, Any],
    rules: schema.DriftRules = schema.DRIFT_RULES,
) -> list[Finding]:
    """Every drift rule (``drift_statistics``) the new version breaks (fail) or nears (warn)."""
    found: list[Finding | None] = []
    change = stats["row_count_change"]
    counts = f"{new['n_rows']:,} rows vs {reference['n_rows']:,} in the reference ({change:+.1%})"
    if change < 0:
        found.append(
            _banded(
                "row_count_drop", -change, rules.row_count_drop, f"{counts}; drop {-change:.3f}"
            )
        )
    else:
        found.append(
            _banded(
                "row_count_growth", change, rules.row_count_growth, f"{counts}; growth {change:.3f}"
            )
        )
    for name, col in stats["columns"].items():
        band = rules.target_psi if name == config.TARGET else rules.feature_psi
        rule = "target_psi" if name == config.TARGET else "feature_psi"
        found.append(_banded(rule, col["psi"], band, f"PSI {col['psi']:.3f}", name))
        delta = col["missing_rate_change"]
        ref_rate = reference["columns"][name]["missing_rate"]
        found.append(
            _banded(
                "missing_rate_change",
                abs(delta),
                rules.missing_rate_change,
                f"missing in {ref_rate + delta:.2%} of rows vs {ref_rate:.2%} in the reference; "
                f"|change| {abs(delta):.4f}",
                name,
            )
        )
    return [f for f in found if f is not None]


@dataclass
class Result:
    """What the contract says about one version."""

    profile: dict[str, Any]
    findings: list[Finding]
    verdict: Verdict
    drift: dict[str, Any] | None  # drift_statistics, None without a reference


def check(
    df: pd.DataFrame,
    reference: dict[str, Any] | None,
    accept_drift: bool = False,
    table_rules: schema.TableRules = schema.TABLE_RULES,
    drift_rules: schema.DriftRules = schema.DRIFT_RULES,
) -> Result:
    """The whole contract on ``df``: its profile, every finding and the verdict.

    ``reference`` is a reference profile, or None (first load: absolute rules only).
    ``accept_drift`` turns drift failures into accepted warnings; table rules always fail.
    """
    prof = profile(df)
    findings = table_findings(df, table_rules)
    stats = None
    if reference is not None and reference.get("format") == PROFILE_FORMAT:
        stats = drift_statistics(df, prof, reference)
        drift = drift_findings(stats, prof, reference, drift_rules)
        if accept_drift:
            drift = [replace(f, accepted=True) if f.severity == "fail" else f for f in drift]
        findings += drift
    findings.sort(key=lambda f: RULE_ORDER.index(f.rule))
    verdict = Verdict(
        failures=[f for f in findings if f.severity == "fail" and not f.accepted],
        warnings=[f for f in findings if f.severity == "warn" or f.accepted],
    )
    return Result(prof, findings, verdict, stats)


# --- the data report -----------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _findings_lines(findings: list[Finding]) -> list[str]:
    if not findings:
        return ["None: every rule holds."]
    lines = [
        "| severity | rule | column | statistic | threshold | detail |",
        "|---|---|---|---|---|---|",
    ]
    for f in findings:
        severity = "fail (accepted)" if f.accepted else f.severity
        lines.append(
            f"| {severity} | {f.rule} | {f.column or '–'} | {_fmt(float(f.statistic))} "
            f"| {_fmt(float(f.threshold))} | {f.detail} |"
        )
    return lines


def _rules_lines(table_rules: schema.TableRules, drift_rules: schema.DriftRules) -> list[str]:
    lines = [
        "",
        "## Rules (steps/data/schema.py)",
        "",
        f"- min_rows: at least {table_rules.min_rows:,} rows",
        f"- duplicate_rows: at most {table_rules.max_duplicate_fraction:.1%} exact duplicate rows",
        f"- near_constant: no non-nullable feature with one value in more than "
        f"{table_rules.max_top_value_share:.0%} of rows",
    ]
    for name in DRIFT_RULE_NAMES:
        band = getattr(drift_rules, name)
        lines.append(f"- {name}: warn above {band.warn:g}, fail above {band.fail:g}")
    return lines


def _drift_lines(
    new: dict[str, Any], reference: dict[str, Any], stats: dict[str, Any], rules: schema.DriftRules
) -> list[str]:
    lines = [
        "",
        "## Drift against the reference",
        "",
        f"Row count change: {stats['row_count_change']:+.2%}.",
        "",
        "| column | PSI | warn / fail | missing (new) | missing (reference) |",
        "|---|---|---|---|---|",
    ]
    for name, col in stats["columns"].items():
        band = rules.target_psi if name == config.TARGET else rules.feature_psi
        lines.append(
            f"| {name} | {col['psi']:.4f} | {band.warn:g} / {band.fail:g} "
            f"| {new['columns'][name]['missing_rate']:.2%} "
            f"| {reference['columns'][name]['missing_rate']:.2%} |"
        )
    return lines


def _column_lines(new: dict[str, Any], reference: dict[str, Any] | None) -> list[str]:
    lines = ["", "## Column statistics (new / reference)", ""]
    keys = ("mean", "std", "min", "p50", "max")
    lines += ["| column | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, col in new["columns"].items():
        if col["kind"] != "numeric":
            continue
        ref = reference["columns"][name] if reference else {}
        cells = [f"{_fmt(col.get(k))} / {_fmt(ref.get(k))}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cat = config.CATEGORICAL_FEATURE
    ref_shares = reference["columns"][cat]["shares"] if reference else {}
    new_shares = new["columns"][cat]["shares"]
    lines += ["", f"`{cat}` shares (new / reference):", ""]
    for value in sorted(set(new_shares) | set(ref_shares)):
        lines.append(
            f"- {value}: {new_shares.get(value, 0.0):.2%} / "
            + (f"{ref_shares.get(value, 0.0):.2%}" if reference else "–")
        )
    return lines


def report_markdown(
    result: Result,
    reference: dict[str, Any] | None,
    version: str,
    reference_label: str,
    table_rules: schema.TableRules = schema.TABLE_RULES,
    drift_rules: schema.DriftRules = schema.DRIFT_RULES,
) -> str:
    """The data report: verdict, findings, drift statistics and per-column statistics."""
    new, verdict = result.profile, result.verdict
    status = "FAILED" if verdict.failures else "passed"
    lines = [
        "# Data report",
        "",
        f"- version: `{version}` ({new['n_rows']:,} rows)",
        f"- reference: {reference_label}"
        + (f" ({reference['n_rows']:,} rows)" if reference else ""),
        f"- contract: **{status}** — {len(verdict.failures)} failure(s), "
        f"{len(verdict.warnings)} warning(s)",
        "",
        "## Findings",
        "",
        *_findings_lines(result.findings),
        *_rules_lines(table_rules, drift_rules),
    ]
    if reference is not None and result.drift is not None:
        lines += _drift_lines(new, reference, result.drift, drift_rules)
    lines += _column_lines(new, reference)
    lines += ["", "![overlay histograms](histograms.png)", ""]
    return "\n".join(lines)


def histograms_figure(
    new: dict[str, Any], reference: dict[str, Any] | None, drift: dict[str, Any] | None = None
) -> Figure:
    """Overlay histograms (density) of every column, new version over the reference; the
    titles carry each column's PSI when ``drift`` (``Result.drift``) is given."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = list(new["columns"])
    ncols = 4
    nrows = -(-len(names) // ncols)
    # a fixed layout: "constrained" costs ~1 s of layout solving per save on this figure
    figure = Figure(figsize=(3.2 * ncols, 2.4 * nrows), dpi=80)
    figure.subplots_adjust(left=0.03, right=0.99, bottom=0.08, top=0.94, wspace=0.15, hspace=0.6)
    axes = figure.subplots(nrows, ncols).ravel()
    for ax, name in zip(axes, names, strict=False):
        cur = new["columns"][name]
        ref = reference["columns"][name] if reference else None
        if cur["kind"] == "categorical":
            values = sorted(set(cur["shares"]) | set(ref["shares"] if ref else {}))
            x = np.arange(len(values))
            ax.bar(x - 0.2, [cur["shares"].get(v, 0.0) for v in values], 0.4, label="new")
            if ref:
                ax.bar(x + 0.2, [ref["shares"].get(v, 0.0) for v in values], 0.4, label="reference")
            ax.set_xticks(x, values, rotation=30, fontsize=7)
        else:
            for prof, label in ((cur, "new"), (ref, "reference")):
                if not prof or not prof["hist_edges"]:
                    continue
                edges = np.asarray(prof["hist_edges"])
                density = np.asarray(prof["hist_shares"]) / np.diff(edges)
                if label == "new":
                    ax.stairs(density, edges, label=label, fill=True, alpha=0.5)
                else:
                    ax.stairs(density, edges, label=label, linewidth=1.5, color="black")
            ax.set_yticks([])
            ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(labelsize=7)
        psi_text = f" (PSI {drift['columns'][name]['psi']:.3f})" if drift else ""
        ax.set_title(name + psi_text, fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return figure
