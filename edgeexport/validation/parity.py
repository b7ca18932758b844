"""Parity checks of an artifact: golden cases (no torch needed) and fresh reference inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeexport.artifact import Artifact, Tolerance
from edgeexport.runner import Runner
from edgeexport.validation.agreement import Agreement, check_evaluation
from edgeexport.validation.metrics import OutputComparison, compare_output

Outputs = Mapping[str, np.ndarray]


@dataclass
class CaseResult:
    """Comparison of every output for one input case (a golden case or fresh inputs)."""

    case: str
    source: str
    axes: dict[str, int]
    outputs: list[OutputComparison]
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and all(self.outputs)

    def failures(self) -> list[str]:
        """One line per failing output, or the case's error."""
        lines = [f"{self.case}: {self.error}"] if self.error else []
        return lines + [f"{self.case}/{o.name}: {o.reason}" for o in self.outputs if not o]

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case, "source": self.source, "axes": self.axes, "passed": self.passed,
                "error": self.error, "outputs": [o.to_dict() for o in self.outputs]}


@dataclass
class ParityReport:
    """All cases of one validation run; truthy when every case passed."""

    artifact: str
    target: str
    runtime: str
    precision: str
    tolerance: Tolerance
    cases: list[CaseResult] = field(default_factory=list)
    agreement: Agreement | None = None  # task agreement on the artifact's evaluation set, where it has one

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases) and (self.agreement is None or self.agreement.passed)

    def __bool__(self) -> bool:
        return self.passed

    def failures(self) -> list[str]:
        """One line per failing output or case (one line when there was no case to check)."""
        lines = [] if self.cases else ["no cases were compared; the artifact has no golden cases"]
        lines += self.agreement.failures() if self.agreement is not None else []
        return lines + [line for case in self.cases for line in case.failures()]

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "target": self.target, "runtime": self.runtime,
                "precision": self.precision, "passed": self.passed, "tolerance": self.tolerance.to_dict(),
                "cases": [c.to_dict() for c in self.cases],
                **({"agreement": self.agreement.to_dict()} if self.agreement is not None else {})}


def compare_outputs(case: str, source: str, axes: dict[str, int], target: Outputs, reference: Outputs, *,
                    tolerance: Tolerance, logits: Iterable[str] = ()) -> CaseResult:
    """Compare outputs by exact name: missing or extra names fail the case, listing both sets, and so
    does a case with no outputs at all (nothing compared proves nothing)."""
    logits = set(logits)
    if set(target) != set(reference):
        return CaseResult(case, source, axes, [], error=f"output names differ: target {sorted(target)}, "
                                                        f"reference {sorted(reference)}")
    if not reference:
        return CaseResult(case, source, axes, [], error="no outputs to compare; the reference produced none")
    comparisons = [compare_output(name, np.asarray(target[name]), np.asarray(want), tolerance.for_output(name),
                                  logits=name in logits) for name, want in reference.items()]
    return CaseResult(case, source, axes, comparisons)


def check_artifact(artifact: Artifact, runner: Runner, *, tolerance: Tolerance | None = None,
                   fresh: Iterable[tuple[str, dict[str, int], Callable[[], tuple[Outputs, Outputs]]]] = ()) -> ParityReport:
    """Run the artifact on its golden cases (and optional fresh cases) and compare; then judge its task agreement
    on its evaluation set, where it has one.

    Args:
        artifact: An opened artifact.
        runner: Its runner, from :func:`edgeexport.runner.load`.
        tolerance: Override of the manifest's tolerance. Defaults to the manifest's.
        fresh: ``(name, axes, make)`` where ``make()`` returns ``(inputs, reference_outputs)``.
    """
    manifest = artifact.manifest
    tolerance = tolerance or manifest.tolerance
    report = ParityReport(artifact=str(artifact.path), target=manifest.target, runtime=runner.label or runner.name,
                          precision=manifest.precision, tolerance=tolerance)
    cases = [(g.name, "golden", g.axes, lambda g=g: artifact.load_golden(g)) for g in manifest.golden]
    cases += [(name, "reference", axes, make) for name, axes, make in fresh]
    for name, source, axes, make in cases:
        inputs, expected = make()
        report.cases.append(compare_outputs(name, source, axes, runner(inputs), expected, tolerance=tolerance,
                                            logits=manifest.logits_outputs))
    report.agreement = check_evaluation(artifact, runner)
    return report
