"""Core ML runner for ``.mlpackage`` artifacts: ``MLModel.predict`` on macOS, the MIL reference
interpreter (:mod:`edgeexport.mil.interpreter`) elsewhere, where Core ML cannot run."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgeexport.artifact import Artifact
from edgeexport.errors import InputSpecError, UsageError
from edgeexport.logs import quiet
from edgeexport.runner import Runner

ON_MACOS = sys.platform == "darwin"
COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_gpu", "cpu_and_ne")
FLOAT_TYPES = (10, 11)  # MIL DataType FLOAT16, FLOAT32
# Quiet while coremltools imports and loads: it warns that native libraries are missing off macOS.
COREMLTOOLS_LOGGERS = ("coremltools",)


class CoreMLRunner(Runner):
    """Runs ``model.mlpackage``: with Core ML on macOS, else with the MIL reference interpreter.

    The interpreter executes the saved ML Program op by op with numpy, with fp16 rounding where
    the program computes in fp16; its timings measure the interpreter, not a device.

    Options:
        compute_units: Core ML compute units on macOS, one of ``all|cpu_only|cpu_and_gpu|cpu_and_ne``.
            Defaults to ``all``; the interpreter ignores it.
        threads: The common runner option; ignored (Core ML schedules its own threads, the
            interpreter runs numpy's). Defaults to 0.
    """

    name = "coreml"
    requires = ("coremltools",)
    install = "pip install coremltools"
    tool_packages = ("coremltools",)
    label = "Core ML" if ON_MACOS else "MIL reference interpreter"

    @classmethod
    def runs_here(cls) -> str:
        if cls.missing_packages() or ON_MACOS:
            return super().runs_here()
        return "MIL reference interpreter (Core ML needs macOS)"

    def __init__(self, artifact: Artifact, *, compute_units: str = "all", threads: int = 0) -> None:
        super().__init__(artifact)
        if compute_units not in COMPUTE_UNITS:
            raise UsageError(f"unknown compute units {compute_units!r}; choose one of: {', '.join(COMPUTE_UNITS)}")
        self.compute_units = compute_units
        self.enumerated = {name: [tuple(s) for s in shapes]
                           for name, shapes in artifact.manifest.runtime_options.get("enumerated_shapes", {}).items()}
        self.model: Any = None
        self.input_dtypes: dict[str, np.dtype] = {}

    def _activate_impl(self) -> None:
        with quiet(COREMLTOOLS_LOGGERS):
            if ON_MACOS:
                import coremltools as ct

                self.model = ct.models.MLModel(str(self.artifact.model_path),
                                               compute_units=getattr(ct.ComputeUnit, self.compute_units.upper()))
                self.input_dtypes = {spec.name: _core_ml_dtype(np.dtype(spec.dtype)) for spec in self.inputs}
            else:
                from edgeexport.mil.interpreter import MilInterpreter

                self.model = MilInterpreter(self.artifact.model_path)
                self.input_dtypes = self.model.input_dtypes

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        for name, shapes in self.enumerated.items():
            if feed[name].shape not in shapes:
                raise InputSpecError(f"input {name!r} has shape {list(feed[name].shape)}; this Core ML model takes "
                                     f"only the enumerated shapes {[list(s) for s in shapes]}")
        cast = {name: value.astype(self.input_dtypes[name], copy=False) for name, value in feed.items()}
        outputs = self.model.predict(cast) if ON_MACOS else self.model(cast)
        return {spec.name: np.asarray(outputs[spec.name]).astype(spec.dtype, copy=False) for spec in self.outputs}

    def _deactivate_impl(self) -> None:
        self.model = None


def _core_ml_dtype(dtype: np.dtype) -> np.dtype:
    """Core ML has no 64-bit tensors: int64 inputs are int32, float64 float32."""
    return {np.dtype("int64"): np.dtype("int32"), np.dtype("float64"): np.dtype("float32")}.get(dtype, dtype)


def describe(artifact: Artifact) -> dict[str, Any]:
    """Op histogram, parameter count, spec version and flexible input shapes (kind, and the
    size range of each dim where ranged) of the ML Program; weights are not read."""
    with quiet(COREMLTOOLS_LOGGERS):
        from coremltools.models.utils import load_spec

        spec = load_spec(str(artifact.model_path))
    operations = [op for block in spec.mlProgram.functions["main"].block_specializations.values()
                  for op in block.operations]
    compressed = {arg.name for op in operations if op.type.startswith("constexpr_")
                  for argument in op.inputs.values() for arg in argument.arguments}
    weights = [out for op in operations for out in op.outputs
               if op.type.startswith("constexpr_") or (op.type == "const" and out.name not in compressed
                                                       and out.type.tensorType.dataType in FLOAT_TYPES)]
    parameters = sum(int(np.prod([d.constant.size for d in out.type.tensorType.dimensions])) for out in weights)
    ops = Counter(op.type for op in operations)
    arrays = {i.name: i.type.multiArrayType for i in spec.description.input}
    return {"ops": dict(ops.most_common()), "parameters": parameters, "nodes": len(operations),
            "specification_version": spec.specificationVersion,
            "flexible_shapes": {name: array.WhichOneof("ShapeFlexibility") for name, array in arrays.items()},
            "shape_ranges": {name: [[r.lowerBound, r.upperBound] for r in array.shapeRange.sizeRanges]
                             for name, array in arrays.items() if array.WhichOneof("ShapeFlexibility") == "shapeRange"}}


RUNNER = CoreMLRunner
