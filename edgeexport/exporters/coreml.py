"""Core ML target: an ML Program (``model.mlpackage``) converted by coremltools from the PyTorch wrapper.

Stages, each with its own error class:
  1. capture with ``torch.jit.trace``, or ``torch.export`` + ``run_decompositions({})`` when
     tracing fails (:class:`CaptureError`); the winner and the first failure are recorded;
     transformers code that reshapes through rank 6 (Core ML allows rank <= 5) is swapped for
     rank-5 equivalents while capturing (:mod:`edgeexport.mil.module_patches`);
  2. convert with ``coremltools.convert`` to an ML Program (:class:`ConversionError` naming the op
     and the PyTorch module it came from): our input and output names, flexible input shapes
     from the dynamic axes (:func:`shape_mode`), fp16 (thresholds and the ops feeding them, and
     regression heads such as depth, in fp32: :func:`fp16_compute`) or fp32 compute precision and a minimum
     deployment target (iOS16/macOS13 by default). Converter fixes live in
     :mod:`edgeexport.mil.converter_fixes`;
  3. compress weights for ``int8`` (linear quantization) or ``palettize4``/``palettize6``
     (k-means palettization) with ``coremltools.optimize.coreml``;
  4. save ``model.mlpackage`` (a folder; the manifest hashes every file in it).

torch and coremltools are imported where they are used, so this module imports without them.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import re
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeexport.capture import (
    CaptureStrategy,
    NodeOrigin,
    describe_exception,
    export_program,
    module_path,
    node_origin,
    run_strategies,
    traced_scope,
)
from edgeexport.errors import CaptureError, ConversionError, UnsupportedError, UsageError
from edgeexport.exporter import Exporter, ExportResult, Option
from edgeexport.logs import quiet
from edgeexport.manifest import Tolerance
from edgeexport.mixed_precision import head_ops, threshold_feeders
from edgeexport.tasks import WITH_PAST, fp32_heads
from edgeexport.zoo import SPATIAL_AXES

if TYPE_CHECKING:
    import coremltools as ct
    import torch

    from edgeexport.reference.model import ReferenceModel

MODEL_FILE = "model.mlpackage"
DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18")
DEFAULT_DEPLOYMENT_TARGET = "iOS16"  # also macOS13: Core ML's targets pair up (iOS16 = macOS13)
RANGE_FACTOR = 16  # upper bound of a RangeDim: 16x the largest size the reference declares for the axis
# precision -> (coremltools.optimize.coreml function, its op config class, the config's settings)
COMPRESSIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "int8": ("linear_quantize_weights", "OpLinearQuantizerConfig",
             {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"}),
    "palettize4": ("palettize_weights", "OpPalettizerConfig", {"mode": "kmeans", "nbits": 4}),
    "palettize6": ("palettize_weights", "OpPalettizerConfig", {"mode": "kmeans", "nbits": 6}),
}


@dataclass(frozen=True)
class ConvertOptions:
    """What stage 2 and 3 need besides the captured model."""

    precision: str
    deployment_target: str
    shapes: str  # how dynamic axes are declared: shape_mode()'s "enumerated" or "range"
    fp32_heads: tuple[str, ...] = ()  # outputs whose heads keep fp32 compute under fp16 (edgeexport.tasks)


class CoreMLStrategy(CaptureStrategy):
    """Capture the wrapper one way, then convert it with coremltools (the model is an ``ct.models.MLModel``).

    Runs as every capture strategy does: example inputs at axis sizes >= 2, quiet torch logs,
    SDPA's math kernel, and failures recorded so the next strategy can be tried. The capture
    runs with the rank <= 5 rewrites of :mod:`edgeexport.mil.module_patches` that the model
    uses; the manifest lists them (``module_patches``).
    """

    def __init__(self, options: ConvertOptions) -> None:
        self.options = options

    def _capture(self, reference: ReferenceModel, args: tuple[torch.Tensor, ...],
                 opset: int | None) -> tuple[ct.models.MLModel, dict[str, Any]]:
        from edgeexport.mil.module_patches import RANK5_PATCHES
        from edgeexport.reference.patches import applicable, patched

        patches = applicable(reference.module, RANK5_PATCHES)
        try:
            with patched(patches):
                source = self._trace(reference, args)
        except Exception as exc:
            raise CaptureError("capture", f"{describe_exception(exc)}; make the failing code traceable",
                               model=reference.name, label=self.name) from exc
        with quiet_coremltools() as errors:
            try:
                return convert(reference, source, args, self.options), {"module_patches": [p.name for p in patches]}
            except Exception as exc:
                raise ConversionError("convert to an ML Program", _locate_failure(exc, errors, reference, source),
                                      model=reference.name) from exc

    @abstractmethod
    def _trace(self, reference: ReferenceModel, args: tuple[torch.Tensor, ...]) -> Any:
        """The PyTorch program coremltools converts (a ScriptModule or an ExportedProgram)."""


class TraceStrategy(CoreMLStrategy):
    """``torch.jit.trace``: coremltools' most complete PyTorch frontend."""

    name = "torch.jit.trace"

    def _trace(self, reference: ReferenceModel, args: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
        import torch

        with torch.no_grad():
            return torch.jit.trace(reference.module, args, strict=False)


class ExportStrategy(CoreMLStrategy):
    """``torch.export`` with the ATen decompositions coremltools expects (``run_decompositions({})``)."""

    name = "torch.export"

    def _trace(self, reference: ReferenceModel, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
        return export_program(reference, args).run_decompositions({})


STRATEGIES: tuple[type[CoreMLStrategy], ...] = (TraceStrategy, ExportStrategy)


def check_deployment_target(target: str) -> None:
    """Raise :class:`UsageError` for a deployment target other than :data:`DEPLOYMENT_TARGETS`."""
    if target not in DEPLOYMENT_TARGETS:
        raise UsageError(f"unknown deployment target {target!r}; choose one of: {', '.join(DEPLOYMENT_TARGETS)}")


def shape_mode(reference: ReferenceModel) -> str:
    """``enumerated`` for a single image input with dynamic height/width, else ``range``.

    Core ML runs enumerated shapes on the Neural Engine, where convolutional image models
    belong, and a model lists only a few image sizes. Below iOS18, Core ML allows enumerated
    shapes on one input only, and sequence lengths are too many to list: ``ct.RangeDim``.
    """
    dynamic = {name: axes for name, axes in reference.dynamic_axes.items() if axes}
    if len(reference.inputs) == 1 and any(set(axes.values()) & set(SPATIAL_AXES) for axes in dynamic.values()):
        return "enumerated"
    return "range"


def enumerated_shapes(reference: ReferenceModel) -> list[list[int]]:
    """Shapes of the single input for every combination of its axes' example and alternate sizes."""
    (spec,) = reference.inputs
    choices = [sorted(set(reference.sizes[d])) if isinstance(d, str) else [d] for d in spec.dims]
    return [list(shape) for shape in itertools.product(*choices)]


def shape_ranges(reference: ReferenceModel, args: tuple[torch.Tensor, ...]) -> dict[str, tuple[int, int, int]]:
    """(lower, default, upper) size of each dynamic dim: 1, the traced size, and ``RANGE_FACTOR`` times
    the largest size the reference declares for it (ML Programs need a finite upper bound)."""
    traced = {dim: int(size) for spec, example in zip(reference.inputs, args)
              for dim, size in zip(spec.dims, example.shape) if isinstance(dim, str)}
    return {dim: (1, size, RANGE_FACTOR * max(size, *(max(reference.sizes[a]) for a in dim.split("+"))))
            for dim, size in traced.items()}


def input_types(reference: ReferenceModel, args: tuple[torch.Tensor, ...], mode: str) -> list[ct.TensorType]:
    """coremltools input types with our names; dynamic axes become shared ``RangeDim``s or enumerated shapes.

    Core ML has no int64 tensors: integer inputs are int32 (the runner casts).
    """
    import coremltools as ct

    ranges = {dim: ct.RangeDim(lower_bound=low, upper_bound=high, default=default)
              for dim, (low, default, high) in shape_ranges(reference, args).items()}
    types = []
    for spec, example in zip(reference.inputs, args):
        dtype = np.int32 if np.issubdtype(np.dtype(spec.dtype), np.integer) else np.dtype(spec.dtype).type
        if mode == "enumerated":
            shape: Any = ct.EnumeratedShapes(shapes=enumerated_shapes(reference), default=list(example.shape))
        else:
            shape = ct.Shape([ranges[d] if isinstance(d, str) else d for d in spec.dims])
        types.append(ct.TensorType(name=spec.name, shape=shape, dtype=dtype))
    return types


def convert(reference: ReferenceModel, source: Any, args: tuple[torch.Tensor, ...],
            options: ConvertOptions) -> ct.models.MLModel:
    """Stage 2 (and 3): ``coremltools.convert`` to an ML Program, then weight compression."""
    import coremltools as ct

    import edgeexport.mil.converter_fixes  # noqa: F401 - registers the converter fixes

    model = ct.convert(
        source, source="pytorch", convert_to="mlprogram",
        inputs=input_types(reference, args, options.shapes),
        outputs=[ct.TensorType(name=name, dtype=np.float32 if name in options.fp32_heads else None)
                 for name in reference.output_names],
        compute_precision=ct.precision.FLOAT32 if options.precision == "fp32" else fp16_compute(options.fp32_heads),
        minimum_deployment_target=getattr(ct.target, options.deployment_target))
    return compress(model, options.precision)


def fp16_compute(heads: Sequence[str] = ()) -> ct.transform.FP16ComputePrecision:
    """fp16 compute but for the thresholds and the ops feeding them
    (:func:`edgeexport.mixed_precision.threshold_feeders`) and the heads of the outputs named in ``heads``
    (:func:`edgeexport.mixed_precision.head_ops`), which stay fp32."""
    import coremltools as ct

    kept: dict[int, set[int]] = {}

    def to_fp16(op: Any) -> bool:
        block = op.enclosing_block
        if id(block) not in kept:  # the first op the pass visits in a block, before it inserts any cast
            producers = [v.op for v in block.outputs if v.name in heads and v.op is not None]
            kept[id(block)] = {id(o) for o in [
                *threshold_feeders(block.operations, op_type=lambda o: o.op_type, float_parents=_float_parents),
                *head_ops(producers, op_type=lambda o: o.op_type, float_parents=_float_parents)]}
        return id(op) not in kept[id(block)]

    return ct.transform.FP16ComputePrecision(op_selector=to_fp16)


def _float_parents(op: Any) -> list[Any]:
    """The ops producing a MIL op's fp32 inputs."""
    from coremltools.converters.mil.mil import types

    values = [v for value in op.inputs.values() for v in (value if isinstance(value, (list, tuple)) else [value])]
    return [v.op for v in values if v.op is not None and types.builtin_to_string(v.dtype) == "fp32"]


def compress(model: ct.models.MLModel, precision: str) -> ct.models.MLModel:
    """Stage 3: int8 linear quantization or k-means palettization of the weights (others: unchanged)."""
    from coremltools.optimize import coreml as cto

    if precision not in COMPRESSIONS:
        return model
    function, config_class, settings = COMPRESSIONS[precision]
    config = cto.OptimizationConfig(global_config=getattr(cto, config_class)(**settings))
    return getattr(cto, function)(model, config)


def _compression(precision: str) -> dict[str, Any] | None:
    if precision not in COMPRESSIONS:
        return None
    function, _, settings = COMPRESSIONS[precision]
    return {"method": function, **settings}


def quiet_coremltools() -> Any:
    """Silence coremltools' progress bars (stderr) and log lines; yields the error messages it logs
    (they name the op and the module that failed)."""
    return quiet(["coremltools"], stderr=True)


def _locate_failure(exc: BaseException, errors: list[str], reference: ReferenceModel, source: Any) -> str:
    """Name the op that failed and the PyTorch module (path, class, source line) it came from.

    A failed op translation is logged by coremltools with the node's scope, whose last part is
    the node's name; an unsupported FX node is named in the error, and a program check failing
    later names a MIL variable (``Layer "x_1"``), the name of the node that produced it. The node
    is then looked up in the captured graph.
    """
    cause = describe_exception(exc).rstrip(". ")
    name = _failing_node_name(exc, errors)
    located = _node(reference, source, name) if name else None
    if located is None:
        return f"{cause}. Next steps: report it with the model and the coremltools version"
    op, origin = located
    return (f"{cause} (op {op}, produced by {origin.describe()}). Next steps: replace the op in that module, or register a "
            "converter with coremltools' register_torch_op (see edgeexport/mil/converter_fixes.py)")


def _failing_node_name(exc: BaseException, errors: list[str]) -> str | None:
    for message in errors:
        logged = re.search(r"converting '[^']+' op \(located at: '([^']*)'\)", message)
        if logged:
            return logged.group(1).rsplit("/", 1)[-1]
    named = re.search(r'Layer "([^"]+)"|Unsupported fx node (\w+)', str(exc))
    if named is None:
        return None
    return re.sub(r"_cast_fp(16|32)$", "", named.group(1) or named.group(2))  # renamed by the fp16 pass


def _node(reference: ReferenceModel, source: Any, name: str) -> tuple[str, NodeOrigin] | None:
    """Op and origin of the node called ``name`` in the traced graph or the ExportedProgram."""
    import torch

    wanted = _mil_name(name)
    if isinstance(source, torch.export.ExportedProgram):
        node = next((n for n in source.graph.nodes if _mil_name(n.name) == wanted), None)
        return (str(node.target), node_origin(node)) if node is not None else None
    for node in source.inlined_graph.nodes():
        if any(_mil_name(out.debugName()) == wanted for out in node.outputs()):
            return node.kind().removeprefix("aten::"), _traced_origin(reference, node)
    return None


def refuse_cache(model: str, task: str) -> None:
    """Refuse a decoder with a cache, a ``-with-past`` task (:meth:`CoreMLExporter.refuse`).

    Its first step feeds an empty cache (a zero-length past axis) and Core ML has no zero-size
    tensors (a flexible dimension's lower bound is 1), so the exported model cannot take the step
    every generation starts with.
    """
    if task in WITH_PAST:
        raise UnsupportedError(f"Core ML cannot take the empty cache of the first decoding step (no zero-size tensors), "
                         f"so {model!r} with a cache does not convert to coreml; use --task "
                         f"{WITH_PAST[task]} for Core ML, or --target onnx or openvino")


def _mil_name(name: str) -> str:
    """The name coremltools gives the MIL variable of a PyTorch value (``input.1`` -> ``input_1``, ``10`` -> ``op_10``)."""
    from coremltools.converters.mil.mil.passes.defs.preprocess import NameSanitizer

    return NameSanitizer(prefix="op_").sanitize_name(name)


def _traced_origin(reference: ReferenceModel, node: torch.Node) -> NodeOrigin:
    """Innermost module (path under the reference wrapper, class) and source line of a traced node."""
    path = traced_scope(node)
    try:
        module_class = type(reference.module.get_submodule(path)).__qualname__
    except AttributeError:
        module_class = "unknown class"
    source = next(iter(node.sourceRange().splitlines()), "").strip()
    return NodeOrigin(module=module_path(path), module_class=module_class, source=source)


class CoreMLExporter(Exporter):
    """Exports to ``model.mlpackage`` run by Core ML (on Linux: by the MIL reference interpreter).

    Precisions: ``fp16`` (default; Core ML computes in fp16 on the GPU and Neural Engine),
    ``fp32``, and fp16 compute with compressed weights: ``int8`` (per-channel linear),
    ``palettize4`` and ``palettize6`` (k-means lookup tables). Compressed precisions are judged by
    top-1 agreement as well as their error bounds.
    """

    target = "coreml"
    runtime = "coreml"
    requires = ("torch", "transformers", "coremltools")
    extra = "export,coreml"
    tool_packages = ("torch", "transformers", "coremltools")
    stages = ("capture", "convert to an ML Program", "compress", "save")
    default_precision = "fp16"
    options = (Option("deployment_target", str, "Core ML minimum deployment target: iOS16 (= macOS13, the "
                      "default), iOS17 or iOS18.", check=check_deployment_target),)
    # Derived in docs/parity.md (MIL reference interpreter; every precision but fp32 computes in fp16).
    precisions = {
        "fp16": Tolerance(atol=1e-7, rounding=2e-3, max_error=0.03, rms_error=7e-5, scale_error=2e-3),
        "fp32": None,
        "int8": Tolerance(atol=1e-7, rounding=2e-3, max_error=0.15, rms_error=0.05, scale_error=0.01, min_top1=0.9),
        "palettize6": Tolerance(atol=1e-7, rounding=2e-3, max_error=0.7, rms_error=0.3, scale_error=0.2, min_top1=0.9),
        "palettize4": Tolerance(atol=1e-7, rounding=2e-3, max_error=2.0, rms_error=0.7, scale_error=0.3, min_top1=0.9),
    }

    def refuse(self, model: str, task: str, precision: str) -> None:
        refuse_cache(model, task)

    def export(self, reference: ReferenceModel, folder: Path, *, precision: str,
               deployment_target: str | None = None, **options: Any) -> ExportResult:
        """Convert ``reference`` to ``folder/model.mlpackage``.

        Args:
            reference: The PyTorch reference.
            folder: The empty staging folder.
            precision: One of :attr:`precisions`.
            deployment_target: Minimum deployment target, ``iOS16`` (= macOS13), ``iOS17`` or ``iOS18``.
                Defaults to ``iOS16``.
            **options: The conversion's generic options (unused: no opset, no simplification).

        Raises:
            UsageError: unknown deployment target.
            CaptureError, ConversionError: every strategy failed; the first failure is raised.
        """
        import torch

        target = deployment_target or DEFAULT_DEPLOYMENT_TARGET
        check_deployment_target(target)
        settings = ConvertOptions(precision=precision, deployment_target=target, shapes=shape_mode(reference),
                                  fp32_heads=fp32_heads(reference.task))
        model, info = run_strategies(tuple(s(settings) for s in STRATEGIES), reference, None)
        with quiet_coremltools():
            model.save(str(folder / MODEL_FILE))
        mode = settings.shapes
        exporter = {"name": "coremltools", "coremltools": importlib.metadata.version("coremltools"),
                    "torch": torch.__version__,
                    "format": "mlprogram", "deployment_target": target, "shapes": mode,
                    "compute_precision": "fp32" if precision == "fp32" else "fp16",
                    "compression": _compression(precision), **info}
        runtime_options = {"enumerated_shapes": {reference.inputs[0].name: enumerated_shapes(reference)}} \
            if mode == "enumerated" else {}
        return ExportResult(model_file=MODEL_FILE, exporter=exporter, runtime_options=runtime_options)


EXPORTER = CoreMLExporter()
