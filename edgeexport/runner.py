"""The runner contract: ``load(artifact)(inputs) -> outputs``, the same for every target, and how
runtimes are found.

The base class owns the public call: it checks inputs against the manifest (names, dtypes,
ranks, fixed dims), creates the backend session lazily on first use, times only the backend
call, and returns fresh numpy arrays (never buffers the backend may reuse). Backends
implement the ``_*_impl`` hooks and declare the packages they need, the smallest install
command that provides them on a device, and the tool versions an artifact records.

The manifest names the runtime that runs an artifact (``manifest.runtime``): a module of
:mod:`edgeexport.runtimes` or one that an installed package registers under the entry point
group ``edgeexport.runtimes``, defining ``RUNNER`` (and optionally ``describe(artifact)`` for
``inspect``). Runtimes never import torch.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from edgeexport import packages
from edgeexport.artifact import Artifact
from edgeexport.bundle import Bundle, is_bundle
from edgeexport.errors import ArtifactError, InputSpecError, UsageError
from edgeexport.manifest import TensorSpec
from edgeexport.plugins import plugin_module, plugin_names

RUNTIMES = "edgeexport.runtimes"  # the package of built-in runtimes and the entry point group of others


class Runner(ABC):
    """Runs one artifact. Use as a callable, optionally as a context manager to free the session.

    Class attributes a subclass declares:
        name: The runtime's name (what manifests call it).
        requires: Import names of the packages it needs.
        install: The smallest command that installs them on a device (``pip install openvino``).
        tool_packages: Distributions whose versions the manifest records.
        label: How reports name it.

    Attributes:
        last_inference_time: Seconds the last backend call took (excluding input checks).
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    install: ClassVar[str] = "pip install edgeexport"
    tool_packages: ClassVar[tuple[str, ...]] = ()
    label: ClassVar[str] = ""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.last_inference_time = 0.0
        self._active = False

    @classmethod
    def missing_packages(cls) -> list[str]:
        """The packages of ``requires`` that are not installed."""
        return packages.missing(cls.requires)

    @classmethod
    def check_available(cls) -> None:
        packages.require(cls.requires, needed_by=f"runtime {cls.name!r}", install=cls.install)

    @classmethod
    def runs_here(cls) -> str:
        """Whether (and how) this machine runs the runtime's artifacts, for ``edgeexport list``."""
        return f"no ({cls.install})" if cls.missing_packages() else "yes"

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

    def embed(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """``(len(texts), dim)`` sentence embeddings of a ``sentence-embedding`` artifact, the texts tokenized with
        the artifact's own tokenizer in batches of ``batch_size`` (no torch, no transformers).

        Raises:
            UsageError: the artifact is of another task.
        """
        from edgeexport.processing import Processing, text_batch

        task = self.artifact.manifest.model.get("task")
        if task != "sentence-embedding":
            raise UsageError(f"embed() needs a sentence-embedding artifact; this one is {task!r} (convert a "
                             "sentence-transformers folder, whose default task is sentence-embedding)")
        processing, names = Processing.of(self.artifact.manifest), self.artifact.manifest.input_names
        rows = [self({name: feed[name] for name in names})["sentence_embedding"]
                for start in range(0, len(texts), batch_size)
                for feed in [text_batch(processing, self.artifact, texts[start:start + batch_size])]]
        return np.concatenate(rows) if rows else np.zeros((0, self.outputs[0].shape[-1]), np.float32)

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


def runtimes() -> list[str]:
    """Names of all runtimes this edgeexport knows: built in and from installed packages."""
    return plugin_names(RUNTIMES)


def runtime_module(name: str) -> ModuleType:
    """The runtime module called ``name``; raises :class:`ArtifactError` for names this version lacks."""
    module = plugin_module(RUNTIMES, name)
    if module is None:
        raise ArtifactError(f"artifact needs runtime {name!r}, which this edgeexport does not have "
                            f"(it has {', '.join(runtimes())}); upgrade edgeexport")
    return module


def open_artifact(artifact: str | Path | Artifact, *, verify: bool = True) -> Artifact:
    """Open (and by default hash-check) an artifact folder.

    Raises:
        ArtifactError: not an artifact; a bundle's message names its components.
    """
    if not isinstance(artifact, Artifact) and is_bundle(artifact):
        roles = Bundle.open(artifact).components
        raise ArtifactError(f"{str(artifact)!r} is a bundle of {', '.join(roles)}; pass one component "
                            f"(e.g. {Path(artifact) / next(iter(roles))}), or use validate, inspect or generate")
    opened = artifact if isinstance(artifact, Artifact) else Artifact.open(artifact)
    if verify:
        opened.verify()
    return opened


def load(artifact: str | Path | Artifact, *, verify: bool = True, verify_signature: str | Path | None = None,
         **options: Any) -> Runner:
    """Open an artifact and return its runner; the backend session is created on first call.

    Args:
        artifact: The artifact folder (or an opened :class:`Artifact`).
        verify: Check every file's sha256 first. Defaults to True.
        verify_signature: Public key (PEM) whose signature the artifact must carry
            (:func:`edgeexport.signing.verify`), checked before anything is read. Defaults to None (not checked).
        **options: Runner options (see each runner's docstring).
    """
    if verify_signature is not None:
        from edgeexport.signing import verify as verify_signed

        verify_signed(artifact.path if isinstance(artifact, Artifact) else artifact, verify_signature)
    opened = open_artifact(artifact, verify=verify)
    runner_class = runtime_module(opened.manifest.runtime).RUNNER
    runner_class.check_available()
    return runner_class(opened, **options)
