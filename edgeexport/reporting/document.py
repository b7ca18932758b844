"""The run report: what one ``validate`` or ``bench`` run found, the gate's verdict, and its JSON form
(schema :data:`~edgeexport.reporting.schema.SCHEMA`; docs/reports.md documents every field).

The report is judged by a :class:`~edgeexport.reporting.gate.Gate` and holds its checks; the gate
never imports this module (it reads a baseline through :mod:`edgeexport.reporting.schema`).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeexport.reporting.schema import SCHEMA
from edgeexport.validation.machine import machine_info
from edgeexport.validation.report import parity_summary, plural, verdict

if TYPE_CHECKING:
    from collections.abc import Iterable

    from edgeexport.manifest import Manifest
    from edgeexport.reporting.gate import BaselineCheck, Gate
    from edgeexport.validation.latency import LatencyStats
    from edgeexport.validation.localize import Localization
    from edgeexport.validation.parity import ParityReport

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
        where the gate's baseline decides otherwise, PASS/FAIL by the gate with the parity summary; with a
        baseline, the line names it and how many cases and outputs were compared with it."""
        if self.parity is None:
            raise ValueError(f"a {self.command} run has no parity verdict")
        if self.checks is None:
            return verdict(self.parity)
        regressions = sum(not check for check in self.checks if check.metric != "compared")
        against = self.gate.describe(self.parity)
        if self.passed == self.parity.passed:
            return f"{verdict(self.parity)}; {plural(regressions, 'regression')} against {against}"
        if self.passed:  # failures the baseline already had (--fail-on regression)
            return f"PASS: no regression against {against}; {parity_summary(self.parity)}"
        if not regressions:  # the baseline compared nothing
            return f"FAIL: nothing compared against {against}; {parity_summary(self.parity)}"
        return f"FAIL: {plural(regressions, 'regression')} against {against}; {parity_summary(self.parity)}"

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
