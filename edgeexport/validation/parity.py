"""Parity checks of an artifact: golden cases (no torch needed) and fresh reference inputs.

:func:`check_parity` checks an artifact or bundle folder (each component with its runner);
:func:`check_artifact` one opened artifact with a runner. The reference, when given, is the
caller's: it is built once (by the conversion, or rebuilt from the manifest) and passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeexport.artifact import Artifact
from edgeexport.bundle import open_components
from edgeexport.generation_spec import GenerationSpec
from edgeexport.manifest import Tolerance
from edgeexport.runner import Runner, load
from edgeexport.validation.agreement import Agreement, check_evaluation
from edgeexport.validation.metrics import OutputComparison, compare_output

if TYPE_CHECKING:
    from edgeexport.reference.decoders_with_past import ReferenceBundle
    from edgeexport.reference.model import ReferenceModel

Outputs = Mapping[str, np.ndarray]
FRESH_SEED = 1000


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


def check_parity(folder: str | Path, reference: ReferenceModel | ReferenceBundle | None = None, *,
                 tolerance: Tolerance | None = None, **runner_options: Any) -> ParityReport:
    """Golden cases, plus fresh inputs at every shape case when a reference model is given.

    A bundle is checked component by component; the report's cases are named ``<role>/<case>``.
    """
    return check_components(open_components(folder), str(folder), reference, tolerance=tolerance, **runner_options)


def check_components(components: Mapping[str, Artifact], name: str,
                     reference: ReferenceModel | ReferenceBundle | None = None, *, tolerance: Tolerance | None = None,
                     **runner_options: Any) -> ParityReport:
    """:func:`check_parity` of artifacts already opened and hash-checked
    (:func:`edgeexport.bundle.open_components`); ``name`` is a bundle's folder, as the report names it. An
    encoder-decoder bundle's evaluation set (its decoder's) is judged once, with both runners."""
    reports = {role: _check_one(artifact, reference, tolerance, runner_options)
               for role, artifact in components.items()}
    if "" in reports:
        return reports[""]
    first = next(iter(reports.values()))
    cases = [replace(case, case=f"{role}/{case.case}") for role, report in reports.items() for case in report.cases]
    return replace(first, artifact=name, cases=cases, agreement=_bundle_agreement(components, runner_options))


def _bundle_agreement(components: Mapping[str, Artifact], runner_options: dict[str, Any]) -> Agreement | None:
    """The task agreement of an encoder-decoder bundle on its decoder's evaluation set, run with both runners."""
    if set(components) != {"encoder", "decoder"} or not components["decoder"].manifest.evaluation:
        return None
    encoder = load(components["encoder"], verify=False, **runner_options)
    decoder = load(components["decoder"], verify=False, **runner_options)
    with encoder, decoder:
        return check_evaluation(decoder.artifact, decoder, encoder)


def _check_one(artifact: Artifact, reference: ReferenceModel | ReferenceBundle | None, tolerance: Tolerance | None,
               runner_options: dict[str, Any]) -> ParityReport:
    runner = load(artifact, verify=False, **runner_options)  # open_components hash-checked it
    if reference is not None and hasattr(reference, "components"):
        reference = reference.components[GenerationSpec.of(runner.artifact.manifest).role]
    fresh = []
    if reference is not None:
        for i, (name, sizes) in enumerate(reference.shape_cases()):
            def make(sizes: dict[str, int] = sizes, seed: int = FRESH_SEED + i) -> tuple[Any, Any]:
                inputs = reference.make_inputs(sizes, seed=seed)
                return inputs, reference.run(inputs)
            fresh.append((f"fresh-{name}", sizes, make))
    with runner:
        return check_artifact(runner.artifact, runner, tolerance=tolerance, fresh=fresh)
