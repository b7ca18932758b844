"""TensorRT target: the ONNX target's model, preflighted, plus a build plan; an engine where a GPU is.

Stages (:attr:`TensorrtExporter.stages`):
  1-4. capture, translate, check, simplify and save ``model.onnx`` exactly as the ONNX target
       does, in fp32 (TensorRT applies the precision when it builds) and without onnxruntime's
       contrib-op fusions (TensorRT's parser has none of them); ``model.onnx`` stays in
       the artifact;
  5. preflight the graph against TensorRT's ONNX parser table (:mod:`edgeexport.trt.preflight`);
     an error stops the conversion with a :class:`ConversionError` naming the node and, where
     the dynamo exporter captured the model, the PyTorch module it came from;
  6-7. write the build plan (optimization profile, precision, workspace; for int8 the calibration
     batches) into the manifest, and parse and build ``model.engine`` when tensorrt, cuda-python
     and an NVIDIA GPU are all here (:mod:`edgeexport.trt.build`). Elsewhere the artifact is
     TensorRT-ready: ``edgeexport build ARTIFACT`` builds the engine on the device, and the
     manifest's ``exporter.note`` says so.

The preflight of an existing artifact (``inspect --preflight tensorrt``) is :meth:`TensorrtExporter.preflight`;
with ``locate`` it re-exports the reference to name each problem's PyTorch module (needs torch).
torch is imported where it is used, so this module imports without it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from edgeexport import packages
from edgeexport.artifact import save_npz
from edgeexport.capture import node_origin
from edgeexport.errors import ConversionError, EdgeExportError
from edgeexport.exporter import Exporter, ExportResult, Option
from edgeexport.exporters import onnx as onnx_target
from edgeexport.manifest import Tolerance
from edgeexport.onnxtools.capture import decomposed_program
from edgeexport.trt import build
from edgeexport.trt.cuda import unavailable_reason
from edgeexport.trt.plan import CALIBRATION_DIR, BuildPlan, TensorrtOptions, parse_shapes, parse_size
from edgeexport.trt.preflight import PreflightReport, onnx_file, preflight, with_modules

if TYPE_CHECKING:
    from edgeexport.artifact import Artifact
    from edgeexport.manifest import Manifest
    from edgeexport.reference.model import ReferenceModel

logger = logging.getLogger(__name__)

CALIBRATION_BATCHES = 8


def module_origins(reference: ReferenceModel, *, opset: int | None = None) -> dict[str, str]:
    """ONNX value name -> ``"module.path (Class)"`` for every FX node of the dynamo export.

    Re-exports the reference (the dynamo exporter names ONNX values after FX nodes); returns
    an empty map when the dynamo exporter cannot capture it.
    """
    try:
        program = decomposed_program(reference, opset=opset)
    except EdgeExportError:
        logger.debug("cannot locate modules of %s: the dynamo exporter fails on it", reference.name, exc_info=True)
        return {}
    origins = {}
    for node in program.graph.nodes:
        if node.op == "call_function":
            origin = node_origin(node)
            origins[node.name] = f"{origin.module} ({origin.module_class})"
    return origins


def artifact_origins(manifest: Manifest) -> dict[str, str]:
    """:func:`module_origins` of the reference an artifact was converted from (rebuilt; needs torch)."""
    from edgeexport.reference import rebuild_reference

    return module_origins(rebuild_reference(manifest), opset=manifest.exporter.get("opset"))


def check_graph(reference: ReferenceModel, model_path: Path, exporter: dict[str, Any]) -> PreflightReport:
    """Stage 5: preflight the saved ONNX; locate the modules of any finding (dynamo captures only).

    Raises:
        ConversionError: the preflight found errors; the message names the first and the count.
    """
    model = onnx.load(str(model_path), load_external_data=False)
    report = preflight(model)
    if not report.passed and exporter.get("strategy") == "dynamo":  # the modules serve the error message only
        report = with_modules(report, model.graph, module_origins(reference, opset=exporter.get("opset")))
    if not report.passed:
        first = report.errors[0]
        raise ConversionError("TensorRT preflight", f"{first.describe()} (errors in all: {len(report.errors)}). Next "
                              "steps: convert with --target onnx and run 'edgeexport inspect --preflight tensorrt' on "
                              "it to list every problem", model=reference.name)
    return report


def write_calibration(folder: Path, reference: ReferenceModel, plan: BuildPlan) -> list[str]:
    """int8: seeded reference inputs at the profile's opt sizes, one ``.npz`` per batch; their paths."""
    sizes = {axis: sizes[1] for axis, sizes in plan.axes.items()}
    (folder / CALIBRATION_DIR).mkdir()
    files = [f"{CALIBRATION_DIR}/batch_{i:03d}.npz" for i in range(CALIBRATION_BATCHES)]
    for relative, inputs in zip(files, reference.calibration_inputs(CALIBRATION_BATCHES, sizes)):
        save_npz(folder / relative, inputs)
    return files


class TensorrtExporter(Exporter):
    """Exports ``model.onnx`` with a TensorRT build plan, and ``model.engine`` where a GPU and tensorrt are.

    Precisions: ``fp32`` (TF32 off), ``fp16``, ``bf16`` and ``int8`` (entropy calibration, fp16
    fallback). Options: ``shapes`` (``AXIS:MIN,OPT,MAX`` strings overriding the profile) and
    ``workspace`` (bytes or ``4GiB``; TensorRT's default, the GPU's memory, when None).
    """

    target = "tensorrt"
    runtime = "tensorrt"
    # What the ONNX export needs; tensorrt itself only where the engine is built (the tensorrt extra).
    requires = ("torch", "transformers", "onnxscript", "onnxslim")
    extra = "export"
    tool_packages = ("torch", "transformers", "onnx", "onnxscript", "onnxslim", *build.ENGINE_PACKAGES)
    stages = (*onnx_target.OnnxExporter.stages, "TensorRT preflight", *build.STAGES)
    # Not measured on a GPU (docs/parity.md): fp16 takes the bounds of fp16 arithmetic on onnxruntime;
    # bf16 and int8 are unmeasured placeholders.
    precisions = {
        "fp32": None,
        "fp16": onnx_target.OnnxExporter.precisions["fp16"],
        "bf16": Tolerance(atol=1e-6, rounding=2e-3, max_error=0.5, rms_error=0.05, scale_error=0.02, min_top1=0.9),
        "int8": Tolerance(atol=1e-6, rounding=2e-3, max_error=2.0, rms_error=0.3, scale_error=0.05, min_top1=0.8),
    }
    calibrated_precisions = ("int8",)
    # Checked before any work, so that a typo fails at once.
    options = (
        Option("shapes", list[str], "TensorRT profile of a dynamic axis, AXIS:MIN,OPT,MAX, e.g. batch:1,4,16 "
               "(repeatable); defaults to 1, the example size and 4x it.", check=parse_shapes),
        Option("workspace", str, "TensorRT builder workspace limit, e.g. 4GiB (default: TensorRT's, the GPU's "
               "memory).", check=parse_size),
    )

    def export(self, reference: ReferenceModel, folder: Path, *, precision: str, opset: int | None = None,
               simplify_graph: bool = True, shapes: list[str] | None = None, workspace: int | str | None = None,
               **options: Any) -> ExportResult:
        plan = BuildPlan.derive(reference.input_tensor_specs(), [sizes for _, sizes in reference.shape_cases()],
                                precision=precision, shapes=shapes, workspace=workspace)
        onnx_result = onnx_target.EXPORTER.export(reference, folder, precision="fp32", opset=opset,
                                                  simplify_graph=simplify_graph, fusions=False)
        report = check_graph(reference, folder / onnx_result.model_file, onnx_result.exporter)
        if precision == "int8":
            plan.calibration = write_calibration(folder, reference, plan)
        exporter = {**onnx_result.exporter, "preflight": report.summary()}
        trt_options = TensorrtOptions(onnx_file=onnx_result.model_file, build=plan)
        reason = unavailable_reason()
        if reason:
            exporter["note"] = (f"TensorRT-ready artifact (model.onnx and a build plan), no engine: {reason}. "
                                "Run 'edgeexport build ARTIFACT' on a machine with an NVIDIA GPU and tensorrt")
            return ExportResult(model_file=onnx_result.model_file, exporter=exporter,
                                runtime_options=trt_options.to_dict())
        trt_options.engine = build.build_engine(folder, onnx_result.model_file, plan)
        return ExportResult(model_file=trt_options.engine.file, exporter=exporter,
                            runtime_options=trt_options.to_dict())

    def preflight(self, artifact: Artifact, *, locate: bool = False) -> PreflightReport:
        """Preflight the ONNX model inside an ``onnx`` or ``tensorrt`` artifact.

        Args:
            artifact: The opened artifact.
            locate: Name the PyTorch module of each problem (rebuilds the reference and re-exports it;
                needs torch). Defaults to False.

        Raises:
            UsageError: an artifact without ONNX. MissingBackendError: ``locate`` without torch.
        """
        if locate:
            packages.require_torch("locating PyTorch modules")
        model = onnx.load(str(artifact.file(onnx_file(artifact.manifest))), load_external_data=False)
        report = preflight(model)
        if locate and report.findings:
            report = with_modules(report, model.graph, artifact_origins(artifact.manifest))
        return report


EXPORTER = TensorrtExporter()
