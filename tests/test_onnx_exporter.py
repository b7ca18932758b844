"""ONNX exporter options: opset, external data above the protobuf limit, fallback strategies."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from edgeexport.exporters import onnx as onnx_exporter
from edgeexport.pipeline import convert


def test_opset_option_is_honoured(tmp_path: Path) -> None:
    result = convert("convnext", output_dir=tmp_path / "o", opset=18)
    assert result.manifest.exporter["opset"] == 18
    assert onnx.load(str(result.artifact / "model.onnx")).opset_import[0].version == 18
    assert result.report is not None and result.report.passed, result.report.failures()


def test_weights_move_to_external_data_above_the_protobuf_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_exporter, "PROTOBUF_LIMIT", 10_000)  # stand-in for 2 GB
    result = convert("bert", output_dir=tmp_path / "ext")
    assert "model.onnx.data" in result.manifest.files
    graph_size = (result.artifact / "model.onnx").stat().st_size
    assert graph_size < 100_000 < (result.artifact / "model.onnx.data").stat().st_size
    assert result.report is not None and result.report.passed, result.report.failures()


def test_fallback_strategy_is_recorded_with_the_first_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(onnx_exporter.CaptureStrategy):
        name = "broken"

        def _capture(self, reference, args, opset):  # noqa: ANN001, ANN202
            raise RuntimeError("capture refused on purpose")

    monkeypatch.setattr(onnx_exporter, "CAPTURE_STRATEGIES", (Broken(), onnx_exporter.TorchScriptStrategy()))
    result = convert("vit", output_dir=tmp_path / "fb")
    assert result.manifest.exporter["strategy"] == "torchscript"
    assert result.manifest.exporter["fallback_reason"] == "RuntimeError: capture refused on purpose"
    assert result.report is not None and result.report.passed, result.report.failures()
