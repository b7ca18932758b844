"""Property tests: the manifest parser, artifact loader and golden reader take any input and either
succeed or raise ArtifactError — never another exception, never a read outside the folder."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeexport.artifact import Artifact
from edgeexport.errors import ArtifactError
from edgeexport.manifest import Manifest

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
FUZZ = Path(__file__).parent / "fuzz"
SAMPLE = json.loads((FUZZ / "corpus" / "manifest.json").read_text())  # indexes the files in tests/fuzz/golden
TENSOR = st.fixed_dictionaries({
    "name": st.text(max_size=4), "dtype": st.sampled_from(["float32", "int64", "bool", "bfloat16", "x"]),
    "shape": st.lists(st.integers(-1, 10), max_size=3), "offset": st.integers(-64, 200) | st.booleans(),
    "nbytes": st.integers(-8, 200), "sha256": st.sampled_from(["0" * 64, "e" * 63, None]),
})


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


def test_the_fuzz_seed_reaches_the_golden_reader(tmp_path: Path) -> None:
    """The corpus manifest's index fits tests/fuzz/golden, so the fuzzers start from a readable case."""
    shutil.copytree(FUZZ / "golden", tmp_path / "golden")
    (tmp_path / "manifest.json").write_text(json.dumps(SAMPLE))
    artifact = Artifact.open(tmp_path)
    inputs, outputs = artifact.load_golden(artifact.manifest.golden[0])
    assert inputs["x"].tolist() == [[0, 1, 2], [3, 4, 5]] and inputs["mask"].tolist() == [1, 0]
    assert outputs["y"].tolist() == [3, 12]


@settings(max_examples=200, deadline=None)
@given(st.lists(TENSOR, max_size=3))
def test_golden_reader_only_raises_artifact_errors(tensors: list[dict[str, object]]) -> None:
    folder = Path(tempfile.mkdtemp())
    try:
        shutil.copytree(FUZZ / "golden", folder / "golden")
        golden = [{**SAMPLE["golden"][0], "outputs": {"file": "golden/example_outputs.bin", "tensors": tensors}}]
        (folder / "manifest.json").write_text(json.dumps({**SAMPLE, "golden": golden}))
        try:
            artifact = Artifact.open(folder)
            artifact.load_golden(artifact.manifest.golden[0])
        except ArtifactError:
            pass
    finally:
        shutil.rmtree(folder)


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
