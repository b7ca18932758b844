"""Divergence localization for ONNX artifacts: which operation first departs from PyTorch, and
which PyTorch module and source line produced it.

Method. The reference is re-exported to get the decomposed ``ExportedProgram`` that the dynamo
exporter translated; the ONNX values it produced carry the names of its FX nodes. PyTorch's
value of every FX node is recorded with an FX interpreter on the same inputs; the ONNX
values of the same names are exposed as extra graph outputs and computed by onnxruntime, in
topological order, a chunk of outputs per session, stopping at the first chunk that holds a
divergence (so big models never materialise every intermediate at once). The first value
beyond tolerance names the ONNX node that produced it, and its FX node names the module.

Hand-written because no library maps ONNX intermediates back to PyTorch modules: Polygraphy's
``--onnx-outputs mark all`` compares two ONNX runtimes, not ONNX against PyTorch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeexport.artifact import Artifact
from edgeexport.errors import UsageError
from edgeexport.manifest import Tolerance
from edgeexport.validation.metrics import OutputComparison, compare_output

if TYPE_CHECKING:
    import onnx

    from edgeexport.reference.model import ReferenceModel
    from edgeexport.validation.parity import ParityReport

CHUNK = 256


@dataclass
class Divergence:
    """The first ONNX value beyond tolerance and where it came from in PyTorch."""

    tensor: str
    onnx_node: str
    op_type: str
    torch_op: str
    module: str
    module_class: str
    source: str
    comparison: OutputComparison
    last_good: str | None

    def describe(self) -> str:
        where = f"module '{self.module}' ({self.module_class})" + (f" at {self.source}" if self.source else "")
        after = f", after {self.last_good} still matched" if self.last_good else ""
        return (f"first divergence at ONNX node {self.onnx_node} ({self.op_type}) -> {self.tensor}, from {self.torch_op} "
                f"in {where}: max error {self.comparison.max_error:.3g} spreads (max abs {self.comparison.max_abs:.3g}), "
                f"rms error {self.comparison.rms_error:.3g} spreads{after}")


@dataclass
class Localization:
    """Result of a localization run: how many values were compared and the first divergence, if any."""

    case: str
    compared: int
    first: Divergence | None

    def describe(self) -> str:
        """One line: the first divergence, or that no intermediate value diverged."""
        if self.first is not None:
            return self.first.describe()
        return (f"no intermediate value diverged beyond tolerance on case {self.case!r} "
                f"({self.compared} compared); only the final outputs differ")

    def to_dict(self) -> dict[str, Any]:
        first = None
        if self.first is not None:
            first = {k: v for k, v in asdict(self.first).items() if k != "comparison"}
            first["comparison"] = self.first.comparison.to_dict()
        return {"case": self.case, "compared": self.compared, "first": first}


def explain(artifact: Artifact, reference: ReferenceModel, report: ParityReport | None = None) -> Localization:
    """Localise the first diverging operation of an opened ONNX artifact
    (:func:`edgeexport.runner.open_artifact`) on its first failing golden case (the example case when none failed)."""
    failed = {c.case for c in (report.cases if report else []) if not c.passed}
    case = next((g for g in artifact.manifest.golden if g.name in failed), artifact.manifest.golden[0])
    inputs, _ = artifact.load_golden(case)
    return localize(artifact, reference, inputs, case=case.name, tolerance=report.tolerance if report else None)


def localize(artifact: Artifact, reference: ReferenceModel, inputs: Mapping[str, np.ndarray], *, case: str = "example",
             tolerance: Tolerance | None = None, chunk: int = CHUNK) -> Localization:
    """Find the first ONNX value that diverges from PyTorch on ``inputs``.

    Raises:
        UsageError: the artifact is not an ONNX artifact.
    """
    if artifact.manifest.target != "onnx":
        raise UsageError(f"divergence localization works on ONNX artifacts; this one targets {artifact.manifest.target!r}")
    import onnx

    from edgeexport.capture import node_origin
    from edgeexport.onnxtools.capture import decomposed_program

    program = decomposed_program(reference, opset=artifact.manifest.exporter.get("opset"))
    expected = _torch_values(program, reference, inputs)
    model = onnx.load(str(artifact.model_path))
    producers = {out: node for node in model.graph.node for out in node.output}
    graph_outputs = {o.name for o in model.graph.output}
    candidates = [name for node in model.graph.node for name in node.output[:1]
                  if name in expected and name not in graph_outputs]
    tolerance = tolerance or artifact.manifest.tolerance
    fx_nodes = {n.name: n for n in program.graph.nodes}
    last_good = None
    for start in range(0, len(candidates), chunk):
        names = candidates[start:start + chunk]
        got = _onnx_values(model, artifact, names, inputs)
        for name in names:
            comparison = compare_output(name, got[name], expected[name], tolerance.for_output(name))
            if comparison:
                last_good = name
                continue
            origin = node_origin(fx_nodes[name])
            node = producers[name]
            return Localization(case, start + names.index(name) + 1, Divergence(
                tensor=name, onnx_node=node.name, op_type=node.op_type, torch_op=str(fx_nodes[name].target),
                module=origin.module, module_class=origin.module_class, source=origin.source,
                comparison=comparison, last_good=last_good))
    return Localization(case, len(candidates), None)


def _torch_values(program: Any, reference: ReferenceModel, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every floating-point FX node value of the program on ``inputs``, by node name."""
    import torch

    values: dict[str, np.ndarray] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node: torch.fx.Node) -> Any:
            result = super().run_node(node)
            if isinstance(result, torch.Tensor) and result.is_floating_point():
                values[node.name] = result.detach().float().numpy()
            return result

    args = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in reference.input_names]
    with torch.inference_mode():
        Recorder(program.module()).run(*args)
    return values


def _onnx_values(model: onnx.ModelProto, artifact: Artifact, names: list[str],
                 inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Compute the named intermediate values with onnxruntime by exposing them as graph outputs."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {i.name: np.ascontiguousarray(inputs[i.name]) for i in session.get_inputs()}
    return {name: value.astype(np.float32) for name, value in zip(names, session.run(names, feed))}
