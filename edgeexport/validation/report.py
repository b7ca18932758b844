"""Human-readable renderings (rich tables) of parity reports and latency measurements.

The rows come from :func:`parity_rows` and :func:`latency_rows`, which the report files
(:mod:`edgeexport.reporting`) share, so every format shows the same columns and numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from edgeexport.manifest import Bounds
from edgeexport.validation.latency import LatencyStats, speedup
from edgeexport.validation.parity import ParityReport

PARITY_COLUMNS = ("case", "shape", "output", "max err", "rms err", "scale", "top-1", "status")
# Dropped in this order, as long as the table does not fit its console otherwise (numbers are never cut).
DROPPABLE_PARITY_COLUMNS = ("shape", "scale", "top-1", "rms err")
TEXT_COLUMNS = ("case", "shape", "output", "status")
UNCLAMPED = 10_000
LATENCY_COLUMNS = ("backend", "batch", "p50 ms", "p10-p90 ms", "throughput/s", "speed-up", "peak RSS MiB")


@dataclass(frozen=True)
class Row:
    """One table row: the formatted cells (the last is the status word) and the failure reason, if any."""

    cells: tuple[str, ...]
    passed: bool
    reason: str = ""


def format_number(value: float | None, fmt: str = ".2e") -> str:
    """``value`` formatted with ``fmt``; ``-`` for None and NaN."""
    return "-" if value is None or value != value else format(value, fmt)


def parity_title(report: ParityReport) -> str:
    """One line naming the target, precision, runtime and the bounds (errors in spreads of the reference)."""
    return (f"parity: {report.target} ({report.precision}) on {report.runtime} vs PyTorch; errors in spreads, "
            f"{describe_bounds(report.tolerance)}")


def describe_bounds(bounds: Bounds) -> str:
    """``bounds max 0.001 rms 0.0001 scale ±0.001 atol 1e-06`` (and ``top-1 >= x`` where set)."""
    text = f"bounds max {bounds.max_error:g} rms {bounds.rms_error:g} scale ±{bounds.scale_error:g} atol {bounds.atol:g}"
    return text + (f" top-1 >= {bounds.min_top1:g}" if bounds.min_top1 is not None else "")


def parity_rows(report: ParityReport) -> list[Row]:
    """One row per case and output (and one per case that failed before comparing outputs)."""
    rows = []
    for case in report.cases:
        axes = ",".join(f"{k}={v}" for k, v in case.axes.items())
        if case.error:
            rows.append(Row((case.case, axes, "-", "-", "-", "-", "-", "FAIL"), False, case.error))
        for out in case.outputs:
            cells = (case.case, axes, out.name, format_number(out.max_error), format_number(out.rms_error),
                     format_number(out.scale, ".4f"), format_number(out.top1, ".3f"))
            rows.append(Row((*cells, "PASS" if out else "FAIL"), bool(out), out.reason))
    return rows


def latency_rows(stats: Sequence[LatencyStats]) -> list[Row]:
    """One row per backend: median, p10..p90 band, and the speed-up over the first row, or why none is
    given (latency rows always pass)."""
    return [Row((s.label, str(s.batch), f"{s.p50_ms:.3g}", f"{s.p10_ms:.3g}-{s.p90_ms:.3g}", f"{s.throughput:.1f}",
                 "baseline" if i == 0 and len(stats) > 1 else str(speedup(stats[0], s)) if i else "-",
                 f"{s.peak_rss_mb:.0f}"), True) for i, s in enumerate(stats)]


LATENCY_TITLE = "latency per call, numpy in to numpy out, each backend alone in its own process, after warm-up"


def parity_table(report: ParityReport, *, width: int | None = None) -> Table:
    """One row per case and output: errors in spreads, scale, top-1 agreement and PASS/FAIL.

    Names and numbers are never cut or broken: the status column's failure reason wraps, and
    where the table would still be wider than ``width`` (a console's), the columns of
    :data:`DROPPABLE_PARITY_COLUMNS` are left out in that order (``--json`` and the report files
    keep them all). ``width`` defaults to none: every column.
    """
    rows = parity_rows(report)
    shown = list(PARITY_COLUMNS)
    table = _parity_table(report, rows, shown)
    for column in DROPPABLE_PARITY_COLUMNS:
        if width is None or _minimum_width(table) <= width:
            break
        shown.remove(column)
        table = _parity_table(report, rows, shown)
    return table


def _parity_table(report: ParityReport, rows: Sequence[Row], columns: Sequence[str]) -> Table:
    table = Table(title=parity_title(report))
    for column in columns:
        wraps = column == "status"  # the failure reason; names and numbers stay whole
        table.add_column(column, justify="left" if column in TEXT_COLUMNS else "right", no_wrap=not wraps,
                         overflow="fold" if wraps else "ellipsis")
    for row in rows:
        status = Text("PASS", "green") if row.passed else Text.assemble(("FAIL", "red"), f" {row.reason}")
        cells = dict(zip(PARITY_COLUMNS, (*row.cells[:-1], status)))
        table.add_row(*(cells[column] for column in columns))
    return table


def _minimum_width(table: Table) -> int:
    """The narrowest the table renders with its names and numbers whole and no word of the status broken
    (measured unclamped: rich clamps a measurement to its console's width)."""
    console = Console(width=UNCLAMPED)
    return Measurement.get(console, console.options, table).minimum


def parity_summary(report: ParityReport) -> str:
    """``4 cases x 1 output of ART within bounds (onnx fp32 on onnxruntime)``, or ``1 of 4 cases x 1 output
    of ART out of bounds (...)``, then the task agreement where the artifact has an evaluation set."""
    where = f"({report.target} {report.precision} on {report.runtime})"
    if not report.cases:
        return f"no cases of {report.artifact} were compared {where}"
    counts = {len(case.outputs) for case in report.cases}
    outputs = sum(len(case.outputs) for case in report.cases)
    checked = plural(len(report.cases), "case") + (
        f" x {plural(counts.pop(), 'output')}" if len(counts) == 1 else f", {plural(outputs, 'output')}")
    failed = sum(not case.passed for case in report.cases)
    agreement = report.agreement
    task = "" if agreement is None else f"; {agreement.describe()}{'' if agreement.passed else ', below its criteria'}"
    if not failed:
        return f"{checked} of {report.artifact} within bounds {where}{task}"
    return f"{failed} of {checked} of {report.artifact} out of bounds {where}{task}"


def verdict(report: ParityReport) -> str:
    """One line closing a parity check: ``PASS: <summary>`` or ``FAIL: <summary>`` (:func:`parity_summary`)."""
    return f"{'PASS' if report.passed else 'FAIL'}: {parity_summary(report)}"


def plural(count: int, noun: str) -> str:
    """``1 case``, ``2 cases``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def latency_table(stats: Sequence[LatencyStats]) -> Table:
    """Latency median and p10..p90 band and throughput side by side, with speed-up over the first row."""
    table = Table(title=LATENCY_TITLE)
    for column in LATENCY_COLUMNS:
        table.add_column(column, justify="left" if column == "backend" else "right")
    for row in latency_rows(stats):
        table.add_row(*row.cells)
    return table
