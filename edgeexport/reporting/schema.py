"""The JSON report's schema name, and reading a report back (a baseline for the gate).

The JSON form of a run report carries ``"schema": "edgeexport.report.v2"``; docs/reports.md documents every
field. Within a version fields are only ever added, never renamed or removed; a change that breaks readers
bumps the version (v2: spread-relative parity metrics, latency dispersion, the machine a run came from).
Both the report (:mod:`edgeexport.reporting.document`, which writes it) and the gate
(:mod:`edgeexport.reporting.gate`, which reads a baseline) import this module, and it imports neither.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeexport.errors import UsageError

SCHEMA = "edgeexport.report.v2"  # v2: spread-relative parity metrics and bounds, latency dispersion, machine


def load_report(path: Path) -> dict[str, Any]:
    """A JSON report written by ``--report FILE.json``.

    Raises:
        UsageError: the file is missing, not JSON, or not an edgeexport report of a known schema.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise UsageError(f"cannot read baseline {path}: {reason}; pass a file written with --report FILE.json") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else None
        raise UsageError(f"baseline {path} is not an edgeexport report (schema {found!r}, expected {SCHEMA!r}); "
                         "write one with --report FILE.json")
    return data
