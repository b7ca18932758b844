"""Report files of ``validate`` and ``bench`` runs, and the CI gate that decides their exit code.

``--report PATH`` (repeatable) picks the format by suffix: ``.json`` (the versioned
``edgeexport.report.v2`` document, see docs/reports.md), ``.xml`` (JUnit), ``.md``
(Markdown for a GitHub job summary) or ``.html`` (one self-contained page with plots).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from edgeexport.errors import UsageError
from edgeexport.reporting import html, junit, markdown
from edgeexport.reporting.document import RunReport
from edgeexport.reporting.gate import FAIL_ON, BaselineCheck, Gate
from edgeexport.reporting.schema import SCHEMA, load_report

__all__ = ["FAIL_ON", "FORMATS", "SCHEMA", "BaselineCheck", "Gate", "RunReport", "check_report_paths", "load_report",
           "render", "write_reports"]


def _json(report: RunReport) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"


FORMATS: dict[str, Callable[[RunReport], str]] = {".json": _json, ".xml": junit.render, ".md": markdown.render,
                                                  ".html": html.render}


def check_report_paths(paths: Iterable[str | Path]) -> list[Path]:
    """The report paths, each with a known suffix; call it before any work.

    Raises:
        UsageError: a suffix that names no format.
    """
    checked = [Path(p) for p in paths]
    for path in checked:
        if path.suffix.lower() not in FORMATS:
            raise UsageError(f"--report {path}: unknown report format {path.suffix or '(no suffix)'!r}; "
                             f"end the name with one of {', '.join(FORMATS)}")
    return checked


def render(report: RunReport, suffix: str) -> str:
    """``report`` in the format of ``suffix`` (``.json``, ``.xml``, ``.md`` or ``.html``)."""
    return FORMATS[suffix.lower()](report)


def write_reports(report: RunReport, paths: Iterable[str | Path]) -> None:
    """Write ``report`` to every path, in the format its suffix names, creating parent folders.

    Raises:
        UsageError: an unknown suffix or a path that cannot be written.
    """
    for path in check_report_paths(paths):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(report, path.suffix), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write report {path}: {exc.strerror}; choose a writable path") from None
