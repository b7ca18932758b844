"""Planted regressions: every parity verdict must catch what would make an artifact wrong.

On a holdout model (a 3-layer RoBERTa classifier with 10 labels, hidden size 36, random
weights: its logits are ~1e-2, which is what once let an fp32 corruption hide under an
absolute tolerance), for fp32, OpenVINO bf16 and every quantized precision of every target that has one:
the genuine artifact passes; a wrong weight (checked against the reference whose weight
differs), the artifact's own logits x1.3 and x0.7 (a temperature change: fixed constants, not
derived from any bound), shuffled classes and an unrelated output with a common offset of 10
spreads each fail. (The offset is in spreads: these logits vary by ~1e-2, so at an offset of -80
fp16 and bf16 round each value by 3 and 16 spreads, and no artifact of theirs could be told from
another; the rounding floor follows each stored value, docs/parity.md.)

A wrong weight can only be told from quantization noise when it moves the outputs more than
that noise: with this model's random weights, layer 1's value projection x1.5 moves the logits
by 0.005 spreads (RMS), far above fp32's float noise (~2e-7) but below int8's and bf16's own noise
(~0.02). fp32 is planted with that weight; bf16 and the quantized precisions with a transposed
classifier weight (1.4 spreads), an export bug of the kind they must still catch. docs/parity.md
gives each precision's detection limit (its RMS bound).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
import transformers
from typer.testing import CliRunner

from edgeexport.artifact import MANIFEST_NAME, Artifact, sha256_file
from edgeexport.cli import app
from edgeexport.conversion import convert
from edgeexport.reference import load_reference
from edgeexport.validation.parity import check_parity, compare_outputs

CONFIG = {"hidden_size": 36, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
          "vocab_size": 1000, "max_position_embeddings": 66, "num_labels": 10}
WRONG_WEIGHT = "roberta.encoder.layer.1.attention.self.value.weight"
WRONG_FACTOR = 1.5
TRANSPOSED = "classifier.dense.weight"
OFFSET_SPREADS = 10.0
QUANTIZED = [("onnx", "int8-weights"), ("onnx", "int4-weights"), ("onnx", "int8"), ("openvino", "bf16"), ("openvino", "int8-weights"),
             ("openvino", "int4-weights"), ("openvino", "int8"), ("coreml", "int8"), ("coreml", "palettize6"),
             ("coreml", "palettize4")]


def _save(folder: Path, plant: str = "") -> Path:
    """The RoBERTa classifier with seed-0 weights; ``scaled``: ``WRONG_WEIGHT`` x ``WRONG_FACTOR``,
    ``transposed``: ``TRANSPOSED`` transposed."""
    torch.manual_seed(0)
    model = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**CONFIG)).eval()
    with torch.no_grad():
        if plant == "scaled":
            model.get_parameter(WRONG_WEIGHT).mul_(WRONG_FACTOR)
        if plant == "transposed":
            weight = model.get_parameter(TRANSPOSED)
            weight.copy_(weight.T.clone())
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("planted")
    return {plant or "genuine": _save(root / f"roberta-{plant}", plant) for plant in ("", "scaled", "transposed")}


@pytest.fixture(scope="module")
def artifacts() -> dict[tuple[str, str], Path]:
    """Artifacts by (target, precision), converted lazily by :func:`_artifact`, once each."""
    return {}


def _artifact(artifacts: dict[tuple[str, str], Path], folders: dict[str, Path], tmp: Path, target: str,
              precision: str) -> Path:
    key = (target, precision)
    if key not in artifacts:
        if target != "onnx":
            pytest.importorskip({"openvino": "nncf", "coreml": "coremltools"}[target])
        result = convert(folders["genuine"], target=target, precision=precision, output_dir=tmp / f"{target}-{precision}")
        assert result.report is not None and result.report.passed, result.report.failures()
        artifacts[key] = result.artifact
    return artifacts[key]


def _golden_outputs(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The artifact's inputs, own outputs and reference outputs on its example golden case."""
    from edgeexport.runner import load

    artifact = Artifact.open(folder)
    inputs, expected = artifact.load_golden(artifact.manifest.golden[0])
    with load(folder) as runner:
        return inputs, runner(inputs), expected


def _verdict(folder: Path, target: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> tuple[bool, str]:
    manifest = Artifact.open(folder).manifest
    case = compare_outputs("planted", "golden", {}, target, reference, tolerance=manifest.tolerance,
                           logits=manifest.logits_outputs)
    return case.passed, "; ".join(o.reason for o in case.outputs)


@pytest.mark.parametrize(("target", "precision"), [("onnx", "fp32"), *QUANTIZED], ids=lambda v: v)
@pytest.mark.parametrize("plant", ["wrong weight", "x1.3", "x0.7", "shuffled classes", "offset-unrelated output"])
def test_planted_regression_fails_and_the_genuine_artifact_passes(
        target: str, precision: str, plant: str, folders: dict[str, Path],
        artifacts: dict[tuple[str, str], Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = _artifact(artifacts, folders, tmp_path_factory.getbasetemp(), target, precision)
    if plant == "wrong weight":
        report = check_parity(folder, load_reference(folders["scaled" if precision == "fp32" else "transposed"]))
        fresh = [c for c in report.cases if c.source == "reference"]
        assert fresh and not any(c.passed for c in fresh), [o.reason for c in fresh for o in c.outputs]
        assert all(c.passed for c in report.cases if c.source == "golden")
        return
    inputs, ours, expected = _golden_outputs(folder)
    assert _verdict(folder, ours, expected)[0], "the genuine outputs pass"
    logits = ours["logits"]
    offset = OFFSET_SPREADS * float(np.std(expected["logits"]))
    planted = {"x1.3": lambda: logits * 1.3, "x0.7": lambda: logits * 0.7,
               "shuffled classes": lambda: np.random.default_rng(0).permuted(logits, axis=1),
               "offset-unrelated output": lambda: load_reference(folders["transposed"]).run(inputs)["logits"] - offset,
               }[plant]()
    want = expected["logits"] - (offset if plant == "offset-unrelated output" else 0.0)
    passed, reason = _verdict(folder, {"logits": planted.astype(np.float32)}, {"logits": want})
    assert not passed and reason


def test_scaled_attention_weight_in_model_onnx_fails_validate(folders: dict[str, Path],
                                                              artifacts: dict[tuple[str, str], Path],
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's fp32 case: layer 1's value projection x1.5 inside model.onnx, manifest re-hashed.
    The logits move by ~4e-5 (their spread is ~1e-2): far above float noise (~1e-7 spreads). The localization
    rebuilds the reference from the source folder, found by name in the working directory."""
    monkeypatch.chdir(folders["genuine"].parent)
    folder = shutil.copytree(_artifact(artifacts, folders, tmp_path, "onnx", "fp32"), tmp_path / "corrupt")
    weight = load_reference(folders["genuine"]).module.model.get_parameter(WRONG_WEIGHT).detach().numpy()
    model = onnx.load(str(folder / "model.onnx"))
    [tensor] = [t for t in model.graph.initializer
                if np.array_equal(onnx.numpy_helper.to_array(t), weight.T) or
                np.array_equal(onnx.numpy_helper.to_array(t), weight)]
    tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) * WRONG_FACTOR, tensor.name))
    onnx.save(model, str(folder / "model.onnx"))
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"]["model.onnx"] = sha256_file(folder / "model.onnx")
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["validate", str(folder)])
    assert result.exit_code == 1, result.stdout
    assert "parity FAILED: example/logits: " in result.stderr
    assert "explain: first divergence at ONNX node" in result.stderr
    assert "module 'roberta.encoder.layer.1.attention.self.value'" in result.stderr
