"""ONNX graph passes between capture and save (stages 3 and 4 of the ONNX target,
:mod:`edgeexport.exporters.onnx`): checker and shape inference, onnxslim, onnxruntime contrib-op
fusions, fp16 with the thresholds kept in fp32, int8/int4 weights (MatMulNBits), static int8 (QDQ).

Between the stages the weights stay out of memory: the capture streams them from the torch
parameters into a data file of a work folder (:class:`WorkModel`), and the stages pass a graph
proto that refers to it; only the precisions that rewrite weights load them. Serializing whole
protos at each stage held up to six copies of the weights (BERT-base: 3.5 GB peak RSS, 0.95 GB
this way).

onnx_ir, onnxslim, onnxscript and onnxruntime are imported where they are used.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx.numpy_helper

from edgeexport.capture import describe_exception, quiet
from edgeexport.errors import ConversionError
from edgeexport.exporter import CALIBRATION_SAMPLES, FLOAT_HEAD_LAYERS
from edgeexport.logs import logger_levels
from edgeexport.mixed_precision import head_ops, threshold_feeders

if TYPE_CHECKING:
    import onnx_ir as ir

    from edgeexport.reference.model import ReferenceModel

MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
PROTOBUF_LIMIT = 2 * 1024**3 - 1
# Weights above this size are saved in EXTERNAL_DATA_FILE: an inline model.onnx is serialized whole in memory,
# which doubles the weights at the save (BERT-base: +850 MB). Smaller models stay one file.
EXTERNAL_DATA_THRESHOLD = 64 * 1024**2
# Between stages, tensors up to this size stay in the graph proto: onnxslim drops the external-data location of
# small tensors it rewrites (BERT's embedding LayerNorm parameters), and only the large weights cost memory.
WORK_INLINE_BYTES = 1024**2
# Weight-only precisions: (bits, elements per quantization block, one scale each).
WEIGHT_QUANTIZATION = {"int8-weights": (8, 16), "int4-weights": (4, 32)}
WEIGHTED_OPS = frozenset({"MatMul", "Gemm", "Conv"})


@dataclass(frozen=True)
class WorkModel:
    """A model between export stages: ``graph`` (a ModelProto) refers to weights kept in
    :data:`EXTERNAL_DATA_FILE` of ``folder``, a work folder, instead of holding them."""

    graph: onnx.ModelProto
    folder: Path

    @classmethod
    def of(cls, model: ir.Model, folder: Path) -> WorkModel:
        """Stream ``model``'s weights into ``folder`` (from the torch parameters the dynamo capture refers to)."""
        import onnx_ir as ir

        ir.save(model, folder / MODEL_FILE, external_data=EXTERNAL_DATA_FILE, size_threshold_bytes=WORK_INLINE_BYTES)
        work = cls(onnx.load(folder / MODEL_FILE, load_external_data=False), folder)
        check(work)
        return work

    def replaced(self, graph: onnx.ModelProto) -> WorkModel:
        return WorkModel(graph, self.folder)

    def as_ir(self) -> ir.Model:
        """The model for onnx_ir (onnxscript): its external tensors read from the work folder when needed."""
        import onnx_ir as ir

        model = ir.serde.deserialize_model(self.graph)
        ir.external_data.set_base_dir(model.graph, self.folder)
        return model

    def loaded(self) -> onnx.ModelProto:
        """The graph with every weight loaded, for the passes that rewrite weights."""
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(self.graph, str(self.folder))
        return self.graph

    @contextlib.contextmanager
    def weights_readable(self) -> Iterator[None]:
        """onnxslim reads external weights (when it folds them) relative to the current directory and
        takes no base directory: run it from the work folder."""
        with contextlib.chdir(self.folder):
            yield


def infer_shapes(model: WorkModel) -> WorkModel:
    """Stage 3: shape inference where the capture recorded no shapes (TorchScript).

    The dynamo capture's graph has its shapes already (torch.onnx runs onnxscript's optimizer and
    shape inference): inferring them again cost BERT-base 5 s and 1.7 GB of copies.
    """
    if model.graph.graph.value_info:
        return model
    try:
        return model.replaced(onnx.shape_inference.infer_shapes(model.graph, data_prop=True))
    except onnx.shape_inference.InferenceError as exc:
        raise ConversionError("onnx checker", describe_exception(exc)) from exc


def simplify(model: WorkModel) -> WorkModel:
    """Fold constants and fuse patterns with onnxslim.

    Shapes come from the capture (:func:`infer_shapes`): onnxslim's own shape inference after each
    of its rounds found the same graph (BERT-base: 456 nodes, the same fusions) in 5x the time and
    2.5x the memory.
    """
    import onnxslim

    with quiet(), model.weights_readable():
        slimmed = onnxslim.slim(model.graph, no_shape_infer=True)
    lost = [tensor.name for tensor in slimmed.graph.initializer if tensor.data_location == onnx.TensorProto.EXTERNAL
            and not any(entry.key == "location" for entry in tensor.external_data)]
    if lost:
        raise ConversionError("onnx checker", f"onnxslim lost the external data of {lost[0]} (and {len(lost) - 1} "
                              "more); convert with --no-simplify and report it to onnxslim")
    return model.replaced(slimmed)


class FusionError(Exception):
    """The ORT fusions raised, or the fused model does not load in onnxruntime."""


def fuse_for_ort(model: WorkModel) -> tuple[WorkModel, dict[str, int]]:
    """Fuse onnxruntime contrib ops (MultiHeadAttention, SkipLayerNormalization, Gelu, rotary, ...)
    with onnxscript's ``optimize_for_ort``; returns a new model and the count of each contrib op
    (``com.microsoft`` domain) in it, e.g. ``{"MultiHeadAttention": 12, "SkipLayerNormalization": 24}``.

    Constant-weight ``Gemm`` layers become ``MatMul`` + ``Add`` first (:func:`weights_as_matmul`,
    in place on ``model``): the attention patterns match that form only (GPT-2).

    Raises:
        FusionError: the fusion raised.
    """
    from onnxscript import ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    weights_as_matmul(model.graph, base_dir=model.folder)
    try:
        fused, _ = optimize_for_ort(model.as_ir())
    except Exception as exc:
        raise FusionError(f"optimize_for_ort raised {describe_exception(exc)}") from exc
    proto = ir.serde.serialize_model(fused)
    # The rewrites keep shapes recorded for values whose rank they changed (GPT-2's addmm outputs: 2-D before,
    # 3-D after), and onnxruntime warns about each at every session start; it infers them itself.
    del proto.graph.value_info[:]
    return model.replaced(proto), dict(Counter(node.op_type for node in proto.graph.node
                                               if node.domain == "com.microsoft"))


def to_fp16(model: onnx.ModelProto, *, heads: Sequence[str] = ()) -> onnx.ModelProto:
    """Convert weights and compute to float16 with onnxruntime's converter, keeping fp32 I/O, the
    thresholds (:func:`threshold_nodes`) and the heads of the outputs named in ``heads``
    (:func:`head_nodes`) in fp32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    kept = [*threshold_nodes(model.graph), *head_nodes(model.graph, heads)]
    with quiet():
        converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=kept,
                                             disable_shape_infer=model.ByteSize() >= PROTOBUF_LIMIT)
    return skip_fp16_round_trips(converted, kept)


def threshold_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes :func:`edgeexport.mixed_precision.threshold_feeders` keeps in fp32.

    A node's float inputs are those the graph types FLOAT (inputs of unknown type count as float),
    so shape and index computations are not followed.
    """
    kept = threshold_feeders(graph.node, op_type=lambda node: node.op_type, float_parents=_float_parents(graph))
    return [node.name for node in kept]


def head_nodes(graph: onnx.GraphProto, outputs: Sequence[str]) -> list[str]:
    """Names of the nodes computing the graph outputs ``outputs``, back to and including the nearest
    contraction (:func:`edgeexport.mixed_precision.head_ops`)."""
    producers = {output: node for node in graph.node for output in node.output}
    kept = head_ops([producers[name] for name in outputs if name in producers], op_type=lambda node: node.op_type,
                    float_parents=_float_parents(graph))
    return [node.name for node in kept]


def _float_parents(graph: onnx.GraphProto) -> Callable[[onnx.NodeProto], list[onnx.NodeProto]]:
    """A node's float parents: the nodes producing its inputs that the graph types FLOAT (or leaves untyped)."""
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update((t.name, t.data_type) for t in graph.initializer)
    producers = {output: node for node in graph.node for output in node.output}

    def float_parents(node: onnx.NodeProto) -> list[onnx.NodeProto]:
        return [producers[name] for name in node.input
                if name in producers and types.get(name, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT]

    return float_parents


def skip_fp16_round_trips(model: onnx.ModelProto, kept: list[str]) -> onnx.ModelProto:
    """Feed fp32 nodes the fp32 outputs of the fp32 nodes before them.

    onnxruntime's converter casts every output of a blocked node (and every graph input) to fp16 and
    back to fp32 at the next blocked node, so a chain of fp32 nodes still passes fp16 values
    (Mask2Former's sigmoid output, rounded to fp16 between the sigmoid and its threshold, flipped it
    as if it ran in fp16). Such a ``Cast(to=FLOAT16)`` -> ``Cast(to=FLOAT)`` pair is bypassed; the
    fp16 cast stays only where fp16 nodes read it. Where the pair ends in a graph output (an fp32 head,
    whose output keep_io_types would otherwise round to fp16: GLPN's depth), the ``Cast(to=FLOAT)``
    keeps the output's name and reads the fp32 value.
    """
    graph, names = model.graph, set(kept)
    outputs = {output.name for output in graph.output}
    fp32 = {output for node in graph.node if node.name in names for output in node.output}
    fp32 |= {value.name for value in graph.input}  # kept fp32 by keep_io_types
    producers = {output: node for node in graph.node for output in node.output}
    pairs = [(producers[node.input[0]], node) for node in graph.node
             if node.op_type == "Cast" and _cast_to(node) == onnx.TensorProto.FLOAT and node.input[0] in producers]
    pairs = [(parent, node) for parent, node in pairs if parent.op_type == "Cast" and parent.input[0] in fp32
             and _cast_to(parent) == onnx.TensorProto.FLOAT16]
    bypassed = {node.output[0]: parent.input[0] for parent, node in pairs if node.output[0] not in outputs}
    for parent, node in pairs:
        if node.output[0] in outputs:
            node.input[0] = parent.input[0]
        else:
            graph.node.remove(node)
    for node in graph.node:
        node.input[:] = [bypassed.get(name, name) for name in node.input]
    used = {name for node in graph.node for name in node.input} | outputs
    for parent in {id(parent): parent for parent, _ in pairs}.values():
        if parent.output[0] not in used:
            graph.node.remove(parent)
    return model


def _cast_to(node: onnx.NodeProto) -> int:
    return next(attribute.i for attribute in node.attribute if attribute.name == "to")


def quantize_weights(model: onnx.ModelProto, *, bits: int, block_size: int) -> onnx.ModelProto:
    """``bits``-bit (8 or 4) weights for every MatMul with a constant weight, with onnxruntime's
    ``MatMulNBitsQuantizer``.

    Block-wise symmetric (``block_size`` elements along the input dim share one scale), accuracy
    level 4: onnxruntime quantizes each activation block to int8 at run time and multiplies in
    int8, which is what makes it faster than fp32 on CPUs (the fp32-compute path of 8-bit
    MatMulNBits is ~10x slower than fp32 MatMul in onnxruntime 1.32). Memory-bound decoding
    reads a quarter (8 bits) or an eighth (4 bits) of the weight bytes.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(weights_as_matmul(model), bits=bits, block_size=block_size, is_symmetric=True,
                                     accuracy_level=4)
    with logger_levels(["onnxruntime.quantization.matmul_nbits_quantizer"], logging.WARNING):
        quantizer.process()
    return quantizer.model.model


def quantize_static(model: onnx.ModelProto, reference: ReferenceModel) -> tuple[onnx.ModelProto, str]:
    """int8 weights and activations (QDQ) with onnxruntime's static quantizer, calibrated (min/max) on
    :data:`CALIBRATION_SAMPLES` reference inputs; returns the model and the pass's description.

    Only layers with constant weights are quantized (attention's activation products stay float),
    the task head (the last :data:`FLOAT_HEAD_LAYERS` of them) excepted. Weights are int8 per
    channel in 7 bits (``reduce_range``) and activations uint8: x86 CPUs without VNNI accumulate
    u8 x s8 pairs in int16, which saturates with 8-bit weights.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    class Samples(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(reference.calibration_inputs(CALIBRATION_SAMPLES))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.samples, None)

    weighted = weighted_nodes(model)
    quantized = weighted[:-FLOAT_HEAD_LAYERS]
    external = model.ByteSize() >= PROTOBUF_LIMIT
    # The quantizer logs on the root logger, a warning to pre-process (shape inference and constant folding,
    # which check() and onnxslim did) at every call.
    with tempfile.TemporaryDirectory() as tmp, logger_levels(["root"], logging.ERROR), quiet():
        output = Path(tmp) / MODEL_FILE
        ort_quantize_static(model, output, Samples(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_quantize=quantized, use_external_data_format=external)
        result = onnx.load(output)
    return result, (f"quantize_static(QDQ, u8 activations, s8 per-channel weights in 7 bits, {CALIBRATION_SAMPLES} "
                    f"calibration samples, min/max, {len(quantized)} layers, {len(weighted) - len(quantized)} "
                    "head layers in float)")


def weighted_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul, Gemm and Conv nodes with a constant (initializer) weight, in graph order."""
    weights = {tensor.name for tensor in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in weights]


def weights_as_matmul(model: onnx.ModelProto, *, base_dir: Path | None = None) -> onnx.ModelProto:
    """Rewrite constant-weight layers as ``MatMul(x, W)`` with ``W`` an initializer (in place; returns ``model``).

    Hand-written because the quantizer takes only that form and no library pass produces it
    on dynamic shapes (onnxscript's gemm-to-matmul rule needs static shapes): ``Gemm(x, W, b)``
    (alpha = beta = 1, no transA) becomes ``MatMul`` + ``Add``, and a MatMul reading
    ``Transpose(W)`` of a 2-D initializer (a tied LM head: the embedding is also gathered)
    gets its own transposed copy of ``W`` (read from ``base_dir`` when it is external data).
    """
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and node.input[1] in weights and not attributes.get("transA") \
                and attributes.get("alpha", 1.0) == 1.0 and attributes.get("beta", 1.0) == 1.0:
            weight = _transposed(model, weights[node.input[1]], base_dir) if attributes.get("transB") else node.input[1]
            product = f"{node.output[0]}_matmul" if len(node.input) > 2 else node.output[0]
            nodes.append(onnx.helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{node.name}_matmul"))
            if len(node.input) > 2:
                nodes.append(onnx.helper.make_node("Add", [product, node.input[2]], node.output, name=f"{node.name}_bias"))
            continue
        source = producers.get(node.input[1]) if node.op_type == "MatMul" else None
        if source is not None and source.op_type == "Transpose" and source.input[0] in weights \
                and len(weights[source.input[0]].dims) == 2:
            node.input[1] = _transposed(model, weights[source.input[0]], base_dir)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _transposed(model: onnx.ModelProto, weight: onnx.TensorProto, base_dir: Path | None) -> str:
    """Name of an initializer holding ``weight`` transposed, added to ``model`` on first use."""
    name = f"{weight.name}_transposed"
    if not any(tensor.name == name for tensor in model.graph.initializer):
        array = onnx.numpy_helper.to_array(weight, base_dir=str(base_dir or "")).T
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
    return name


def save(model: WorkModel, folder: Path) -> None:
    """Stage 4: write ``model.onnx`` into ``folder``, its weights in ``model.onnx.data`` above
    :data:`EXTERNAL_DATA_THRESHOLD` (streamed from the work folder)."""
    import onnx_ir as ir

    saved = model.as_ir()
    weights = sum(value.const_value.nbytes for value in saved.graph.initializers.values()
                  if value.const_value is not None)
    if weights >= EXTERNAL_DATA_THRESHOLD:
        ir.save(saved, folder / MODEL_FILE, external_data=EXTERNAL_DATA_FILE)
    else:
        ir.save(ir.external_data.load_to_model(saved), folder / MODEL_FILE)


def check(model: WorkModel) -> None:
    """Stage 3: ``onnx.checker`` on the captured model as the work folder holds it (the weights stay on disk).

    It runs before the rewrites: onnxruntime's fusions add its contrib ops (``SimplifiedLayerNormalization``
    in the default domain) and its fp16 converter appends input casts out of topological order, both of
    which onnxruntime runs and the checker rejects.

    Raises:
        ConversionError: the checker rejects the model.
    """
    try:
        onnx.checker.check_model(str(model.folder / MODEL_FILE))
    except onnx.checker.ValidationError as exc:
        raise ConversionError("onnx checker", describe_exception(exc)) from exc


def opset_of(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
