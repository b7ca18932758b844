"""ONNX exporter options: opset, external data above the protobuf limit, fallback strategies,
int8 weights (MatMulNBits) and the rewrite that prepares them, static int8 (QDQ) and its refusal on
decoders with a cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeexport.conversion import convert
from edgeexport.errors import ConversionError, UnsupportedError
from edgeexport.exporters import onnx as onnx_exporter
from edgeexport.onnxtools import capture as onnx_capture
from edgeexport.onnxtools import passes as onnx_passes


def test_opset_option_is_honoured(tmp_path: Path) -> None:
    result = convert("convnext", output_dir=tmp_path / "o", opset=18)
    assert result.manifest.exporter["opset"] == 18
    assert onnx.load(str(result.artifact / "model.onnx")).opset_import[0].version == 18
    assert result.report is not None and result.report.passed, result.report.failures()


@pytest.mark.parametrize(("name", "precision"), [("bert", "fp32"), ("gpt2", "fp32"), ("gpt2", "fp16"),
                                                  ("bert", "int8-weights"), ("bert", "int8")])
def test_weights_move_to_external_data_above_the_threshold(name: str, precision: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Full-size weights: every stage reads them from the work folder's data file (onnxslim's folds, GPT-2's tied
    head transposed for the fusions, the fp16 and quantization rewrites) and the artifact keeps them in
    model.onnx.data, named in the manifest; it passes its parity check."""
    monkeypatch.setattr(onnx_passes, "WORK_INLINE_BYTES", 1024)  # stand-in for 1 MiB
    monkeypatch.setattr(onnx_passes, "EXTERNAL_DATA_THRESHOLD", 10_000)  # stand-in for 64 MiB
    result = convert(name, precision=precision, output_dir=tmp_path / "ext")
    assert "model.onnx.data" in result.manifest.files
    graph_size = (result.artifact / "model.onnx").stat().st_size
    assert graph_size < 100_000 < (result.artifact / "model.onnx.data").stat().st_size
    locations = {entry.value for tensor in onnx.load(str(result.artifact / "model.onnx"), load_external_data=False)
                 .graph.initializer for entry in tensor.external_data if entry.key == "location"}
    assert locations == {"model.onnx.data"}
    assert result.report is not None and result.report.passed, result.report.failures()


def test_weights_onnxslim_loses_stop_the_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An external tensor whose location onnxslim dropped would save an artifact without those weights."""
    import onnxslim

    slim = onnxslim.slim

    def losing(model: onnx.ModelProto, **options: object) -> onnx.ModelProto:
        slimmed = slim(model, **options)
        tensor = slimmed.graph.initializer[0]
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        return slimmed

    monkeypatch.setattr(onnxslim, "slim", losing)
    with pytest.raises(ConversionError, match=r"onnxslim lost the external data of \S+ \(and 0 more\); convert with "
                                              r"--no-simplify and report it to onnxslim"):
        convert("bert", output_dir=tmp_path / "lost")
    assert not (tmp_path / "lost").exists()


def test_small_models_stay_one_file(tmp_path: Path) -> None:
    result = convert("bert", output_dir=tmp_path / "one")
    assert "model.onnx" in result.manifest.files and "model.onnx.data" not in result.manifest.files
    assert not any(tensor.data_location == TensorProto.EXTERNAL
                   for tensor in onnx.load(str(result.artifact / "model.onnx"), load_external_data=False).graph.initializer)


def test_fallback_strategy_is_recorded_with_the_first_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(onnx_capture.CaptureStrategy):
        name = "broken"

        def _capture(self, reference, args, opset):  # noqa: ANN001, ANN202
            raise RuntimeError("capture refused on purpose")

    monkeypatch.setattr(onnx_capture, "CAPTURE_STRATEGIES", (Broken(), onnx_capture.TorchScriptStrategy()))
    result = convert("vit", output_dir=tmp_path / "fb")
    assert result.manifest.exporter["strategy"] == "torchscript"
    assert result.manifest.exporter["fallback_reason"] == "RuntimeError: capture refused on purpose"
    assert result.report is not None and result.report.passed, result.report.failures()


def test_int8_weights_quantize_every_constant_matmul(tmp_path: Path) -> None:
    result = convert("gpt2", precision="int8-weights", output_dir=tmp_path / "q")
    model = onnx.load(str(result.artifact / "model.onnx"))
    ops = [node.op_type for node in model.graph.node]
    # 4 per block (qkv, attention out, mlp in, mlp out) and the tied LM head; no float Gemm left.
    assert ops.count("MatMulNBits") == 4 * 2 + 1 and "Gemm" not in ops
    assert result.manifest.tolerance == onnx_exporter.EXPORTER.precisions["int8-weights"]
    assert result.report is not None and result.report.passed, result.report.failures()
    packed = [t for t in model.graph.initializer if t.data_type == TensorProto.UINT8]
    assert len(packed) == ops.count("MatMulNBits")


def test_static_int8_quantizes_weights_and_activations_but_the_head(tmp_path: Path) -> None:
    """Quantized after onnxruntime's fusions: every
    weighted layer but the last two (classifier and pooler) reads int8 weights through a DequantizeLinear and
    where its input is a plain tensor, uint8 activations (outputs of fused ops stay float); the int8 noise is visible and within
    int8's bounds."""
    result = convert("bert", precision="int8", output_dir=tmp_path / "q")
    model = onnx.load(str(result.artifact / "model.onnx"))
    weights = {t.name: t for t in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}
    layers = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
              and (n.input[1] in weights or producers[n.input[1]].op_type == "DequantizeLinear")]
    quantized = [n for n in layers if n.input[1] not in weights]
    assert "optimize_for_ort" in result.manifest.exporter["passes"]
    assert len(layers) == 2 * 6 + 2 and layers[-2:] == [n for n in layers if n.input[1] in weights]
    for node in quantized:
        dequantize = producers[node.input[1]]
        assert weights[dequantize.input[0]].data_type == TensorProto.INT8
    assert sum(producers[n.input[0]].op_type == "DequantizeLinear" for n in quantized) >= 3
    assert result.manifest.tolerance == onnx_exporter.EXPORTER.precisions["int8"]
    assert result.report is not None and result.report.passed, result.report.failures()
    assert all(o.rms_error > 1e-3 for c in result.report.cases for o in c.outputs), "int8 noise is visible"


def test_static_int8_on_a_decoder_with_a_cache_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError) as error:
        convert("gpt2", task="causal-lm-with-past", precision="int8", output_dir=tmp_path / "q")
    assert str(error.value) == ("--precision int8 breaks the decode steps of 'gpt2' (a decoder with a cache: "
                                "activation ranges are calibrated on the first step only); use --precision int8-weights")
    assert not (tmp_path / "q").exists()


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_weights_as_matmul_keeps_the_function() -> None:
    """Gemm with transB and bias, and a MatMul reading a transposed (tied) weight, compute the same after the rewrite."""
    rng = np.random.default_rng(0)
    gemm_w, bias, tied = (rng.standard_normal(shape).astype(np.float32) for shape in ((6, 4), (6,), (5, 6)))
    nodes = [helper.make_node("Gemm", ["x", "gemm_w", "bias"], ["h"], transB=1),
             helper.make_node("Gather", ["tied", "ids"], ["embedded"]),
             helper.make_node("Transpose", ["tied"], ["tied_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["h", "tied_t"], ["logits"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
                     helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5])],
        [numpy_helper.from_array(array, name) for array, name in ((gemm_w, "gemm_w"), (bias, "bias"), (tied, "tied"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feed = {"x": rng.standard_normal((3, 4)).astype(np.float32), "ids": np.array([0, 1, 2])}
    expected = _run(model, feed)

    rewritten = onnx_passes.weights_as_matmul(model)
    onnx.checker.check_model(rewritten)
    matmuls = [node for node in rewritten.graph.node if node.op_type == "MatMul"]
    weights = {tensor.name for tensor in rewritten.graph.initializer}
    assert len(matmuls) == 2 and all(node.input[1] in weights for node in matmuls)
    assert "Gemm" not in [node.op_type for node in rewritten.graph.node]
    np.testing.assert_allclose(_run(rewritten, feed), expected, rtol=1e-6, atol=1e-6)


def _threshold_model() -> onnx.ModelProto:
    """``where(sigmoid(x @ w) < 0.5, 1, -1)`` (the threshold) and ``x @ v`` (plain compute)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logit"], name="logit"),
             helper.make_node("Sigmoid", ["logit"], ["prob"], name="prob"),
             helper.make_node("Less", ["prob", "half"], ["below"], name="below"),
             helper.make_node("Where", ["below", "one", "minus_one"], ["gated"], name="gated"),
             helper.make_node("MatMul", ["x", "v"], ["plain"], name="plain")]
    inits = [numpy_helper.from_array(np.array(a, np.float32), name) for name, a in
             [("w", [[1.0], [1.0]]), ("v", [[1.0], [2.0]]), ("half", 0.5), ("one", 1.0), ("minus_one", -1.0)]]
    graph = helper.make_graph(nodes, "threshold", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1]) for n in ("gated", "plain")],
                              inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _depth_model() -> onnx.ModelProto:
    """``10 * sigmoid(relu(x @ w) @ v)``: a depth head (GLPN's: 5 m within a few mm) after an fp16 body."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["body"], name="body"),
             helper.make_node("Relu", ["body"], ["features"], name="features"),
             helper.make_node("MatMul", ["features", "v"], ["logit"], name="logit"),
             helper.make_node("Sigmoid", ["logit"], ["unit"], name="unit"),
             helper.make_node("Mul", ["unit", "ten"], ["depth"], name="scaled")]
    inits = [numpy_helper.from_array(np.array(a, np.float32), name) for name, a in
             [("w", np.eye(4)), ("v", [[0.25], [0.25], [0.25], [0.25]]), ("ten", 10.0)]]
    graph = helper.make_graph(nodes, "depth", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])],
                              [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [8, 1])], inits)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_fp16_keeps_a_depth_head_in_fp32_and_its_output_unrounded() -> None:
    """Depths of 5 m varying by 1 mm, which fp16 would round to 4 mm steps: the last MatMul, Sigmoid and Mul run in
    fp32 and the output's fp16 round trip (keep_io_types) is bypassed, so the depths come out exact (GLPN's depth
    error under fp16 was 0.65 of its spread, 0.004 with this; docs/parity.md)."""
    model = _depth_model()
    assert sorted(onnx_passes.head_nodes(model.graph, ["depth"])) == ["logit", "scaled", "unit"]
    converted = onnx_passes.to_fp16(onnx.ModelProto.FromString(model.SerializeToString()), heads=["depth"])
    inputs = {"x": np.repeat(np.float32(0.0076) + np.arange(8, dtype=np.float32)[:, None] * 4e-4, 4, axis=1)}
    expected, = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    got, = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    producers = {output: node for node in converted.graph.node for output in node.output}
    assert producers[producers["depth"].input[0]].name == "scaled"  # the Cast to FLOAT reads the fp32 Mul
    assert np.ptp(expected) > 5e-3 and np.abs(got - expected).max() < 1e-5


def test_fp16_keeps_the_threshold_and_its_feeders_in_fp32() -> None:
    """sigmoid(-1e-4) = 0.499975 is below 0.5 in fp32 but rounds to 0.5 in fp16 (Mask2Former's masked attention
    flipped so): the Sigmoid and Less after the MatMul run in fp32, with no fp16 round trip between them, and the
    rest of the graph (both MatMuls) is fp16."""
    model = _threshold_model()
    converted = onnx_passes.to_fp16(onnx.ModelProto.FromString(model.SerializeToString()))
    inputs = {"x": np.array([[-1e-4, 0.0]], np.float32)}
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    got = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    assert expected[0].item() == 1.0 and got[0].item() == 1.0
    assert sorted(onnx_passes.threshold_nodes(model.graph)) == ["below", "prob"]
    producers = {output: node for node in converted.graph.node for output in node.output}
    sigmoid = producers[producers["below"].input[0]]
    assert sigmoid.op_type == "Sigmoid" and producers[sigmoid.input[0]].op_type == "Cast"  # fp32 from the fp16 MatMul
    assert {t.name: t.data_type for t in converted.graph.initializer if t.name in ("w", "v")} == {
        "w": TensorProto.FLOAT16, "v": TensorProto.FLOAT16}
    assert abs(got[1].item() - expected[1].item()) < 1e-6
