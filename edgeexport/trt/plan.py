"""The TensorRT build plan and engine fingerprint stored in a ``tensorrt`` artifact's manifest.

``runtime_options`` of a ``tensorrt`` manifest::

    onnx_file   the ONNX model the engine is (or will be) built from, kept in the artifact
    build       the build plan: precision, the optimization profile's min/opt/max per dynamic
                axis and per input, the workspace limit, int8 calibration batches (.npz) and
                the timing cache file
    engine      null until built, then the engine file, TensorRT version, GPU name and compute
                capability it was built with

Profiles: every dynamic axis gets min :data:`MIN_SIZE`, opt = the golden example size, and max =
:data:`MAX_FACTOR` times the example size, raised to cover every golden case; ``--shapes
AXIS:MIN,OPT,MAX`` overrides single axes. No tensorrt or torch is needed here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edgeexport.errors import ArtifactError, UsageError
from edgeexport.manifest import Manifest, TensorSpec, axis_size

logger = logging.getLogger(__name__)

MIN_SIZE = 1
MAX_FACTOR = 4
ENGINE_FILE = "model.engine"
TIMING_CACHE_FILE = "timing.cache"
CALIBRATION_DIR = "calibration"
SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
              "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
AxisRange = tuple[int, int, int]


def parse_shapes(specs: Sequence[str]) -> dict[str, AxisRange]:
    """Parse ``AXIS:MIN,OPT,MAX`` strings (e.g. ``batch:1,4,16``) into ``{axis: (min, opt, max)}``.

    Raises:
        UsageError: a malformed spec, or sizes not ``1 <= min <= opt <= max``.
    """
    parsed: dict[str, AxisRange] = {}
    for spec in specs:
        match = re.fullmatch(r"\s*([^:\s]+)\s*:\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*", spec)
        if not match:
            raise UsageError(f"--shapes {spec!r} is not AXIS:MIN,OPT,MAX (e.g. batch:1,4,16)")
        low, opt, high = (int(g) for g in match.groups()[1:])
        if not 1 <= low <= opt <= high:
            raise UsageError(f"--shapes {spec!r}: sizes must satisfy 1 <= min <= opt <= max")
        parsed[match.group(1)] = (low, opt, high)
    return parsed


def parse_size(size: int | str | None) -> int | None:
    """Bytes of a size such as ``4GiB``, ``512MiB``, ``1g`` or ``1048576`` (binary units); None stays None.

    Raises:
        UsageError: not a size.
    """
    if size is None or isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", size)
    if not match or match.group(2).lower() not in SIZE_UNITS:
        raise UsageError(f"workspace {size!r} is not a size; use e.g. 4GiB, 512MiB or a number of bytes")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


def axis_ranges(inputs: Sequence[TensorSpec], cases: Sequence[Mapping[str, int]],
                overrides: Mapping[str, AxisRange] | None = None) -> dict[str, AxisRange]:
    """Min/opt/max of every dynamic axis of ``inputs``.

    Args:
        inputs: The model's input specs (dynamic dims are axis names or sums of them).
        cases: Axis sizes of the golden cases; the first is the example case (opt).
        overrides: ``{axis: (min, opt, max)}`` from :func:`parse_shapes`.

    Raises:
        UsageError: an override names an axis the inputs do not have.
    """
    axes = list(dict.fromkeys(term for spec in inputs for dim in spec.dynamic_axes.values() for term in dim.split("+")))
    _check_axes(overrides or {}, axes)
    ranges = {}
    for axis in axes:
        example = cases[0][axis]
        ranges[axis] = (MIN_SIZE, example, max(MAX_FACTOR * example, *(case[axis] for case in cases)))
    return ranges | dict(overrides or {})


def _check_axes(overrides: Mapping[str, AxisRange], axes: Sequence[str]) -> None:
    unknown = sorted(set(overrides) - set(axes))
    if unknown:
        raise UsageError(f"--shapes names unknown axes {unknown}; the model's dynamic axes are {list(axes)}")


def input_profile(inputs: Sequence[TensorSpec], ranges: Mapping[str, AxisRange]) -> dict[str, dict[str, list[int]]]:
    """``{input: {"min"|"opt"|"max": shape}}`` of the optimization profile for axis ranges."""
    profile = {}
    for spec in inputs:
        shapes: dict[str, list[int]] = {}
        for i, key in enumerate(("min", "opt", "max")):
            sizes = {axis: r[i] for axis, r in ranges.items()}
            shapes[key] = [axis_size(d, sizes) if isinstance(d, str) else d for d in spec.shape]
        profile[spec.name] = shapes
    return profile


@dataclass
class BuildPlan:
    """Everything ``edgeexport build`` needs to turn the artifact's ONNX into an engine."""

    precision: str
    axes: dict[str, AxisRange]
    profile: dict[str, dict[str, list[int]]]
    workspace_bytes: int | None = None
    calibration: list[str] = field(default_factory=list)
    timing_cache: str = TIMING_CACHE_FILE

    @classmethod
    def derive(cls, inputs: Sequence[TensorSpec], cases: Sequence[Mapping[str, int]], *, precision: str,
               shapes: Sequence[str] | None = None, workspace: int | str | None = None) -> BuildPlan:
        """The plan for ``inputs``: profile from the golden cases and ``shapes`` overrides (``AXIS:MIN,OPT,MAX``
        strings), workspace as bytes or a size string."""
        axes = axis_ranges(inputs, cases, parse_shapes(shapes or []))
        return cls(precision=precision, axes=axes, profile=input_profile(inputs, axes),
                   workspace_bytes=parse_size(workspace))

    def revised(self, inputs: Sequence[TensorSpec], *, shapes: Sequence[str] | None = None,
                workspace: int | str | None = None) -> BuildPlan:
        """This plan with some axes' ranges (``AXIS:MIN,OPT,MAX`` strings) and/or the workspace replaced.

        Raises:
            UsageError: malformed shapes or sizes, or an axis the plan does not have.
        """
        overrides = parse_shapes(shapes or [])
        _check_axes(overrides, list(self.axes))
        axes = self.axes | overrides
        return replace(self, axes=axes, profile=input_profile(inputs, axes),
                       workspace_bytes=self.workspace_bytes if workspace is None else parse_size(workspace))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "axes": {k: list(v) for k, v in self.axes.items()}}

    @classmethod
    def from_dict(cls, data: Any) -> BuildPlan:
        try:
            return cls(precision=str(data["precision"]), axes={k: tuple(v) for k, v in data["axes"].items()},
                       profile=data["profile"], workspace_bytes=data.get("workspace_bytes"),
                       calibration=list(data.get("calibration", [])),
                       timing_cache=str(data.get("timing_cache", TIMING_CACHE_FILE)))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"manifest runtime_options.build is malformed ({exc!r}); re-run convert") from None


@dataclass(frozen=True)
class Device:
    """A TensorRT version on a GPU: what an engine is tied to."""

    tensorrt: str
    gpu: str
    compute_capability: str


@dataclass(frozen=True)
class EngineInfo:
    """The built engine's file and the device it was built on."""

    file: str
    device: Device

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, **asdict(self.device)}

    @classmethod
    def from_dict(cls, data: Any) -> EngineInfo:
        try:
            return cls(file=str(data["file"]), device=Device(str(data["tensorrt"]), str(data["gpu"]),
                                                             str(data["compute_capability"])))
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"manifest runtime_options.engine is malformed ({exc!r}); rebuild the engine "
                                "with 'edgeexport build ARTIFACT'") from None


def check_engine(engine: EngineInfo, here: Device, artifact: str = "ARTIFACT") -> None:
    """Refuse an engine built with another TensorRT version or for another GPU architecture.

    A different GPU name of the same compute capability only logs a warning: TensorRT can run
    it, possibly slower.

    Raises:
        ArtifactError: one line naming both devices and the rebuild command.
    """
    built = engine.device
    if (built.tensorrt, built.compute_capability) != (here.tensorrt, here.compute_capability):
        raise ArtifactError(
            f"the TensorRT engine was built with TensorRT {built.tensorrt} for {built.gpu} (compute capability "
            f"{built.compute_capability}); this machine has TensorRT {here.tensorrt} on {here.gpu} (compute "
            f"capability {here.compute_capability}). Rebuild it here: edgeexport build {artifact}")
    if built.gpu != here.gpu:
        logger.warning("the engine was built on %s and runs on %s (same compute capability %s); rebuild it here for "
                       "the best kernels", built.gpu, here.gpu, here.compute_capability)


@dataclass
class TensorrtOptions:
    """The ``runtime_options`` of a ``tensorrt`` manifest, parsed."""

    onnx_file: str
    build: BuildPlan
    engine: EngineInfo | None = None

    @classmethod
    def of(cls, manifest: Manifest) -> TensorrtOptions:
        """Parse a manifest's runtime options.

        Raises:
            ArtifactError: not a ``tensorrt`` manifest, or malformed options.
        """
        options = manifest.runtime_options
        if manifest.target != "tensorrt" or not isinstance(options.get("onnx_file"), str):
            raise ArtifactError(f"this artifact targets {manifest.target!r}, not a TensorRT build; "
                                "convert with --target tensorrt")
        engine = options.get("engine")
        return cls(onnx_file=options["onnx_file"], build=BuildPlan.from_dict(options.get("build")),
                   engine=EngineInfo.from_dict(engine) if engine is not None else None)

    def to_dict(self) -> dict[str, Any]:
        return {"onnx_file": self.onnx_file, "build": self.build.to_dict(),
                "engine": self.engine.to_dict() if self.engine else None}
