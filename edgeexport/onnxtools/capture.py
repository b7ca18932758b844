"""ONNX capture: the strategies tried in order (``torch.export`` + ``torch.onnx.export`` of the
ExportedProgram, then the TorchScript exporter), and the decomposed ExportedProgram whose node
names are the ONNX values they became.

Stages 1 and 2 of the ONNX target (:mod:`edgeexport.exporters.onnx`); also what divergence
localization (:mod:`edgeexport.validation.localize`) and the TensorRT exporter's module names read.
torch and onnxscript are imported where they are used, so this module imports without them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import onnx

from edgeexport.capture import (
    CaptureStrategy,
    describe_exception,
    export_context,
    export_program,
    node_origin,
    run_strategies,
    trace_inputs,
)
from edgeexport.errors import CaptureError, ConversionError

if TYPE_CHECKING:
    import onnx_ir as ir
    import torch

    from edgeexport.reference.model import ReferenceModel


class DynamoStrategy(CaptureStrategy):
    """``torch.export`` capture, then ``torch.onnx.export`` of the ExportedProgram (onnxscript translation).

    Capturing first keeps the two stages apart: a capture failure raises :class:`CaptureError`,
    a translation failure :class:`ConversionError` naming the op and the module that produced it.
    """

    name = "dynamo"

    def _capture(self, reference: ReferenceModel, args: tuple[torch.Tensor, ...],
                 opset: int | None) -> tuple[ir.Model, dict[str, Any]]:
        return dynamo_export(reference, args, opset).model, {}


def dynamo_export(reference: ReferenceModel, args: tuple[torch.Tensor, ...], opset: int | None) -> Any:
    """Stages 1 and 2: ``torch.export`` then ``torch.onnx.export``; returns the ``torch.onnx.ONNXProgram``.

    Raises:
        CaptureError: torch.export failed.
        ConversionError: translation failed; the message names the op and its module.
    """
    import torch

    # torch.export takes Dim.DYNAMIC (export_program); torch.onnx.export then renames those axes to our names.
    named = tuple(reference.dynamic_axes[n] or None for n in reference.input_names)
    try:
        program = export_program(reference, args)
    except Exception as exc:
        raise CaptureError("capture", f"{describe_exception(exc)}; make the failing code traceable or try the "
                           "TorchScript exporter", model=reference.name, label="torch.export") from exc
    try:
        return torch.onnx.export(program, args, dynamo=True, opset_version=opset, input_names=reference.input_names,
                                 output_names=reference.output_names, dynamic_shapes=(named,) if any(named) else None,
                                 optimize=True, verbose=False)
    except Exception as exc:
        raise ConversionError("translate to ONNX", _locate_failure(exc, program), model=reference.name) from exc


def decomposed_program(reference: ReferenceModel, *, opset: int | None = None) -> torch.export.ExportedProgram:
    """The decomposed ExportedProgram that the dynamo exporter translates; its node names are the
    names of the ONNX values they became (used to localise divergences)."""
    with export_context():
        return dynamo_export(reference, trace_inputs(reference), opset).exported_program


def _locate_failure(exc: BaseException, program: torch.export.ExportedProgram) -> str:
    """Name the op that failed to translate and the PyTorch module (path, class, source line) it came from."""
    text = "\n".join(str(e) for e in _chain(exc))
    op = re.search(r"OpOverload\(op='([^']+)', overload='([^']+)'\)", text)
    node_name = re.search(r"translating node %(\w+)", text)
    node = next((n for n in program.graph.nodes if node_name and n.name == node_name.group(1)), None)
    op_name = f"{op.group(1)}.{op.group(2)}" if op else (str(node.target) if node is not None else "unknown op")
    where = "an unknown module"
    if node is not None:
        origin = node_origin(node)
        where = origin.describe()
    return (f"no ONNX translation for op {op_name}, produced by {where}. Next steps: replace the op in that module, "
            "or register an onnxscript function for it")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__


class TorchScriptStrategy(CaptureStrategy):
    """The legacy TorchScript exporter (``dynamo=False``), for models torch.export cannot capture."""

    name = "torchscript"

    def _capture(self, reference: ReferenceModel, args: tuple[torch.Tensor, ...],
                 opset: int | None) -> tuple[ir.Model, dict[str, Any]]:
        import io

        import onnx_ir as ir
        import torch

        buffer = io.BytesIO()
        torch.onnx.export(reference.module, args, buffer, dynamo=False, opset_version=opset or 17,
                          input_names=reference.input_names, output_names=reference.output_names,
                          dynamic_axes={k: v for k, v in reference.dynamic_axes.items() if v})
        return ir.serde.deserialize_model(onnx.load_from_string(buffer.getvalue())), {}


CAPTURE_STRATEGIES: tuple[CaptureStrategy, ...] = (DynamoStrategy(), TorchScriptStrategy())


def capture(reference: ReferenceModel, *, opset: int | None) -> tuple[ir.Model, dict[str, Any]]:
    """Stages 1 and 2: try each of :data:`CAPTURE_STRATEGIES` in order; return the model and what happened.

    Raises:
        CaptureError, ConversionError: every strategy failed; the first failure is raised.
    """
    return run_strategies(CAPTURE_STRATEGIES, reference, opset)

