"""Build a TensorRT engine from an artifact's ONNX model with the TensorRT 10 Python API.

:func:`build_engine` runs two stages (:data:`STAGES`, the last two of a TensorRT conversion),
each failure a one-line :class:`ConversionError`:
  1. parse ``model.onnx`` with ``trt.OnnxParser`` (the parser's errors name the node); then
     configure: one optimization profile (the plan's min/opt/max per input), precision flags
     (fp32 with TF32 off, fp16, bf16, int8 with fp16 fallback), the workspace limit, the timing
     cache beside the engine, and for int8 an ``IInt8EntropyCalibrator2`` fed the plan's
     calibration batches (seeded reference inputs saved as ``.npz`` at convert time) under a
     calibration profile fixed at their shape;
  2. ``build_serialized_network``; write ``model.engine`` and the updated timing cache.

:func:`build_artifact` (``edgeexport build``) rebuilds an artifact in a staged copy and swaps it in.
tensorrt and cuda-python are imported on call; none of this ever ran on a GPU in this project's CI.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeexport.artifact import load_npz, staged_output, write_manifest
from edgeexport.errors import ConversionError, StageError
from edgeexport.manifest import Manifest
from edgeexport.runner import open_artifact
from edgeexport.trt import cuda
from edgeexport.trt.plan import ENGINE_FILE, BuildPlan, EngineInfo, TensorrtOptions

logger = logging.getLogger(__name__)

STAGES = ("TensorRT ONNX parser", "TensorRT build")
ENGINE_PACKAGES = ("tensorrt", "cuda-python")  # recorded in the manifest once an engine is built

# Builder flags per precision; fp32 also clears TF32, which TensorRT enables by default.
PRECISION_FLAGS: dict[str, tuple[str, ...]] = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",),
                                               "int8": ("INT8", "FP16")}


def build_engine(folder: Path, onnx_file: str, plan: BuildPlan) -> EngineInfo:
    """Build ``folder/model.engine`` from ``folder/onnx_file`` following ``plan``; update the timing cache.

    Raises:
        MissingBackendError: tensorrt or cuda-python is missing.
        DeviceError: no GPU is visible.
        ConversionError: parsing or building failed; the message carries TensorRT's first error.
    """
    trt = cuda.tensorrt()
    device = cuda.current_device()
    trt_logger = recording_logger(trt)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(folder / onnx_file)):
        raise ConversionError(STAGES[0], f"{parser_errors(parser)}. Next steps: run 'edgeexport inspect --preflight "
                              "tensorrt ARTIFACT' to see unsupported nodes")
    config = builder.create_builder_config()
    configure(trt, builder, config, plan)
    cache_path = folder / plan.timing_cache
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    start = time.perf_counter()
    with cuda.DeviceBuffers() if plan.precision == "int8" else contextlib.nullcontext() as buffers:
        if buffers is not None:
            attach_calibrator(trt, builder, config, [load_npz(folder / f) for f in plan.calibration], buffers)
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConversionError(STAGES[1], f"{trt_logger.first_error or 'no engine returned'}. Next steps: raise "
                              "--workspace, narrow --shapes, or try another precision")
    (folder / ENGINE_FILE).write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    logger.info("built %s in %.1f s on %s", ENGINE_FILE, time.perf_counter() - start, device.gpu)
    return EngineInfo(file=ENGINE_FILE, device=device)


def configure(trt: Any, builder: Any, config: Any, plan: BuildPlan) -> None:
    """The optimization profile, precision flags and workspace limit."""
    profile = builder.create_optimization_profile()
    for name, shapes in plan.profile.items():
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    if plan.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    for flag in PRECISION_FLAGS[plan.precision]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)


def attach_calibrator(trt: Any, builder: Any, config: Any, batches: list[dict[str, np.ndarray]],
                      buffers: cuda.DeviceBuffers) -> None:
    """int8: an entropy calibrator over ``batches`` and a calibration profile fixed at their shapes."""
    profile = builder.create_optimization_profile()
    for name, array in batches[0].items():
        profile.set_shape(name, array.shape, array.shape, array.shape)
    config.set_calibration_profile(profile)
    config.int8_calibrator = entropy_calibrator(trt, batches, buffers)


def entropy_calibrator(trt: Any, batches: list[dict[str, np.ndarray]], buffers: cuda.DeviceBuffers) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` that uploads one batch per ``get_batch`` call.

    Defined in a function because its base class lives in the lazily imported ``tensorrt``.
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.pending = iter(batches)
            self.cache: bytes | None = None

        def get_batch_size(self) -> int:
            return 1  # explicit-batch networks: the batch is in the input shapes

        def get_batch(self, names: Sequence[str], *args: Any) -> list[int] | None:
            batch = next(self.pending, None)
            if batch is None:
                return None
            pointers = [buffers.upload(name, np.ascontiguousarray(batch[name])) for name in names]
            buffers.synchronize()
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            return self.cache

        def write_calibration_cache(self, cache: Any) -> None:
            self.cache = bytes(cache)

    return EntropyCalibrator()


def recording_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that forwards to Python logging and keeps the first error for the exception message."""

    class RecordingLogger(trt.ILogger):
        def __init__(self) -> None:
            super().__init__()
            self.first_error = ""

        def log(self, severity: Any, message: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.first_error = self.first_error or message.strip().splitlines()[0]
                logger.error("TensorRT: %s", message)
            elif severity == trt.ILogger.Severity.WARNING:
                logger.warning("TensorRT: %s", message)
            else:
                logger.debug("TensorRT: %s", message)

    return RecordingLogger()


def parser_errors(parser: Any) -> str:
    """The parser's first error with its node, and how many there were."""
    error = parser.get_error(0)
    node = f"node {error.node_name()} ({error.node_operator()}): " if error.node() >= 0 else ""
    more = f" (and {parser.num_errors - 1} more)" if parser.num_errors > 1 else ""
    return f"{node}{error.desc()}{more}"


def build_artifact(folder: str | Path, *, shapes: Sequence[str] | None = None,
                   workspace: int | str | None = None) -> Manifest:
    """Build (or rebuild) the engine of a ``tensorrt`` artifact on this machine, atomically.

    The artifact is copied to a staging folder beside it, the engine is built there, the
    manifest updated (engine file, TensorRT version, GPU, compute capability; hashes) and the
    staged copy swapped in; on any failure the artifact is left as it was.

    Args:
        folder: The artifact folder (from ``convert --target tensorrt``).
        shapes: ``AXIS:MIN,OPT,MAX`` overrides of the plan's profile. Defaults to the plan's.
        workspace: Workspace limit (bytes or ``4GiB``). Defaults to the plan's.

    Raises:
        ArtifactError: not a TensorRT artifact. MissingBackendError, DeviceError, ConversionError: see
            :func:`build_engine` (its stages numbered 1 and 2).
    """
    artifact = open_artifact(folder)
    options = TensorrtOptions.of(artifact.manifest)
    plan = options.build.revised(artifact.manifest.inputs, shapes=shapes, workspace=workspace)
    cuda.current_device()  # fail before copying anything when there is no GPU or tensorrt
    with staged_output(artifact.path, force=True) as stage:
        shutil.copytree(artifact.path, stage, dirs_exist_ok=True)
        try:
            engine = build_engine(stage, options.onnx_file, plan)
        except StageError as exc:
            raise exc.numbered(STAGES) from exc.__cause__
        manifest = artifact.manifest
        manifest.model_file = engine.file
        manifest.runtime_options = replace(options, build=plan, engine=engine).to_dict()
        manifest.exporter = {k: v for k, v in manifest.exporter.items() if k != "note"}
        write_manifest(stage, manifest, [*manifest.tool_versions, *ENGINE_PACKAGES])
    return manifest
