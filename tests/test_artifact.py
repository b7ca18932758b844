"""The artifact folder: manifest contents, atomic writes, and reading an untrusted folder."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgeexport import interrupts
from edgeexport.artifact import SCHEMA_VERSION, Artifact, staged_output
from edgeexport.errors import ArtifactError, OutputDirError
from edgeexport.reference.specs import FP32_TOLERANCE
from edgeexport.pipeline import ConversionResult


def test_manifest_records_io_precision_versions_and_hashes(bert_artifact: ConversionResult) -> None:
    data = json.loads((bert_artifact.artifact / "manifest.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["model"] == {"name": "bert", "task": "sequence-classification", "preset": "tiny", "seed": 0,
                             "source": "zoo", "architecture": "BertForSequenceClassification"}
    assert data["target"] == "onnx" and data["runtime"] == "onnxruntime" and data["precision"] == "fp32"
    assert [i["name"] for i in data["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert data["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"],
                                 "dynamic_axes": {"0": "batch", "1": "sequence"}}
    assert data["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 3],
                                "dynamic_axes": {"0": "batch"}}]
    assert data["tolerance"] == {**FP32_TOLERANCE.to_dict(), "per_output": {}}
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(data["tool_versions"])
    assert set(data["files"]) == {"model.onnx", "golden/example_inputs.npz", "golden/example_outputs.npz",
                                  "golden/alternate_inputs.npz", "golden/alternate_outputs.npz"}
    assert data["exporter"]["opset"] >= 18


def test_golden_outputs_are_pytorch_outputs(bert_artifact: ConversionResult) -> None:
    artifact = Artifact.open(bert_artifact.artifact)
    for case in artifact.manifest.golden:
        inputs, outputs = artifact.load_golden(case)
        expected = bert_artifact.reference.run(inputs)
        np.testing.assert_array_equal(outputs["logits"], expected["logits"])


def test_staged_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_output(target, force=False) as stage:
        (stage / "model.onnx").write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupt_right_after_the_stage_is_made_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C landing between creating the stage folder and using it (seen in CI) still cleans up."""
    make = Path.mkdir

    def mkdir_then_interrupt(self: Path, *args: object, **kwargs: object) -> None:
        make(self, *args, **kwargs)
        if self.name.startswith(".out.partial-"):
            raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", mkdir_then_interrupt)
    with pytest.raises(KeyboardInterrupt), staged_output(tmp_path / "out", force=False):
        pass
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_swallowed_by_a_finalizer_still_stops_the_commit(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               swallowed_ctrl_c: Callable[[], None]) -> None:
    with interrupts.recorded():
        with pytest.raises(KeyboardInterrupt), staged_output(tmp_path / "out", force=False) as stage:
            (stage / "model.onnx").write_bytes(b"x")
            swallowed_ctrl_c()  # the work goes on as if nothing happened
            (stage / "manifest.json").write_text("{}")
        assert interrupts.requested()
    assert list(tmp_path.iterdir()) == []
    assert "Exception ignored" not in capsys.readouterr().err  # recorded and acted on, not reported as lost
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and not interrupts.requested()
    with staged_output(tmp_path / "out", force=False) as stage:  # the next command starts afresh
        (stage / "model.onnx").write_bytes(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_staged_output_force_replaces_and_failure_keeps_old(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_output(target, force=True) as stage:
        (stage / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with staged_output(target, force=True) as stage:
        (stage / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_non_empty_output_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(OutputDirError, match="is not empty; choose another -o or pass --force"):
        with staged_output(tmp_path, force=False):
            pass


def test_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(OutputDirError, match="is a file"):
        with staged_output(path, force=True):
            pass


def test_modified_file_fails_hash_check(artifact_copy: Path) -> None:
    with open(artifact_copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="'model.onnx' does not match its sha256"):
        Artifact.open(artifact_copy).verify()


def test_missing_file_is_reported(artifact_copy: Path) -> None:
    (artifact_copy / "golden" / "example_outputs.npz").unlink()
    with pytest.raises(ArtifactError, match="'golden/example_outputs.npz' is missing"):
        Artifact.open(artifact_copy).verify()


def _edit_manifest(folder: Path, **changes: object) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_newer_schema_is_refused(artifact_copy: Path) -> None:
    _edit_manifest(artifact_copy, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(ArtifactError, match="newer than this edgeexport understands"):
        Artifact.open(artifact_copy)


def test_manifest_field_of_wrong_type_is_refused(artifact_copy: Path) -> None:
    _edit_manifest(artifact_copy, inputs="input_ids")
    with pytest.raises(ArtifactError, match="manifest field 'inputs' must be list, got str"):
        Artifact.open(artifact_copy)


def test_path_outside_the_folder_is_refused(artifact_copy: Path) -> None:
    _edit_manifest(artifact_copy, model_file="../../etc/passwd")
    with pytest.raises(ArtifactError, match="points outside the artifact folder"):
        Artifact.open(artifact_copy)


def test_corrupt_manifest_json(artifact_copy: Path) -> None:
    (artifact_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json is not valid JSON"):
        Artifact.open(artifact_copy)


def test_converting_twice_gives_byte_identical_files(bert_artifact: ConversionResult, tmp_path: Path) -> None:
    from edgeexport.pipeline import convert

    again = convert("bert", output_dir=tmp_path / "again", validate=False)
    assert again.manifest.files == bert_artifact.manifest.files
    first = json.loads((bert_artifact.artifact / "manifest.json").read_text())
    second = json.loads((again.artifact / "manifest.json").read_text())
    first.pop("created_at"), second.pop("created_at")
    assert first == second
