"""onnxruntime runner for ONNX artifacts: CPU by default, CUDA when onnxruntime-gpu provides it."""

from __future__ import annotations

import mmap
import os
from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeexport.artifact import Artifact, resolve_inside
from edgeexport.errors import UsageError
from edgeexport.runner import Runner

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxruntimeRunner(Runner):
    """Runs ``model.onnx`` in an ``onnxruntime.InferenceSession``.

    Options:
        threads: intra-op threads (0 = onnxruntime's default). Defaults to 0.
        optimization: graph optimisation level, one of ``disable|basic|extended|all``. Defaults to ``all``.
        providers: execution providers in priority order. Defaults to CUDA when available, then CPU;
            pass ``["TensorrtExecutionProvider", "CUDAExecutionProvider"]`` for the TensorRT EP.
        provider_options: options by provider name, e.g. ``{"TensorrtExecutionProvider": {"trt_fp16_enable": True}}``.
            Defaults to none.
    """

    name = "onnxruntime"
    requires = ("onnxruntime",)
    install = "pip install onnxruntime"
    tool_packages = ("onnxruntime",)
    label = "onnxruntime"

    def __init__(self, artifact: Artifact, *, threads: int = 0, optimization: str = "all",
                 providers: list[str] | None = None,
                 provider_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        super().__init__(artifact)
        if optimization not in OPTIMIZATION_LEVELS:
            raise UsageError(f"unknown optimization level {optimization!r}; choose one of: {', '.join(OPTIMIZATION_LEVELS)}")
        self.threads = threads
        self.optimization = optimization
        self.providers = providers
        self.provider_options = dict(provider_options or {})
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
        check_external_data(self.artifact)
        self.session = ort.InferenceSession(str(self.artifact.model_path), options, providers=providers,
                                            provider_options=[dict(self.provider_options.get(p, {})) for p in providers])

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, feed)))

    def step(self, feed: Mapping[str, Any], *, keep: Collection[str] = ()) -> dict[str, Any]:
        """IO-bound call: ``OrtValue`` inputs are bound as they are and ``keep`` outputs stay ``OrtValue``s
        (on the GPU under CUDA), so a KV cache never round-trips through numpy.

        Inputs are not checked against the manifest; the generation loop builds them from it.
        """
        import onnxruntime as ort

        self.activate()
        binding = self.session.io_binding()
        arrays = {name: np.ascontiguousarray(value) for name, value in feed.items() if not isinstance(value, ort.OrtValue)}
        for name, value in feed.items():
            if name in arrays:
                binding.bind_cpu_input(name, arrays[name])
            else:
                binding.bind_ortvalue_input(name, value)
        device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        names = [spec.name for spec in self.outputs]
        for name in names:
            binding.bind_output(name, device if name in keep else "cpu")
        with self.timed():
            self.session.run_with_iobinding(binding)
        return {name: value if name in keep else value.numpy() for name, value in zip(names, binding.get_outputs())}

    def _deactivate_impl(self) -> None:
        self.session = None


def check_external_data(artifact: Artifact) -> None:
    """Refuse a model whose external-data locations leave the artifact folder, before any weight is read.

    onnxruntime would otherwise open whatever path an (untrusted) model names, ``../../etc/passwd``
    or an absolute path included. Every external tensor names its file under the key
    ``location``, stored verbatim in the protobuf, so a model file without those bytes has none
    and is not parsed: parsing costs ~1.5 s on GPT-2's 500 MB at every session start, the scan 0.3 s.
    """
    import onnx

    if not _contains(artifact.model_path, b"location"):
        return
    model = onnx.load(str(artifact.model_path), load_external_data=False)
    model_dir = Path(artifact.manifest.model_file).parent
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            resolve_inside(artifact.path, str(model_dir / location))


def _contains(path: Path, needle: bytes) -> bool:
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return False
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(needle) >= 0


def describe(artifact: Artifact) -> dict[str, Any]:
    """Op histogram (ops outside the default domain named ``domain.op``, e.g.
    ``com.microsoft.MultiHeadAttention``) and parameter count of the ONNX model (weights are not loaded)."""
    import onnx

    model = onnx.load(str(artifact.model_path), load_external_data=False)
    ops = Counter(f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
                  for node in model.graph.node)
    parameters = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return {"ops": dict(ops.most_common()), "parameters": parameters, "nodes": len(model.graph.node)}


RUNNER = OnnxruntimeRunner
