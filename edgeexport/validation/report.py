"""Human-readable renderings (rich tables) of parity reports and latency measurements.

The rows come from :func:`parity_rows` and :func:`latency_rows`, which the report files
(:mod:`edgeexport.reporting`) share, so every format shows the same columns and numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text

from edgeexport.validation.latency import LatencyStats
from edgeexport.validation.parity import ParityReport

PARITY_COLUMNS = ("case", "shape", "output", "max abs", "max rel", "mean abs", "cosine", "top-1", "status")
LATENCY_COLUMNS = ("backend", "batch", "p50 ms", "p90 ms", "p99 ms", "throughput/s", "speed-up", "peak RSS MiB")


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
    """One line naming the target, precision, runtime and tolerance."""
    tol = report.tolerance
    return (f"parity: {report.target} ({report.precision}) on {report.runtime} "
            f"vs PyTorch, atol={tol.atol:g} rtol={tol.rtol:g}")


def parity_rows(report: ParityReport) -> list[Row]:
    """One row per case and output (and one per case that failed before comparing outputs)."""
    rows = []
    for case in report.cases:
        axes = ",".join(f"{k}={v}" for k, v in case.axes.items())
        if case.error:
            rows.append(Row((case.case, axes, "-", "-", "-", "-", "-", "-", "FAIL"), False, case.error))
        for out in case.outputs:
            cells = (case.case, axes, out.name, format_number(out.max_abs), format_number(out.max_rel),
                     format_number(out.mean_abs), format_number(out.cosine, ".6f"), format_number(out.top1, ".3f"))
            rows.append(Row((*cells, "PASS" if out else "FAIL"), bool(out), out.reason))
    return rows


def latency_rows(stats: Sequence[LatencyStats]) -> list[Row]:
    """One row per backend, with the speed-up over the first row (latency rows always pass)."""
    base = stats[0].p50_ms if stats else 0.0
    return [Row((s.label, str(s.batch), f"{s.p50_ms:.2f}", f"{s.p90_ms:.2f}", f"{s.p99_ms:.2f}", f"{s.throughput:.1f}",
                 f"{base / s.p50_ms:.2f}x" if s.p50_ms else "-", f"{s.peak_rss_mb:.0f}"), True) for s in stats]


def parity_table(report: ParityReport) -> Table:
    """One row per case and output: errors, cosine, top-1 agreement and PASS/FAIL."""
    table = Table(title=parity_title(report))
    for column in PARITY_COLUMNS:
        table.add_column(column, justify="right" if column not in ("case", "output", "status", "shape") else "left")
    for row in parity_rows(report):
        status = Text("PASS", "green") if row.passed else Text.assemble(("FAIL", "red"), f" {row.reason}")
        table.add_row(*row.cells[:-1], status)
    return table


def latency_table(stats: Sequence[LatencyStats]) -> Table:
    """Latency percentiles and throughput side by side, with speed-up over the first row."""
    table = Table(title="latency (same inputs, after warm-up)")
    for column in LATENCY_COLUMNS:
        table.add_column(column, justify="left" if column == "backend" else "right")
    for row in latency_rows(stats):
        table.add_row(*row.cells)
    return table
