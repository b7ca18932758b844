"""Divergence localization names the planted wrong operation and the PyTorch module it came from."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from edgeexport.artifact import Artifact, write_manifest
from edgeexport.cli import app
from edgeexport.conversion import ConversionResult
from edgeexport.pipeline import validate
from edgeexport.runner import open_artifact
from edgeexport.validation.localize import explain


def plant_wrong_weight(folder: Path, index: int) -> onnx.NodeProto:
    """Scale the weight of the ``index``-th MatMul with a constant weight by 1.5 and re-hash the artifact."""
    model = onnx.load(str(folder / "model.onnx"))
    weights = {init.name: init for init in model.graph.initializer}
    node = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights][index]
    weight = weights[node.input[1]]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.5), weight.name))
    onnx.save(model, str(folder / "model.onnx"))
    write_manifest(folder, Artifact.open(folder).manifest)
    return node


def test_clean_artifact_has_no_divergence(bert_artifact: ConversionResult) -> None:
    localization = explain(open_artifact(bert_artifact.artifact), bert_artifact.reference)
    assert localization.first is None
    assert localization.compared > 20


@pytest.mark.parametrize(("index", "module"), [(5, "bert.encoder.layer.0.output.dense"),
                                               (7, "bert.encoder.layer.1.attention.self.key")])
def test_planted_wrong_constant_is_named_with_its_module(artifact_copy: Path, bert_artifact: ConversionResult,
                                                         index: int, module: str) -> None:
    node = plant_wrong_weight(artifact_copy, index)
    localization = explain(open_artifact(artifact_copy), bert_artifact.reference)
    first = localization.first
    assert first is not None
    assert (first.onnx_node, first.op_type, first.tensor) == (node.name, "MatMul", node.output[0])
    assert first.module == module and first.module_class == "torch.nn.modules.linear.Linear"
    assert "modeling_bert.py" in first.source
    assert first.comparison.max_abs > 1e-3


def test_validate_explains_a_failing_artifact(artifact_copy: Path) -> None:
    plant_wrong_weight(artifact_copy, 5)
    result = CliRunner().invoke(app, ["validate", str(artifact_copy), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert not data["passed"]
    assert data["localization"]["first"]["module"] == "bert.encoder.layer.0.output.dense"
    assert "explain: first divergence at ONNX node" in result.stderr


def test_validate_opens_and_hash_checks_the_artifact_once(artifact_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The opened artifact is passed from validate to the parity check and to the localization, not reopened."""
    plant_wrong_weight(artifact_copy, 5)
    opened, verified = Artifact.open.__func__, Artifact.verify
    calls: Counter[str] = Counter()

    def counting_open(cls: type[Artifact], path: Path) -> Artifact:
        calls["open"] += 1
        return opened(cls, path)

    def counting_verify(self: Artifact) -> None:
        calls["verify"] += 1
        verified(self)

    monkeypatch.setattr(Artifact, "open", classmethod(counting_open))
    monkeypatch.setattr(Artifact, "verify", counting_verify)
    run = validate(artifact_copy)
    assert not run.parity.passed and run.localization is not None and run.localization.first is not None
    assert calls == {"open": 1, "verify": 1}
