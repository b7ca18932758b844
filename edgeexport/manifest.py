"""The manifest's data: what ``manifest.json`` holds and how it is parsed and checked.

Tensor specs, tolerance bounds (per output), golden-case indexes and :class:`Manifest` itself,
each with ``to_dict``/``from_dict``; parsing treats the data as untrusted and raises
:class:`ArtifactError` naming the field. Reading and writing the folder around it (hashes, paths,
staging, golden tensors) is :mod:`edgeexport.artifact`. This module imports neither torch nor
any runtime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from edgeexport.errors import ArtifactError, UsageError

# 2: spread-relative tolerance bounds (docs/parity.md); 3: evaluation sets that a schema-2 reader misreads as corrupt
# (sentences tokenized on the device, encoder-decoder sentence pairs, depth maps as int16 codes). A schema-2 artifact
# still reads: its evaluation formats are read beside schema 3's.
SCHEMA_VERSION = 3
OLDEST_SCHEMA_VERSION = 2
GOLDEN_ALIGNMENT = 64
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool")
# Golden tensors are numpy arrays (model inputs, and PyTorch outputs through Tensor.numpy(), which
# refuses bfloat16), so none is ever bfloat16 and numpy, which has no bfloat16, reads them all; int16 holds the
# evaluation's depth codes (validation.agreement.depth_codes).
GOLDEN_DTYPES = (*(d for d in DTYPES if d != "bfloat16"), "int16")


def axis_size(dim: str, axes: Mapping[str, int]) -> int:
    """Size of a dynamic dim: an axis name, or a sum of axis names such as ``past_sequence+sequence``."""
    return sum(axes[term] for term in dim.split("+"))


@dataclass(frozen=True)
class TensorSpec:
    """One named model input or output. ``shape`` holds ints for fixed dims, axis names for dynamic ones."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Map of dimension index to symbolic axis name."""
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "dynamic_axes": {str(i): n for i, n in self.dynamic_axes.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> TensorSpec:
        name = _field(data, "name", str, where)
        dtype = _field(data, "dtype", str, where)
        if dtype not in DTYPES:
            raise ArtifactError(f"manifest {where}.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        shape = _field(data, "shape", list, where)
        if not all(isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in shape):
            raise ArtifactError(f"manifest {where}.shape must hold non-negative ints and axis names, got {shape!r}")
        return cls(name=name, dtype=dtype, shape=tuple(shape))


@dataclass(frozen=True)
class Bounds:
    """Parity bounds of one output, relative to the reference's spread (see docs/parity.md).

    With ``d`` the error, ``s`` the reference's RMS deviation (per row for logits), ``m`` its RMS
    magnitude and the element-wise floor ``f_i = atol + rounding * max(|r_i|, m)`` (what the
    arithmetic cannot resolve): ``max(|d_i| - f_i) <= max_error * s``, ``rms(d) <= rms(f) +
    rms_error * s``, ``|slope - 1|`` beyond its measured noise at most ``scale_error`` (and at most
    0.1; per class, row or feature too), and for logits, when ``min_top1`` is set, top-1 agreement
    counting the flips the measured noise explains of at least ``min_top1``
    (:mod:`edgeexport.validation.metrics`).
    """

    atol: float
    rounding: float
    max_error: float
    rms_error: float
    scale_error: float
    min_top1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in BOUND_KEYS if getattr(self, name) is not None}


BOUND_KEYS = ("atol", "rounding", "max_error", "rms_error", "scale_error", "min_top1")


@dataclass(frozen=True)
class Tolerance(Bounds):
    """The artifact's parity tolerance: default :class:`Bounds` and overrides for single outputs by name
    (``per_output`` maps a name to the keys it changes)."""

    per_output: dict[str, dict[str, float]] = field(default_factory=dict)

    def for_output(self, name: str) -> Bounds:
        """The bounds that apply to output ``name``."""
        return Bounds(**{**Bounds.to_dict(self), "min_top1": self.min_top1, **self.per_output.get(name, {})})

    def overridden(self, **bounds: float | None) -> Tolerance:
        """This tolerance with the given bounds replaced everywhere (None values are left as they are)."""
        changes = {k: v for k, v in bounds.items() if v is not None}
        check_bound_keys(changes)
        per_output = {name: {k: v for k, v in keys.items() if k not in changes} for name, keys in self.per_output.items()}
        return replace(self, **changes, per_output={k: v for k, v in per_output.items() if v})

    def to_dict(self) -> dict[str, Any]:
        return {**Bounds.to_dict(self), "per_output": {k: dict(v) for k, v in self.per_output.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tolerance:
        bounds = _bounds(data, "tolerance", required=True)
        per_output = _field(data, "per_output", dict, "tolerance")
        parsed = {}
        for name, keys in per_output.items():
            if not isinstance(keys, dict):
                raise ArtifactError(f"manifest tolerance.per_output.{name} must be an object of bounds")
            parsed[name] = _bounds(keys, f"tolerance.per_output.{name}", required=False)
        return cls(**bounds, per_output=parsed)


def check_bound_keys(bounds: Mapping[str, Any]) -> None:
    """Raise :class:`UsageError` for keys that are not tolerance bounds, or values below zero."""
    unknown = sorted(set(bounds) - set(BOUND_KEYS))
    if unknown:
        raise UsageError(f"unknown tolerance bounds {unknown}; choose from {', '.join(BOUND_KEYS)}")
    negative = sorted(k for k, v in bounds.items() if v is not None and not v >= 0)
    if negative:
        raise UsageError(f"tolerance bounds {negative} must be zero or more")


def _bounds(data: Mapping[str, Any], where: str, *, required: bool) -> dict[str, Any]:
    """The bound keys of a tolerance object: non-negative numbers, ``min_top1`` in [0, 1] or absent."""
    unknown = sorted(set(data) - set(BOUND_KEYS) - ({"per_output"} if required else set()))
    if unknown:
        raise ArtifactError(f"manifest {where} has unknown keys {unknown}; this edgeexport knows {', '.join(BOUND_KEYS)}")
    bounds: dict[str, Any] = {}
    for key in BOUND_KEYS[:-1]:
        if required or key in data:
            bounds[key] = _number(data, key, where)
    if data.get("min_top1") is not None:
        bounds["min_top1"] = _fraction(data, "min_top1", where)
    elif required:
        bounds["min_top1"] = None
    return bounds


@dataclass(frozen=True)
class GoldenTensor:
    """Where one tensor lies in a golden ``.bin`` file: ``nbytes`` raw little-endian C-order bytes
    from ``offset`` (a multiple of :data:`GOLDEN_ALIGNMENT`), with their sha256."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> GoldenTensor:
        name = _field(data, "name", str, where)
        dtype = _field(data, "dtype", str, where)
        if dtype not in GOLDEN_DTYPES:
            raise ArtifactError(f"manifest {where}.dtype {dtype!r} is not one of {', '.join(GOLDEN_DTYPES)}; "
                                "the artifact is corrupt")
        shape = _field(data, "shape", list, where)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ArtifactError(f"manifest {where}.shape must hold non-negative ints, got {shape!r}; "
                                "the artifact is corrupt")
        offset, nbytes = _count(data, "offset", where), _count(data, "nbytes", where)
        if offset % GOLDEN_ALIGNMENT:
            raise ArtifactError(f"manifest {where}.offset {offset} is not a multiple of {GOLDEN_ALIGNMENT}; "
                                "the artifact is corrupt")
        if math.prod(shape) * np.dtype(dtype).itemsize != nbytes:
            raise ArtifactError(f"manifest {where}: shape {shape} of {dtype} does not take {nbytes} bytes; "
                                "the artifact is corrupt")
        digest = _field(data, "sha256", str, where)
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ArtifactError(f"manifest {where}.sha256 is not 64 lowercase hex digits; the artifact is corrupt")
        return cls(name=name, dtype=dtype, shape=tuple(shape), offset=offset, nbytes=nbytes, sha256=digest)


@dataclass(frozen=True)
class GoldenFile:
    """A golden ``.bin`` file (path inside the artifact) and the index of its tensors."""

    file: str
    tensors: tuple[GoldenTensor, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "tensors": [t.to_dict() for t in self.tensors]}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> GoldenFile:
        tensors = _field(data, "tensors", list, where)
        return cls(file=_field(data, "file", str, where),
                   tensors=tuple(GoldenTensor.from_dict(t, f"{where}.tensors[{i}]") for i, t in enumerate(tensors)))


@dataclass(frozen=True)
class GoldenCase:
    """One golden shape case: reference inputs and PyTorch outputs, each a ``.bin`` file of raw tensors."""

    name: str
    axes: dict[str, int]
    inputs: GoldenFile
    outputs: GoldenFile

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "axes": self.axes, "inputs": self.inputs.to_dict(),
                "outputs": self.outputs.to_dict()}


@dataclass
class Manifest:
    """Everything a device needs to know about an artifact, serialised as ``manifest.json``.

    ``created_at`` is the only field that differs between two conversions of the same model.
    ``generation`` (optional, written only when set) is the KV-cache block of generation
    artifacts, parsed by :class:`edgeexport.generation_spec.GenerationSpec`; ``processing``
    (optional) what pre- and post-processing need, parsed by :class:`edgeexport.processing.Processing`;
    ``tuning`` (optional) the candidate table of ``convert --precision auto`` that chose this
    precision (:mod:`edgeexport.tuning`); ``evaluation`` (optional) the held-out texts (or photograph
    and speech files, or a language model's token sequences; a language model's texts name its tokenizer) and
    reference task outputs of the task-agreement check
    (:mod:`edgeexport.validation.agreement`); ``criterion`` the constants of the parity criterion the
    artifact was judged by (``metrics.CRITERION``), for checks on the device that reimplement it
    (examples/cpp-openvino).
    """

    model: dict[str, Any]
    target: str
    runtime: str
    precision: str
    model_file: str
    exporter: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    tolerance: Tolerance
    logits_outputs: list[str] = field(default_factory=list)
    golden: list[GoldenCase] = field(default_factory=list)
    runtime_options: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    processing: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    criterion: dict[str, float] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "created_at": self.created_at,
            "model": self.model,
            "target": self.target,
            "runtime": self.runtime,
            "precision": self.precision,
            "model_file": self.model_file,
            "exporter": self.exporter,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "logits_outputs": self.logits_outputs,
            "tolerance": self.tolerance.to_dict(),
            "golden": [g.to_dict() for g in self.golden],
            "runtime_options": self.runtime_options,
            **({"generation": self.generation} if self.generation else {}),
            **({"processing": self.processing} if self.processing else {}),
            **({"tuning": self.tuning} if self.tuning else {}),
            **({"evaluation": self.evaluation} if self.evaluation else {}),
            **({"criterion": self.criterion} if self.criterion else {}),
            "tool_versions": self.tool_versions,
            "files": self.files,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse and schema-check a manifest dict; raise :class:`ArtifactError` naming the bad field."""
        if not isinstance(data, dict):
            raise ArtifactError("manifest.json must hold a JSON object")
        version = _field(data, "schema_version", int, "")
        if version > SCHEMA_VERSION:
            raise ArtifactError(
                f"manifest schema_version {version} is newer than this edgeexport understands "
                f"({SCHEMA_VERSION}); upgrade edgeexport to read this artifact")
        if version < 1:
            raise ArtifactError(f"manifest schema_version {version} is not valid")
        if version < OLDEST_SCHEMA_VERSION:
            raise ArtifactError(
                f"manifest schema_version {version} is older than this edgeexport reads ({OLDEST_SCHEMA_VERSION}); "
                "re-run 'edgeexport convert' to rewrite the artifact")
        golden = []
        for i, case in enumerate(_field(data, "golden", list, "")):
            where = f"golden[{i}]"
            if not isinstance(case, dict):
                raise ArtifactError(f"manifest {where} must be an object")
            axes = _field(case, "axes", dict, where)
            if not all(isinstance(v, int) for v in axes.values()):
                raise ArtifactError(f"manifest {where}.axes must map axis names to ints")
            inputs, outputs = (GoldenFile.from_dict(_field(case, role, dict, where), f"{where}.{role}")
                               for role in ("inputs", "outputs"))
            golden.append(GoldenCase(name=_field(case, "name", str, where), axes=axes, inputs=inputs, outputs=outputs))
        files = _field(data, "files", dict, "")
        if not all(isinstance(v, str) for v in files.values()):
            raise ArtifactError("manifest files must map paths to sha256 strings")
        return cls(
            schema_version=version,
            created_at=_field(data, "created_at", str, ""),
            model=_field(data, "model", dict, ""),
            target=_field(data, "target", str, ""),
            runtime=_field(data, "runtime", str, ""),
            precision=_field(data, "precision", str, ""),
            model_file=_field(data, "model_file", str, ""),
            exporter=_field(data, "exporter", dict, ""),
            inputs=[TensorSpec.from_dict(t, f"inputs[{i}]") for i, t in enumerate(_field(data, "inputs", list, ""))],
            outputs=[TensorSpec.from_dict(t, f"outputs[{i}]") for i, t in enumerate(_field(data, "outputs", list, ""))],
            logits_outputs=_field(data, "logits_outputs", list, ""),
            tolerance=Tolerance.from_dict(_field(data, "tolerance", dict, "")),
            golden=golden,
            runtime_options=_field(data, "runtime_options", dict, ""),
            generation=_field(data, "generation", dict, "") if "generation" in data else {},
            processing=_field(data, "processing", dict, "") if "processing" in data else {},
            tuning=_field(data, "tuning", dict, "") if "tuning" in data else {},
            evaluation=_evaluation(data),
            criterion=_criterion(data),
            tool_versions=_field(data, "tool_versions", dict, ""),
            files=files,
        )


# The optional fields of validation.agreement.Criteria (a manifest is parsed without the validation package).
OPTIONAL_CRITERIA = ("max_dp", "max_mean_dp", "max_scale_error", "min_cosine", "max_cer", "max_depth_error",
                     "min_box_iou", "max_score_error", "min_correlation", "max_relative_kl", "min_greedy_agreement")


def _evaluation(data: Mapping[str, Any]) -> dict[str, Any]:
    """The optional ``evaluation`` block, its fields checked (its texts file, reference tensors and criteria)."""
    if "evaluation" not in data:
        return {}
    block = _field(data, "evaluation", dict, "")
    _field(block, "task", str, "evaluation")
    if "files" in block:  # photographs or speech
        files = _field(block, "files", list, "evaluation")
        if not files or not all(isinstance(f, str) for f in files):
            raise ArtifactError("manifest evaluation.files must be a non-empty list of file paths; re-run convert")
    elif "sequences" in block:  # a language model's token ids
        GoldenFile.from_dict(_field(block, "sequences", dict, "evaluation"), "evaluation.sequences")
    else:
        _field(block, "texts", str, "evaluation")
        if "tokenizer" in block:  # a language model's sentences, tokenized on the device
            _field(block, "tokenizer", str, "evaluation")
            _count(block, "max_tokens", "evaluation")
        if "decoder_start" in block:  # an encoder-decoder's (source, target) pairs
            _count(block, "decoder_start", "evaluation")
    GoldenFile.from_dict(_field(block, "reference", dict, "evaluation"), "evaluation.reference")
    criteria = _field(block, "criteria", dict, "evaluation")
    if set(criteria) - {"min_agreement", *OPTIONAL_CRITERIA} or "min_agreement" not in criteria:
        raise ArtifactError(f"manifest evaluation.criteria needs min_agreement and may hold "
                            f"{', '.join(OPTIONAL_CRITERIA[:-1])} and {OPTIONAL_CRITERIA[-1]}; re-run convert")
    for key in criteria:
        _number(criteria, key, "evaluation.criteria")
    return block


def _criterion(data: Mapping[str, Any]) -> dict[str, float]:
    """The optional ``criterion`` block: the parity criterion's constants by name, each a non-negative number."""
    if "criterion" not in data:
        return {}
    block = _field(data, "criterion", dict, "")
    return {key: _number(block, key, "criterion") for key in block}


def _field(data: Any, key: str, kind: type, where: str) -> Any:
    path = f"{where}.{key}" if where else key
    if not isinstance(data, Mapping):
        raise ArtifactError(f"manifest {where or 'root'} must be a JSON object, got {type(data).__name__}")
    if key not in data:
        raise ArtifactError(f"manifest is missing field {path!r}; the artifact is incomplete, re-run convert")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ArtifactError(f"manifest field {path!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _number(data: Mapping[str, Any], key: str, where: str) -> float:
    value = _field(data, key, object, where)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ArtifactError(f"manifest field '{where}.{key}' must be a non-negative number")
    return float(value)


def _count(data: Mapping[str, Any], key: str, where: str) -> int:
    value = _field(data, key, int, where)
    if value < 0:
        raise ArtifactError(f"manifest field '{where}.{key}' must be a non-negative int")
    return value


def _fraction(data: Mapping[str, Any], key: str, where: str) -> float | None:
    """An optional number in [0, 1]; absent or null gives None (manifests written before the field existed)."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ArtifactError(f"manifest field '{where}.{key}' must be a number between 0 and 1")
    return float(value)
