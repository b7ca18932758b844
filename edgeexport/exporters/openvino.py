"""OpenVINO target: ``ov.convert_model`` from the PyTorch module, the ONNX capture as fallback.

Stages:
  1. convert -- strategies tried in order: ``pytorch`` (OpenVINO's PyTorch frontend traces the
     reference module), ``torch.export`` (the frontend reads the ``torch.export`` program the ONNX
     target captures: transformers 5.5's masks cannot be traced, and this keeps such models off the
     costlier ONNX route), ``onnx`` (the ONNX target's capture and checker, read by OpenVINO's
     ONNX frontend); the winner and the first failure are recorded in the manifest, and a
     failure names the op that has no conversion and the module that uses it;
  2. name the inputs and outputs exactly as the reference does;
  3. compress for the precision: fp16 weights, int8 or int4 weights (``nncf.compress_weights``)
     or int8 post-training quantization (``nncf.quantize`` on inputs drawn from the reference,
     the task head kept in float, 7-bit weights so CPUs without VNNI do not saturate);
  4. save ``model.xml``/``model.bin``, fp16-compressed only for ``fp16``. ``bf16`` saves the
     fp32 IR and asks the runtime for bf16 arithmetic (``INFERENCE_PRECISION_HINT``).

torch, openvino and nncf are imported where they are used, so this module imports without them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeexport.capture import (
    CaptureStrategy,
    Result,
    describe_exception,
    export_program,
    quiet,
    run_strategies,
    trace_inputs,
    traced_scope,
)
from edgeexport.errors import ConversionError, StageError
from edgeexport.exporter import CALIBRATION_SAMPLES, FLOAT_HEAD_LAYERS, Exporter, ExportResult
from edgeexport.logs import logger_levels
from edgeexport.manifest import Tolerance
from edgeexport.onnxtools import capture as onnx_capture
from edgeexport.onnxtools import passes as onnx_passes

if TYPE_CHECKING:
    import openvino as ov
    import torch

    from edgeexport.reference.model import ReferenceModel

logger = logging.getLogger(__name__)

MODEL_FILE = "model.xml"
# OpenVINO's CPU plugin runs bf16 on CPUs that support it unless told otherwise: f32 except for bf16.
INFERENCE_PRECISION = "f32"
INFERENCE_PRECISIONS = {"bf16": "bf16"}
# int4 weights: symmetric, one scale per group of INT4_GROUP_SIZE input channels. Measured on GPT-2 (full preset,
# greedy decode, 2 threads; docs/parity.md, "int4 group size"): 64 decodes as fast as 128 (12.3 vs 12.6 ms/token,
# medians of 12) and faster than 32 (14.3), with less error than 128 (worst step logits 0.26 vs 0.28 spreads RMS).
# A layer whose input channels the group does not divide gets the largest power-of-two group that does, down to
# INT4_MIN_GROUP_SIZE (nncf's ADJUST fallback), else int8 weights; nncf keeps the embeddings and the last layer in
# int8 (its default).
INT4_GROUP_SIZE = 64
INT4_MIN_GROUP_SIZE = 16
INT4_RATIO = 1.0  # every layer nncf would compress goes to int4 (ratio < 1 keeps the most sensitive in int8)
ATTENTION_OPS = frozenset({"Softmax", "ScaledDotProductAttention"})
WEIGHTED_OPS = frozenset({"MatMul", "Convolution", "GroupConvolution"})
FRONTEND_OP = re.compile(r"\b(?:aten|prim|quantized|torchvision)::\w+")
IGNORED_OPS = frozenset({"prim::Constant"})  # reported beside the real culprit, never the cause
# OpenVINO 2026.4's CPU plugin computes some int8 convolutions wrongly on AMX CPUs (AVX-512 VNNI and AVX2 give
# the right result for the same IR): measured on a grid of single FakeQuantize -> convolution graphs
# (tests/test_openvino.py), every wrong one had 4 to 31 input channels per group and a kernel of 8 taps or more
# (wav2vec2's positional convolution, 16 channels per group x 16 taps: scale 0.59 against PyTorch). Such layers
# stay in float on every machine, since an artifact built on one CPU runs on another.
AMX_INT8_FAULT_CHANNELS = range(4, 32)
AMX_INT8_FAULT_MIN_TAPS = 8


@contextlib.contextmanager
def _additive_attention_masks() -> Iterator[None]:
    """Attention with boolean masks converted as additive masks (:func:`~edgeexport.reference.patches.
    sdpa_with_additive_mask`: OpenVINO's boolean-mask attention gives NaN for a row that sees no key)."""
    from edgeexport.reference.patches import OPENVINO_SDPA_PATCH, patched

    with patched([OPENVINO_SDPA_PATCH]):
        yield


class ConvertStrategy(CaptureStrategy):
    """One way of turning the reference module into an ``openvino.Model``."""

    def context(self) -> contextlib.AbstractContextManager[Any]:
        """Quiet torch and onnx logs; OpenVINO traces with the model's own attention kernels."""
        return quiet()


class PyTorchStrategy(ConvertStrategy):
    """``ov.convert_model`` on the module itself, dynamic dims declared as ``-1``."""

    name = "pytorch"

    def _capture(self, reference: ReferenceModel, args: tuple[torch.Tensor, ...],
                 opset: int | None) -> tuple[ov.Model, dict[str, Any]]:
        import openvino as ov

        shapes = [(ov.PartialShape([-1 if isinstance(d, str) else d for d in spec.dims]), ov.Type(np.dtype(spec.dtype)))
                  for spec in reference.inputs]
        with _additive_attention_masks():
            return ov.convert_model(reference.module, example_input=args, input=shapes), {}


class ExportedProgramStrategy(CaptureStrategy):
    """``ov.convert_model`` on the ``torch.export`` program of the module (dynamic axes as ``Dim.DYNAMIC``),
    captured in :func:`~edgeexport.capture.export_context` as the ONNX target captures it."""

    name = "torch.export"

    def applies(self, failures: Sequence[Result]) -> bool:
        """Only after tracing failed: an op the PyTorch frontend could not convert fails here too (the same op
        translators; GPT-2's cache concatenation lost 6 s per decoder before going to ONNX)."""
        return not any(unconverted_ops(failure.exception) for failure in failures)

    def _capture(self, reference: ReferenceModel, args: tuple[torch.Tensor, ...],
                 opset: int | None) -> tuple[ov.Model, dict[str, Any]]:
        import openvino as ov

        with _additive_attention_masks():
            return ov.convert_model(export_program(reference, args)), {}


class OnnxStrategy(ConvertStrategy):
    """The ONNX target's capture and checker, then OpenVINO's ONNX frontend."""

    name = "onnx"

    def _capture(self, reference: ReferenceModel, args: tuple[torch.Tensor, ...],
                 opset: int | None) -> tuple[ov.Model, dict[str, Any]]:
        import openvino as ov

        captured, info = onnx_capture.capture(reference, opset=opset)
        with tempfile.TemporaryDirectory(prefix="edgeexport-onnx-") as work, \
                tempfile.TemporaryDirectory(prefix="edgeexport-onnx-") as folder:
            model = onnx_passes.infer_shapes(onnx_passes.WorkModel.of(captured, Path(work)))
            onnx_passes.save(model, Path(folder))
            converted = ov.convert_model(Path(folder) / onnx_passes.MODEL_FILE)
        return converted, {"onnx_capture": info["strategy"], "opset": onnx_passes.opset_of(model.graph)}


CONVERT_STRATEGIES: tuple[CaptureStrategy, ...] = (PyTorchStrategy(), ExportedProgramStrategy(), OnnxStrategy())


def convert(reference: ReferenceModel, *, opset: int | None,
            strategies: tuple[CaptureStrategy, ...] = CONVERT_STRATEGIES) -> tuple[ov.Model, dict[str, Any]]:
    """Stage 1: try each strategy in order; return the model and what happened.

    Raises:
        ConversionError: every strategy failed; the message carries the *first* failure (with
            the unconvertible op and its module where OpenVINO names one).
    """
    return run_strategies(strategies, reference, opset, failed=_convert_failed,
                          describe=functools.partial(describe_failure, reference))


def _convert_failed(reference: ReferenceModel, failures: Sequence[Result]) -> StageError:
    first = failures[0]
    return ConversionError(
        "convert", f"{first.strategy}: {describe_failure(reference, first.exception)}; strategies tried: "
        f"{', '.join(f.strategy for f in failures)}. Next steps: replace the op in that module, or report it to "
        "OpenVINO", model=reference.name)


def describe_failure(reference: ReferenceModel, exc: BaseException | None) -> str:
    """One line for a failed conversion: the ops OpenVINO could not convert and their modules, else the error."""
    ops = unconverted_ops(exc)
    if not ops:
        return describe_exception(exc)
    modules = modules_using(reference, set(ops))
    return "no OpenVINO conversion for " + ", ".join(
        f"{op} (in {modules[op]})" if op in modules else op for op in ops)


def unconverted_ops(exc: BaseException | None) -> list[str]:
    """The framework ops (``aten::cat``) an OpenVINO conversion error names as not converted."""
    return sorted(set(FRONTEND_OP.findall(str(exc))) - IGNORED_OPS)


def modules_using(reference: ReferenceModel, ops: set[str]) -> dict[str, str]:
    """``{op: "module 'path' (Class)"}`` of the first module calling each op (re-traces the module).

    Paths are relative to the user's model: the wrapper's own attribute is dropped.
    """
    import torch

    try:
        with quiet():
            traced = torch.jit.trace(reference.module, trace_inputs(reference), check_trace=False, strict=False)
    except Exception:  # noqa: BLE001 - locating is best effort; the op name alone still goes out
        logger.debug("could not trace %s to locate %s", reference.name, ops, exc_info=True)
        return {}
    modules = dict(reference.module.named_modules())
    found: dict[str, str] = {}
    for node in traced.inlined_graph.nodes():
        path = traced_scope(node)
        if node.kind() in ops and node.kind() not in found and path in modules:
            found[node.kind()] = f"module '{path.partition('.')[2] or '<root>'}' ({type(modules[path]).__name__})"
    return found


def number_ops(model: ov.Model) -> None:
    """Stage 4 (in place): name the model and its generated ops by position, not by OpenVINO's
    process-wide counters (``ShapeOf_4256``), so converting twice gives byte-identical XML.
    The input names ``name_tensors`` gave the Parameters, and all tensor names, are kept."""
    model.set_friendly_name("edgeexport")
    inputs = {port.get_node().get_friendly_name() for port in model.inputs}
    for index, op in enumerate(model.get_ordered_ops()):
        if op.get_friendly_name() not in inputs:
            op.set_friendly_name(f"{op.get_type_name()}_{index}")


def name_tensors(model: ov.Model, reference: ReferenceModel) -> None:
    """Stage 2 (in place): give the model's inputs and outputs the reference's names, in order."""
    for port, name in zip(model.inputs, reference.input_names):
        port.get_tensor().set_names({name})
        port.get_node().set_friendly_name(name)
    for port, name in zip(model.outputs, reference.output_names):
        port.get_tensor().set_names({name})


def compress_weights(model: ov.Model, reference: ReferenceModel) -> tuple[ov.Model, str]:
    """int8 weights (asymmetric, per channel) with nncf; activations stay float (``reference`` is unused)."""
    import nncf

    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM), "nncf.compress_weights(int8_asym)"


def compress_weights_int4(model: ov.Model, reference: ReferenceModel) -> tuple[ov.Model, str]:
    """int4 weights (symmetric, per group of input channels) with nncf; activations stay float.

    The pass string says how many layers got int4 weights at which group size and how many int8
    (``reference`` is unused).
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    compressed = nncf.compress_weights(
        model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=INT4_GROUP_SIZE, ratio=INT4_RATIO,
        advanced_parameters=AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                                                          min_adjusted_group_size=INT4_MIN_GROUP_SIZE))
    return compressed, f"nncf.compress_weights(int4_sym, group_size={INT4_GROUP_SIZE}, ratio={INT4_RATIO}: " \
                       f"{describe_weight_types(compressed)})"


def describe_weight_types(model: ov.Model) -> str:
    """``"12 int4 g128, 1 int4 g32, 2 int8"``: compressed weight constants by type and group size."""
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        kind = op.get_output_element_type(0).get_type_name() if op.get_type_name() == "Constant" else ""
        if kind in ("i4", "u4"):
            label = f"int4 g{op.get_output_shape(0)[-1]}" if len(op.get_output_shape(0)) == 3 else "int4"
        elif kind in ("i8", "u8"):
            label = "int8"
        else:
            continue
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))


def quantize(model: ov.Model, reference: ReferenceModel) -> tuple[ov.Model, str]:
    """int8 weights and activations with nncf post-training quantization on reference inputs.

    The task head (the last :data:`FLOAT_HEAD_LAYERS` weighted layers) and the convolutions that the
    CPU plugin gets wrong on AMX (:func:`amx_int8_faults`) stay in float, and weights use 7 bits
    (nncf's overflow fix) so that CPUs without VNNI, whose int8 kernels accumulate pairs in int16,
    do not saturate. Layers fed by activation ranges that nncf set per
    position along a dynamic axis (:func:`fed_by_positional_ranges`) stay in float too: a second
    pass quantizes without them.
    """
    import nncf

    model_type = nncf.ModelType.TRANSFORMER if is_transformer(model) else None
    samples = reference.calibration_inputs(CALIBRATION_SAMPLES)  # one shape: nncf stacks statistics across samples
    head = weighted_layers(model)[-FLOAT_HEAD_LAYERS:]
    faults = [name for name in amx_int8_faults(model) if name not in head]
    quantized = _nncf_quantize(model, samples, model_type, head + faults)
    positional = fed_by_positional_ranges(quantized)
    if positional:
        quantized = _nncf_quantize(model, samples, model_type, head + faults + positional)
    kind = "transformer" if model_type else "default"
    return quantized, (f"nncf.quantize({kind}, {len(samples)} calibration samples, overflow_fix, "
                       f"{len(head)} head layers in float"
                       + (f", {len(faults)} convolutions in float (wrong in int8 on AMX)" if faults else "")
                       + (f", {len(positional)} layers fed by per-position ranges in float" if positional else "") + ")")


def _nncf_quantize(model: ov.Model, samples: list[dict[str, np.ndarray]], model_type: Any,
                   ignored: list[str]) -> ov.Model:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    return nncf.quantize(model.clone(), nncf.Dataset(samples), subset_size=len(samples), model_type=model_type,
                         ignored_scope=nncf.IgnoredScope(names=ignored),
                         advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE))


def amx_int8_faults(model: ov.Model) -> list[str]:
    """Names of the convolutions whose int8 kernel is wrong on AMX CPUs (see :data:`AMX_INT8_FAULT_CHANNELS`)."""
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() in ("Convolution", "GroupConvolution")
            and amx_int8_fault(op.get_type_name(), op.input_value(1).get_partial_shape().to_shape())]


def amx_int8_fault(op_type: str, weight_shape: Sequence[int]) -> bool:
    """Whether a convolution of this type and weight shape falls in the measured AMX int8 fault region.

    Weights are ``[out, in, *kernel]``, or ``[groups, out, in, *kernel]`` for a ``GroupConvolution``.
    """
    in_channels, kernel = (weight_shape[2], weight_shape[3:]) if op_type == "GroupConvolution" \
        else (weight_shape[1], weight_shape[2:])
    return in_channels in AMX_INT8_FAULT_CHANNELS and int(np.prod(kernel)) >= AMX_INT8_FAULT_MIN_TAPS


def fed_by_positional_ranges(model: ov.Model) -> list[str]:
    """Weighted layers reached from a FakeQuantize whose ranges vary along a dynamic axis of its input.

    nncf takes the channel axis of a convolution's input back through reshapes and transposes;
    where a token-major MatMul output becomes a feature map (GLPN's and SegFormer's Mix-FFN) that
    axis is the sequence, so the ranges hold one value per position at the calibration size and
    the CPU plugin rejects any other size (``Check 'input_shape[j] == 1' failed``). nncf has no
    option against it (hand-written for that reason), so such layers are found in the graph.
    """
    found: list[str] = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        data = op.input_value(0).get_partial_shape()
        ranges = op.input_value(1).get_partial_shape()
        if ranges.rank.get_length() == data.rank.get_length() and any(
                data[axis].is_dynamic and ranges[axis].get_length() > 1 for axis in range(data.rank.get_length())):
            found += [name for name in _weighted_consumers(op) if name not in found]
    return found


def _weighted_consumers(op: ov.Node) -> list[str]:
    """Names of the first weighted layers downstream of ``op`` on every path."""
    names, pending = [], [t.get_node() for t in op.output(0).get_target_inputs()]
    while pending:
        node = pending.pop()
        if node.get_type_name() in WEIGHTED_OPS:
            names.append(node.get_friendly_name())
        elif node.get_type_name() != "Result":
            pending += [t.get_node() for out in node.outputs() for t in out.get_target_inputs()]
    return names


def is_transformer(model: ov.Model) -> bool:
    """Whether the graph has attention (softmax), for nncf's transformer quantization scheme."""
    return any(op.get_type_name() in ATTENTION_OPS for op in model.get_ops())


def weighted_layers(model: ov.Model) -> list[str]:
    """Names of the MatMuls and convolutions with constant weights, in topological order."""
    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() in WEIGHTED_OPS and op.input_value(1).get_node().get_type_name() == "Constant"]


@contextlib.contextmanager
def _nncf_warnings_only() -> Iterator[None]:
    """Silence nncf's INFO chatter (ignored nodes, compression tables); its warnings still show."""
    from nncf.common.logging import nncf_logger  # importing nncf sets this logger's level, so import first

    with logger_levels([nncf_logger.name], logging.WARNING):
        yield


Compressor = Callable[["ov.Model", "ReferenceModel"], "tuple[ov.Model, str]"]
COMPRESSORS: dict[str, Compressor] = {"int8-weights": compress_weights, "int4-weights": compress_weights_int4,
                                      "int8": quantize}


class OpenVinoExporter(Exporter):
    """Exports to ``model.xml``/``model.bin`` run by OpenVINO.

    Precisions: ``fp32``; ``fp16`` (weights stored in fp16, computed in fp32); ``bf16`` (fp32
    weights, computed in bf16 where the CPU has it: AVX512_BF16 or AMX); ``int8-weights`` and
    ``int4-weights`` (int8 / grouped int4 weights, float activations); ``int8`` (post-training
    quantization). The quantized precisions are judged by top-1 agreement as well as their error bounds.
    """

    target = "openvino"
    runtime = "openvino"
    requires = ("torch", "transformers", "openvino", "nncf")
    extra = "export,openvino"
    # The onnx strategy converts through the ONNX target.
    tool_packages = ("torch", "transformers", "openvino", "nncf", "onnx", "onnxscript")
    stages = ("convert", "name inputs and outputs", "compress", "save")
    # Derived from the zoo and holdout models (docs/parity.md); fp16 stores weights in fp16, computes in fp32; bf16's
    # floor is 4 unit roundoffs of bf16 (measured on AVX512_BF16, not on AMX).
    precisions = {
        "fp32": None,
        "fp16": Tolerance(atol=1e-7, rounding=3e-7, max_error=0.02, rms_error=0.01, scale_error=5e-3),
        "bf16": Tolerance(atol=1e-7, rounding=0.02, max_error=0.5, rms_error=0.1, scale_error=0.05),
        "int8-weights": Tolerance(atol=1e-7, rounding=3e-7, max_error=0.5, rms_error=0.2, scale_error=0.1, min_top1=0.9),
        "int4-weights": Tolerance(atol=1e-7, rounding=3e-7, max_error=5.0, rms_error=0.7, scale_error=0.7, min_top1=0.9),
        "int8": Tolerance(atol=1e-7, rounding=3e-7, max_error=2.0, rms_error=0.5, scale_error=0.3, min_top1=0.9),
    }

    calibrated_precisions = ("int8",)

    def export(self, reference: ReferenceModel, folder: Path, *, precision: str, opset: int | None = None,
               **options: Any) -> ExportResult:
        import openvino as ov

        model, info = convert(reference, opset=opset)
        name_tensors(model, reference)
        passes = []
        if precision in COMPRESSORS:
            with quiet(), _nncf_warnings_only():
                model, applied = COMPRESSORS[precision](model, reference)
            passes.append(applied)
        number_ops(model)
        ov.save_model(model, folder / MODEL_FILE, compress_to_fp16=precision == "fp16")
        if precision == "fp16":
            passes.append("compress_to_fp16")
        exporter = {"name": "openvino", "openvino": ov.get_version(), "passes": passes, **info}
        return ExportResult(model_file=MODEL_FILE, exporter=exporter,
                            runtime_options={"inference_precision": INFERENCE_PRECISIONS.get(precision,
                                                                                             INFERENCE_PRECISION)})


EXPORTER = OpenVinoExporter()
