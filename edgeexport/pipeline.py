"""The conversion pipeline: reference -> exporter -> artifact (staged, then renamed) -> validation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeexport.artifact import Manifest, Tolerance, check_output_dir, save_golden, staged_output, write_manifest
from edgeexport.errors import UsageError
from edgeexport.exporters import get_exporter
from edgeexport.validation.latency import LatencyStats, measure
from edgeexport.validation.parity import ParityReport, check_artifact

if TYPE_CHECKING:
    import torch

    from edgeexport.reference.model import ReferenceModel

Progress = Callable[[str], None]
FRESH_SEED = 1000


@dataclass
class ConversionResult:
    """What :func:`convert` produced. ``report`` is None when validation was skipped."""

    artifact: Path
    manifest: Manifest
    report: ParityReport | None
    reference: ReferenceModel


def convert(model: str | Path | torch.nn.Module, example_inputs: Mapping[str, Any] | Sequence[Any] | None = None, *,
            target: str = "onnx", output_dir: str | Path | None = None, task: str | None = None, preset: str = "tiny",
            precision: str = "fp32", opset: int | None = None, validate: bool = True, force: bool = False,
            atol: float | None = None, rtol: float | None = None, dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
            simplify: bool = True, allow_pickle: bool = False, seed: int = 0,
            progress: Progress | None = None) -> ConversionResult:
    """Convert a model to an artifact folder for ``target`` and (by default) check its parity.

    Args:
        model: Zoo name, ``save_pretrained`` folder, hub id, or an ``nn.Module`` (then pass ``example_inputs``).
        example_inputs: Tensors by ``forward`` parameter name (or in order), for an ``nn.Module``.
        target: Target name (``edgeexport list`` shows them). Defaults to ``onnx``.
        output_dir: Artifact folder. Defaults to ``./<model>-<task>-<target>-<precision>``.
        task: Task of a zoo model or folder. Defaults to the model's first/declared task.
        preset: ``tiny`` or ``full`` for zoo models. Defaults to ``tiny``.
        precision: Precision of the target model. Defaults to ``fp32``.
        opset: ONNX opset. Defaults to the exporter's default.
        validate: Run golden and fresh-shape parity checks after writing. Defaults to True.
        force: Replace a non-empty ``output_dir``. Defaults to False.
        atol: Absolute tolerance stored in the manifest. Defaults to the model/precision default.
        rtol: Relative tolerance stored in the manifest. Defaults to the model/precision default.
        dynamic_axes: ``{input: {dim: axis}}`` for an ``nn.Module``.
        simplify: Simplify the graph (onnxslim) where the target supports it. Defaults to True.
        allow_pickle: Allow pickled weights in a model folder. Defaults to False.
        seed: Seed of zoo weights. Defaults to 0.
        progress: Called with a short message before each stage.

    Raises:
        UsageError: bad model, task, target, precision, inputs or output folder (before any work).
        CaptureError, ConversionError: export failed; nothing is written.
    """
    say = progress or (lambda _message: None)
    exporter = get_exporter(target)
    exporter.check_precision(precision)
    exporter.check_available()
    if output_dir is not None:
        check_output_dir(Path(output_dir), force=force)
    say("building the PyTorch reference")
    reference = _reference(model, example_inputs, task=task, preset=preset, seed=seed, allow_pickle=allow_pickle,
                           dynamic_axes=dynamic_axes)
    folder = Path(output_dir or f"{reference.name}-{reference.task}-{target}-{precision}")
    default_tolerance = exporter.tolerance(reference, precision)
    tolerance = Tolerance(atol if atol is not None else default_tolerance.atol,
                          rtol if rtol is not None else default_tolerance.rtol, default_tolerance.per_output)
    say("running the reference on the golden inputs")
    cases = [(name, sizes, reference.make_inputs(sizes, seed=i)) for i, (name, sizes) in enumerate(reference.shape_cases())]
    golden = [(name, sizes, inputs, reference.run(inputs)) for name, sizes, inputs in cases]
    with staged_output(folder, force=force) as stage:
        say(f"exporting to {target} ({precision})")
        result = exporter.export(reference, stage, precision=precision, opset=opset, simplify_graph=simplify)
        say("writing the artifact")
        manifest = Manifest(
            model={"name": reference.name, "task": reference.task, "preset": reference.preset, "seed": seed,
                   "source": reference.source, "architecture": reference.architecture},
            target=target, runtime=exporter.runtime, precision=precision, model_file=result.model_file,
            exporter=result.exporter, inputs=reference.input_tensor_specs(),
            outputs=reference.output_tensor_specs([(sizes, outputs) for _, sizes, _, outputs in golden]),
            tolerance=tolerance, logits_outputs=reference.logits_outputs, runtime_options=result.runtime_options,
            golden=[save_golden(stage, name, sizes, inputs, outputs) for name, sizes, inputs, outputs in golden],
        )
        write_manifest(stage, manifest)
    report = None
    if validate:
        say("checking parity against PyTorch")
        report = check_parity(folder, reference)
    return ConversionResult(artifact=folder, manifest=manifest, report=report, reference=reference)


def check_parity(folder: str | Path, reference: ReferenceModel | None = None, *, tolerance: Tolerance | None = None,
                 **runner_options: Any) -> ParityReport:
    """Golden cases, plus fresh inputs at every shape case when a reference model is given."""
    from edgeexport.runtimes import load

    runner = load(folder, **runner_options)
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
               dynamic_axes: Any) -> ReferenceModel:
    from edgeexport.reference import load_reference, reference_from_module

    if isinstance(model, (str, Path)):
        if example_inputs is not None:
            raise UsageError("example_inputs are only for nn.Module models; zoo and folder models make their own")
        return load_reference(model, task=task, preset=preset, seed=seed, allow_pickle=allow_pickle)
    if example_inputs is None:
        raise UsageError(f"converting a {type(model).__name__} module needs example_inputs (tensors by forward() name)")
    return reference_from_module(model, example_inputs, dynamic_axes=dynamic_axes)


def rebuild_reference(manifest: Manifest) -> ReferenceModel:
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


def bench(folder: str | Path, *, reference: ReferenceModel | None = None, warmup: int = 3, iterations: int = 20,
          **runner_options: Any) -> list[LatencyStats]:
    """Latency of the artifact on its golden example inputs, and of PyTorch eager when a reference is given.

    PyTorch runs first so its row is the baseline the table's speed-up refers to.
    """
    from edgeexport.runtimes import load

    runner = load(folder, **runner_options)
    artifact = runner.artifact
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
