"""Property tests: the manifest parser and artifact loader take any input and either succeed or raise
ArtifactError — never another exception, never a read outside the folder."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeexport.artifact import Artifact, Manifest
from edgeexport.errors import ArtifactError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
SAMPLE = {
    "schema_version": 2, "created_at": "", "model": {}, "target": "onnx", "runtime": "onnxruntime",
    "precision": "fp32", "model_file": "model.onnx", "exporter": {},
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch"]}], "logits_outputs": [],
    "tolerance": {"atol": 1e-6, "rounding": 1e-6, "max_error": 1e-3, "rms_error": 1e-4, "scale_error": 1e-3, "min_top1": 0.9,
                  "per_output": {"y": {"max_error": 1e-2}}},
    "golden": [{"name": "example", "axes": {"batch": 2}, "inputs": "golden/a.npz", "outputs": "golden/b.npz"}],
    "runtime_options": {}, "tool_versions": {}, "files": {"model.onnx": "0" * 64},
}


def parse(data: object) -> None:
    try:
        Manifest.from_dict(data)
    except ArtifactError:
        pass


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_arbitrary_json_never_crashes_the_parser(data: object) -> None:
    parse(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SAMPLE)), JSON)
def test_one_corrupted_field_never_crashes_the_parser(key: str, value: object) -> None:
    parse({**SAMPLE, key: value})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200) | JSON.map(lambda d: json.dumps(d).encode()),
       st.sampled_from(["model.onnx", "../x", "/etc/passwd", "a/../../b", "golden/../../../c"]))
def test_artifact_loader_only_raises_artifact_errors(raw: bytes, model_file: str) -> None:
    folder = Path(tempfile.mkdtemp())
    try:
        (folder / "manifest.json").write_bytes(raw)
        try:
            Artifact.open(folder).verify()
        except ArtifactError:
            pass
        (folder / "manifest.json").write_text(json.dumps({**SAMPLE, "model_file": model_file}))
        try:
            artifact = Artifact.open(folder)
            assert artifact.model_path.is_relative_to(folder.resolve())
        except ArtifactError as exc:
            assert "outside the artifact folder" in str(exc)
    finally:
        shutil.rmtree(folder)
