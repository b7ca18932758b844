"""TensorRT runner: the artifact's engine through the TensorRT 10 API, or its ONNX through onnxruntime.

Executions (the ``execution`` option):

- ``engine``: deserialize ``model.engine`` and run it with named I/O (``set_input_shape``,
  ``set_tensor_address``, ``execute_async_v3``) on cuda-python device buffers that grow with
  the input shapes. The engine's TensorRT version and GPU compute capability must match this
  machine's, else a one-line :class:`ArtifactError` says to rebuild.
- ``onnxruntime``: run the ``model.onnx`` kept in the artifact with onnxruntime's TensorRT (then
  CUDA) execution provider, given the plan's profile shapes, precision and workspace.
- ``auto`` (default): the engine when one is built; otherwise the ONNX inside on onnxruntime's
  default providers, labelled as such. This is how ``convert`` validates a TensorRT-ready
  artifact on a machine without a GPU: it checks the ONNX the engine will be built from, not
  an engine.

Never imports torch; tensorrt and cuda-python are imported when an engine is activated.
None of the engine path ever ran on a GPU in this project's CI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from edgeexport import packages
from edgeexport.artifact import Artifact
from edgeexport.errors import ArtifactError, InputSpecError, UsageError
from edgeexport.runner import Runner
from edgeexport.runtimes.onnxruntime import OnnxruntimeRunner
from edgeexport.runtimes.onnxruntime import describe as describe_onnx
from edgeexport.trt import cuda
from edgeexport.trt.build import recording_logger
from edgeexport.trt.plan import BuildPlan, TensorrtOptions, check_engine

EXECUTIONS = ("auto", "engine", "onnxruntime")
TENSORRT_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
# onnxruntime's TensorRT EP has no calibration data of ours: int8 plans run there in fp16.
EP_PRECISION = {"fp16": "trt_fp16_enable", "bf16": "trt_bf16_enable", "int8": "trt_fp16_enable"}


class TensorrtRunner(Runner):
    """Runs a ``tensorrt`` artifact.

    Options:
        execution: ``engine``, ``onnxruntime`` or ``auto`` (see the module docstring). Defaults to ``auto``.
        providers: onnxruntime execution providers for the ``onnxruntime`` execution. Defaults to
            TensorRT then CUDA (``auto`` without an engine: onnxruntime's own default).
        threads: onnxruntime intra-op threads (0 = default); unused by the engine. Defaults to 0.
    """

    name = "tensorrt"
    requires = ("onnxruntime",)  # the ONNX inside runs anywhere; engines also need tensorrt and cuda-python
    install = "pip install tensorrt cuda-python"
    tool_packages = ("tensorrt", "onnxruntime")
    label = "tensorrt"

    @classmethod
    def runs_here(cls) -> str:
        if not packages.missing(["tensorrt"]):
            return "yes (engines need an NVIDIA GPU)"
        return f"ONNX inside only, on onnxruntime (engines: {cls.install} on an NVIDIA GPU)"

    def __init__(self, artifact: Artifact, *, execution: str = "auto", providers: list[str] | None = None,
                 threads: int = 0) -> None:
        super().__init__(artifact)
        if execution not in EXECUTIONS:
            raise UsageError(f"unknown execution {execution!r}; choose one of: {', '.join(EXECUTIONS)}")
        self.trt_options = TensorrtOptions.of(artifact.manifest)
        built = self.trt_options.engine is not None
        if execution == "engine" and not built:
            raise ArtifactError("this TensorRT-ready artifact has no engine yet; build it with 'edgeexport build "
                                "ARTIFACT' on a machine with an NVIDIA GPU and tensorrt, or run its ONNX with "
                                "execution='onnxruntime'")
        self.execution = "engine" if execution == "engine" or (execution == "auto" and built) else "onnxruntime"
        self.onnx: OnnxruntimeRunner | None = None
        self.engine: EngineSession | None = None
        if self.execution == "onnxruntime":
            fallback = execution == "auto" and providers is None
            chosen = None if fallback else (providers or TENSORRT_PROVIDERS)
            self.onnx = onnx_runner(artifact, self.trt_options, providers=chosen, threads=threads)
            onnx_file = self.trt_options.onnx_file
            self.label = (f"onnxruntime on {onnx_file} (TensorRT engine not built)" if fallback else
                          f"onnxruntime {'+'.join(chosen or [])} on {onnx_file}")

    def _activate_impl(self) -> None:
        if self.onnx is not None:
            self.onnx.activate()
            return
        engine = self.trt_options.engine
        check_engine(engine, cuda.current_device(), str(self.artifact.path))
        self.engine = EngineSession(self.artifact.file(engine.file).read_bytes(), self.trt_options.build)

    def _infer_impl(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        if self.onnx is not None:
            return self.onnx(feed)
        outputs = self.engine.run(feed, [spec.name for spec in self.outputs])
        return {spec.name: outputs[spec.name].astype(spec.dtype, copy=False) for spec in self.outputs}

    def _deactivate_impl(self) -> None:
        if self.onnx is not None:
            self.onnx.deactivate()
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def onnx_runner(artifact: Artifact, options: TensorrtOptions, *, providers: list[str] | None,
                threads: int) -> OnnxruntimeRunner:
    """An onnxruntime runner of the artifact's ``model.onnx``, with TensorRT EP options from the build plan."""
    return OnnxruntimeRunner(onnx_view(artifact, options), threads=threads, providers=providers,
                             provider_options={TENSORRT_PROVIDERS[0]: provider_options(options.build)})


def onnx_view(artifact: Artifact, options: TensorrtOptions) -> Artifact:
    """The artifact seen as its ONNX model (``model_file`` = the plan's ONNX file)."""
    return Artifact(path=artifact.path, manifest=replace(artifact.manifest, model_file=options.onnx_file))


def provider_options(plan: BuildPlan) -> dict[str, str]:
    """onnxruntime TensorRT EP options for a build plan: profile shapes, precision and workspace."""
    def shapes(key: str) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, s[key]))}" for name, s in plan.profile.items())

    options = {f"trt_profile_{key}_shapes": shapes(key) for key in ("min", "opt", "max")}
    if plan.precision in EP_PRECISION:
        options[EP_PRECISION[plan.precision]] = "1"
    if plan.workspace_bytes:
        options["trt_max_workspace_size"] = str(plan.workspace_bytes)
    return options


class EngineSession:
    """A deserialized engine, its execution context and device buffers (TensorRT 10 named-tensor API)."""

    def __init__(self, engine_bytes: bytes, plan: BuildPlan) -> None:
        self.trt = cuda.tensorrt()
        self.plan = plan
        self.logger = recording_logger(self.trt)
        self.runtime = self.trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ArtifactError(f"TensorRT cannot load the engine ({self.logger.first_error or 'unknown reason'}); "
                                "rebuild it here with 'edgeexport build ARTIFACT'")
        self.context = self.engine.create_execution_context()
        self.buffers = cuda.DeviceBuffers()

    def run(self, feed: Mapping[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Set input shapes and addresses, launch on the stream, copy the outputs back."""
        for name, array in feed.items():
            array = np.ascontiguousarray(array, dtype=self._dtype(name))
            self._check_profile(name, array.shape)
            self.context.set_input_shape(name, array.shape)
            self.context.set_tensor_address(name, self.buffers.upload(name, array))
        results = {}
        for name in outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise InputSpecError(f"output {name!r} has a data-dependent shape {list(shape)}; edgeexport's TensorRT "
                                     "runner needs output shapes the input shapes determine")
            results[name] = np.empty(shape, dtype=self._dtype(name))
            self.context.set_tensor_address(name, self.buffers.reserve(name, results[name].nbytes))
        if not self.context.execute_async_v3(self.buffers.handle):
            raise ArtifactError(f"TensorRT failed to run the engine: {self.logger.first_error or 'unknown error'}")
        for name, array in results.items():
            self.buffers.download(name, array)
        self.buffers.synchronize()
        return results

    def _dtype(self, name: str) -> np.dtype:
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def _check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        """Refuse a shape outside the engine's optimization profile, naming the profile."""
        low, high = self.plan.profile[name]["min"], self.plan.profile[name]["max"]
        if any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
            raise InputSpecError(f"input {name!r} has shape {list(shape)}, outside the engine's profile {low}..{high}; "
                                 "rebuild with a wider range: edgeexport build ARTIFACT --shapes AXIS:MIN,OPT,MAX")

    def close(self) -> None:
        self.buffers.free()
        self.context = None
        self.engine = None


def describe(artifact: Artifact) -> dict[str, Any]:
    """The ONNX model's op histogram and parameters, plus the build plan and the engine (if built)."""
    options = TensorrtOptions.of(artifact.manifest)
    return {**describe_onnx(onnx_view(artifact, options)), "build": options.build.to_dict(),
            "engine": options.engine.to_dict() if options.engine else None}


RUNNER = TensorrtRunner
