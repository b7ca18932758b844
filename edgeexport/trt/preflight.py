"""TensorRT preflight: check every node of an ONNX graph against what TensorRT's ONNX parser supports.

Runs anywhere (onnx only; no GPU, no tensorrt). The support table is data, ``ops.json``
beside this module, transcribed from onnx-tensorrt's ``docs/operators.md`` (its ``source``
block names the commit) and checked against that commit's importer source, which wins where the two
differ (``source.importer`` says where). Per op it holds the supported types of the op's data tensor and
these rules:

- ``typed``: which tensor carries the data type (``input:<i>`` or ``output:<i>``; default ``input:0``);
- ``attributes``: ``{name: {"equals"|"in"|"all"|"length": value}}`` an attribute must satisfy when set;
- ``forbidden_attributes``: attributes the parser rejects;
- ``constant_inputs``: ``{index: name}`` inputs that must be initializers or Constant outputs;
- ``zero_inputs``: ``{index: name}`` inputs that must be constant zeros when given;
- ``constant_below``: ``{index: [name, limit]}`` constant inputs that must stay below ``limit``;
- ``max_outputs``, ``input_rank``, ``static_input_shape``: restrictions on outputs and input shapes;
- ``resized_innermost``: ``{mode: n}`` a resize in that mode may change only the ``n`` innermost
  dimensions (checked where the scales or sizes are constants);
- ``data_dependent_shape``: the op's output shape depends on input values.

Besides the table: the default-domain opset must be in ``opsets``; ops of other domains need a
TensorRT plugin; every tensor type must be one TensorRT knows (``DOUBLE`` is cast down, ``UINT8``
is for network I/O only); and INT64 constants whose values do not fit INT32 are flagged, since
TensorRT casts INT64 to INT32 where a layer has no INT64 support (everywhere before TensorRT 10),
except the ``int64_sentinel_inputs`` where such values mean "to the end" or "no limit".

A problem names its ONNX node and, after :func:`with_modules` with ``origins`` (ONNX value name ->
PyTorch module, which the TensorRT exporter finds by re-exporting the model), the PyTorch module
it came from. Nothing here imports torch.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeexport.errors import UsageError
from edgeexport.trt.plan import TensorrtOptions

if TYPE_CHECKING:
    import onnx

TABLE_FILE = Path(__file__).with_name("ops.json")
DEFAULT_DOMAINS = ("", "ai.onnx")
INT32 = np.iinfo(np.int32)


@functools.cache
def support_table() -> dict[str, Any]:
    """The parsed ``ops.json`` (cached)."""
    return json.loads(TABLE_FILE.read_text())


@dataclass(frozen=True)
class Finding:
    """One problem: ``severity`` is ``error`` (the parser or builder will refuse) or ``warning``."""

    severity: str
    check: str
    node: str
    op_type: str
    message: str
    module: str = ""

    def describe(self) -> str:
        where = f"node {self.node} ({self.op_type})" if self.node else "graph"
        origin = f" from module {self.module}" if self.module else ""
        return f"{self.severity}: {where}{origin}: {self.message}"


@dataclass
class PreflightReport:
    """Every finding of one graph against one support table; truthy when there is no error."""

    tensorrt: str
    source: str
    nodes: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        """One line: table version, nodes checked, error and warning counts."""
        return (f"TensorRT {self.tensorrt} preflight: {self.nodes} nodes, {len(self.errors)} errors, "
                f"{len(self.warnings)} warnings")

    def to_dict(self) -> dict[str, Any]:
        return {"tensorrt": self.tensorrt, "source": self.source, "nodes": self.nodes, "passed": self.passed,
                "findings": [asdict(f) for f in self.findings]}


@dataclass
class _Scope:
    """What is known about the values visible in a graph: types, shapes, constants, network I/O."""

    types: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, list[int | None]] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)  # name -> TensorProto (None: a non-tensor Constant)
    io: set[str] = field(default_factory=set)


def preflight(model: onnx.ModelProto, *, table: Mapping[str, Any] | None = None) -> PreflightReport:
    """Check ``model`` against TensorRT's ONNX parser support table.

    Args:
        model: The ONNX model (external weights need not be loaded; INT64 constants stored
            externally are not value-checked).
        table: A support table shaped like ``ops.json``. Defaults to ``ops.json``.
    """
    import onnx

    table = table or support_table()
    if model.ByteSize() < 2**31 - 1:
        model = onnx.shape_inference.infer_shapes(model)
    scope = _scope(model.graph, _Scope())
    scope.io |= {v.name for v in (*model.graph.input, *model.graph.output)}
    functions = {(f.domain, f.name): f for f in model.functions}
    findings = list(_check_opset(model, table))
    nodes = 0
    for node, node_scope in _walk(model.graph.node, scope, functions):
        nodes += 1
        findings.extend(_check_node(node, node_scope, table))
    findings.extend(_check_types(model.graph, scope, table))
    findings.extend(_check_int64(model.graph, scope, table))
    source = table["source"]
    return PreflightReport(tensorrt=table["tensorrt"], nodes=nodes, findings=_unique(findings),
                           source=f"{source['repository']}/{source['path']}@{source['commit'][:7]}")


def with_modules(report: PreflightReport, graph: onnx.GraphProto, origins: Mapping[str, str]) -> PreflightReport:
    """The report with the PyTorch module of each finding's node, where ``origins`` knows it
    (the checks are not run again)."""
    return replace(report, findings=[_locate(f, graph, origins) for f in report.findings])


def _scope(graph: onnx.GraphProto, outer: _Scope) -> _Scope:
    """The outer scope extended with this graph's value types, shapes and constants."""
    import onnx

    scope = _Scope(dict(outer.types), dict(outer.shapes), dict(outer.constants), set(outer.io))
    for value in (*graph.input, *graph.output, *graph.value_info):
        tensor = value.type.tensor_type
        if tensor.elem_type:
            scope.types[value.name] = onnx.TensorProto.DataType.Name(tensor.elem_type)
        if tensor.HasField("shape"):
            scope.shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    for tensor in graph.initializer:
        scope.types[tensor.name] = onnx.TensorProto.DataType.Name(tensor.data_type)
        scope.shapes[tensor.name] = list(tensor.dims)
        scope.constants[tensor.name] = tensor
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            scope.constants[node.output[0]] = value
            if value is not None:
                scope.types[node.output[0]] = onnx.TensorProto.DataType.Name(value.data_type)
    return scope


def _walk(nodes: Any, scope: _Scope, functions: Mapping[tuple[str, str], Any],
          seen: set[tuple[str, str]] | None = None) -> Iterator[tuple[Any, _Scope]]:
    """Every node with its scope: subgraphs (If/Loop/Scan bodies) and local function bodies included."""
    seen = set() if seen is None else seen
    for node in nodes:
        key = (node.domain, node.op_type)
        if key in functions:
            if key not in seen:
                seen.add(key)
                yield from _walk(functions[key].node, _Scope(), functions, seen)
            continue
        yield node, scope
        for attribute in node.attribute:
            for graph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _walk(graph.node, _scope(graph, scope), functions, seen)


def _check_opset(model: onnx.ModelProto, table: Mapping[str, Any]) -> Iterator[Finding]:
    low, high = table["opsets"]
    version = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)
    if version is not None and version < low:
        yield Finding("error", "opset", "", "", f"opset {version} is older than TensorRT {table['tensorrt']} "
                      f"supports ({low}-{high}); re-export with opset >= {low}")
    if version is not None and version > high:
        yield Finding("warning", "opset", "", "", f"opset {version} is newer than the TensorRT {table['tensorrt']} "
                      f"parser documents ({low}-{high}); re-export with --opset {high} if parsing fails")


def _check_node(node: Any, scope: _Scope, table: Mapping[str, Any]) -> Iterator[Finding]:
    def finding(severity: str, check: str, message: str) -> Finding:
        return Finding(severity, check, node.name, node.op_type, message)

    if node.domain not in DEFAULT_DOMAINS:
        yield finding("error", "op", f"custom op of domain {node.domain!r} has no TensorRT importer; "
                                     f"it needs a TensorRT plugin registered as {node.op_type!r}")
        return
    spec = table["ops"].get(node.op_type)
    if spec is None:
        state = "marked unsupported" if node.op_type in table["unsupported"] else "not listed"
        yield finding("error", "op", f"{node.op_type} is {state} in TensorRT {table['tensorrt']}'s ONNX parser; "
                                     "replace the module's op or add a TensorRT plugin")
        return
    for check in (_check_dtype, _check_attributes, _check_inputs, _check_outputs):
        yield from (finding(severity, kind, message) for severity, kind, message in check(node, spec, scope))
    if spec.get("data_dependent_shape"):
        yield finding("warning", "data-dependent-shape",
                      "its output shape depends on input values; TensorRT needs an output allocator for it, and "
                      "edgeexport's TensorRT runner refuses outputs whose shape the input shapes do not determine")


Problem = tuple[str, str, str]


def _check_dtype(node: Any, spec: Mapping[str, Any], scope: _Scope) -> Iterator[Problem]:
    side, _, index = spec.get("typed", "input:0").partition(":")
    names = node.input if side == "input" else node.output
    name = names[int(index)] if int(index) < len(names) else ""
    dtype = scope.types.get(name)
    if dtype and dtype not in spec["types"]:
        yield ("error", "dtype", f"{side} {name!r} is {dtype}; TensorRT supports {node.op_type} for "
                                 f"{', '.join(spec['types'])}")


def _check_attributes(node: Any, spec: Mapping[str, Any], scope: _Scope) -> Iterator[Problem]:
    import onnx

    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    values = {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}
    for name in spec.get("forbidden_attributes", []):
        if name in values:
            yield ("error", "attribute", f"attribute {name!r} is not supported")
    for name, rule in spec.get("attributes", {}).items():
        if name in values and not _satisfies(values[name], rule):
            yield ("error", "attribute",
                   f"attribute {name}={values[name]!r} is not supported (needs {_rule_text(rule)})")


def _satisfies(value: Any, rule: Mapping[str, Any]) -> bool:
    kind, want = next(iter(rule.items()))
    if kind == "all":
        return all(v == want for v in value)
    if kind == "length":
        return len(value) in want
    if kind == "in":
        return value in want
    return value == want


def _rule_text(rule: Mapping[str, Any]) -> str:
    kind, want = next(iter(rule.items()))
    return {"all": f"all values {want}", "length": f"length in {want}", "in": f"one of {want}"}.get(kind, f"{want!r}")


def _check_inputs(node: Any, spec: Mapping[str, Any], scope: _Scope) -> Iterator[Problem]:
    def given(index: str) -> str:
        return node.input[int(index)] if int(index) < len(node.input) else ""

    for index, label in spec.get("constant_inputs", {}).items():
        if given(index) and given(index) not in scope.constants:
            yield ("error", "dynamic-input", f"input {label!r} must be a build-time constant (an initializer), but "
                                             f"{given(index)!r} is computed at run time")
    for index, label in spec.get("zero_inputs", {}).items():
        value = _constant(scope, given(index)) if given(index) else None
        if given(index) and (value is None or np.any(value != 0)):
            yield ("error", "attribute", f"input {label!r} must be a constant zero")
    for index, (label, limit) in spec.get("constant_below", {}).items():
        value = _constant(scope, given(index)) if given(index) else None
        if value is not None and np.any(value >= limit):
            yield ("error", "attribute", f"input {label!r} is {value.tolist()}; TensorRT needs it below {limit}")
    shape = scope.shapes.get(node.input[0]) if node.input else None
    yield from _check_resized(node, spec, scope, shape)
    if shape is not None and spec.get("input_rank") and len(shape) != spec["input_rank"]:
        yield ("error", "shape", f"input has rank {len(shape)}; TensorRT supports rank {spec['input_rank']} only")
    if shape is not None and spec.get("static_input_shape") and None in shape:
        yield ("error", "shape", "input must have static dimensions")


def _check_resized(node: Any, spec: Mapping[str, Any], scope: _Scope,
                   shape: list[int | None] | None) -> Iterator[Problem]:
    """A resize that changes more innermost dimensions than its mode allows (constant scales or sizes)."""
    import onnx

    if "resized_innermost" not in spec:
        return
    mode = next((onnx.helper.get_attribute_value(a).decode() for a in node.attribute if a.name == "mode"), "nearest")
    innermost = spec["resized_innermost"].get(mode)
    scales = _constant(scope, node.input[2]) if innermost and len(node.input) > 2 and node.input[2] else None
    sizes = _constant(scope, node.input[3]) if innermost and len(node.input) > 3 and node.input[3] else None
    if scales is not None and scales.size:
        changed, rank = [axis for axis, scale in enumerate(scales.ravel()) if scale != 1], scales.size
    elif sizes is not None and shape is not None and len(shape) == sizes.size:
        changed, rank = [axis for axis, (old, new) in enumerate(zip(shape, sizes.ravel()))
                         if old is not None and old != new], sizes.size
    else:
        return
    if any(axis < rank - innermost for axis in changed):
        yield ("error", "attribute", f"mode={mode!r} resizes axes {changed}; TensorRT resizes only the {innermost} "
                                     f"innermost in this mode")


def _check_outputs(node: Any, spec: Mapping[str, Any], scope: _Scope) -> Iterator[Problem]:
    limit = spec.get("max_outputs")
    extra = [name for name in node.output[limit:] if name] if limit else []
    if extra:
        yield ("error", "outputs", f"outputs {extra} are not supported; TensorRT produces only the first {limit}")


def _constant(scope: _Scope, name: str) -> np.ndarray | None:
    """The value of a constant (None when computed at run time, absent, or stored externally)."""
    import onnx

    tensor = scope.constants.get(name)
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    return onnx.numpy_helper.to_array(tensor)


def _check_types(graph: onnx.GraphProto, scope: _Scope, table: Mapping[str, Any]) -> Iterator[Finding]:
    """Tensor types TensorRT lacks (error), casts down (DOUBLE) or allows at network I/O only (UINT8)."""
    producers = _producers(graph)
    for name, dtype in scope.types.items():
        node = producers.get(name)
        where = (node.name, node.op_type) if node is not None else ("", "")
        if dtype not in table["types"]:
            yield Finding("error", "dtype", *where, f"tensor {name!r} is {dtype}, a type TensorRT does not support")
        elif dtype in table["cast_down_types"]:
            yield Finding("warning", "dtype", *where, f"tensor {name!r} is {dtype}; TensorRT casts it down to FLOAT, "
                                                      "clamping to +-FLT_MAX")
        elif dtype in table["io_only_types"] and name not in scope.io:
            yield Finding("warning", "dtype", *where, f"tensor {name!r} is {dtype}, which TensorRT supports only as "
                                                      "a network input or output")


def _check_int64(graph: onnx.GraphProto, scope: _Scope, table: Mapping[str, Any]) -> Iterator[Finding]:
    """INT64 constants with values outside INT32, unless every use is a sentinel position (Slice ends...)."""
    sentinels = table["int64_sentinel_inputs"]
    for name in scope.constants:
        if scope.types.get(name) != "INT64":
            continue
        value = _constant(scope, name)
        if value is None or value.size == 0 or (INT32.min <= value.min() and value.max() <= INT32.max):
            continue
        uses = [(node, i) for node in graph.node for i, used in enumerate(node.input) if used == name]
        risky = [node for node, i in uses if i not in sentinels.get(node.op_type, [])]
        if risky:
            outside = value[(value < INT32.min) | (value > INT32.max)].ravel()[0]
            yield Finding("warning", "int64", risky[0].name, risky[0].op_type,
                          f"INT64 constant {name!r} holds {outside}, outside INT32; TensorRT casts INT64 to INT32 "
                          "where a layer has no INT64 support (always before TensorRT 10), and the value overflows")


def _producers(graph: onnx.GraphProto) -> dict[str, Any]:
    return {output: node for node in graph.node for output in node.output}


def _unique(findings: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))


def _locate(finding: Finding, graph: onnx.GraphProto, origins: Mapping[str, str]) -> Finding:
    """The finding with the PyTorch module of its node (through the node's output names), when known."""
    node = next((n for n in graph.node if finding.node and n.name == finding.node), None)
    module = next((origins[o] for o in (node.output if node is not None else []) if o in origins), "")
    return Finding(**{**asdict(finding), "module": module}) if module else finding


def onnx_file(manifest: Any) -> str:
    """The artifact-relative ONNX file of an ``onnx`` or ``tensorrt`` artifact.

    Raises:
        UsageError: the artifact holds no ONNX model.
    """
    if manifest.target == "onnx":
        return manifest.model_file
    if manifest.target == "tensorrt":
        return TensorrtOptions.of(manifest).onnx_file
    raise UsageError(f"TensorRT preflight checks ONNX graphs; this artifact targets {manifest.target!r} and holds "
                     "none. Convert with --target onnx or --target tensorrt")
