"""What the commands print: JSON on stdout, rich tables, the parity table with its verdict line, the
``wrote ...`` lines and notes on stderr, and exit 1 on failures (:func:`exit_on`).

The command line (:mod:`edgeexport.cli`) parses and calls the library; this module renders what
the library returns, so every command prints a result the same way.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from edgeexport.cli_parts import console, errors


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]], **options: Any) -> Table:
    table = Table(title=title, **options)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def show_conversion(result: Any, json_output: bool) -> None:
    """``wrote ...`` and the exporter's notes, then the parity table and verdict (exit 1 on failure)."""
    exporter = result.manifest.exporter
    errors.print(f"wrote {result.describe()}", highlight=False, markup=False, soft_wrap=True)
    for label, note in (("first strategy failed: ", exporter.get("fallback_reason")), ("", exporter.get("note"))):
        if note:
            errors.print(Text.assemble(("note:", "yellow"), f" {label}{note}"), highlight=False)
    if result.report is not None:
        from edgeexport.validation.report import verdict

        show_parity(result.report, json_output)
        exit_on("parity", result.report.failures(), verdict(result.report))


def show_tuning(tuning: dict[str, Any]) -> None:
    from edgeexport.tuning import describe

    columns, rows, footer = describe(tuning)
    console.print(table(f"candidates (* kept: {tuning['chosen']}, the fastest at parity)", columns, rows))
    errors.print(footer, highlight=False, markup=False, soft_wrap=True)


def show_parity(report: Any, json_output: bool, localization: Any = None) -> None:
    from edgeexport.validation.report import parity_table

    if json_output:
        print_json({**report.to_dict(), **({"localization": localization.to_dict()} if localization else {})})
    else:
        console.print(parity_table(report, width=console.width))
    if localization is not None:
        errors.print(Text.assemble(("explain", "cyan"), ": " + localization.describe()), highlight=False)


def say_written(paths: list[Path]) -> None:
    if paths:
        errors.print(f"wrote {', '.join(map(str, paths))}", highlight=False, markup=False, soft_wrap=True)


def exit_on(what: str, failures: list[str], verdict: str = "") -> None:
    """Print ``<what> FAILED: ...`` when there are failures, then the ``verdict`` line (PASS/FAIL: ...); exit 1 on
    failures."""
    if failures:
        errors.print(Text.assemble((f"{what} FAILED", "red"), ": " + "; ".join(failures)), highlight=False)
    if verdict:
        word, rest = verdict.split(":", 1)
        errors.print(Text.assemble((word, "green" if word == "PASS" else "red"), f":{rest}"), highlight=False,
                     soft_wrap=True)
    if failures:
        raise typer.Exit(1)


def print_inspection(artifact: Path, inspected: Any) -> None:
    for role, component in inspected.components.items():
        console.print(table(f"{artifact}" + (f" ({role})" if role else ""), ("field", "value"), component.summary(),
                             show_header=False))
        if component.manifest.tuning:
            show_tuning(component.manifest.tuning)
        if component.details.get("ops"):
            console.print(table(f"ops ({component.details.get('nodes')} nodes)", ("op", "count"),
                                 ((op, str(count)) for op, count in component.details["ops"].items())))
        if component.preflight is not None:
            print_preflight(component.preflight)


def print_preflight(report: Any) -> None:
    title = f"{report.summary()} (table: {report.source})"
    if not report.findings:
        console.print(title, highlight=False)
        return
    console.print(table(title, ("severity", "node", "op", "module", "problem"), (
        (Text(f.severity, "red" if f.severity == "error" else "yellow"), f.node or "-", f.op_type or "-",
         f.module or "-", f.message) for f in report.findings)))
