"""The fastest artifact at parity on this machine: ``convert --precision auto`` and ``edgeexport tune``.

Every precision the target offers (or those asked for) is converted from one reference and
checked against its own tolerance (golden and fresh inputs at every shape case, as ``convert``
does); a precision the exporter refuses for the model, or whose export fails, is recorded with
its reason. The candidates that pass are timed side by side with PyTorch eager by
:func:`edgeexport.pipeline.compare_latency` (each backend alone in its own process, alternating
rounds, the same numpy boundary), and the fastest is kept: the artifact folder holds that
candidate, and its manifest's ``tuning`` block keeps the whole table (precision, verdict and
reason, p10/p50/p90, speed-up over eager), the machine it was measured on and the choice, so the
choice can be audited and re-made on another CPU.

A candidate is only kept over a more precise one (earlier in the target's precision order) when
it is faster beyond noise: its p90 lies below the more precise one's p50. Otherwise the more
precise one is kept: a speed-up the timing cannot resolve is not worth its error.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeexport.artifact import MANIFEST_NAME, check_output_dir, staged_output, write_manifest
from edgeexport.bundle import Bundle, component_folders, is_bundle, write_bundle
from edgeexport.conversion import Export, default_folder, export_reference, prepare
from edgeexport.errors import StageError, TuningError, UnsupportedError, UsageError
from edgeexport.exporter import Exporter, get_exporter
from edgeexport.pipeline import compare_latency, rebuilt_reference
from edgeexport.runner import open_artifact, runtime_module
from edgeexport.validation.latency import LatencyStats, speedup
from edgeexport.validation.machine import describe_machine, machine_info

if TYPE_CHECKING:
    import torch

    from edgeexport.conversion import ConversionResult, Progress
    from edgeexport.reference.decoders_with_past import ReferenceBundle
    from edgeexport.reference.model import ReferenceModel

AUTO = "auto"  # convert's --precision that tunes
PASS, FAIL, REFUSED, ERROR = "pass", "fail", "refused", "error"
TIMED_COMPONENT = "decoder"  # a bundle's decode step is what generation repeats; its other components run once


@dataclass(frozen=True)
class TuneOptions:
    """What to try and how to time it: ``precisions`` (empty: every precision of the target), timed
    ``iterations`` in all over ``rounds`` alternating rounds, runtime ``threads`` (0: the runtime's default)."""

    precisions: tuple[str, ...] = ()
    rounds: int = 2
    iterations: int = 20
    threads: int = 0


@dataclass
class Candidate:
    """One precision tried: its verdict (``pass``, ``fail``, ``refused``, ``error``), why, and its timing."""

    precision: str
    verdict: str
    reason: str = ""
    p50_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    speedup: float | None = None
    chosen: bool = False

    def timed(self, stats: LatencyStats, eager: LatencyStats | None) -> None:
        self.p50_ms, self.p10_ms, self.p90_ms = stats.p50_ms, stats.p10_ms, stats.p90_ms
        self.speedup = speedup(eager, stats).value if eager is not None else None


@dataclass
class Tuning:
    """The candidate table of one tuning run, as the manifest's ``tuning`` block stores it."""

    candidates: list[Candidate]
    machine: dict[str, Any]
    timed: str
    options: TuneOptions
    eager: dict[str, float] | None = None
    chosen: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "timed": self.timed, "rounds": self.options.rounds,
                "iterations": self.options.iterations, "eager": self.eager, "machine": self.machine,
                "candidates": [asdict(c) for c in self.candidates]}


@dataclass
class TuningResult:
    """What :func:`tune_reference` kept (``conversion``: the chosen artifact, moved to its folder) and the table."""

    conversion: ConversionResult
    tuning: Tuning


def tune(source: str | Path | torch.nn.Module, example_inputs: Mapping[str, Any] | Sequence[Any] | None = None, *,
         target: str | None = None, options: TuneOptions = TuneOptions(), output_dir: str | Path | None = None,
         task: str | None = None, preset: str = "tiny", opset: int | None = None, force: bool = False,
         tolerance: Mapping[str, float] | None = None, dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
         simplify: bool = True, allow_pickle: bool = False, allow_random_head: bool = False, seed: int = 0,
         target_options: Mapping[str, Any] | None = None, progress: Progress | None = None) -> TuningResult:
    """Convert ``source`` at every candidate precision and keep the fastest that passes parity here.

    Args:
        source: What :func:`edgeexport.conversion.convert` takes, or an artifact folder: the model it was
            converted from is rebuilt (zoo model, folder or hub id) and tuned, for its target unless
            ``target`` is given.
        target: Target name. Defaults to ``onnx`` (an artifact's own target for an artifact).
        options: Candidates and timing (:class:`TuneOptions`). Defaults to every precision of the target.
        output_dir: Folder of the kept artifact. Defaults to ``convert``'s, with ``auto`` for the precision.
        The others: as :func:`edgeexport.conversion.convert` (an artifact keeps its own task, preset and seed).

    Raises:
        UsageError: as ``convert``, or a target whose artifacts do not run natively here (before any work).
        TuningError: no candidate passed parity; nothing is written.
    """
    if isinstance(source, (str, Path)) and _is_artifact(Path(source)):
        return _retune(Path(source), target=target, options=options, output_dir=output_dir, opset=opset, force=force,
                       tolerance=tolerance, simplify=simplify, target_options=target_options, progress=progress)
    exporter = _tunable(target or "onnx", options)
    reference, folder, export = prepare(
        source, example_inputs, exporter, AUTO, output_dir=output_dir, task=task, preset=preset, opset=opset,
        force=force, tolerance=tolerance, dynamic_axes=dynamic_axes, simplify=simplify, allow_pickle=allow_pickle,
        allow_random_head=allow_random_head, seed=seed, target_options=target_options, progress=progress)
    return tune_reference(reference, exporter, folder, export, options, force=force, progress=progress)


def _is_artifact(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file() or is_bundle(path)


def _retune(artifact: Path, *, target: str | None, options: TuneOptions, output_dir: str | Path | None,
            opset: int | None, force: bool, tolerance: Mapping[str, float] | None, simplify: bool,
            target_options: Mapping[str, Any] | None, progress: Progress | None) -> TuningResult:
    """:func:`tune` on the model an artifact was converted from."""
    manifest = open_artifact(next(iter(component_folders(artifact).values()))).manifest
    model = manifest.model
    exporter = _tunable(target or manifest.target, options)
    export = Export.create(opset=opset, simplify=simplify, seed=int(model.get("seed", 0)), tolerance=tolerance,
                           target_options=target_options)
    exporter.check_options(target_options or {})
    folder = Path(output_dir or default_folder(model["name"], model["task"], exporter.target, AUTO,
                                               preset=model.get("preset") if model.get("source") == "zoo" else None))
    check_output_dir(folder, force=force)
    exporter.check_available()
    reference = rebuilt_reference(manifest, "tune")
    return tune_reference(reference, exporter, folder, export, options, force=force, progress=progress)


def _tunable(target: str, options: TuneOptions) -> Exporter:
    exporter = get_exporter(target)
    check_candidates(exporter, options.precisions)
    check_tunable(exporter)
    return exporter


def check_tunable(exporter: Exporter) -> None:
    """Refuse a target whose artifacts do not run natively here: tuning times them on this machine.

    Raises:
        UsageError: the runtime is missing or runs the target's artifacts only in a stand-in.
    """
    runs_here = runtime_module(exporter.runtime).RUNNER.runs_here()
    if runs_here != "yes":
        raise UsageError(f"--precision auto times every candidate on this machine, and {exporter.target} artifacts "
                         f"run here as: {runs_here}; tune on the machine that runs them, or convert at one precision "
                         f"(edgeexport convert --target {exporter.target} --precision P, P one of: "
                         f"{', '.join(exporter.precisions)})")


def check_candidates(exporter: Exporter, precisions: Sequence[str]) -> list[str]:
    """The precisions to try: those given (each checked), else every precision of the target."""
    for precision in precisions:
        exporter.check_precision(precision)
    return list(dict.fromkeys(precisions or exporter.precisions))


def tune_reference(reference: ReferenceModel | ReferenceBundle, exporter: Exporter, folder: Path, options: Export,
                   tune: TuneOptions = TuneOptions(), *, force: bool = False,
                   progress: Progress | None = None) -> TuningResult:
    """Convert ``reference`` at every candidate precision, keep the fastest that passes parity in ``folder``.

    Raises:
        TuningError: no candidate passed (each one's reason is in the message); nothing is written.
    """
    say = progress or (lambda _message: None)
    check_output_dir(folder, force=force)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.tune-", dir=folder.parent) as work:
        results, candidates = {}, []
        for precision in check_candidates(exporter, tune.precisions):
            say(f"candidate {precision}: exporting and checking parity")
            try:
                results[precision] = export_reference(reference, exporter, Path(work) / precision, options,
                                                      precision=precision, progress=say)
            except (UnsupportedError, StageError) as exc:
                candidates.append(Candidate(precision, REFUSED if isinstance(exc, UnsupportedError) else ERROR,
                                            str(exc)))
                continue
            report = results[precision].report
            candidates.append(Candidate(precision, PASS if report.passed else FAIL, "; ".join(report.failures()[:3])))
        tuning = _timed(candidates, {p: r.artifact for p, r in results.items()}, reference, tune, say=say)
        chosen = choose(candidates)
        if chosen is None:
            raise TuningError(f"no precision of target {exporter.target!r} passed parity for {reference.name!r}: "
                              + "; ".join(f"{c.precision} {c.verdict} ({c.reason})" for c in candidates))
        chosen.chosen, tuning.chosen = True, chosen.precision
        kept = _keep(results[chosen.precision], tuning, folder, force=force)
    return TuningResult(kept, tuning)


def _timed(candidates: list[Candidate], folders: dict[str, Path], reference: Any, tune: TuneOptions, *,
           say: Progress) -> Tuning:
    """Time the passing candidates and PyTorch eager side by side; fill in each candidate's timing."""
    passing = [c for c in candidates if c.verdict == PASS]
    timed = [_timed_folder(folders[c.precision]) for c in passing]
    bundle = any(is_bundle(folder) for folder in folders.values())
    tuning = Tuning(candidates, machine_info(tune.threads or None), options=tune,
                    timed=f"the {TIMED_COMPONENT}'s example golden case" if bundle else "the example golden case")
    if not passing:
        return tuning
    say(f"timing {', '.join(c.precision for c in passing)} and PyTorch eager side by side")
    stats = compare_latency(timed, reference=reference, rounds=tune.rounds, iterations=tune.iterations,
                            runner_options=[{"threads": tune.threads}] * len(timed))
    eager, artifacts = stats[0], stats[1:]
    tuning.eager = {"p50_ms": eager.p50_ms, "p10_ms": eager.p10_ms, "p90_ms": eager.p90_ms}
    for candidate, measured in zip(passing, artifacts):
        candidate.timed(measured, eager)
    return tuning


def _timed_folder(artifact: Path) -> Path:
    """The artifact to time: itself, or a bundle's decoder (:data:`TIMED_COMPONENT`)."""
    components = component_folders(artifact)
    return components.get("", components.get(TIMED_COMPONENT, next(iter(components.values()))))


def choose(candidates: Sequence[Candidate]) -> Candidate | None:
    """The candidate to keep: the fastest passing one, unless a more precise passing one (earlier in
    ``candidates``) is not slower beyond noise (the faster one's p90 is not below its p50)."""
    passing = [c for c in candidates if c.verdict == PASS and c.p50_ms is not None]
    if not passing:
        return None
    fastest = min(passing, key=lambda c: c.p50_ms)
    return next(c for c in passing if c is fastest or fastest.p90_ms >= c.p50_ms)


def _keep(result: ConversionResult, tuning: Tuning, folder: Path, *, force: bool) -> ConversionResult:
    """Write the table into the chosen artifact's manifests and move it to ``folder`` (staged, then renamed)."""
    components = component_folders(result.artifact)
    for component in components.values():
        manifest = open_artifact(component, verify=False).manifest
        write_manifest(component, replace(manifest, tuning=tuning.to_dict()))
    if is_bundle(result.artifact):  # its bundle.json holds the hashes of the manifests just rewritten
        write_bundle(result.artifact, list(components), Bundle.open(result.artifact).model)
    with staged_output(folder, force=force) as stage:
        for entry in result.artifact.iterdir():
            shutil.move(str(entry), stage / entry.name)
    manifests = {role: open_artifact(path, verify=False).manifest for role, path in component_folders(folder).items()}
    report = replace(result.report, artifact=str(folder)) if result.report is not None else None
    return replace(result, artifact=folder, report=report, manifest=manifests.get("decoder", manifests.get("")),
                   components={r: m for r, m in manifests.items() if r})


def describe(tuning: dict[str, Any]) -> tuple[list[str], list[list[str]], str]:
    """Columns, rows and a footer line of a manifest's ``tuning`` block, for a table."""
    rows = []
    for c in tuning["candidates"]:
        timing = f"{c['p50_ms']:.3g} ({c['p10_ms']:.3g}-{c['p90_ms']:.3g})" if c["p50_ms"] is not None else "-"
        rows.append([("* " if c["chosen"] else "") + c["precision"], c["verdict"], timing,
                     f"{c['speedup']:.2f}x" if c["speedup"] is not None else ("noisy" if c["p50_ms"] else "-"),
                     c["reason"] or "-"])
    eager = tuning.get("eager")
    footer = (f"timed: {tuning['timed']}, {tuning['iterations']} samples in {tuning['rounds']} rounds"
              + (f"; PyTorch eager p50 {eager['p50_ms']:.3g} ms ({eager['p10_ms']:.3g}-{eager['p90_ms']:.3g})"
                 if eager else "")
              + f"; on {describe_machine(tuning['machine'])}")
    return ["precision", "verdict", "p50 ms (p10-p90)", "vs eager", "reason"], rows, footer
