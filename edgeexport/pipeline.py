"""The conversion pipeline: reference -> exporter -> artifact (staged, then renamed) -> validation."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeexport.artifact import (Manifest, Tolerance, check_bound_keys, check_output_dir, save_golden, staged_output,
                                 write_manifest)
from edgeexport.bundle import component_folders, write_bundle
from edgeexport.errors import UsageError
from edgeexport.exporters import Exporter, get_exporter
from edgeexport.validation.latency import LatencyStats, measure
from edgeexport.validation.parity import ParityReport, check_artifact

if TYPE_CHECKING:
    import torch

    from edgeexport.validation.localize import Localization

    from edgeexport.reference.generation import ReferenceBundle
    from edgeexport.reference.model import ReferenceModel

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
            tolerance: Mapping[str, float] | None = None, dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
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
        tolerance: Parity bounds to store instead of the model/precision defaults, by key
            (``atol``, ``max_error``, ``rms_error``, ``scale_error``, ``min_top1``; docs/parity.md).
            Defaults to none.
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
    check_bound_keys(tolerance or {})
    exporter.check_options(target_options or {})
    exporter.check_available()
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
                simplify=simplify, seed=seed, bounds=tolerance or {},
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
                    precision: str, opset: int | None, simplify: bool, seed: int, bounds: Mapping[str, float],
                    options: Mapping[str, Any]) -> Manifest:
    """Export one reference into ``stage`` with its golden cases, assets and manifest."""
    tolerance = exporter.tolerance(reference, precision).overridden(**bounds)
    result = exporter.export(reference, stage, precision=precision, opset=opset, simplify_graph=simplify, **options)
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
    return write_manifest(stage, manifest)


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
    from edgeexport.generation import GenerationSpec
    from edgeexport.runtimes import load

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
    from edgeexport.reference import load_reference, reference_from_module

    if isinstance(model, (str, Path)):
        if example_inputs is not None:
            raise UsageError("example_inputs are only for nn.Module models; zoo and folder models make their own")
        return load_reference(model, task=task, preset=preset, seed=seed, allow_pickle=allow_pickle)
    if example_inputs is None:
        raise UsageError(f"converting a {type(model).__name__} module needs example_inputs (tensors by forward() name)")
    return reference_from_module(model, example_inputs, dynamic_axes=dynamic_axes)


def rebuild_reference(manifest: Manifest) -> ReferenceModel | ReferenceBundle:
    """The reference model an artifact was converted from, rebuilt from its manifest (needs torch)."""
    from edgeexport.reference import load_reference

    info = manifest.model
    source = str(info.get("source", ""))
    if source == "zoo":
        return load_reference(info["name"], task=info["task"], preset=info["preset"], seed=int(info.get("seed", 0)))
    if source.startswith(("folder:", "hub:")):
        return load_reference(source.split(":", 1)[1], task=info["task"])
    raise UsageError(f"the artifact was converted from a Python module ({info.get('name')}); --reference cannot "
                     "rebuild it, call edgeexport.check_parity(artifact, reference) from Python instead")


def bench(folder: str | Path, *, reference: ReferenceModel | None = None, inputs: Mapping[str, Any] | None = None,
          warmup: int = 3, iterations: int = 20, rounds: int = 2, **runner_options: Any) -> list[LatencyStats]:
    """Latency of the artifact, and of PyTorch eager on the same inputs when a reference is given.

    See :func:`compare_latency` (one artifact, its runner given ``runner_options``).
    """
    return compare_latency([folder], reference=reference, inputs=inputs, warmup=warmup, iterations=iterations,
                           rounds=rounds, runner_options=[runner_options])


def compare_latency(folders: Sequence[str | Path], *, reference: ReferenceModel | None = None,
                    inputs: Mapping[str, Any] | None = None, warmup: int = 3, iterations: int = 20, rounds: int = 2,
                    runner_options: Sequence[Mapping[str, Any]] | None = None) -> list[LatencyStats]:
    """Latency of artifacts of one model side by side, and of PyTorch eager when a reference is given.

    Each backend is timed alone in a fresh process (no other runtime's threads alive), at the same
    boundary (numpy in, numpy out), in ``rounds`` alternating rounds whose samples are pooled, so
    drift of a shared machine hits every backend alike. PyTorch comes first: its row is the
    baseline of the speed-ups. A reference converted from a zoo name, folder or hub id is rebuilt
    in its process from the first artifact's manifest; a Python module's reference is timed in
    this process (no runtime session is alive here).

    Args:
        folders: Artifacts taking the same inputs.
        reference: Also time PyTorch eager. Defaults to None.
        inputs: Named inputs. Defaults to the first artifact's golden example case.
        warmup: Untimed runs in each round. Defaults to 3.
        iterations: Timed samples in all, split over the rounds. Defaults to 20.
        rounds: Alternating rounds of all backends. Defaults to 2.
        runner_options: Options of each artifact's runner (threads, ...), in the order of ``folders``.
            Defaults to none.
    """
    from edgeexport.runtimes import open_artifact
    from edgeexport.validation.latency import isolated, time_artifact

    artifacts = [open_artifact(folder) for folder in folders]
    options_list = [dict(options) for options in runner_options or [{}] * len(artifacts)]
    if inputs is None:
        inputs, _ = artifacts[0].load_golden(artifacts[0].manifest.golden[0])
    inputs = dict(inputs)
    per_round = max(1, iterations // rounds)
    timers: list[Callable[[], LatencyStats]] = []
    if reference is not None:
        if artifacts[0].manifest.model.get("source") == "module":
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
    from edgeexport.runtimes import runtime_module

    runner = runtime_module(artifact.manifest.runtime).RUNNER
    return runner.label or runner.name


def _time_eager(folder: str, inputs: dict[str, Any], warmup: int, iterations: int, threads: int) -> LatencyStats:
    """PyTorch eager on ``inputs``, the reference rebuilt from the artifact's manifest (runs in its own process),
    with the runner's thread count when one was given."""
    import torch

    from edgeexport.generation import GenerationSpec
    from edgeexport.runtimes import open_artifact

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
    from edgeexport.runtimes import open_artifact
    from edgeexport.validation.localize import localize

    artifact = open_artifact(folder)
    failed = {c.case for c in (report.cases if report else []) if not c.passed}
    case = next((g for g in artifact.manifest.golden if g.name in failed), artifact.manifest.golden[0])
    inputs, _ = artifact.load_golden(case)
    return localize(artifact, reference, inputs, case=case.name, tolerance=report.tolerance if report else None)
