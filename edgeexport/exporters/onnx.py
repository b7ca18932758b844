"""ONNX target: torch.export + torch.onnx (TorchScript exporter as fallback), checked, simplified, fp16.

Stages (:attr:`OnnxExporter.stages`), each with its own error class:
  1. capture with ``torch.export`` (:class:`CaptureError`);
  2. translate to ONNX with ``torch.onnx.export`` (:class:`ConversionError` naming the op and
     the PyTorch module that produced it). Strategies (dynamo, then TorchScript) are tried in
     order; the winner and the first failure are recorded in the manifest;
  3. ``onnx.checker`` on the captured model (:class:`ConversionError`) and shape inference where
     the capture recorded none, then optional onnxslim simplification,
     onnxruntime contrib-op fusions (``optimize_for_ort``; fp32 and fp16, on by default, falling
     back to the unfused graph with the reason recorded) and fp16 weights/compute (onnxruntime's
     float16 converter, fp32 inputs/outputs kept), int8/int4 weights (MatMulNBits) or static
     int8 (QDQ, onnxruntime's quantizer calibrated on reference inputs);
  4. save, the weights in ``model.onnx.data`` above :data:`edgeexport.onnxtools.passes.EXTERNAL_DATA_THRESHOLD`.

The capture strategies live in :mod:`edgeexport.onnxtools.capture` and the graph passes (with the
work folder that keeps the weights out of memory between stages) in :mod:`edgeexport.onnxtools.passes`;
this module runs them in order and checks the fused graph against the reference.

torch and onnxscript are imported where they are used, so this module imports without them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeexport.capture import describe_exception
from edgeexport.exporter import Exporter, ExportResult, Option
from edgeexport.manifest import Tolerance
from edgeexport.onnxtools import capture as onnx_capture
from edgeexport.onnxtools import passes as onnx_passes
from edgeexport.tasks import fp32_heads

if TYPE_CHECKING:
    from edgeexport.reference.model import ReferenceModel


def check_fused(folder: Path, reference: ReferenceModel, tolerance: Tolerance) -> None:
    """Run the saved fused ``model.onnx`` on onnxruntime (CPU) at every shape case and compare with the
    reference within ``tolerance`` (the precision's bounds), so fusions stay on only where parity holds.

    Raises:
        FusionError: onnxruntime refused the model, or an output is out of bounds (the first failure named).
    """
    import onnxruntime

    from edgeexport.validation.parity import compare_outputs

    try:
        session = onnxruntime.InferenceSession(str(folder / onnx_passes.MODEL_FILE),
                                               providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise onnx_passes.FusionError(f"onnxruntime cannot load the fused model: {describe_exception(exc)}") from exc
    for seed, (case, sizes) in enumerate(reference.shape_cases()):
        inputs = reference.make_inputs(sizes, seed=seed)
        outputs = dict(zip(reference.output_names, session.run(reference.output_names, inputs)))
        result = compare_outputs(case, "fused", sizes, outputs, reference.run(inputs), tolerance=tolerance,
                                 logits=reference.logits_outputs)
        if not result.passed:
            raise onnx_passes.FusionError(f"the fused model is out of bounds: {result.failures()[0]}")


class OnnxExporter(Exporter):
    """Exports to ``model.onnx`` run by onnxruntime."""

    target = "onnx"
    runtime = "onnxruntime"
    requires = ("torch", "transformers", "onnxscript", "onnxslim")
    extra = "export"
    tool_packages = ("torch", "transformers", "onnx", "onnxscript", "onnxslim", "onnxruntime")
    stages = ("capture", "translate to ONNX", "onnx checker", "save")
    # Derived from the zoo and holdout models (docs/parity.md).
    precisions = {"fp32": None,
                  "fp16": Tolerance(atol=1e-7, rounding=2e-3, max_error=0.015, rms_error=3e-3, scale_error=2e-3),
                  "int8-weights": Tolerance(atol=1e-7, rounding=3e-7, max_error=1.5, rms_error=0.3, scale_error=0.07,
                                            min_top1=0.9),
                  "int4-weights": Tolerance(atol=1e-7, rounding=3e-7, max_error=3.0, rms_error=1.0, scale_error=0.5,
                                            min_top1=0.9),
                  "int8": Tolerance(atol=1e-7, rounding=3e-7, max_error=1.5, rms_error=0.7, scale_error=0.2,
                                    min_top1=0.9)}
    options = (Option("fusions", bool, "Fuse onnxruntime contrib ops (attention, layer norms, GELU; fp32, fp16, int8; "
                                       "on by default): --no-fusions keeps standard ONNX ops only."),)
    fused_precisions = ("fp32", "fp16", "int8")
    calibrated_precisions = ("int8",)

    def export(self, reference: ReferenceModel, folder: Path, *, precision: str, opset: int | None = None,
               simplify_graph: bool = True, fusions: bool | None = None, **options: Any) -> ExportResult:
        """Export ``model.onnx``; with fusions (the default at :attr:`fused_precisions`) a fusion that
        raises, a fused model onnxruntime cannot load or one out of the precision's bounds at a shape
        case is exported again unfused, the reason in the manifest's ``fusions_failure``."""
        fuse = fusions is not False and precision in self.fused_precisions
        try:
            return self._export(reference, folder, precision=precision, opset=opset, simplify_graph=simplify_graph,
                                fuse=fuse)
        except onnx_passes.FusionError as exc:
            result = self._export(reference, folder, precision=precision, opset=opset,
                                  simplify_graph=simplify_graph, fuse=False)
            result.exporter["fusions_failure"] = str(exc)
            return result

    def _export(self, reference: ReferenceModel, folder: Path, *, precision: str, opset: int | None,
                simplify_graph: bool, fuse: bool) -> ExportResult:
        captured, info = onnx_capture.capture(reference, opset=opset)
        # The work folder sits in the artifact's staging folder: on its disk, not in a /tmp that may be in memory.
        with tempfile.TemporaryDirectory(prefix=".onnx-work-", dir=folder) as work:
            model = onnx_passes.infer_shapes(onnx_passes.WorkModel.of(captured, Path(work)))
            del captured
            passes = []
            if simplify_graph:
                model = onnx_passes.simplify(model)
                passes.append("onnxslim")
            if fuse:
                model, info["fusions"] = onnx_passes.fuse_for_ort(model)
                passes.append("optimize_for_ort")
            if precision == "fp16":
                model = model.replaced(onnx_passes.to_fp16(model.loaded(), heads=fp32_heads(reference.task)))
                passes.append("float16(keep_io_types)")
            if precision in onnx_passes.WEIGHT_QUANTIZATION:
                bits, block_size = onnx_passes.WEIGHT_QUANTIZATION[precision]
                model = model.replaced(onnx_passes.quantize_weights(model.loaded(), bits=bits, block_size=block_size))
                passes.append(f"MatMulNBits(bits={bits}, block_size={block_size}, symmetric, accuracy_level=4)")
            if precision == "int8":
                quantized, applied = onnx_passes.quantize_static(model.loaded(), reference)
                model = model.replaced(quantized)
                passes.append(applied)
            onnx_passes.save(model, folder)
        if fuse:
            check_fused(folder, reference, self.tolerance(reference, precision))
        import torch

        exporter = {"name": "torch.onnx", "torch": torch.__version__, "opset": onnx_passes.opset_of(model.graph),
                    "passes": passes, **info}
        return ExportResult(model_file=onnx_passes.MODEL_FILE, exporter=exporter)


EXPORTER = OnnxExporter()
