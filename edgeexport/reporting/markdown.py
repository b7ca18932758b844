"""Markdown for a GitHub job summary (``>> "$GITHUB_STEP_SUMMARY"``): verdict, tables, failures."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from edgeexport.reporting.document import RunReport
from edgeexport.reporting.gate import BASELINE_COLUMNS, baseline_rows
from edgeexport.validation.report import (LATENCY_COLUMNS, LATENCY_TITLE, PARITY_COLUMNS, Row, latency_rows, parity_rows,
                                          parity_title)


def render(report: RunReport) -> str:
    """The whole Markdown document."""
    verdict = "✅ passed" if report.passed else "❌ failed"
    lines = [f"## edgeexport {report.command}: {report.title} — {verdict}", "",
             f"Artifact `{report.artifact}`, {report.created_at}, fail on {report.gate.fail_on}"
             + (f" (baseline `{report.gate.baseline_path}`)" if report.gate.baseline_path else "") + ".", ""]
    lines += [f"- {escape(line)}" for line in report.failures] + ([""] if report.failures else [])
    if report.parity is not None:
        lines += [f"### {escape(parity_title(report.parity))}", "", *table(PARITY_COLUMNS, parity_rows(report.parity))]
    if report.localization is not None:
        lines += ["### Divergence localization", "", escape(report.localization.describe()), ""]
    if report.latency:
        rows = latency_rows(report.latency)
        lines += [f"### {escape(LATENCY_TITLE)}", "", *table(LATENCY_COLUMNS, rows)]
    if report.checks is not None:
        lines += ["### Against the baseline", "", *table(BASELINE_COLUMNS, baseline_rows(report.checks))]
    return "\n".join(lines).rstrip() + "\n"


def table(columns: Sequence[str], rows: Iterable[Row]) -> list[str]:
    """A GitHub-flavoured Markdown table (status cells marked ✅/❌ with the reason), then a blank line."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [escape(c) for c in row.cells]
        if columns[-1] == "status":
            cells[-1] = "✅ PASS" if row.passed else f"❌ FAIL: {escape(row.reason)}"
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def escape(text: str) -> str:
    """One line, with table pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")
