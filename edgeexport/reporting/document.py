"""The run report: what one ``validate`` or ``bench`` run found, the gate's verdict, and its JSON form.

The JSON form carries ``"schema": "edgeexport.report.v2"``; docs/reports.md documents every
field. Within a version fields are only ever added, never renamed or removed; a change that
breaks readers bumps the version (v2: spread-relative parity metrics, latency dispersion, the
machine a run came from).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeexport.errors import UsageError
from edgeexport.validation.machine import machine_info
from edgeexport.validation.report import parity_summary, verdict

if TYPE_CHECKING:
    from collections.abc import Iterable

    from edgeexport.artifact import Manifest
    from edgeexport.reporting.gate import BaselineCheck, Gate
    from edgeexport.validation.latency import LatencyStats
    from edgeexport.validation.localize import Localization
    from edgeexport.validation.parity import ParityReport

SCHEMA = "edgeexport.report.v2"  # v2: spread-relative parity metrics and bounds, latency dispersion, machine


@dataclass
class RunReport:
    """One run of ``validate`` (``parity`` set) or ``bench`` (``latency`` set); truthy when the gate passes.

    ``checks`` is None without a baseline; ``failures`` lists what fails the run under the gate.
    """

    command: str
    artifact: str
    model: dict[str, Any]
    target: str
    runtime: str
    precision: str
    gate: Gate
    parity: ParityReport | None = None
    latency: list[LatencyStats] = field(default_factory=list)
    localization: Localization | None = None
    checks: list[BaselineCheck] | None = None
    failures: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine_info)
    created_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    @classmethod
    def create(cls, command: str, artifact: str | Path, manifest: Manifest, *, gate: Gate,
               parity: ParityReport | None = None, latency: Iterable[LatencyStats] = (),
               localization: Localization | None = None) -> RunReport:
        """Judge a run's findings with ``gate``.

        Args:
            command: ``validate`` or ``bench``.
            artifact: The artifact folder.
            manifest: Its manifest (a bundle's first component's).
            gate: What fails the run (``Gate()`` fails on any parity failure).
            parity: The parity report of a validate run.
            latency: The measurements of a bench run.
            localization: The divergence localization, when one ran.
        """
        latency = list(latency)
        checks = gate.checks(parity, latency)
        return cls(command=command, artifact=str(artifact), model=dict(manifest.model), target=manifest.target,
                   runtime=manifest.runtime, precision=manifest.precision, gate=gate, parity=parity, latency=latency,
                   localization=localization, checks=checks, failures=gate.failures(parity, checks))

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed

    @property
    def title(self) -> str:
        """``<model> (<task>) · <target> <precision> on <runtime>``."""
        return (f"{self.model.get('name', '?')} ({self.model.get('task', '?')}) · {self.target} {self.precision} "
                f"on {self.runtime}")

    def verdict(self) -> str:
        """The line closing a validate run: the :func:`~edgeexport.validation.report.verdict` of its parity, or,
        where the gate's baseline decides otherwise, PASS/FAIL by the gate with the parity summary."""
        if self.parity is None:
            raise ValueError(f"a {self.command} run has no parity verdict")
        if self.passed == self.parity.passed:
            return verdict(self.parity)
        if self.passed:  # failures the baseline already had (--fail-on regression)
            return f"PASS: no regression against {self.gate.baseline_path}; {parity_summary(self.parity)}"
        regressions = sum(not check for check in self.checks or [])
        return (f"FAIL: {regressions} regression{'' if regressions == 1 else 's'} against {self.gate.baseline_path}; "
                f"{parity_summary(self.parity)}")

    def to_dict(self) -> dict[str, Any]:
        """The ``edgeexport.report.v2`` JSON document (latency samples rounded to 0.1 µs)."""
        return {
            "schema": SCHEMA, "command": self.command, "created_at": self.created_at,
            "edgeexport": importlib.metadata.version("edgeexport"),
            "artifact": self.artifact, "model": self.model, "target": self.target, "runtime": self.runtime,
            "precision": self.precision, "passed": self.passed, "failures": self.failures, "gate": self.gate.to_dict(),
            "parity": self.parity.to_dict() if self.parity is not None else None,
            "latency": [{**s.to_dict(), "samples_ms": [round(x, 4) for x in s.samples_ms]} for s in self.latency],
            "localization": self.localization.to_dict() if self.localization is not None else None,
            "baseline_checks": [c.to_dict() for c in self.checks] if self.checks is not None else None,
            "machine": self.machine,
        }


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
