"""The artifact folder: manifest contents, atomic writes, and reading an untrusted folder."""

from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgeexport import check_parity, interrupts
from edgeexport.artifact import Artifact, staged_output, write_manifest
from edgeexport.conversion import ConversionResult
from edgeexport.errors import ArtifactError, OutputDirError
from edgeexport.manifest import OLDEST_SCHEMA_VERSION, SCHEMA_VERSION
from edgeexport.validation.metrics import CRITERION
from edgeexport.zoo import FP32_TOLERANCE


def test_manifest_records_io_precision_versions_and_hashes(bert_artifact: ConversionResult) -> None:
    data = json.loads((bert_artifact.artifact / "manifest.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["model"] == {"name": "bert", "task": "sequence-classification", "preset": "tiny", "seed": 0,
                             "source": "zoo", "architecture": "BertForSequenceClassification", "inputs": "sentences"}
    assert data["target"] == "onnx" and data["runtime"] == "onnxruntime" and data["precision"] == "fp32"
    assert [i["name"] for i in data["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert data["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"],
                                 "dynamic_axes": {"0": "batch", "1": "sequence"}}
    assert data["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 3],
                                "dynamic_axes": {"0": "batch"}}]
    assert data["tolerance"] == {**FP32_TOLERANCE.to_dict(), "per_output": {}}
    assert data["criterion"] == CRITERION  # the constants examples/cpp-openvino judges by
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(data["tool_versions"])
    assert set(data["files"]) == {"model.onnx", "golden/example_inputs.bin", "golden/example_outputs.bin",
                                  "golden/alternate_inputs.bin", "golden/alternate_outputs.bin",
                                  "tokenizer/tokenizer.json"}
    assert data["exporter"]["opset"] >= 18


def test_golden_outputs_are_pytorch_outputs(bert_artifact: ConversionResult) -> None:
    artifact = Artifact.open(bert_artifact.artifact)
    for case in artifact.manifest.golden:
        inputs, outputs = artifact.load_golden(case)
        expected = bert_artifact.reference.run(inputs)
        np.testing.assert_array_equal(outputs["logits"], expected["logits"])


def test_golden_files_are_raw_tensors_at_the_offsets_of_their_index(bert_artifact: ConversionResult) -> None:
    """The layout README's "Artifact layout" specifies, read here without numpy's loader."""
    data = json.loads((bert_artifact.artifact / "manifest.json").read_text())
    case = data["golden"][0]
    assert case["name"] == "example" and case["inputs"]["file"] == "golden/example_inputs.bin"
    raw = (bert_artifact.artifact / case["inputs"]["file"]).read_bytes()
    tensors = case["inputs"]["tensors"]
    assert [t["name"] for t in tensors] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [t["offset"] % 64 for t in tensors] == [0, 0, 0]
    assert tensors[-1]["offset"] + tensors[-1]["nbytes"] == len(raw)
    ids = tensors[0]
    assert ids["dtype"] == "int64" and ids["nbytes"] == 8 * ids["shape"][0] * ids["shape"][1]
    chunk = raw[ids["offset"]:ids["offset"] + ids["nbytes"]]
    assert hashlib.sha256(chunk).hexdigest() == ids["sha256"]
    artifact = Artifact.open(bert_artifact.artifact)
    inputs, _ = artifact.load_golden(artifact.manifest.golden[0])
    assert chunk == inputs["input_ids"].astype("<i8").tobytes()
    assert int.from_bytes(chunk[:8], "little", signed=True) == inputs["input_ids"][0, 0]


def _edit_golden_index(folder: Path, change: Callable[[dict], None]) -> None:
    """Apply ``change`` to the index of the example case's output tensor ``logits``."""
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data["golden"][0]["outputs"]["tensors"][0])
    path.write_text(json.dumps(data))


def _rewrite_golden_file(folder: Path, change: Callable[[bytes], bytes]) -> None:
    """Rewrite the example outputs file and re-hash ``manifest.files``, so only the tensor index can tell."""
    path = folder / "golden" / "example_outputs.bin"
    path.write_bytes(change(path.read_bytes()))
    write_manifest(folder, Artifact.open(folder).manifest)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda f: _rewrite_golden_file(f, lambda b: b[:-1] + bytes([b[-1] ^ 1])),
     "golden tensor 'logits' of 'golden/example_outputs.bin' does not match its sha256 in the manifest; "
     "the artifact is corrupt"),
    (lambda f: _rewrite_golden_file(f, lambda b: b[:-4]),
     "golden tensor 'logits' of 'golden/example_outputs.bin' ends at byte 24, past the file's 20 bytes; "
     "the artifact is corrupt"),
    (lambda f: _edit_golden_index(f, lambda t: t.update(shape=[3, 3])),
     r"manifest golden\[0\].outputs.tensors\[0\]: shape \[3, 3\] of float32 does not take 24 bytes; "
     "the artifact is corrupt"),
    (lambda f: _edit_golden_index(f, lambda t: t.update(dtype="bfloat16")),
     r"manifest golden\[0\].outputs.tensors\[0\].dtype 'bfloat16' is not one of float32, float16, int64, int32, "
     r"int8, uint8, bool, int16; the artifact is corrupt"),
    (lambda f: _edit_golden_index(f, lambda t: t.update(offset=8)),
     r"manifest golden\[0\].outputs.tensors\[0\].offset 8 is not a multiple of 64; the artifact is corrupt"),
    (lambda f: _edit_golden_index(f, lambda t: t.update(sha256="ABC")),
     r"manifest golden\[0\].outputs.tensors\[0\].sha256 is not 64 lowercase hex digits; the artifact is corrupt"),
])
def test_a_golden_index_that_does_not_fit_its_file_is_refused(artifact_copy: Path, damage: Callable[[Path], None],
                                                              message: str) -> None:
    damage(artifact_copy)
    with pytest.raises(ArtifactError, match=f"^{message}$"):
        artifact = Artifact.open(artifact_copy)
        artifact.verify()
        artifact.load_golden(artifact.manifest.golden[0])


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
    (artifact_copy / "golden" / "example_outputs.bin").unlink()
    with pytest.raises(ArtifactError, match="'golden/example_outputs.bin' is missing"):
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


def test_a_schema_2_artifact_still_reads_and_passes(artifact_copy: Path) -> None:
    """Schema 3 changed only evaluation sets (sentences tokenized on the device, sentence pairs, depth codes), whose
    schema-2 forms are still read: an artifact written as schema 2 opens and validates."""
    assert OLDEST_SCHEMA_VERSION == SCHEMA_VERSION - 1 == 2
    _edit_manifest(artifact_copy, schema_version=2)
    assert Artifact.open(artifact_copy).manifest.schema_version == 2
    report = check_parity(artifact_copy)
    assert report.passed and report.cases, report


def test_schema_1_with_npz_golden_files_is_refused(artifact_copy: Path) -> None:
    _edit_manifest(artifact_copy, schema_version=1)
    with pytest.raises(ArtifactError, match="^manifest schema_version 1 is older than this edgeexport reads "
                                            r"\(2\); re-run 'edgeexport convert' to rewrite the artifact$"):
        Artifact.open(artifact_copy)


def test_manifest_field_of_wrong_type_is_refused(artifact_copy: Path) -> None:
    _edit_manifest(artifact_copy, inputs="input_ids")
    with pytest.raises(ArtifactError, match="manifest field 'inputs' must be list, got str"):
        Artifact.open(artifact_copy)


def test_a_criterion_constant_that_is_not_a_number_is_refused(artifact_copy: Path) -> None:
    _edit_manifest(artifact_copy, criterion={**CRITERION, "slope_z": "3"})
    with pytest.raises(ArtifactError, match="^manifest field 'criterion.slope_z' must be a non-negative number$"):
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
    from edgeexport.conversion import convert

    again = convert("bert", output_dir=tmp_path / "again", validate=False)
    assert again.manifest.files == bert_artifact.manifest.files
    first = json.loads((bert_artifact.artifact / "manifest.json").read_text())
    second = json.loads((again.artifact / "manifest.json").read_text())
    first.pop("created_at"), second.pop("created_at")
    assert first == second
    for relative in first["files"]:
        assert (again.artifact / relative).read_bytes() == (bert_artifact.artifact / relative).read_bytes(), relative
