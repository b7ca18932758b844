"""CUDA device buffers and the current device, through cuda-python's runtime bindings (never torch).

cuda-python is imported on first use: ``cuda.bindings.runtime`` (cuda-python >= 12.6), else the
older ``cuda.cudart``. Every call returns ``(error, *results)``; :func:`call` turns an error into
a one-line :class:`DeviceError`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType
from typing import Any

import numpy as np

from edgeexport.errors import DeviceError, MissingBackendError
from edgeexport.trt.plan import Device

INSTALL = "pip install 'edgeexport[tensorrt]'"
CUDART_MODULES = ("cuda.bindings.runtime", "cuda.cudart")


@functools.cache  # called for every CUDA call; a failed import is not cached by Python
def cudart() -> ModuleType:
    """cuda-python's runtime module.

    Raises:
        MissingBackendError: cuda-python is not installed.
    """
    for name in CUDART_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingBackendError(f"running TensorRT engines needs cuda-python; install it with: {INSTALL}")


def tensorrt() -> ModuleType:
    """The ``tensorrt`` module.

    Raises:
        MissingBackendError: tensorrt is not installed.
    """
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        raise MissingBackendError(f"TensorRT engines need tensorrt on a machine with an NVIDIA GPU; install it "
                                  f"there with: {INSTALL}") from None


def call(result: Any) -> Any:
    """The result of a cuda-python call (None, one value or a tuple); raise on a CUDA error."""
    rt = cudart()
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != rt.cudaError_t.cudaSuccess:
        raise DeviceError(f"CUDA call failed: {getattr(error, 'name', error)}; "
                          "check the GPU, its driver and free memory")
    return None if not values else values[0] if len(values) == 1 else tuple(values)


def current_device() -> Device:
    """The TensorRT version and the current GPU's name and compute capability.

    Raises:
        MissingBackendError: tensorrt or cuda-python is missing.
        DeviceError: no NVIDIA GPU is visible.
    """
    trt = tensorrt()
    rt = cudart()
    if call(rt.cudaGetDeviceCount()) == 0:
        raise DeviceError("no NVIDIA GPU is visible; TensorRT engines need one")
    props = call(rt.cudaGetDeviceProperties(call(rt.cudaGetDevice())))
    name = props.name if isinstance(props.name, str) else bytes(props.name).split(b"\0")[0].decode()
    return Device(tensorrt=trt.__version__, gpu=name.strip(), compute_capability=f"{props.major}.{props.minor}")


def unavailable_reason() -> str:
    """Why an engine cannot be built or run here, in a few words ('' when it can)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed"
    try:
        current_device()
    except MissingBackendError:
        return "cuda-python is not installed"
    except DeviceError as exc:
        return str(exc).split(";")[0]
    return ""


class DeviceBuffers:
    """Named device allocations that grow on demand, and the CUDA stream copies and launches use.

    Use as a context manager, or call :meth:`free`.
    """

    def __init__(self) -> None:
        self.rt = cudart()
        self.stream = call(self.rt.cudaStreamCreate())
        self.buffers: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> DeviceBuffers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    @property
    def handle(self) -> int:
        """The stream as the integer TensorRT's ``execute_async_v3`` takes."""
        return int(self.stream)

    def reserve(self, name: str, nbytes: int) -> int:
        """A device pointer of at least ``nbytes`` for ``name`` (reallocated only when it must grow)."""
        pointer, size = self.buffers.get(name, (0, -1))
        if size < nbytes:
            if pointer:
                call(self.rt.cudaFree(pointer))
            pointer = int(call(self.rt.cudaMalloc(max(nbytes, 1))))
            self.buffers[name] = (pointer, nbytes)
        return pointer

    def upload(self, name: str, array: np.ndarray) -> int:
        """Copy a contiguous host array to ``name``'s buffer (on the stream); return the device pointer."""
        pointer = self.reserve(name, array.nbytes)
        if array.nbytes:
            call(self.rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        return pointer

    def download(self, name: str, array: np.ndarray) -> None:
        """Copy ``name``'s buffer into a contiguous host array (on the stream; call :meth:`synchronize`)."""
        if array.nbytes:
            call(self.rt.cudaMemcpyAsync(array.ctypes.data, self.buffers[name][0], array.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    def synchronize(self) -> None:
        call(self.rt.cudaStreamSynchronize(self.stream))

    def free(self) -> None:
        """Free every buffer and the stream."""
        for pointer, _ in self.buffers.values():
            call(self.rt.cudaFree(pointer))
        self.buffers.clear()
        if self.stream is not None:
            call(self.rt.cudaStreamDestroy(self.stream))
            self.stream = None
