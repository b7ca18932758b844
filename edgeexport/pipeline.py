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

import numpy as np

from edgeexport import packages
from edgeexport.artifact import (Manifest, Tolerance, check_bound_keys, check_output_dir, load_npz, save_golden,
                                 staged_output, write_manifest)
from edgeexport.bundle import component_folders, is_bundle, write_bundle
from edgeexport.errors import InputSpecError, ModelLoadError, StageError, UsageError
from edgeexport.exporter import Exporter, get_exporter
from edgeexport.generation_spec import GenerationSpec
from edgeexport.processing import (Processing, audio_inputs, cosine_similarities, decode, describe, image_inputs,
                                   text_inputs)
from edgeexport.reporting import Gate, RunReport, check_report_paths, write_reports
from edgeexport.runner import load, open_artifact, runtime_module
from edgeexport.tasks import task_head
from edgeexport.validation.agreement import write_evaluation
from edgeexport.validation.latency import LatencyStats, measure
from edgeexport.validation.metrics import CRITERION
from edgeexport.validation.parity import ParityReport, check_artifact
from edgeexport.zoo import SPECS, model_kind, weights_note, zoo_task

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

    def describe(self) -> str:
        """The folder and what it holds: ``gpt2-gen (onnx, fp32, exporter torch.onnx/dynamo; tiny preset, random
        weights)``; the preset and random weights are named for zoo models only."""
        exporter = self.manifest.exporter
        note = weights_note(self.manifest.model)
        return (f"{self.artifact} ({self.manifest.target}, {self.manifest.precision}, exporter {exporter.get('name')}/"
                f"{exporter.get('strategy')}{f'; {note}' if note else ''})")


def convert(model: str | Path | torch.nn.Module, example_inputs: Mapping[str, Any] | Sequence[Any] | None = None, *,
            target: str = "onnx", output_dir: str | Path | None = None, task: str | None = None, preset: str = "tiny",
            precision: str | None = None, opset: int | None = None, validate: bool = True, force: bool = False,
            tolerance: Mapping[str, float] | None = None, dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
            simplify: bool = True, allow_pickle: bool = False, allow_random_head: bool = False, seed: int = 0,
            target_options: Mapping[str, Any] | None = None, progress: Progress | None = None) -> ConversionResult:
    """Convert a model to an artifact folder for ``target`` and (by default) check its parity.

    Args:
        model: Zoo name, ``save_pretrained`` folder, hub id, or an ``nn.Module`` (then pass ``example_inputs``).
        example_inputs: Tensors by ``forward`` parameter name (or in order), for an ``nn.Module``.
        target: Target name (``edgeexport list`` shows them). Defaults to ``onnx``.
        output_dir: Artifact folder. Defaults to ``./<model>-<task>-<target>-<precision>``, and for a zoo
            model (random weights) ``./<model>-<task>-<target>-<precision>-<preset>-random``.
        task: Task of a zoo model or folder. Defaults to the model's first/declared task.
        preset: ``tiny`` or ``full`` for zoo models. Defaults to ``tiny``.
        precision: Precision of the target model. Defaults to the target's default precision (``fp32``;
            ``fp16`` for coreml). :func:`edgeexport.tuning.tune` (``--precision auto``) tries every
            precision and keeps the fastest at parity.
        opset: ONNX opset. Defaults to the exporter's default.
        validate: Run golden and fresh-shape parity checks after writing. Defaults to True.
        force: Replace a non-empty ``output_dir``. Defaults to False.
        tolerance: Parity bounds to store instead of the model/precision defaults, by key
            (``atol``, ``rounding``, ``max_error``, ``rms_error``, ``scale_error``, ``min_top1``;
            docs/parity.md). Defaults to none.
        dynamic_axes: ``{input: {dim: axis}}`` for an ``nn.Module``.
        simplify: Simplify the graph (onnxslim) where the target supports it. Defaults to True.
        allow_pickle: Allow pickled weights in a model folder. Defaults to False.
        allow_random_head: Convert a folder whose checkpoint lacks some of the task's parameters (a head on a
            base model), which are then random; the manifest names them (``random_head``). Defaults to False.
        seed: Seed of zoo weights. Defaults to 0.
        target_options: Options of the target's exporter (``Exporter.options``; tensorrt: ``shapes``,
            ``workspace``; coreml: ``deployment_target``); None values are unset. Defaults to none.
        progress: Called with a short message before each stage.

    Raises:
        UsageError: bad model, task, target, precision, preset, inputs or output folder (before any work, and
            before torch is imported).
        UnsupportedError: a combination the exporter knows to be broken (:meth:`Exporter.refuse`; before torch
            is imported when the task is known from the arguments).
        CaptureError, ConversionError: export failed; nothing is written.
    """
    exporter = get_exporter(target)
    precision = precision or exporter.default_precision
    exporter.check_precision(precision)
    reference, folder, options = prepare(
        model, example_inputs, exporter, precision, output_dir=output_dir, task=task, preset=preset, opset=opset,
        force=force, tolerance=tolerance, dynamic_axes=dynamic_axes, simplify=simplify, allow_pickle=allow_pickle,
        allow_random_head=allow_random_head, seed=seed, target_options=target_options, progress=progress)
    return export_reference(reference, exporter, folder, options, precision=precision, validate=validate, force=force,
                            progress=progress)


def prepare(model: str | Path | torch.nn.Module, example_inputs: Mapping[str, Any] | Sequence[Any] | None,
            exporter: Exporter, precision: str, *, output_dir: str | Path | None, task: str | None, preset: str,
            opset: int | None, force: bool, tolerance: Mapping[str, float] | None,
            dynamic_axes: Mapping[str, Mapping[int, str]] | None, simplify: bool, allow_pickle: bool, seed: int,
            target_options: Mapping[str, Any] | None, progress: Progress | None,
            allow_random_head: bool = False) -> tuple[ReferenceModel | ReferenceBundle, Path, Export]:
    """Check a conversion's arguments and refuse a known broken combination (before torch is imported), then
    build its reference.

    Returns the reference, the artifact folder (``precision`` names the default one) and the
    options every export of it shares. Raises :class:`UsageError` as :func:`convert` documents.
    """
    options = Export.create(opset=opset, simplify=simplify, seed=seed, tolerance=tolerance,
                            target_options=target_options)
    exporter.check_options(target_options or {})
    zoo_model_task = _checked_zoo_task(model, task, preset)
    if zoo_model_task or task:  # a known broken combination is refused before torch is imported
        exporter.refuse(str(model), zoo_model_task or task, precision)
    if output_dir is None and zoo_model_task is not None:
        output_dir = default_folder(str(model), zoo_model_task, exporter.target, precision, preset=preset)
    if output_dir is not None:
        check_output_dir(Path(output_dir), force=force)
    exporter.check_available()
    (progress or (lambda _message: None))("building the PyTorch reference")
    reference = _reference(model, example_inputs, task=task, preset=preset, seed=seed, allow_pickle=allow_pickle,
                           allow_random_head=allow_random_head, dynamic_axes=dynamic_axes)
    folder = Path(output_dir or default_folder(reference.name, reference.task, exporter.target, precision))
    return reference, folder, options


@dataclass(frozen=True)
class Export:
    """The options of one conversion that every candidate precision shares (:func:`export_reference`)."""

    opset: int | None = None
    simplify: bool = True
    seed: int = 0
    bounds: dict[str, float] = field(default_factory=dict)
    target_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, *, opset: int | None, simplify: bool, seed: int, tolerance: Mapping[str, float] | None,
               target_options: Mapping[str, Any] | None) -> Export:
        """The options as given (bound keys checked; target options left unset, None, dropped)."""
        check_bound_keys(tolerance or {})
        return cls(opset=opset, simplify=simplify, seed=seed, bounds=dict(tolerance or {}),
                   target_options={k: v for k, v in (target_options or {}).items() if v is not None})


def export_reference(reference: ReferenceModel | ReferenceBundle, exporter: Exporter, folder: Path, options: Export, *,
                     precision: str, validate: bool = True, force: bool = False,
                     progress: Progress | None = None) -> ConversionResult:
    """Export a built reference to ``folder`` (staged, then renamed) at ``precision`` and check its parity.

    Raises:
        UnsupportedError: the exporter refuses the model at this precision (before any export).
        CaptureError, ConversionError: export failed; nothing is written.
    """
    say = progress or (lambda _message: None)
    target = exporter.target
    tool_packages = (*exporter.tool_packages, *runtime_module(exporter.runtime).RUNNER.tool_packages)
    exporter.refuse(reference.name, reference.task, precision)
    components = getattr(reference, "components", {"": reference})
    say("running the reference on the golden inputs and the evaluation set")
    golden = {role: _golden(component) for role, component in components.items()}
    evaluation = {role: _evaluation(component) for role, component in components.items()}
    with staged_output(folder, force=force) as stage:
        manifests = {}
        for role, component in components.items():
            say(f"exporting {role or 'the model'} to {target} ({precision})")
            (stage / role).mkdir(exist_ok=True)
            manifests[role] = _write_artifact(stage / role, component, golden[role], exporter, precision=precision,
                                              options=options, tool_packages=tool_packages,
                                              evaluation=evaluation[role])
        if "" not in components:
            write_bundle(stage, list(components), _model_info(reference, options.seed))
    report = None
    if validate:
        say("checking parity against PyTorch")
        try:
            report = check_parity(folder, reference)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"{str(folder)!r} was written; its parity was not checked") from None
    return ConversionResult(artifact=folder, manifest=manifests.get("decoder", manifests.get("")), report=report,
                            reference=reference, components={r: m for r, m in manifests.items() if r})


def _checked_zoo_task(model: Any, task: str | None, preset: str) -> str | None:
    """Check a model argument without torch: a zoo name with its task and preset, a folder that exists, a
    task name. Returns a zoo model's task; None for folders, hub ids and modules."""
    if not isinstance(model, (str, Path)):
        return None
    if model_kind(str(model)) == "zoo":
        return zoo_task(SPECS[str(model)], task, preset)
    if task is not None:
        task_head(task)
    return None


def default_folder(name: str, task: str, target: str, precision: str, *, preset: str | None = None) -> Path:
    """``<name>-<task>-<target>-<precision>``; a zoo model's (``preset`` given) ends ``-<preset>-random``, as
    its weights are."""
    return Path("-".join([name, task, target, precision, *([preset, "random"] if preset else [])]))


Golden = list[tuple[str, dict[str, int], dict[str, Any], dict[str, Any]]]


def _golden(reference: ReferenceModel) -> Golden:
    cases = [(name, sizes, reference.make_inputs(sizes, seed=i)) for i, (name, sizes) in enumerate(reference.shape_cases())]
    return [(name, sizes, inputs, reference.run(inputs)) for name, sizes, inputs in cases]


Evaluation = tuple[list[str], np.ndarray] | None


def _evaluation(reference: ReferenceModel) -> Evaluation:
    """The held-out sentences and the reference's task view of them (:mod:`edgeexport.validation.agreement`), for
    a trained text model whose task has agreement criteria; None for any other."""
    from edgeexport.validation.agreement import CRITERIA, evaluation_feed, task_view

    text = getattr(reference, "text", None)  # a bundle's components have none
    if text is None or reference.task not in CRITERIA:
        return None
    from edgeexport.reference.sentences import split

    texts = [sentence for sentence, _ in split("evaluation")]
    feed = evaluation_feed(Processing.from_dict(reference.processing), text.load(), texts, reference.input_names)
    outputs = reference.run({name: feed[name] for name in reference.input_names})
    return texts, task_view(reference.task, outputs, feed["attention_mask"])


def _model_info(reference: ReferenceModel | ReferenceBundle, seed: int) -> dict[str, Any]:
    fixed = getattr(reference, "fixed_shape_reason", "")  # a bundle (decoder with past) has none
    return {"name": reference.name, "task": reference.task, "preset": reference.preset, "seed": seed,
            "source": reference.source, "architecture": reference.architecture,
            **({"fixed_shape": fixed} if fixed else {}), **reference.details}


def _write_artifact(stage: Path, reference: ReferenceModel, golden: Golden, exporter: Exporter, *, precision: str,
                    options: Export, tool_packages: Sequence[str], evaluation: Evaluation = None) -> Manifest:
    """Export one reference into ``stage`` with its golden cases, evaluation set, assets and manifest."""
    tolerance = exporter.tolerance(reference, precision).overridden(**options.bounds)
    try:
        result = exporter.export(reference, stage, precision=precision, opset=options.opset,
                                 simplify_graph=options.simplify, **options.target_options)
    except StageError as exc:  # numbered in the exporter's stages, which the error cannot know
        raise exc.numbered(exporter.stages) from exc.__cause__
    for relative, source in reference.assets.items():
        (stage / relative).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            (stage / relative).write_bytes(source)
        else:
            shutil.copyfile(source, stage / relative)
    manifest = Manifest(
        model=_model_info(reference, options.seed), target=exporter.target, runtime=exporter.runtime, precision=precision,
        model_file=result.model_file, exporter=result.exporter, inputs=reference.input_tensor_specs(),
        outputs=reference.output_tensor_specs([(sizes, outputs) for _, sizes, _, outputs in golden]),
        tolerance=tolerance, logits_outputs=reference.logits_outputs, runtime_options=result.runtime_options,
        golden=[save_golden(stage, name, sizes, inputs, outputs) for name, sizes, inputs, outputs in golden],
        generation=reference.generation, processing=reference.processing,
        evaluation=write_evaluation(stage, reference.task, *evaluation) if evaluation else {},
        criterion=dict(CRITERION),
    )
    return write_manifest(stage, manifest, tool_packages)


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
               allow_random_head: bool, dynamic_axes: Any) -> ReferenceModel | ReferenceBundle:
    packages.require_torch("converting")
    from edgeexport.reference import load_reference, reference_from_module

    if isinstance(model, (str, Path)):
        if example_inputs is not None:
            raise UsageError("example_inputs are only for nn.Module models; zoo and folder models make their own")
        return load_reference(model, task=task, preset=preset, seed=seed, allow_pickle=allow_pickle,
                              allow_random_head=allow_random_head)
    if example_inputs is None:
        raise UsageError(f"converting a {type(model).__name__} module needs example_inputs (tensors by forward() name)")
    return reference_from_module(model, example_inputs, dynamic_axes=dynamic_axes)


def bench(folder: str | Path, *, reference: ReferenceModel | bool = False, inputs: Mapping[str, Any] | None = None,
          warmup: int = 3, iterations: int = 20, rounds: int = 2, **runner_options: Any) -> list[LatencyStats]:
    """Latency of the artifact, and of PyTorch eager on the same inputs when a reference is given.

    See :func:`compare_latency` (one artifact, its runner given ``runner_options``).
    """
    return compare_latency([folder], reference=reference, inputs=inputs, warmup=warmup, iterations=iterations,
                           rounds=rounds, runner_options=[runner_options])


def compare_latency(folders: Sequence[str | Path], *, reference: ReferenceModel | bool = False,
                    inputs: Mapping[str, Any] | None = None, warmup: int = 3, iterations: int = 20, rounds: int = 2,
                    runner_options: Sequence[Mapping[str, Any]] | None = None) -> list[LatencyStats]:
    """Latency of artifacts of one model side by side, and of PyTorch eager when a reference is given.

    Each backend is timed alone in a fresh process (no other runtime's threads alive), at the same
    boundary (numpy in, numpy out), in ``rounds`` alternating rounds whose samples are pooled, so
    drift of a shared machine hits every backend alike. PyTorch comes first: its row is the
    baseline of the speed-ups. A model converted from a zoo name, folder or hub id is rebuilt in
    its own process from the first artifact's manifest; a Python module's reference is timed in
    this process (no runtime session is alive here).

    Args:
        folders: Artifacts taking the same inputs.
        reference: Also time PyTorch eager: True, or the reference model (needed for a Python
            module's artifact). Defaults to False.
        inputs: Named inputs. Defaults to the first artifact's golden example case.
        warmup: Untimed runs in each round. Defaults to 3.
        iterations: Timed samples in all, split over the rounds. Defaults to 20.
        rounds: Alternating rounds of all backends. Defaults to 2.
        runner_options: Options of each artifact's runner (threads, ...), in the order of ``folders``.
            Defaults to none.
    """
    from edgeexport.validation.latency import isolated, time_artifact

    artifacts = [open_artifact(folder) for folder in folders]
    options_list = [dict(options) for options in runner_options or [{}] * len(artifacts)]
    if inputs is None:
        inputs, _ = artifacts[0].load_golden(artifacts[0].manifest.golden[0])
    inputs = dict(inputs)
    per_round = max(1, iterations // rounds)
    timers: list[Callable[[], LatencyStats]] = []
    if reference is not False:
        if artifacts[0].manifest.model.get("source") == "module" and not isinstance(reference, bool):
            timers.append(lambda: measure(lambda: reference.run(inputs), label=EAGER, batch=_batch(inputs),
                                          warmup=warmup, iterations=per_round))
        else:
            threads = int(options_list[0].get("threads") or 0)
            timers.append(lambda: isolated(_time_eager, str(folders[0]), inputs, warmup, per_round, threads))
    for artifact, options in zip(artifacts, options_list):
        label = f"{artifact.manifest.target} ({_runner_label(artifact)}, {artifact.manifest.precision})"
        timers.append(lambda path=str(artifact.path), label=label, options=options: isolated(
            time_artifact, path, label, inputs, warmup, per_round, options))
    results: list[LatencyStats | None] = [None] * len(timers)
    for _ in range(rounds):
        for index, timer in enumerate(timers):
            stats = timer()
            results[index] = stats if results[index] is None else results[index].merged(stats)
    return [r for r in results if r is not None]


EAGER = "pytorch eager"


def _runner_label(artifact: Any) -> str:
    runner = runtime_module(artifact.manifest.runtime).RUNNER
    return runner.label or runner.name


def _time_eager(folder: str, inputs: dict[str, Any], warmup: int, iterations: int, threads: int) -> LatencyStats:
    """PyTorch eager on ``inputs``, the reference rebuilt from the artifact's manifest (runs in its own process),
    with the runner's thread count when one was given."""
    import torch

    from edgeexport.reference import rebuild_reference

    if threads:
        torch.set_num_threads(threads)
    manifest = open_artifact(folder, verify=False).manifest
    reference = rebuild_reference(manifest)
    if hasattr(reference, "components"):
        reference = reference.components[GenerationSpec.of(manifest).role]
    return measure(lambda: reference.run(inputs), label=EAGER, batch=_batch(inputs), warmup=warmup,
                   iterations=iterations)


def _batch(inputs: Mapping[str, Any]) -> int:
    return int(next(iter(inputs.values())).shape[0]) if inputs else 1


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


def validate(artifact: str | Path, *, reference: bool = False, tolerance: Mapping[str, float] | None = None,
             threads: int = 0, explain: bool = False, gate: Gate | None = None,
             reports: Sequence[str | Path] = (), verify_key: str | Path | None = None) -> RunReport:
    """Check an artifact (or each component of a bundle) against its golden cases; judge and report the run.

    Args:
        artifact: The artifact or bundle folder.
        reference: Also re-run PyTorch on fresh inputs (needs torch). Defaults to False.
        tolerance: Bounds replacing the manifest's, by key (docs/parity.md). Defaults to the manifest's.
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
    bounds = opened.manifest.tolerance.overridden(**tolerance) if tolerance else None
    ref = rebuilt_reference(opened.manifest, "--reference") if reference else None
    report = check_parity(artifact, ref, tolerance=bounds, threads=threads)
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
    if reference is None:
        try:
            reference = rebuilt_reference(manifest, "--explain")
        except ModelLoadError:
            if requested:
                raise
            return None  # the source folder is elsewhere: the verdict stands without localization
    return explain(artifact, reference, report)


def benchmark(artifact: str | Path, *, reference: bool = False, warmup: int = 3, iterations: int = 20, rounds: int = 2,
              threads: int = 0, gate: Gate | None = None, reports: Sequence[str | Path] = ()) -> RunReport:
    """:func:`bench` on an artifact's golden inputs (and PyTorch eager with ``reference``); judge and report the run.

    Args:
        artifact: The artifact folder.
        reference: Also time PyTorch eager on the same inputs (needs torch). Defaults to False.
        warmup: Untimed warm-up runs in each round. Defaults to 3.
        iterations: Timed samples in all. Defaults to 20.
        rounds: Alternating rounds of the backends, each in its own process. Defaults to 2.
        threads: Runtime threads (0 = the runtime's default), PyTorch's too. Defaults to 0.
        gate: What fails the run (latency regressions against its baseline). Defaults to ``Gate()``.
        reports: Report files to write; the suffix picks the format (checked before any work).

    Returns:
        The run report: ``latency`` (PyTorch first when timed) and ``failures`` under the gate.
    """
    paths = check_report_paths(reports)
    manifest = open_artifact(artifact, verify=False).manifest  # bench verifies before running
    if reference:
        packages.require_torch("--reference")
    stats = bench(artifact, reference=reference, warmup=warmup, iterations=iterations, rounds=rounds, threads=threads)
    return _judged("bench", artifact, manifest, gate, paths, latency=stats)


def _judged(command: str, artifact: str | Path, manifest: Manifest, gate: Gate | None, reports: Sequence[Path],
            **findings: Any) -> RunReport:
    """The run report of ``command`` judged by ``gate``, written to every report path."""
    run = RunReport.create(command, artifact, manifest, gate=gate or Gate(), **findings)
    write_reports(run, reports)
    return run


@dataclass
class Prediction:
    """What :func:`predict` found: the task, the artifact's processing block, one decoded result per row, and
    for several texts embedded together their pairwise cosine similarities."""

    task: str
    processing: Processing
    results: list[Any]
    similarity: list[list[float]] | None = None

    def describe(self) -> list[str]:
        """One line per row: labels, spans, boxes, maps or transcripts in words; then one per pair of embedded
        texts: their cosine similarity."""
        lines = [f"[{row}] {describe(self.task, result, self.processing)}" for row, result in enumerate(self.results)]
        pairs = [(a, b) for a in range(len(self.similarity or [])) for b in range(a + 1, len(self.similarity or []))]
        return lines + [f"cosine similarity [{a}] [{b}]: {self.similarity[a][b]:.4f}" for a, b in pairs]

    def to_json(self) -> Any:
        """The decoded rows, with the similarity matrix beside them when texts were embedded together."""
        if self.similarity is None:
            return self.results
        return {"embeddings": self.results, "cosine_similarity": self.similarity}


def predict(artifact: str | Path, *, text: str | Sequence[str] | None = None, text_pair: str | None = None,
            image: str | Path | None = None, audio: str | Path | None = None, inputs: str | Path | None = None,
            case: str = "example", classes: int = 5, threshold: float = 0.5, threads: int = 0) -> Prediction:
    """Run an artifact on text, an image, audio or arrays (default: a golden case's inputs) and decode
    what its outputs mean (:func:`edgeexport.processing.decode`). Needs no torch.

    Args:
        artifact: The artifact folder of a task model.
        text: Text to classify or embed (with the artifact's tokenizer); for question answering, the question.
            Several texts (sentence-embedding artifacts) are embedded together and compared.
        text_pair: Second text: the context of a question.
        image: Image file (PNG, JPEG).
        audio: 16-bit PCM WAV file at the model's sampling rate.
        inputs: An ``.npz`` of named model inputs.
        case: Golden case whose inputs to use when no input is given. Defaults to ``example``.
        classes: Classes per row, most likely first (classification). Defaults to 5.
        threshold: Lowest score of a kept detection (object detection). Defaults to 0.5.
        threads: Runtime threads (0 = the runtime's default). Defaults to 0.

    Raises:
        UsageError: more than one input source, or several texts for a task that takes one;
            InputSpecError: inputs the artifact cannot take.
    """
    texts = [text] if isinstance(text, str) else list(text or [])
    sources = {"--text": texts or None, "--image": image, "--audio": audio, "--inputs": inputs}
    given = [name for name, value in sources.items() if value is not None]
    if len(given) > 1:
        raise UsageError(f"{', '.join(given)} were given together; pass one input")
    with load(artifact, threads=threads) as runner:
        task, processing = runner.artifact.manifest.model.get("task", ""), Processing.of(runner.artifact.manifest)
        if task == "sentence-embedding" and texts:
            results = decode(task, {"sentence_embedding": runner.embed(texts)}, processing)
            return Prediction(task, processing, results, similarity=cosine_similarities(np.array(results)).tolist())
        if len(texts) > 1:
            raise UsageError(f"--text was given {len(texts)} times; a {task} artifact takes one text (several texts "
                             "are for sentence-embedding artifacts)")
        feed, encoded = _predict_inputs(runner.artifact, processing, text=texts[0] if texts else None,
                                        text_pair=text_pair, image=image, audio=audio, inputs=inputs, case=case)
        results = decode(task, runner(feed), processing, top_k=classes, threshold=threshold, text=encoded)
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
