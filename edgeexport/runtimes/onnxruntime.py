"""onnxruntime runner for ONNX artifacts: CPU by default, CUDA when onnxruntime-gpu provides it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgeexport.artifact import Artifact
from edgeexport.errors import UsageError
from edgeexport.runtimes.base import Runner

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxruntimeRunner(Runner):
    """Runs ``model.onnx`` in an ``onnxruntime.InferenceSession``.

    Options:
        threads: intra-op threads (0 = onnxruntime's default). Defaults to 0.
        optimization: graph optimisation level, one of ``disable|basic|extended|all``. Defaults to ``all``.
        providers: execution providers in priority order. Defaults to CUDA when available, then CPU;
            pass ``["TensorrtExecutionProvider", "CUDAExecutionProvider"]`` for the TensorRT EP.
    """

    name = "onnxruntime"
    requires = ("onnxruntime",)
    extra = ""
    label = "onnxruntime"

    def __init__(self, artifact: Artifact, *, threads: int = 0, optimization: str = "all",
                 providers: list[str] | None = None) -> None:
        super().__init__(artifact)
        if optimization not in OPTIMIZATION_LEVELS:
            raise UsageError(f"unknown optimization level {optimization!r}; choose one of: {', '.join(OPTIMIZATION_LEVELS)}")
        self.threads = threads
        self.optimization = optimization
        self.providers = providers
        self.session: Any = None

    def _activate_impl(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        available = ort.get_available_providers()
        providers = self.providers or [p for p in PREFERRED_PROVIDERS if p in available]
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise UsageError(f"execution providers {unknown} are not available here; available: {', '.join(available)}")
        self.session = ort.InferenceSession(str(self.artifact.model_path), options, providers=providers)

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, feed)))

    def _deactivate_impl(self) -> None:
        self.session = None


def describe(artifact: Artifact) -> dict[str, Any]:
    """Op histogram and parameter count of the ONNX model (weights are not loaded)."""
    import onnx

    model = onnx.load(str(artifact.model_path), load_external_data=False)
    ops = Counter(node.op_type for node in model.graph.node)
    parameters = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return {"ops": dict(ops.most_common()), "parameters": parameters, "nodes": len(model.graph.node)}


RUNNER = OnnxruntimeRunner
