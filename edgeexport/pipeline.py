"""The library behind each command: the conversion pipeline (reference -> exporter -> artifact,
staged then renamed -> validation), and validating, benchmarking and running an artifact.

Every decision a command makes lives here, so Python callers get the same behaviour as the
command line: tolerance overrides, when to localise a divergence, rebuilding the reference
(with one error line when torch is missing), the run report and its gate, predict's inputs.
Only :func:`convert` and the ``reference``/``explain`` options need torch.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeexport import packages
from edgeexport.artifact import (
    Manifest,
    Tolerance,
    check_output_dir,
    load_npz,
    save_golden,
    staged_output,
    write_manifest,
)
from edgeexport.bundle import component_folders, is_bundle, write_bundle
from edgeexport.errors import InputSpecError, StageError, UsageError
from edgeexport.exporter import Exporter, get_exporter
from edgeexport.generation_spec import GenerationSpec
from edgeexport.processing import Processing, audio_inputs, decode, describe, image_inputs, text_inputs
from edgeexport.reporting import Gate, RunReport, check_report_paths, write_reports
from edgeexport.runner import load, open_artifact, runtime_module
from edgeexport.validation.latency import LatencyStats, measure
from edgeexport.validation.parity import ParityReport, check_artifact

if TYPE_CHECKING:
    import torch

    from edgeexport.artifact import Artifact
    from edgeexport.reference.decoders_with_past import ReferenceBundle
    from edgeexport.reference.model import ReferenceModel
    from edgeexport.validation.localize import Localization

Progress = Callable[[str], None]
FRESH_SEED = 1000


@dataclass
class ConversionResult:
    """What :func:`convert` produced. ``report`` is None when validation was skipped.

    For a bundle (:mod:`edgeexport.bundle`), ``manifest`` is the decoder's, ``components`` holds
    every component's manifest by role, and the report's cases are named ``<role>/<case>``.
    """

    artifact: Path
    manifest: Manifest
    report: ParityReport | None
    reference: ReferenceModel | ReferenceBundle
    components: dict[str, Manifest] = field(default_factory=dict)


def convert(model: str | Path | torch.nn.Module, example_inputs: Mapping[str, Any] | Sequence[Any] | None = None, *,
            target: str = "onnx", output_dir: str | Path | None = None, task: str | None = None, preset: str = "tiny",
            precision: str | None = None, opset: int | None = None, validate: bool = True, force: bool = False,
            atol: float | None = None, rtol: float | None = None, dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
            simplify: bool = True, allow_pickle: bool = False, seed: int = 0,
            target_options: Mapping[str, Any] | None = None, progress: Progress | None = None) -> ConversionResult:
    """Convert a model to an artifact folder for ``target`` and (by default) check its parity.

    Args:
        model: Zoo name, ``save_pretrained`` folder, hub id, or an ``nn.Module`` (then pass ``example_inputs``).
        example_inputs: Tensors by ``forward`` parameter name (or in order), for an ``nn.Module``.
        target: Target name (``edgeexport list`` shows them). Defaults to ``onnx``.
        output_dir: Artifact folder. Defaults to ``./<model>-<task>-<target>-<precision>``.
        task: Task of a zoo model or folder. Defaults to the model's first/declared task.
        preset: ``tiny`` or ``full`` for zoo models. Defaults to ``tiny``.
        precision: Precision of the target model. Defaults to the target's default precision
            (``fp32``; ``fp16`` for coreml).
        opset: ONNX opset. Defaults to the exporter's default.
        validate: Run golden and fresh-shape parity checks after writing. Defaults to True.
        force: Replace a non-empty ``output_dir``. Defaults to False.
        atol: Absolute tolerance stored in the manifest. Defaults to the model/precision default.
        rtol: Relative tolerance stored in the manifest. Defaults to the model/precision default.
        dynamic_axes: ``{input: {dim: axis}}`` for an ``nn.Module``.
        simplify: Simplify the graph (onnxslim) where the target supports it. Defaults to True.
        allow_pickle: Allow pickled weights in a model folder. Defaults to False.
        seed: Seed of zoo weights. Defaults to 0.
        target_options: Options of the target's exporter (``Exporter.options``; tensorrt: ``shapes``,
            ``workspace``; coreml: ``deployment_target``); None values are unset. Defaults to none.
        progress: Called with a short message before each stage.

    Raises:
        UsageError: bad model, task, target, precision, inputs or output folder (before any work).
        CaptureError, ConversionError: export failed; nothing is written.
    """
    say = progress or (lambda _message: None)
    exporter = get_exporter(target)
    precision = precision or exporter.default_precision
    exporter.check_precision(precision)
    exporter.check_options(target_options or {})
    exporter.check_available()
    tool_packages = (*exporter.tool_packages, *runtime_module(exporter.runtime).RUNNER.tool_packages)
    if output_dir is not None:
        check_output_dir(Path(output_dir), force=force)
    say("building the PyTorch reference")
    reference = _reference(model, example_inputs, task=task, preset=preset, seed=seed, allow_pickle=allow_pickle,
                           dynamic_axes=dynamic_axes)
    folder = Path(output_dir or f"{reference.name}-{reference.task}-{target}-{precision}")
    components = getattr(reference, "components", {"": reference})
    say("running the reference on the golden inputs")
    golden = {role: _golden(component) for role, component in components.items()}
    with staged_output(folder, force=force) as stage:
        manifests = {}
        for role, component in components.items():
            say(f"exporting {role or 'the model'} to {target} ({precision})")
            (stage / role).mkdir(exist_ok=True)
            manifests[role] = _write_artifact(
                stage / role, component, golden[role], exporter, target=target, precision=precision, opset=opset,
                simplify=simplify, seed=seed, atol=atol, rtol=rtol, tool_packages=tool_packages,
                options={k: v for k, v in (target_options or {}).items() if v is not None})
        if "" not in components:
            write_bundle(stage, list(components), _model_info(reference, seed))
    report = None
    if validate:
        say("checking parity against PyTorch")
        try:
            report = check_parity(folder, reference)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"{str(folder)!r} was written; its parity was not checked") from None
    return ConversionResult(artifact=folder, manifest=manifests.get("decoder", manifests.get("")), report=report,
                            reference=reference, components={r: m for r, m in manifests.items() if r})


Golden = list[tuple[str, dict[str, int], dict[str, Any], dict[str, Any]]]


def _golden(reference: ReferenceModel) -> Golden:
    cases = [(name, sizes, reference.make_inputs(sizes, seed=i)) for i, (name, sizes) in enumerate(reference.shape_cases())]
    return [(name, sizes, inputs, reference.run(inputs)) for name, sizes, inputs in cases]


def _model_info(reference: ReferenceModel | ReferenceBundle, seed: int) -> dict[str, Any]:
    return {"name": reference.name, "task": reference.task, "preset": reference.preset, "seed": seed,
            "source": reference.source, "architecture": reference.architecture}


def _write_artifact(stage: Path, reference: ReferenceModel, golden: Golden, exporter: Exporter, *, target: str,
                    precision: str, opset: int | None, simplify: bool, seed: int, atol: float | None,
                    rtol: float | None, tool_packages: Sequence[str], options: Mapping[str, Any]) -> Manifest:
    """Export one reference into ``stage`` with its golden cases, assets and manifest."""
    tolerance = overridden(exporter.tolerance(reference, precision), atol=atol, rtol=rtol)
    try:
        result = exporter.export(reference, stage, precision=precision, opset=opset, simplify_graph=simplify,
                                 **options)
    except StageError as exc:  # numbered in the exporter's stages, which the error cannot know
        raise exc.numbered(exporter.stages) from exc.__cause__
    for relative, source in reference.assets.items():
        (stage / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, stage / relative)
    manifest = Manifest(
        model=_model_info(reference, seed), target=target, runtime=exporter.runtime, precision=precision,
        model_file=result.model_file, exporter=result.exporter, inputs=reference.input_tensor_specs(),
        outputs=reference.output_tensor_specs([(sizes, outputs) for _, sizes, _, outputs in golden]),
        tolerance=tolerance, logits_outputs=reference.logits_outputs, runtime_options=result.runtime_options,
        golden=[save_golden(stage, name, sizes, inputs, outputs) for name, sizes, inputs, outputs in golden],
        generation=reference.generation, processing=reference.processing,
    )
    return write_manifest(stage, manifest, tool_packages)


def overridden(tolerance: Tolerance, *, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """``tolerance`` with ``atol`` and ``rtol`` replaced where given (None keeps its own)."""
    return replace(tolerance, atol=tolerance.atol if atol is None else atol,
                   rtol=tolerance.rtol if rtol is None else rtol)


def check_parity(folder: str | Path, reference: ReferenceModel | ReferenceBundle | None = None, *,
                 tolerance: Tolerance | None = None, **runner_options: Any) -> ParityReport:
    """Golden cases, plus fresh inputs at every shape case when a reference model is given.

    A bundle is checked component by component; the report's cases are named ``<role>/<case>``.
    """
    reports = {role: _check_one(path, reference, tolerance, runner_options)
               for role, path in component_folders(folder).items()}
    if "" in reports:
        return reports[""]
    first = next(iter(reports.values()))
    cases = [replace(case, case=f"{role}/{case.case}") for role, report in reports.items() for case in report.cases]
    return replace(first, artifact=str(folder), cases=cases)


def _check_one(folder: Path, reference: ReferenceModel | ReferenceBundle | None, tolerance: Tolerance | None,
               runner_options: dict[str, Any]) -> ParityReport:
    runner = load(folder, **runner_options)
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


def _reference(model: Any, example_inputs: Any, *, task: str | None, preset: str, seed: int, allow_pickle: bool,
               dynamic_axes: Any) -> ReferenceModel | ReferenceBundle:
    packages.require_torch("converting")
    from edgeexport.reference import load_reference, reference_from_module

    if isinstance(model, (str, Path)):
        if example_inputs is not None:
            raise UsageError("example_inputs are only for nn.Module models; zoo and folder models make their own")
        return load_reference(model, task=task, preset=preset, seed=seed, allow_pickle=allow_pickle)
    if example_inputs is None:
        raise UsageError(f"converting a {type(model).__name__} module needs example_inputs (tensors by forward() name)")
    return reference_from_module(model, example_inputs, dynamic_axes=dynamic_axes)


def bench(folder: str | Path, *, reference: ReferenceModel | None = None, inputs: Mapping[str, Any] | None = None,
          warmup: int = 3, iterations: int = 20, **runner_options: Any) -> list[LatencyStats]:
    """Latency of the artifact, and of PyTorch eager on the same inputs when a reference is given.

    Inputs default to the golden example case. PyTorch runs first so its row is the baseline
    the table's speed-up refers to.
    """
    runner = load(folder, **runner_options)
    artifact = runner.artifact
    if inputs is None:
        inputs, _ = artifact.load_golden(artifact.manifest.golden[0])
    batch = int(next(iter(inputs.values())).shape[0]) if inputs else 1
    results = []
    if reference is not None:
        def eager() -> None:
            reference.run(inputs)
        results.append(measure(eager, label="pytorch eager", batch=batch, warmup=warmup, iterations=iterations))
    with runner:
        def call() -> float:
            runner(inputs)
            return runner.last_inference_time
        results.append(measure(call, label=f"{artifact.manifest.target} ({runner.label or runner.name}, "
                                            f"{artifact.manifest.precision})",
                               batch=batch, warmup=warmup, iterations=iterations))
    return results


def explain(folder: str | Path, reference: ReferenceModel, report: ParityReport | None = None) -> Localization:
    """Localise the first diverging operation of an ONNX artifact on its first failing golden case
    (the example case when none failed)."""
    from edgeexport.validation.localize import localize

    artifact = open_artifact(folder)
    failed = {c.case for c in (report.cases if report else []) if not c.passed}
    case = next((g for g in artifact.manifest.golden if g.name in failed), artifact.manifest.golden[0])
    inputs, _ = artifact.load_golden(case)
    return localize(artifact, reference, inputs, case=case.name, tolerance=report.tolerance if report else None)


def rebuilt_reference(manifest: Manifest, needed_by: str) -> ReferenceModel | ReferenceBundle:
    """The reference an artifact was converted from (:func:`edgeexport.reference.rebuild_reference`).

    Raises:
        MissingBackendError: torch or transformers is missing; the message starts with ``needed_by``.
    """
    packages.require_torch(needed_by)
    from edgeexport.reference import rebuild_reference

    return rebuild_reference(manifest)


def validate(artifact: str | Path, *, reference: bool = False, atol: float | None = None, rtol: float | None = None,
             threads: int = 0, explain: bool = False, gate: Gate | None = None,
             reports: Sequence[str | Path] = (), verify_key: str | Path | None = None) -> RunReport:
    """Check an artifact (or each component of a bundle) against its golden cases; judge and report the run.

    Args:
        artifact: The artifact or bundle folder.
        reference: Also re-run PyTorch on fresh inputs (needs torch). Defaults to False.
        atol: Override the manifest's absolute tolerance. Defaults to the manifest's.
        rtol: Override the manifest's relative tolerance. Defaults to the manifest's.
        threads: Runtime threads (0 = the runtime's default). Defaults to 0.
        explain: Localise the first diverging op (ONNX, needs torch). It also runs when parity
            fails and torch is installed. Defaults to False.
        gate: What fails the run. Defaults to ``Gate()`` (any parity failure).
        reports: Report files to write; the suffix picks the format (checked before any work).
        verify_key: The signer's public key (PEM): the artifact must carry a valid signature by its
            private key (:mod:`edgeexport.signing`), checked before anything else. Defaults to None.

    Returns:
        The run report: ``parity``, ``localization`` (or None), and ``failures`` under the gate.

    Raises:
        UsageError: a bad report path, artifact or option; MissingBackendError: torch missing for
            ``reference`` or ``explain``.
    """
    if verify_key is not None:
        from edgeexport.signing import verify

        verify(artifact, verify_key)
    paths = check_report_paths(reports)
    opened = open_artifact(next(iter(component_folders(artifact).values())))
    tolerance = overridden(opened.manifest.tolerance, atol=atol, rtol=rtol) if (atol, rtol) != (None, None) else None
    ref = rebuilt_reference(opened.manifest, "--reference") if reference else None
    report = check_parity(artifact, ref, tolerance=tolerance, threads=threads)
    localization = None
    if explain or not report.passed:
        localization = localize_divergence(Path(artifact), opened.manifest, ref, report, requested=explain)
    return _judged("validate", artifact, opened.manifest, gate, paths, parity=report, localization=localization)


def localize_divergence(artifact: Path, manifest: Manifest, reference: ReferenceModel | None, report: ParityReport, *,
                        requested: bool) -> Localization | None:
    """:func:`explain` where it can run: on one ONNX artifact, with torch. Otherwise None, or when
    ``requested`` a one-line error saying why."""
    problem = ""
    if manifest.target != "onnx":
        problem = "divergence localization works on ONNX artifacts"
    elif packages.missing(packages.TORCH):
        if requested:
            packages.require_torch("--explain: divergence localization")
        return None
    elif is_bundle(artifact):
        problem = f"divergence localization works on one artifact; pass a component such as {artifact / 'decoder'}"
    if problem:
        if requested:
            raise UsageError(f"--explain: {problem}")
        return None
    return explain(artifact, reference or rebuilt_reference(manifest, "--explain"), report)


def benchmark(artifact: str | Path, *, reference: bool = False, warmup: int = 3, iterations: int = 20, threads: int = 0,
              gate: Gate | None = None, reports: Sequence[str | Path] = ()) -> RunReport:
    """:func:`bench` on an artifact's golden inputs (and PyTorch eager with ``reference``); judge and report the run.

    Args:
        artifact: The artifact folder.
        reference: Also time PyTorch eager on the same inputs (needs torch). Defaults to False.
        warmup: Untimed warm-up runs. Defaults to 3.
        iterations: Timed runs. Defaults to 20.
        threads: Runtime threads (0 = the runtime's default). Defaults to 0.
        gate: What fails the run (latency regressions against its baseline). Defaults to ``Gate()``.
        reports: Report files to write; the suffix picks the format (checked before any work).
        verify_key: The signer's public key (PEM): the artifact must carry a valid signature by its
            private key (:mod:`edgeexport.signing`), checked before anything else. Defaults to None.

    Returns:
        The run report: ``latency`` (PyTorch first when timed) and ``failures`` under the gate.
    """
    paths = check_report_paths(reports)
    manifest = open_artifact(artifact, verify=False).manifest  # bench verifies before running
    ref = rebuilt_reference(manifest, "--reference") if reference else None
    stats = bench(artifact, reference=ref, warmup=warmup, iterations=iterations, threads=threads)
    return _judged("bench", artifact, manifest, gate, paths, latency=stats)


def _judged(command: str, artifact: str | Path, manifest: Manifest, gate: Gate | None, reports: Sequence[Path],
            **findings: Any) -> RunReport:
    """The run report of ``command`` judged by ``gate``, written to every report path."""
    run = RunReport.create(command, artifact, manifest, gate=gate or Gate(), **findings)
    write_reports(run, reports)
    return run


@dataclass
class Prediction:
    """What :func:`predict` found: the task, the artifact's processing block, one decoded result per row."""

    task: str
    processing: Processing
    results: list[Any]

    def describe(self) -> list[str]:
        """One line per row: labels, spans, boxes, maps or transcripts in words."""
        return [describe(self.task, result, self.processing) for result in self.results]


def predict(artifact: str | Path, *, text: str | None = None, text_pair: str | None = None,
            image: str | Path | None = None, audio: str | Path | None = None, inputs: str | Path | None = None,
            case: str = "example", top_k: int = 5, threshold: float = 0.5, threads: int = 0) -> Prediction:
    """Run an artifact on text, an image, audio or arrays (default: a golden case's inputs) and decode
    what its outputs mean (:func:`edgeexport.processing.decode`). Needs no torch.

    Args:
        artifact: The artifact folder of a task model.
        text: Text to classify (with the artifact's tokenizer); for question answering, the question.
        text_pair: Second text: the context of a question.
        image: Image file (PNG, JPEG; needs Pillow).
        audio: 16-bit PCM WAV file at the model's sampling rate.
        inputs: An ``.npz`` of named model inputs.
        case: Golden case whose inputs to use when no input is given. Defaults to ``example``.
        top_k: Classes per row (classification). Defaults to 5.
        threshold: Lowest score of a kept detection (object detection). Defaults to 0.5.
        threads: Runtime threads (0 = the runtime's default). Defaults to 0.

    Raises:
        UsageError: more than one input source; InputSpecError: inputs the artifact cannot take.
    """
    sources = {"--text": text, "--image": image, "--audio": audio, "--inputs": inputs}
    given = [name for name, value in sources.items() if value is not None]
    if len(given) > 1:
        raise UsageError(f"{', '.join(given)} were given together; pass one input")
    with load(artifact, threads=threads) as runner:
        task, processing = runner.artifact.manifest.model.get("task", ""), Processing.of(runner.artifact.manifest)
        feed, encoded = _predict_inputs(runner.artifact, processing, text=text, text_pair=text_pair, image=image,
                                        audio=audio, inputs=inputs, case=case)
        results = decode(task, runner(feed), processing, top_k=top_k, threshold=threshold, text=encoded)
    return Prediction(task, processing, results)


def _predict_inputs(artifact: Artifact, processing: Processing, *, text: str | None, text_pair: str | None,
                    image: str | Path | None, audio: str | Path | None, inputs: str | Path | None,
                    case: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The model inputs of :func:`predict` (pre-processed text, image or audio, an .npz, or a golden case),
    and the text encoding when text was given."""
    if text is not None:  # the tokenizer gives every text input; the model takes some of them
        encoded = text_inputs(processing, artifact, text, text_pair)
        return {name: encoded[name] for name in artifact.manifest.input_names if name in encoded}, encoded
    if image is not None:
        return image_inputs(processing, image), None
    if audio is not None:
        return audio_inputs(processing, audio), None
    if inputs is not None:
        try:
            return load_npz(inputs), None
        except (OSError, ValueError) as exc:
            raise InputSpecError(f"--inputs {str(inputs)!r} is not a readable .npz of arrays ({exc}); write it with "
                                 "numpy.savez") from None
    golden = {g.name: g for g in artifact.manifest.golden}
    if case not in golden:
        raise InputSpecError(f"the artifact has no golden case {case!r}; choose one of: {', '.join(golden)}")
    return artifact.load_golden(golden[case])[0], None
