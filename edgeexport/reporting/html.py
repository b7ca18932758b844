"""The single-file HTML report: summary, tables and inline SVG plots, no external assets.

Plots: per output, a histogram of ``|target - reference|`` over the sampled elements of every
case (log scale, with the max-error bound marked) and a reference-vs-target scatter (coloured by case);
per backend, the distribution of the timed runs.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

import numpy as np

from edgeexport.reporting import svg
from edgeexport.reporting.document import RunReport
from edgeexport.reporting.gate import BASELINE_COLUMNS, BaselineCheck, baseline_rows
from edgeexport.validation.localize import Localization
from edgeexport.validation.metrics import OutputComparison, OutputSample
from edgeexport.validation.parity import CaseResult, ParityReport
from edgeexport.validation.report import (LATENCY_COLUMNS, LATENCY_TITLE, PARITY_COLUMNS, Row, describe_bounds,
                                          latency_rows, parity_rows, parity_title)

SCATTER_POINTS = 1500
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2937;background:#f3f4f6;margin:0}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}h3{font-size:14px;margin:0 0 6px}
.meta{color:#6b7280;font-size:13px}.note{font-size:14px;margin:0}.card{background:#fff;border-radius:8px;padding:16px;
box-shadow:0 1px 2px rgba(0,0,0,.08);margin-bottom:14px;overflow-x:auto}
.badge{display:inline-block;padding:3px 12px;border-radius:999px;font-weight:600;color:#fff;margin-right:8px}
.pass{background:#059669}.fail{background:#dc2626}
table{border-collapse:collapse;font-size:13px;width:100%}th,td{padding:5px 8px;border-bottom:1px solid #e5e7eb;
text-align:left;white-space:nowrap}th{background:#f9fafb}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.reason{white-space:normal;color:#991b1b}tr.failed td{background:#fef2f2}
.ok{color:#059669;font-weight:600}.bad{color:#dc2626;font-weight:600}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:14px}
.plots .card{margin:0}svg{max-width:100%;height:auto}.failures{color:#991b1b;margin:10px 0 0;font-size:13px}
td.passed{background:#ecfdf5;color:#047857;font-weight:600}td.failed{background:#fef2f2;color:#b91c1c;font-weight:600}
td.error{background:#fffbeb;color:#b45309;font-weight:600}td.refused{background:#f5f3ff;color:#6d28d9;font-weight:600}
dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 16px;font-size:13px;margin:0}dt{color:#6b7280}
""".replace("\n", "")


def render(report: RunReport) -> str:
    """The whole HTML document."""
    sections = [_summary(report)]
    if report.parity is not None:
        sections += [_parity(report.parity), _parity_plots(report.parity.cases)]
    if report.localization is not None:
        sections.append(_localization(report.localization))
    if report.latency:
        sections.append(_latency(report))
    if report.checks is not None:
        sections.append(_baseline(report.checks))
    title = html.escape(f"edgeexport {report.command}: {report.title}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><main>{"".join(sections)}</main></body></html>\n')


def _table(columns: Sequence[str], rows: Iterable[Row], numeric: Sequence[str] = ()) -> str:
    """A table of ``rows``, failing rows tinted, with a reason column when any row has a reason."""
    rows = list(rows)
    reasons = any(row.reason for row in rows)
    columns = (*columns, "reason") if reasons else tuple(columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = (*row.cells, row.reason) if reasons else row.cells
        tds = "".join(_cell(column, value, numeric) for column, value in zip(columns, cells))
        body.append(f'<tr{"" if row.passed else " class=failed"}>{tds}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cell(column: str, value: str, numeric: Sequence[str]) -> str:
    if column == "status":
        return f'<td class="{"ok" if value == "PASS" else "bad"}">{html.escape(value)}</td>'
    if column == "reason":
        return f'<td class="reason">{html.escape(value)}</td>'
    return f'<td{" class=num" if column in numeric else ""}>{html.escape(value)}</td>'


def _summary(report: RunReport) -> str:
    badge = '<span class="badge pass">PASSED</span>' if report.passed else '<span class="badge fail">FAILED</span>'
    facts = {"artifact": report.artifact, "model": f"{report.model.get('name')} ({report.model.get('task')}, "
             f"preset {report.model.get('preset')}, {report.model.get('source')})",
             "target": f"{report.target} via {report.runtime}", "precision": report.precision,
             "gate": f"fail on {report.gate.fail_on}" + (f", baseline {report.gate.baseline_path}"
                                                         if report.gate.baseline_path else ""),
             "created": report.created_at}
    if report.parity is not None:
        facts["tolerance"] = describe_bounds(report.parity.tolerance) + " (errors in spreads of the reference)"
    details = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts.items())
    failures = "".join(f"<li>{html.escape(line)}</li>" for line in report.failures)
    return (f'<h1>{badge}edgeexport {html.escape(report.command)}</h1><p class="meta">{html.escape(report.title)}</p>'
            f'<div class="card"><dl>{details}</dl>{f"<ul class=failures>{failures}</ul>" if failures else ""}</div>')


def _parity(parity: ParityReport) -> str:
    table = _table(PARITY_COLUMNS, parity_rows(parity), numeric=PARITY_COLUMNS[3:7])
    return f'<h2>{html.escape(parity_title(parity))}</h2><div class="card">{table}</div>'


def _parity_plots(cases: Sequence[CaseResult]) -> str:
    by_output: dict[str, list[tuple[str, OutputComparison, OutputSample]]] = {}
    for case in cases:
        for out in case.outputs:
            if out.sample is not None:
                by_output.setdefault(out.name, []).append((case.case, out, out.sample))
    cards = [card for name, outs in by_output.items() for card in (_error_histogram(name, outs), _scatter(name, outs))]
    if not cards:
        return ""
    return ('<h2>errors per output</h2><p class="meta">Sampled elements (evenly spaced, worst included) of every '
            f'case.</p><div class="plots">{"".join(cards)}</div>')


def _error_histogram(name: str, outs: list[tuple[str, OutputComparison, OutputSample]]) -> str:
    errors = np.concatenate([sample.errors for _, _, sample in outs])
    exact = int((errors == 0).sum())
    note = f"{errors.size} sampled elements" + (f", {exact} exactly equal (not shown)" if exact else "")
    title = f"{name}: |target - reference|"
    if exact == errors.size:
        return (f'<div class="card"><h3>{html.escape(title)}</h3><p class="meta">all {errors.size} sampled '
                "elements are exactly equal</p></div>")
    first = outs[0][1]
    bound = first.floor + first.bounds.max_error * first.spread
    plot = svg.log_histogram(errors[errors > 0], title=title, xlabel="|target - reference| (log scale)",
                             marker=bound, marker_label=f"max error bound {bound:.2g} ({case_name(outs)})")
    return f'<div class="card"><h3>{html.escape(title)}</h3>{plot}<p class="meta">{html.escape(note)}</p></div>'


def case_name(outs: list[tuple[str, OutputComparison, OutputSample]]) -> str:
    """Which case a marker comes from, when several are plotted."""
    return f"case {outs[0][0]}"


def _scatter(name: str, outs: list[tuple[str, OutputComparison, OutputSample]]) -> str:
    per_case = max(1, SCATTER_POINTS // len(outs))
    series = []
    for case, _, sample in outs:
        keep = np.linspace(0, sample.reference.size - 1, min(per_case, sample.reference.size)).astype(int)
        series.append((case, sample.reference[keep], sample.target[keep]))
    title = f"{name}: target vs reference"
    plot = svg.scatter(series, title=title, xlabel="PyTorch reference", ylabel="target")
    return f'<div class="card"><h3>{html.escape(title)}</h3>{plot}</div>'


def _localization(loc: Localization) -> str:
    return f'<h2>divergence localization</h2><div class="card"><p class="note">{html.escape(loc.describe())}</p></div>'


def _latency(report: RunReport) -> str:
    table = _table(LATENCY_COLUMNS, latency_rows(report.latency),
                   numeric=LATENCY_COLUMNS[1:])
    series = [(s.label, np.asarray(s.samples_ms)) for s in report.latency if s.samples_ms]
    plot = svg.strip(series, title="latency per run", xlabel="milliseconds per call") if series else ""
    return (f'<h2>{html.escape(LATENCY_TITLE)}</h2><div class="card">{table}</div>'
            f'<div class="card"><h3>latency of every timed sample</h3>{plot}<p class="meta">Box: quartiles and median; '
            'line: fastest to slowest sample. A speed-up is given only where both medians are stable '
            '(p10..p90 within 50% of the median).</p></div>')


def _baseline(checks: list[BaselineCheck]) -> str:
    rows = baseline_rows(checks)
    body = (_table(BASELINE_COLUMNS, rows, numeric=("baseline", "current", "limit")) if rows else
            '<p class="note">nothing in common with the baseline to compare</p>')
    return f'<h2>against the baseline</h2><div class="card">{body}</div>'
