"""Human-readable renderings (rich tables) of parity reports and latency measurements."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from edgeexport.validation.latency import LatencyStats
from edgeexport.validation.parity import ParityReport


def _num(value: float | None, fmt: str = ".2e") -> str:
    return "-" if value is None or value != value else format(value, fmt)


def parity_table(report: ParityReport) -> Table:
    """One row per case and output: errors, cosine, top-1 agreement and PASS/FAIL."""
    tol = report.tolerance
    table = Table(title=f"parity: {report.target} ({report.precision}) on {report.runtime} "
                        f"vs PyTorch, atol={tol.atol:g} rtol={tol.rtol:g}")
    for column in ("case", "shape", "output", "max abs", "max rel", "mean abs", "cosine", "top-1", "status"):
        table.add_column(column, justify="right" if column not in ("case", "output", "status", "shape") else "left")
    for case in report.cases:
        axes = ",".join(f"{k}={v}" for k, v in case.axes.items())
        if case.error:
            table.add_row(case.case, axes, "-", "-", "-", "-", "-", "-", Text.assemble(("FAIL", "red"), f" {case.error}"))
        for out in case.outputs:
            status = Text("PASS", "green") if out else Text.assemble(("FAIL", "red"), f" {out.reason}")
            table.add_row(case.case, axes, out.name, _num(out.max_abs), _num(out.max_rel), _num(out.mean_abs),
                          _num(out.cosine, ".6f"), _num(out.top1, ".3f"), status)
    return table


def latency_table(stats: Sequence[LatencyStats]) -> Table:
    """Latency percentiles and throughput side by side, with speed-up over the first row."""
    table = Table(title="latency (same inputs, after warm-up)")
    for column in ("backend", "batch", "p50 ms", "p90 ms", "p99 ms", "throughput/s", "speed-up", "peak RSS MiB"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    base = stats[0].p50_ms if stats else 0.0
    for s in stats:
        table.add_row(s.label, str(s.batch), f"{s.p50_ms:.2f}", f"{s.p90_ms:.2f}", f"{s.p99_ms:.2f}",
                      f"{s.throughput:.1f}", f"{base / s.p50_ms:.2f}x" if s.p50_ms else "-", f"{s.peak_rss_mb:.0f}")
    return table
