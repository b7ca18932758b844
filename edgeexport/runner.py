"""The runner contract: ``load(artifact)(inputs) -> outputs``, the same for every target.

The base class owns the public call: it checks inputs against the manifest (names, dtypes,
ranks, fixed dims), creates the backend session lazily on first use, times only the backend
call, and returns fresh numpy arrays (never buffers the backend may reuse). Backends
implement the ``_*_impl`` hooks. Runtimes never import torch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

from edgeexport.artifact import Artifact, TensorSpec
from edgeexport.errors import InputSpecError, MissingBackendError


class Runner(ABC):
    """Runs one artifact. Use as a callable, optionally as a context manager to free the session.

    Attributes:
        last_inference_time: Seconds the last backend call took (excluding input checks).
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""
    label: ClassVar[str] = ""

    def __init__(self, artifact: Artifact, **options: Any) -> None:
        self.artifact = artifact
        self.options = options
        self.last_inference_time = 0.0
        self._active = False

    @classmethod
    def missing_packages(cls) -> list[str]:
        """The packages of ``requires`` that are not installed."""
        return [name for name in cls.requires if importlib.util.find_spec(name) is None]

    @classmethod
    def install_hint(cls) -> str:
        return f"pip install 'edgeexport[{cls.extra}]'" if cls.extra else "pip install edgeexport"

    @classmethod
    def check_available(cls) -> None:
        missing = cls.missing_packages()
        if missing:
            raise MissingBackendError(f"runtime {cls.name!r} needs {', '.join(missing)}; "
                                      f"install it with: {cls.install_hint()}")

    @classmethod
    def runs_here(cls) -> str:
        """Whether (and how) this machine runs the runtime's artifacts, for ``edgeexport list``."""
        return f"no ({cls.install_hint()})" if cls.missing_packages() else "yes"

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.artifact.manifest.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.artifact.manifest.outputs

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self._active:
            self._activate_impl()
            self._active = True

    def deactivate(self) -> None:
        if self._active:
            self._deactivate_impl()
            self._active = False

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named numpy inputs and return named numpy outputs."""
        feed = check_inputs(self.inputs, inputs)
        self.activate()
        with self.timed():
            outputs = self._infer_impl(feed)
        return {spec.name: np.array(outputs[spec.name], copy=True) for spec in self.outputs}

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Time the backend call inside into :attr:`last_inference_time`."""
        start = time.perf_counter()
        yield
        self.last_inference_time = time.perf_counter() - start

    def step(self, feed: Mapping[str, Any], *, keep: Collection[str] = ()) -> dict[str, Any]:
        """One call of a generation loop, where outputs become the next call's inputs.

        Outputs named in ``keep`` may come back as backend-native handles (a KV cache left
        where the backend put it); a handle is only valid as an input of this runner's next
        ``step``. Other outputs are numpy arrays. Backends that can avoid copies override
        this (onnxruntime binds inputs and outputs); the default is the checked ``self(feed)``.
        """
        return self(feed)

    @abstractmethod
    def _activate_impl(self) -> None:
        """Create the backend session (heavy work happens here, not in ``__init__``)."""

    @abstractmethod
    def _infer_impl(self, feed: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """Run the backend on checked inputs; return outputs by name."""

    def _deactivate_impl(self) -> None:
        """Free the backend session."""


def check_inputs(specs: list[TensorSpec], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check named inputs against the manifest's specs; return them as contiguous arrays.

    Raises:
        InputSpecError: a missing or unexpected name, a wrong dtype, rank or fixed dim.
    """
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in inputs]
    extra = [n for n in inputs if n not in expected]
    if missing or extra:
        raise InputSpecError(f"inputs do not match the model: missing {missing}, unexpected {extra}; expected {expected}")
    feed = {}
    for spec in specs:
        array = np.asarray(inputs[spec.name])
        if array.dtype != np.dtype(spec.dtype):
            raise InputSpecError(f"input {spec.name!r} has dtype {array.dtype}, the model expects {spec.dtype}")
        if array.ndim != len(spec.shape):
            raise InputSpecError(f"input {spec.name!r} has rank {array.ndim} (shape {list(array.shape)}), "
                                 f"the model expects rank {len(spec.shape)} {list(spec.shape)}")
        for axis, (size, want) in enumerate(zip(array.shape, spec.shape)):
            if isinstance(want, int) and size != want:
                raise InputSpecError(f"input {spec.name!r} has size {size} on dim {axis}, the model expects {want} "
                                     f"(shape {list(spec.shape)})")
        feed[spec.name] = np.ascontiguousarray(array)
    return feed
