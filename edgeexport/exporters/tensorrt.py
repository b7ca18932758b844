"""TensorRT target: the ONNX target's model, preflighted, plus a build plan; an engine where a GPU is.

Stages:
  1-2. capture, check, simplify and save ``model.onnx`` exactly as the ONNX target does, in fp32
       (TensorRT applies the precision when it builds); ``model.onnx`` stays in the artifact;
  3. preflight the graph against TensorRT's ONNX parser table (:mod:`edgeexport.trt.preflight`);
     an error stops the conversion with a :class:`ConversionError` naming the node and, where
     the dynamo exporter captured the model, the PyTorch module it came from;
  4. write the build plan (optimization profile, precision, workspace; for int8 the calibration
     batches) into the manifest, and build ``model.engine`` when tensorrt, cuda-python and an
     NVIDIA GPU are all here (:mod:`edgeexport.trt.build`). Elsewhere the artifact is
     TensorRT-ready: ``edgeexport build ARTIFACT`` builds the engine on the device, and the
     manifest's ``exporter.note`` says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx

from edgeexport.artifact import Tolerance, save_npz
from edgeexport.errors import ConversionError, EdgeExportError
from edgeexport.exporters import onnx as onnx_target
from edgeexport.exporters.base import Exporter, ExportResult
from edgeexport.reference.model import ReferenceModel
from edgeexport.trt.cuda import unavailable_reason
from edgeexport.trt.plan import CALIBRATION_DIR, BuildPlan, TensorrtOptions, parse_shapes, parse_size
from edgeexport.trt.preflight import PreflightReport, preflight, with_modules

logger = logging.getLogger(__name__)

CALIBRATION_BATCHES = 8
CALIBRATION_SEED = 500  # away from the golden (0, 1) and fresh (1000+) seeds


def module_origins(reference: ReferenceModel, *, opset: int | None = None) -> dict[str, str]:
    """ONNX value name -> ``"module.path (Class)"`` for every FX node of the dynamo export.

    Re-exports the reference (the dynamo exporter names ONNX values after FX nodes); returns
    an empty map when the dynamo exporter cannot capture it.
    """
    try:
        program = onnx_target.decomposed_program(reference, opset=opset)
    except EdgeExportError:
        logger.debug("cannot locate modules of %s: the dynamo exporter fails on it", reference.name, exc_info=True)
        return {}
    origins = {}
    for node in program.graph.nodes:
        if node.op == "call_function":
            origin = onnx_target.node_origin(node)
            origins[node.name] = f"{origin.module} ({origin.module_class})"
    return origins


def check_graph(reference: ReferenceModel, model_path: Path, exporter: dict[str, Any]) -> PreflightReport:
    """Stage 3: preflight the saved ONNX; locate the modules of any finding (dynamo captures only).

    Raises:
        ConversionError: the preflight found errors; the message names the first and the count.
    """
    model = onnx.load(str(model_path), load_external_data=False)
    report = preflight(model)
    if not report.passed and exporter.get("strategy") == "dynamo":  # the modules serve the error message only
        report = with_modules(report, model.graph, module_origins(reference, opset=exporter.get("opset")))
    if not report.passed:
        first = report.errors[0]
        raise ConversionError(f"stage 3/4 (TensorRT preflight) failed for {reference.name}: {first.describe()} "
                              f"(errors in all: {len(report.errors)}). Next steps: convert with --target onnx and run "
                              "'edgeexport inspect --target tensorrt' on it to list every problem")
    return report


def write_calibration(folder: Path, reference: ReferenceModel, plan: BuildPlan) -> list[str]:
    """int8: seeded reference inputs at the profile's opt sizes, one ``.npz`` per batch; their paths."""
    sizes = {axis: sizes[1] for axis, sizes in plan.axes.items()}
    (folder / CALIBRATION_DIR).mkdir()
    files = [f"{CALIBRATION_DIR}/batch_{i:03d}.npz" for i in range(CALIBRATION_BATCHES)]
    for i, relative in enumerate(files):
        save_npz(folder / relative, reference.make_inputs(sizes, seed=CALIBRATION_SEED + i))
    return files


class TensorrtExporter(Exporter):
    """Exports ``model.onnx`` with a TensorRT build plan, and ``model.engine`` where a GPU and tensorrt are.

    Precisions: ``fp32`` (TF32 off), ``fp16``, ``bf16`` and ``int8`` (entropy calibration, fp16
    fallback). Options: ``shapes`` (``AXIS:MIN,OPT,MAX`` strings overriding the profile) and
    ``workspace`` (bytes or ``4GiB``; TensorRT's default, the GPU's memory, when None).
    """

    target = "tensorrt"
    runtime = "tensorrt"
    requires = onnx_target.OnnxExporter.requires  # tensorrt itself only where the engine is built
    # Not yet measured on a GPU: fp16 as the ONNX target's; bf16 and int8 judged statistically too.
    precisions = {
        "fp32": None,
        "fp16": onnx_target.OnnxExporter.precisions["fp16"],
        "bf16": Tolerance(atol=1e-6, rounding=2e-3, max_error=0.5, rms_error=0.05, scale_error=0.02, min_top1=0.9),
        "int8": Tolerance(atol=1e-6, rounding=2e-3, max_error=2.0, rms_error=0.3, scale_error=0.05, min_top1=0.8),
    }
    options = ("shapes", "workspace")

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Also parse ``shapes`` and ``workspace``, so that a typo fails before any work."""
        super().check_options(options)
        parse_shapes(options.get("shapes") or [])
        parse_size(options.get("workspace"))

    def export(self, reference: ReferenceModel, folder: Path, *, precision: str, opset: int | None = None,
               simplify_graph: bool = True, shapes: list[str] | None = None, workspace: int | str | None = None,
               **options: Any) -> ExportResult:
        plan = BuildPlan.derive(reference.input_tensor_specs(), [sizes for _, sizes in reference.shape_cases()],
                                precision=precision, shapes=shapes, workspace=workspace)
        onnx_result = onnx_target.EXPORTER.export(reference, folder, precision="fp32", opset=opset,
                                                  simplify_graph=simplify_graph)
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
        from edgeexport.trt.build import build_engine

        trt_options.engine = build_engine(folder, onnx_result.model_file, plan)
        return ExportResult(model_file=trt_options.engine.file, exporter=exporter,
                            runtime_options=trt_options.to_dict())


EXPORTER = TensorrtExporter()
