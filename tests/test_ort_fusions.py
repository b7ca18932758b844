"""onnxruntime contrib-op fusions of the ONNX target (onnxscript ``optimize_for_ort``): fused BERT
and GPT-2 contain the fused ops and pass validation, ``--no-fusions`` keeps standard ops, a
fusion that raises, a fused model onnxruntime refuses and a fused model out of the precision's
bounds fall back to the unfused graph with the reason recorded, and TensorRT never receives
contrib ops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import onnx.numpy_helper
import pytest

from edgeexport.conversion import convert
from edgeexport.onnxtools import passes as onnx_passes


def _domains(artifact: Path) -> set[str]:
    return {node.domain for node in onnx.load(str(artifact / "model.onnx")).graph.node}


@pytest.mark.slow
@pytest.mark.parametrize(("model", "fused"), [
    ("bert", {"MultiHeadAttention": 2, "SkipLayerNormalization": 4}),
    ("gpt2", {"MultiHeadAttention": 2, "SkipLayerNormalization": 4}),
])
def test_fused_artifacts_hold_contrib_ops_and_pass(tmp_path: Path, model: str, fused: dict[str, int]) -> None:
    result = convert(model, output_dir=tmp_path / model)
    assert result.manifest.exporter["fusions"] == fused
    assert "optimize_for_ort" in result.manifest.exporter["passes"]
    assert "com.microsoft" in _domains(result.artifact)
    assert result.report is not None and result.report.passed, result.report.failures()


@pytest.mark.slow
def test_no_fusions_keeps_standard_ops(tmp_path: Path) -> None:
    result = convert("bert", output_dir=tmp_path / "plain", target_options={"fusions": False})
    assert "fusions" not in result.manifest.exporter and "com.microsoft" not in _domains(result.artifact)
    assert result.report is not None and result.report.passed, result.report.failures()


def test_a_fusion_that_raises_falls_back_unfused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(model: object) -> None:
        raise RuntimeError("fusion refused on purpose")

    monkeypatch.setattr("onnxscript.rewriter.ort_fusions.optimize_for_ort", broken)
    result = convert("bert", output_dir=tmp_path / "raised")
    failure = result.manifest.exporter["fusions_failure"]
    assert failure == "optimize_for_ort raised RuntimeError: fusion refused on purpose"
    assert "fusions" not in result.manifest.exporter and "com.microsoft" not in _domains(result.artifact)
    assert result.report is not None and result.report.passed, result.report.failures()


def _planted_fusion(monkeypatch: pytest.MonkeyPatch, folder: Path,
                    plant: Callable[[onnx.ModelProto], object]) -> str:
    """Convert tiny BERT with ``plant`` applied to the fused graph; the fallback reason (the unfused graph
    kept, and passing)."""
    fuse = onnx_passes.fuse_for_ort

    def planted(model: onnx_passes.WorkModel) -> tuple[onnx_passes.WorkModel, dict[str, int]]:
        fused, counts = fuse(model)
        plant(fused.graph)
        return fused, counts

    monkeypatch.setattr(onnx_passes, "fuse_for_ort", planted)
    result = convert("bert", output_dir=folder)
    assert "com.microsoft" not in _domains(result.artifact)
    assert result.report is not None and result.report.passed, result.report.failures()
    return result.manifest.exporter["fusions_failure"]


def _unknown_op(fused: onnx.ModelProto) -> None:
    next(n for n in fused.graph.node if n.op_type == "MultiHeadAttention").op_type = "NoSuchContribOp"


def _drifting_gamma(fused: onnx.ModelProto) -> None:
    """The first layer norm's gamma off by 1% (a fusion bug's size)."""
    gamma = next(n for n in fused.graph.node if n.op_type == "SkipLayerNormalization").input[2]
    tensor = next(t for t in fused.graph.initializer if t.name == gamma)
    tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) * 1.01, gamma))


def test_an_unloadable_fused_model_falls_back_unfused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failure = _planted_fusion(monkeypatch, tmp_path / "unloadable", _unknown_op)
    assert failure.startswith("onnxruntime cannot load the fused model")


def test_a_fused_model_out_of_bounds_falls_back_unfused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fusions stay on only where parity holds: the drifted fused graph fails fp32's bounds at the first
    shape case."""
    failure = _planted_fusion(monkeypatch, tmp_path / "drifting", _drifting_gamma)
    assert failure.startswith("the fused model is out of bounds: example/logits: ")


def test_tensorrt_gets_no_contrib_ops(tmp_path: Path) -> None:
    result = convert("bert", target="tensorrt", output_dir=tmp_path / "trt", validate=False)
    assert "com.microsoft" not in _domains(result.artifact) and "fusions" not in result.manifest.exporter
