"""TensorRT target, tested on CPU as far as it goes: shape profiles, --shapes and workspace parsing,
the build plan written by convert (TensorRT-ready artifacts), the missing-tensorrt path, the
engine-mismatch error on a fake manifest, and the preflight on crafted graphs and the zoo.

Tests marked ``gpu`` build and run real engines; they skip without tensorrt and an NVIDIA GPU,
and are deselected by default.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from edgeexport.artifact import Artifact, write_manifest
from edgeexport.cli import app
from edgeexport.conversion import ConversionResult, convert
from edgeexport.errors import ArtifactError, ConversionError, InputSpecError, MissingBackendError, UsageError
from edgeexport.inspection import preflight_artifact
from edgeexport.manifest import TensorSpec
from edgeexport.runner import load
from edgeexport.trt.plan import (
    MAX_FACTOR,
    BuildPlan,
    Device,
    EngineInfo,
    TensorrtOptions,
    axis_ranges,
    check_engine,
    input_profile,
    parse_shapes,
    parse_size,
)
from edgeexport.trt.preflight import preflight, support_table, with_modules
from edgeexport.validation.parity import check_parity
from edgeexport.zoo import SPECS

PAIRS = [(name, task) for name, spec in SPECS.items() for task in spec.tasks]
DEFAULT_PAIRS = [("gpt2", "causal-lm"), ("bert", "sequence-classification"), ("vit", "image-classification")]
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
cli = CliRunner()


# --------------------------------------------------------------------------- profiles, --shapes, workspace


INPUTS = [TensorSpec("input_ids", "int64", ("batch", "sequence")),
          TensorSpec("pixel_values", "float32", ("batch", 3, 8)),
          TensorSpec("past", "float32", ("batch", 4, "past_sequence+sequence", 16))]
CASES = [{"batch": 2, "sequence": 8, "past_sequence": 5}, {"batch": 3, "sequence": 40, "past_sequence": 6}]


def test_profile_is_one_example_and_a_multiple_covering_every_golden_case() -> None:
    ranges = axis_ranges(INPUTS, CASES)

    assert ranges["batch"] == (1, 2, MAX_FACTOR * 2)
    assert ranges["sequence"] == (1, 8, 40), "max is raised to the alternate case (40 > 4 * 8)"
    profile = input_profile(INPUTS, ranges)
    assert profile["pixel_values"] == {"min": [1, 3, 8], "opt": [2, 3, 8], "max": [8, 3, 8]}
    assert profile["past"]["opt"] == [2, 4, 5 + 8, 16] and profile["past"]["min"] == [1, 4, 2, 16]


def test_shapes_override_single_axes_and_reject_unknown_ones() -> None:
    ranges = axis_ranges(INPUTS, CASES, parse_shapes(["batch:1,4,16", " sequence : 2, 8, 128 "]))

    assert ranges["batch"] == (1, 4, 16) and ranges["sequence"] == (2, 8, 128)
    assert ranges["past_sequence"] == (1, 5, 20)
    with pytest.raises(UsageError, match=r"unknown axes \['height'\]; the model's dynamic axes are"):
        axis_ranges(INPUTS, CASES, parse_shapes(["height:1,2,3"]))


@pytest.mark.parametrize("spec", ["batch:1,2", "batch=1,2,3", "batch:0,1,2", "batch:4,2,8", "batch:1,2,x", ":1,2,3"])
def test_malformed_shapes_are_one_line_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError, match=r"--shapes"):
        parse_shapes([spec])


def test_workspace_sizes() -> None:
    assert parse_size("4GiB") == 4 << 30 and parse_size("512 MiB") == 512 << 20 and parse_size("1g") == 1 << 30
    assert parse_size("1048576") == 1 << 20 and parse_size(123) == 123 and parse_size(None) is None
    with pytest.raises(UsageError, match="not a size"):
        parse_size("lots")


def test_build_plan_round_trips_and_revises() -> None:
    plan = BuildPlan.derive(INPUTS, CASES, precision="fp16", shapes=["batch:1,2,4"], workspace="1GiB")
    assert BuildPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan

    revised = plan.revised(INPUTS, shapes=["sequence:4,8,16"])
    assert revised.axes["batch"] == (1, 2, 4), "earlier overrides survive a revision"
    assert revised.profile["input_ids"]["max"] == [4, 16] and revised.workspace_bytes == 1 << 30
    with pytest.raises(UsageError, match="unknown axes"):
        plan.revised(INPUTS, shapes=["height:1,1,1"])
    with pytest.raises(ArtifactError, match="runtime_options.build is malformed"):
        BuildPlan.from_dict({"precision": "fp16"})


# --------------------------------------------------------------------------- engine fingerprint


BUILT = Device(tensorrt="10.1.0", gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0")


@pytest.mark.parametrize("here", [Device("10.3.0", BUILT.gpu, "9.0"), Device("10.1.0", "NVIDIA A100-SXM4-80GB", "8.0")],
                         ids=["other-tensorrt", "other-gpu-architecture"])
def test_engine_from_another_tensorrt_or_gpu_is_refused_in_one_line(here: Device) -> None:
    with pytest.raises(ArtifactError) as caught:
        check_engine(EngineInfo("model.engine", BUILT), here, "out/gpt2")
    message = str(caught.value)
    assert "\n" not in message and message.endswith("Rebuild it here: edgeexport build out/gpt2")
    assert BUILT.gpu in message and here.gpu in message and here.tensorrt in message


def test_same_architecture_other_gpu_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check_engine(EngineInfo("model.engine", BUILT), Device("10.1.0", "NVIDIA H100 PCIe", "9.0"))
    assert "rebuild it here" in caplog.text


# --------------------------------------------------------------------------- preflight on crafted graphs


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], initializers: list[Any] = (), opset: int = 20,
           functions: list[Any] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], functions=list(functions))


def _tensor(name: str, dtype: int = TensorProto.FLOAT, shape: list[Any] | None = None) -> Any:
    return helper.make_tensor_value_info(name, dtype, shape if shape is not None else ["n", 4])


def _findings(model: onnx.ModelProto, **kwargs: Any) -> list[tuple[str, str, str]]:
    return [(f.severity, f.check, f.node) for f in preflight(model, **kwargs).findings]


def _int64(name: str, values: list[int]) -> Any:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def test_clean_graph_passes() -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_tensor("x")], [_tensor("y")])

    report = preflight(model)
    assert report.passed and report.findings == [] and report.nodes == 1
    assert report.tensorrt == support_table()["tensorrt"] and "onnx-tensorrt" in report.source


@pytest.mark.parametrize(("op", "state"), [("Unique", "marked unsupported"), ("NotAnOnnxOp", "not listed")])
def test_unsupported_op_is_an_error(op: str, state: str) -> None:
    model = _model([helper.make_node(op, ["x"], ["y"], name="bad")], [_tensor("x")], [_tensor("y")])

    report = preflight(model)
    assert not report and _findings(model) == [("error", "op", "bad")]
    assert state in report.errors[0].message


def test_custom_domain_needs_a_plugin() -> None:
    node = helper.make_node("FusedThing", ["x"], ["y"], name="custom", domain="com.example")
    model = _model([node], [_tensor("x")], [_tensor("y")])
    model.opset_import.append(helper.make_opsetid("com.example", 1))

    report = preflight(model)
    assert _findings(model) == [("error", "op", "custom")] and "TensorRT plugin" in report.errors[0].message


@pytest.mark.parametrize(("opset", "severity"), [(8, "error"), (21, "warning")])
def test_opset_outside_the_parser_range(opset: int, severity: str) -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [_tensor("x")], [_tensor("y")], opset=opset)

    assert _findings(model) == [(severity, "opset", "")]


@pytest.mark.parametrize(("node", "text"), [
    (helper.make_node("MaxPool", ["x"], ["y"], name="n", kernel_shape=[2, 2], dilations=[2, 2]), "dilations=[2, 2]"),
    (helper.make_node("MaxPool", ["x"], ["y"], name="n", kernel_shape=[2, 2, 2, 2]), "kernel_shape=[2, 2, 2, 2]"),
    (helper.make_node("Resize", ["x", "", "s"], ["y"], name="n", antialias=1), "antialias=1"),
    (helper.make_node("ScatterND", ["x", "i", "x"], ["y"], name="n", reduction="add"), "'reduction'"),
    (helper.make_node("ScatterND", ["x", "i", "x"], ["y"], name="n", reduction="none"), "'reduction'"),
], ids=["pool-dilations", "pool-4d", "resize-antialias", "scatternd-reduction", "scatternd-reduction-none"])
def test_unsupported_attribute_values_are_errors(node: Any, text: str) -> None:
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2]), _int64("i", [0])]
    model = _model([node], [_tensor("x", shape=[1, 1, 4, 4])], [_tensor("y")], inits)

    report = preflight(model)
    assert ("error", "attribute", "n") in _findings(model)
    assert any(text in f.message for f in report.errors)


@pytest.mark.parametrize(("node", "shape", "scales", "error"), [
    (helper.make_node("Resize", ["x", "", "s"], ["y"], name="n", mode="cubic"), [1, 3, 4, 4], [1, 1, 2, 2], ""),
    (helper.make_node("Resize", ["x", "", "s"], ["y"], name="n", mode="cubic"), [1, 3, 4, 4], [1, 2, 2, 2],
     "mode='cubic' resizes axes [1, 2, 3]; TensorRT resizes only the 2 innermost in this mode"),
    (helper.make_node("Resize", ["x", "", "s"], ["y"], name="n", mode="linear"), [1, 3, 4, 4], [1, 2, 2, 2], ""),
    (helper.make_node("Resize", ["x", "", "s"], ["y"], name="n", mode="linear"), [1, 3, 4, 4], [2, 2, 2, 2],
     "mode='linear' resizes axes [0, 1, 2, 3]; TensorRT resizes only the 3 innermost in this mode"),
    (helper.make_node("Resize", ["x", "", "", "s"], ["y"], name="n", mode="cubic"), [1, 3, 4, 4], [1, 3, 8, 8], ""),
    (helper.make_node("Resize", ["x", "", "", "s"], ["y"], name="n", mode="cubic"), [1, 3, 4, 4], [1, 6, 8, 8],
     "mode='cubic' resizes axes [1, 2, 3]; TensorRT resizes only the 2 innermost in this mode"),
    (helper.make_node("MaxPool", ["x"], ["y"], name="n", kernel_shape=[2]), [1, 3, 4], None, ""),
    (helper.make_node("TopK", ["x", "k"], ["y", "i"], name="n", sorted=0), [1, 3, 4], None, ""),
], ids=["cubic-2d", "cubic-3d", "linear-3d", "linear-4d", "cubic-sizes-2d", "cubic-sizes-3d", "pool-1d",
        "topk-unsorted"])
def test_attributes_follow_the_importer(node: Any, shape: list[int], scales: list[float] | None, error: str) -> None:
    """Where onnx-tensorrt's importer differs from its operator matrix, the importer is followed: cubic resizes
    (ViT's position table) on the 2 innermost axes, a 1-D pool on a rank-3 input, TopK with sorted=0."""
    inits = [_int64("k", [2])]
    if scales is not None:
        sized = len(node.input) == 4
        inits.append(_int64("s", scales) if sized else helper.make_tensor("s", TensorProto.FLOAT, [4], scales))
    model = _model([node], [_tensor("x", shape=shape)], [_tensor(n) for n in node.output], inits)

    assert [f.message for f in preflight(model).errors] == ([error] if error else [])


def test_constant_with_a_string_value_is_refused() -> None:
    node = helper.make_node("Constant", [], ["y"], name="c", value_string="hello")
    model = _model([node], [], [helper.make_tensor_value_info("y", TensorProto.STRING, [])])

    found = _findings(model)
    assert ("error", "attribute", "c") in found and ("error", "dtype", "c") in found


def test_inputs_that_must_be_build_time_constants() -> None:
    axes = helper.make_node("Shape", ["x"], ["axes"], name="shape", start=0, end=1)
    node = helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="unsqueeze")
    model = _model([axes, node], [_tensor("x")], [_tensor("y", shape=None)])

    report = preflight(model)
    assert ("error", "dynamic-input", "unsqueeze") in _findings(model)
    assert "'axes' must be a build-time constant" in report.errors[0].message


def test_constant_inputs_with_limits() -> None:
    topk = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")
    dequant = helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["d"], name="dequant")
    inits = [_int64("k", [4000]), helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1]),
             helper.make_tensor("zero", TensorProto.INT8, [], [3])]
    model = _model([topk, dequant], [_tensor("x", shape=[1, 5000]), _tensor("q", TensorProto.INT8)],
                   [_tensor("v", shape=None), _tensor("i", TensorProto.INT64, None), _tensor("d", shape=None)], inits)

    found = _findings(model)
    assert ("error", "attribute", "topk") in found and ("error", "attribute", "dequant") in found


def test_extra_outputs_and_input_ranks() -> None:
    norm = helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"], name="norm")
    grid = helper.make_node("GridSample", ["v", "grid"], ["z"], name="grid")
    model = _model([norm, grid], [_tensor("x"), _tensor("g", shape=[4]), _tensor("v", shape=[1, 1, 2, 2, 2]),
                                  _tensor("grid", shape=[1, 2, 2, 2, 3])],
                   [_tensor("y"), _tensor("mean", shape=None), _tensor("z", shape=None)])

    found = _findings(model)
    assert ("error", "outputs", "norm") in found and ("error", "shape", "grid") in found


def test_dtypes_the_op_or_tensorrt_lacks() -> None:
    matmul = helper.make_node("MatMul", ["a", "b"], ["c"], name="int_matmul")
    double = helper.make_node("Cast", ["a"], ["d"], name="to_double", to=TensorProto.DOUBLE)
    byte = helper.make_node("Cast", ["a"], ["u"], name="to_uint8", to=TensorProto.UINT8)
    back = helper.make_node("Cast", ["u"], ["f"], name="from_uint8", to=TensorProto.FLOAT)
    model = _model([matmul, double, byte, back], [_tensor("a", TensorProto.INT64, [4, 4]),
                                                  _tensor("b", TensorProto.INT64, [4, 4])],
                   [_tensor("c", TensorProto.INT64, None), _tensor("d", TensorProto.DOUBLE, None),
                    _tensor("f", shape=None), _tensor("z", TensorProto.COMPLEX64, [1])])

    found = _findings(model)
    assert ("error", "dtype", "int_matmul") in found
    assert ("warning", "dtype", "to_double") in found, "DOUBLE is cast down, with a warning"
    assert ("warning", "dtype", "to_uint8") in found, "UINT8 is for network I/O only"
    assert ("error", "dtype", "") in found, "COMPLEX64 is no TensorRT type"


def test_int64_constants_that_overflow_int32_unless_a_sentinel() -> None:
    add = helper.make_node("Add", ["x", "big"], ["y"], name="add_big")
    sliced = helper.make_node("Slice", ["x", "starts", "ends"], ["z"], name="slice_to_end")
    inits = [_int64("big", [2**40]), _int64("starts", [0]), _int64("ends", [2**63 - 1])]
    model = _model([add, sliced], [_tensor("x", TensorProto.INT64, [4])],
                   [_tensor("y", TensorProto.INT64, None), _tensor("z", TensorProto.INT64, None)], inits)

    report = preflight(model)
    assert _findings(model) == [("warning", "int64", "add_big")]
    assert "1099511627776, outside INT32" in report.warnings[0].message


def test_data_dependent_output_shapes_warn() -> None:
    model = _model([helper.make_node("NonZero", ["x"], ["y"], name="nonzero")], [_tensor("x")],
                   [_tensor("y", TensorProto.INT64, None)])

    assert _findings(model) == [("warning", "data-dependent-shape", "nonzero")]


def test_subgraphs_and_local_functions_are_checked() -> None:
    branch = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="in_branch")], "branch", [],
                               [_tensor("u", shape=None)])
    cond = helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch, else_branch=branch)
    body = [helper.make_node("Det", ["a"], ["b"], name="in_function")]
    function = helper.make_function("local", "Fn", ["a"], ["b"], body, [helper.make_opsetid("", 20)])
    call = helper.make_node("Fn", ["x"], ["w"], name="call", domain="local")
    model = _model([cond, call], [_tensor("c", TensorProto.BOOL, []), _tensor("x")],
                   [_tensor("y", shape=None), _tensor("w", shape=None)], functions=[function])
    model.opset_import.append(helper.make_opsetid("local", 1))

    found = _findings(model)
    assert ("error", "op", "in_branch") in found and ("error", "op", "in_function") in found
    assert not any(node == "call" for _, _, node in found), "a local function call is not a custom op"


def test_findings_name_the_pytorch_module_when_origins_are_given() -> None:
    model = _model([helper.make_node("Unique", ["x"], ["unique_1"], name="node_unique")], [_tensor("x")],
                   [_tensor("unique_1")])

    report = with_modules(preflight(model), model.graph, {"unique_1": "encoder.layer.0 (BertLayer)"})
    assert report.errors[0].module == "encoder.layer.0 (BertLayer)"
    assert "from module encoder.layer.0 (BertLayer)" in report.errors[0].describe()


# --------------------------------------------------------------------------- preflight on the zoo


@pytest.fixture(scope="session")
def zoo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``zoo_onnx(name, task)``: the pair's tiny ONNX artifact without onnxruntime's fusions (TensorRT has no
    importer for their contrib ops; the TensorRT target never fuses), converted once per session (not validated)."""
    folders: dict[tuple[str, str], Path] = {}

    def get(name: str, task: str) -> Path:
        if (name, task) not in folders:
            folder = tmp_path_factory.mktemp("trt-zoo") / f"{name}-{task}"
            folders[(name, task)] = convert(name, task=task, output_dir=folder, validate=False,
                                            target_options={"fusions": False}).artifact
        return folders[(name, task)]

    return get




def _check_zoo_pair(zoo_onnx: Any, name: str, task: str) -> None:
    report = preflight_artifact(zoo_onnx(name, task))
    assert report.errors == [], [f.describe() for f in report.errors]
    assert report.nodes > 10


@pytest.mark.parametrize(("name", "task"), DEFAULT_PAIRS, ids=[f"{n}-{t}" for n, t in DEFAULT_PAIRS])
def test_zoo_preflight(zoo_onnx: Any, name: str, task: str) -> None:
    _check_zoo_pair(zoo_onnx, name, task)


SWEEP = [p for p in PAIRS if p not in DEFAULT_PAIRS]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "task"), SWEEP, ids=[f"{n}-{t}" for n, t in SWEEP])
def test_zoo_preflight_sweep(zoo_onnx: Any, name: str, task: str) -> None:
    _check_zoo_pair(zoo_onnx, name, task)


class _Determinant(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.det(x) * 2  # exports to ONNX Det, which TensorRT's parser lacks


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3, 3)
        self.head = _Determinant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(x))


def test_conversion_stops_on_preflight_errors_naming_node_and_module(tmp_path: Path) -> None:
    expected = (r"stage 5/7 \(TensorRT preflight\) failed for _Net: error: node \S+ \(Det\) "
                r"from module head \(.*_Determinant\): Det is marked unsupported")
    with pytest.raises(ConversionError, match=expected):
        convert(_Net(), {"x": torch.randn(2, 3, 3)}, target="tensorrt", output_dir=tmp_path / "net",
                dynamic_axes={"x": {0: "batch"}})
    assert not (tmp_path / "net").exists()


def test_preflight_needs_an_onnx_graph_and_a_known_target(zoo_onnx: Any, tmp_path: Path) -> None:
    folder = zoo_onnx("vit", "image-classification")
    with pytest.raises(UsageError, match="only"):
        preflight_artifact(folder, target="coreml")
    other = tmp_path / "ov"
    shutil.copytree(folder, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "target": "openvino"}))
    with pytest.raises(UsageError, match="targets 'openvino' and holds none"):
        preflight_artifact(other)


# --------------------------------------------------------------------------- convert on a machine without tensorrt


@pytest.fixture(scope="module")
def ready(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``convert gpt2 --target tensorrt --precision int8`` through the CLI, with profile and workspace options."""
    folder = tmp_path_factory.mktemp("trt") / "gpt2"
    result = cli.invoke(app, ["convert", "gpt2", "--target", "tensorrt", "--precision", "int8", "-o", str(folder),
                              "--shapes", "batch:1,2,4", "--workspace", "1GiB"])
    assert result.exit_code == 0, result.stderr
    return folder, result.stderr


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed: convert builds an engine")
def test_convert_without_tensorrt_writes_a_tensorrt_ready_artifact(ready: tuple[Path, str]) -> None:
    folder, stderr = ready
    assert "note: TensorRT-ready artifact" in stderr and "tensorrt is not installed" in stderr
    manifest = Artifact.open(folder).manifest
    options = TensorrtOptions.of(manifest)
    assert manifest.runtime == "tensorrt" and manifest.model_file == "model.onnx" and options.engine is None
    plan = options.build
    assert plan.precision == "int8" and plan.workspace_bytes == 1 << 30
    assert plan.axes == {"batch": (1, 2, 4), "sequence": (1, 8, 32)}
    assert plan.profile["input_ids"] == {"min": [1, 1], "opt": [2, 8], "max": [4, 32]}
    assert len(plan.calibration) == 8 and set(plan.calibration) <= set(manifest.files)
    with np.load(folder / plan.calibration[0]) as batch:
        assert batch["input_ids"].shape == (2, 8), "calibration batches have the profile's opt shape"
    assert "0 errors" in manifest.exporter["preflight"]


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed: convert builds an engine")
def test_ready_artifact_validates_its_onnx_labelled_as_such(ready: tuple[Path, str]) -> None:
    folder, _ = ready
    report = check_parity(folder)

    assert report.passed and report.runtime == "onnxruntime on model.onnx (TensorRT engine not built)"
    with pytest.raises(ArtifactError, match="no engine yet; build it with 'edgeexport build"):
        load(folder, execution="engine")
    runner = load(folder, execution="onnxruntime")
    inputs, _ = runner.artifact.load_golden(runner.artifact.manifest.golden[0])
    with pytest.raises(UsageError, match="execution providers .*TensorrtExecutionProvider.* are not available here"):
        runner(inputs)


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed")
def test_build_without_tensorrt_is_one_line_and_leaves_the_artifact(ready: tuple[Path, str]) -> None:
    folder, _ = ready
    before = (folder / "manifest.json").read_text()
    result = cli.invoke(app, ["build", str(folder)])

    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "pip install 'edgeexport[tensorrt]'" in result.stderr
    assert (folder / "manifest.json").read_text() == before
    assert not list(folder.parent.glob(".gpt2.partial-*")), "no staging folder left behind"


def test_inspect_shows_the_preflight(ready: tuple[Path, str]) -> None:
    folder, _ = ready
    result = cli.invoke(app, ["inspect", str(folder), "--preflight", "tensorrt", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["preflight"]["passed"] and data["build"]["precision"] == "int8" and data["ops"]

    result = cli.invoke(app, ["inspect", str(folder), "--preflight", "tensorrt"])
    nodes = data["preflight"]["nodes"]
    assert result.exit_code == 0 and f"preflight: {nodes} nodes, 0 errors" in result.stdout.replace("\n", " ")
    result = cli.invoke(app, ["inspect", str(folder), "--preflight", "openvino"])
    assert result.exit_code == 2 and "error: preflight exists for target 'tensorrt' only" in result.stderr


def test_target_options_are_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="target 'onnx' has no option shapes; it takes fusions"):
        convert("gpt2", output_dir=tmp_path / "a", target_options={"shapes": ["batch:1,2,4"]})
    with pytest.raises(UsageError, match="--shapes 'batch:1,2'"):
        convert("gpt2", target="tensorrt", output_dir=tmp_path / "b", target_options={"shapes": ["batch:1,2"]})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed")
def test_missing_backend_errors_name_the_extra() -> None:
    from edgeexport.trt.cuda import tensorrt, unavailable_reason

    assert unavailable_reason() == "tensorrt is not installed"
    with pytest.raises(MissingBackendError, match=r"pip install 'edgeexport\[tensorrt\]'"):
        tensorrt()


# --------------------------------------------------------------------------- an engine from elsewhere (fake manifest)


@pytest.fixture()
def fake_engine(ready: tuple[Path, str], tmp_path: Path) -> Path:
    """A copy of the ready artifact whose manifest claims an engine built on an H100 with TensorRT 10.1."""
    folder = tmp_path / "engine"
    shutil.copytree(ready[0], folder)
    (folder / "model.engine").write_bytes(b"not really an engine")
    manifest = Artifact.open(folder).manifest
    options = TensorrtOptions.of(manifest)
    options.engine = EngineInfo("model.engine", BUILT)
    manifest.model_file = "model.engine"
    manifest.runtime_options = options.to_dict()
    write_manifest(folder, manifest)
    return folder


def test_engine_on_another_gpu_tells_the_user_to_rebuild(fake_engine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeexport.trt.cuda as cuda

    monkeypatch.setattr(cuda, "current_device", lambda: Device("10.1.0", "NVIDIA GeForce RTX 4090", "8.9"))
    runner = load(fake_engine)
    assert runner.execution == "engine" and runner.label == "tensorrt"
    inputs, _ = runner.artifact.load_golden(runner.artifact.manifest.golden[0])
    with pytest.raises(ArtifactError, match=f"for {BUILT.gpu} .* Rebuild it here: edgeexport build {fake_engine}$"):
        runner(inputs)


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed")
def test_engine_without_tensorrt_is_a_missing_backend(fake_engine: Path) -> None:
    result = cli.invoke(app, ["validate", str(fake_engine)])

    assert result.exit_code == 2 and "pip install 'edgeexport[tensorrt]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_onnxruntime_tensorrt_ep_gets_the_plan(fake_engine: Path) -> None:
    from edgeexport.runtimes.tensorrt import provider_options

    runner = load(fake_engine, execution="onnxruntime", providers=["CPUExecutionProvider"])
    assert runner.label == "onnxruntime CPUExecutionProvider on model.onnx"
    options = provider_options(TensorrtOptions.of(runner.artifact.manifest).build)
    assert options == {"trt_profile_min_shapes": "input_ids:1x1,attention_mask:1x1,position_ids:1x1",
                       "trt_profile_opt_shapes": "input_ids:2x8,attention_mask:2x8,position_ids:2x8",
                       "trt_profile_max_shapes": "input_ids:4x32,attention_mask:4x32,position_ids:4x32",
                       "trt_fp16_enable": "1", "trt_max_workspace_size": str(1 << 30)}
    inputs, expected = runner.artifact.load_golden(runner.artifact.manifest.golden[0])
    np.testing.assert_allclose(runner(inputs)["logits"], expected["logits"], atol=1e-4)


# --------------------------------------------------------------------------- a stand-in TensorRT 10 API
#
# These check edgeexport's own control flow and data movement (build plan -> builder calls, the
# calibrator, the staged rebuild, named-tensor I/O through device buffers) against a minimal
# stand-in of the tensorrt and cuda-python APIs whose "device memory" is host memory. They say
# nothing about TensorRT itself; the gpu tests do.


class FakeCudart:
    """cuda-python's runtime calls used by edgeexport; device pointers are host addresses."""

    class cudaError_t:  # noqa: N801 - the real names
        cudaSuccess = 0

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        self.memory: dict[int, Any] = {}

    def cudaGetDeviceCount(self) -> tuple[int, int]:  # noqa: N802
        return 0, 1

    def cudaGetDevice(self) -> tuple[int, int]:  # noqa: N802
        return 0, 0

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, Any]:  # noqa: N802
        return 0, SimpleNamespace(name=b"Fake GPU\0\0", major=9, minor=0)

    def cudaStreamCreate(self) -> tuple[int, int]:  # noqa: N802
        return 0, 7

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:  # noqa: N802
        return (0,)

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:  # noqa: N802
        return (0,)

    def cudaMalloc(self, nbytes: int) -> tuple[int, int]:  # noqa: N802
        buffer = ctypes.create_string_buffer(nbytes)
        self.memory[ctypes.addressof(buffer)] = buffer
        return 0, ctypes.addressof(buffer)

    def cudaFree(self, pointer: int) -> tuple[int]:  # noqa: N802
        del self.memory[pointer]
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> tuple[int]:  # noqa: N802
        ctypes.memmove(dst, src, nbytes)
        return (0,)


def _read(pointer: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(ctypes.string_at(pointer, size), dtype=dtype).reshape(shape)


class FakeTensorrt:
    """The tensorrt calls edgeexport makes; the "engine" writes float(input_ids) into every logit."""

    __version__ = "10.1.0"

    class ILogger:
        Severity = SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self) -> None:
            pass

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    BuilderFlag = SimpleNamespace(TF32="TF32", FP16="FP16", BF16="BF16", INT8="INT8")
    MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.calls: list[tuple[Any, ...]] = []
        self.calibrated: list[dict[str, np.ndarray]] = []

    @staticmethod
    def nptype(dtype: Any) -> Any:
        return dtype

    def Builder(self, logger: Any) -> Any:  # noqa: N802
        fake = self

        class Profile:
            def set_shape(self, name: str, *shapes: Any) -> None:
                fake.calls.append(("set_shape", name, *[list(s) for s in shapes]))

        class Config:
            int8_calibrator = None

            def add_optimization_profile(self, profile: Any) -> None:
                fake.calls.append(("profile",))

            def set_calibration_profile(self, profile: Any) -> None:
                fake.calls.append(("calibration_profile",))

            def set_flag(self, flag: str) -> None:
                fake.calls.append(("set_flag", flag))

            def clear_flag(self, flag: str) -> None:
                fake.calls.append(("clear_flag", flag))

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.calls.append(("workspace", size))

            def create_timing_cache(self, data: bytes) -> bytes:
                fake.calls.append(("timing_cache", data))
                return data

            def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> None:
                pass

            def get_timing_cache(self) -> Any:
                return SimpleNamespace(serialize=lambda: b"timings")

        class Builder:
            def create_network(self, flags: int) -> str:
                return "network"

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: str, config: Config) -> bytes:
                calibrator = config.int8_calibrator
                while calibrator is not None:
                    pointers = calibrator.get_batch(["input_ids", "attention_mask"])
                    if pointers is None:
                        break
                    fake.calibrated.append({n: _read(p, (2, 8), np.int64)
                                            for n, p in zip(["input_ids", "attention_mask"], pointers)})
                return b"serialized engine"

        return Builder()

    def OnnxParser(self, network: str, logger: Any) -> Any:  # noqa: N802
        return SimpleNamespace(parse_from_file=lambda path: self.calls.append(("parse", Path(path).name)) or True)

    def Runtime(self, logger: Any) -> Any:  # noqa: N802
        fake = self

        class Context:
            def __init__(self) -> None:
                self.shapes: dict[str, tuple[int, ...]] = {}
                self.addresses: dict[str, int] = {}

            def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
                self.shapes[name] = tuple(shape)

            def set_tensor_address(self, name: str, pointer: int) -> None:
                self.addresses[name] = pointer

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return (*self.shapes["input_ids"], fake.vocab)

            def execute_async_v3(self, stream: int) -> bool:
                ids = _read(self.addresses["input_ids"], self.shapes["input_ids"], np.int64)
                logits = np.broadcast_to(ids[..., None].astype(np.float32), (*ids.shape, fake.vocab)).copy()
                ctypes.memmove(self.addresses["logits"], logits.ctypes.data, logits.nbytes)
                return True

        engine = SimpleNamespace(create_execution_context=Context,
                                 get_tensor_dtype=lambda name: np.float32 if name == "logits" else np.int64)
        return SimpleNamespace(deserialize_cuda_engine=lambda data: engine if data == b"serialized engine" else None)


@pytest.fixture()
def fake_trt(ready: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> FakeTensorrt:
    import edgeexport.trt.cuda as cuda

    vocab = Artifact.open(ready[0]).manifest.outputs[0].shape[-1]
    fake, cudart = FakeTensorrt(vocab), FakeCudart()
    monkeypatch.setattr(cuda, "tensorrt", lambda: fake)
    monkeypatch.setattr(cuda, "cudart", lambda: cudart)
    return fake


def test_build_follows_the_plan_and_updates_the_manifest(ready: tuple[Path, str], fake_trt: FakeTensorrt,
                                                         tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    shutil.copytree(ready[0], folder)
    result = cli.invoke(app, ["build", str(folder), "--shapes", "sequence:1,8,16"])

    assert result.exit_code == 0, result.stderr
    assert "built" in result.stderr and "Fake GPU, compute capability 9.0" in result.stderr
    assert ("parse", "model.onnx") in fake_trt.calls
    assert ("set_shape", "input_ids", [1, 1], [2, 8], [4, 16]) in fake_trt.calls, "--shapes revises the profile"
    for call in (("set_flag", "INT8"), ("set_flag", "FP16"), ("workspace", 1 << 30), ("calibration_profile",)):
        assert call in fake_trt.calls
    calibration = TensorrtOptions.of(Artifact.open(ready[0]).manifest).build.calibration
    assert len(fake_trt.calibrated) == len(calibration)
    with np.load(folder / calibration[3]) as batch:
        np.testing.assert_array_equal(fake_trt.calibrated[3]["input_ids"], batch["input_ids"])
    opened = Artifact.open(folder)
    opened.verify()
    options = TensorrtOptions.of(opened.manifest)
    assert opened.manifest.model_file == "model.engine" and "note" not in opened.manifest.exporter
    assert options.engine == EngineInfo("model.engine", Device("10.1.0", "Fake GPU", "9.0"))
    assert options.build.axes["sequence"] == (1, 8, 16) and (folder / "timing.cache").read_bytes() == b"timings"

    runner = load(folder)
    inputs, _ = opened.load_golden(opened.manifest.golden[1])
    with runner:
        logits = runner(inputs)["logits"]
    assert runner.label == "tensorrt" and logits.shape == (*inputs["input_ids"].shape, fake_trt.vocab)
    np.testing.assert_array_equal(logits[..., 0], inputs["input_ids"].astype(np.float32))
    with pytest.raises(InputSpecError, match=r"outside the engine's profile \[1, 1\]..\[4, 16\]"):
        runner({name: np.repeat(value, 2, axis=1) for name, value in inputs.items()})


def test_fp32_build_turns_tf32_off(ready: tuple[Path, str], fake_trt: FakeTensorrt, tmp_path: Path) -> None:
    from edgeexport.trt.build import build_engine

    plan = TensorrtOptions.of(Artifact.open(ready[0]).manifest).build
    shutil.copy(ready[0] / "model.onnx", tmp_path / "model.onnx")
    build_engine(tmp_path, "model.onnx", replace(plan, precision="fp32", workspace_bytes=None))

    flags = [call for call in fake_trt.calls if call[0] in ("set_flag", "clear_flag", "workspace")]
    assert flags == [("clear_flag", "TF32")] and fake_trt.calibrated == []


# --------------------------------------------------------------------------- on a GPU (never run in this project's CI)


def _needs_gpu() -> None:
    from edgeexport.trt.cuda import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_gpu_convert_builds_an_engine_with_parity(precision: str, tmp_path: Path) -> None:
    _needs_gpu()
    result: ConversionResult = convert("bert", target="tensorrt", precision=precision, output_dir=tmp_path / "a")

    assert result.report is not None and result.report.passed, result.report.failures()
    manifest = Artifact.open(result.artifact).manifest
    engine = TensorrtOptions.of(manifest).engine
    assert manifest.model_file == "model.engine" and engine is not None and engine.device.gpu
    assert {"model.engine", "model.onnx", "timing.cache"} <= set(manifest.files)
    assert result.report.runtime == "tensorrt"


@pytest.mark.gpu
def test_gpu_build_rebuilds_with_new_shapes(tmp_path: Path) -> None:
    _needs_gpu()
    folder = tmp_path / "gpt2"
    result = convert("gpt2", target="tensorrt", output_dir=folder, validate=False)
    assert TensorrtOptions.of(result.manifest).engine is not None, "a GPU machine builds at convert time"
    built = cli.invoke(app, ["build", str(folder), "--shapes", "sequence:1,16,64"])
    assert built.exit_code == 0, built.stderr
    manifest = Artifact.open(folder).manifest
    assert TensorrtOptions.of(manifest).build.axes["sequence"] == (1, 16, 64)
    assert check_parity(folder).passed
    assert check_parity(folder, execution="onnxruntime").passed  # the TensorRT execution provider path
