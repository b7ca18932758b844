"""A target from another package, in two files and an entry point: listed, converted and validated
by the command line with no change to edgeexport.

The toy target wraps the shared capture's ONNX in its own format (zlib-compressed, ``model.toy``)
and runs it with onnxruntime; it declares a ``--level`` option (the zlib level) that ``convert``
offers from the declaration alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import onnx
import pytest

EXPORTER = '''
"""Toy exporter: the ONNX capture, zlib-compressed into model.toy."""
from __future__ import annotations

import zlib

from edgeexport.errors import UsageError
from edgeexport.exporter import Exporter, ExportResult, Option
from edgeexport.manifest import Tolerance


def check_level(level):
    if not 0 <= level <= 9:
        raise UsageError(f"--level {level} is not a zlib level; choose 0 to 9")


class ToyExporter(Exporter):
    target = "toy"
    runtime = "toy"
    precisions = {"fp32": None, "loose": Tolerance(atol=1.0, rounding=0.0, max_error=1.0, rms_error=1.0, scale_error=1.0)}
    options = (Option("level", int, "zlib level of model.toy (0-9).", check=check_level),)
    requires = ("torch", "zlib")
    tool_packages = ("torch",)
    stages = ("capture", "translate to ONNX", "onnx checker", "compress")

    def export(self, reference, folder, *, precision, level=6, opset=None, **options):
        import onnx
        import onnx_ir as ir

        from edgeexport.onnxtools import capture as onnx_capture

        model, info = onnx_capture.capture(reference, opset=opset)
        proto = ir.serde.serialize_model(model)
        onnx.checker.check_model(proto)
        (folder / "model.toy").write_bytes(zlib.compress(proto.SerializeToString(), level))
        return ExportResult(model_file="model.toy", exporter={"name": "toy", "level": level, **info})


EXPORTER = ToyExporter()
'''

RUNTIME = '''
"""Toy runtime: decompress model.toy and run it with onnxruntime."""
from __future__ import annotations

import zlib

from edgeexport.runner import Runner


class ToyRunner(Runner):
    name = "toy"
    requires = ("onnxruntime",)
    install = "pip install onnxruntime"
    tool_packages = ("onnxruntime",)
    label = "toy"

    def __init__(self, artifact, *, threads=0):
        super().__init__(artifact)
        self.session = None

    def _activate_impl(self):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(zlib.decompress(self.artifact.model_path.read_bytes()),
                                                    providers=["CPUExecutionProvider"])

    def _infer_impl(self, feed):
        names = [spec.name for spec in self.outputs]
        return dict(zip(names, self.session.run(names, feed)))


RUNNER = ToyRunner
'''

ENTRY_POINTS = """[edgeexport.exporters]
toy = toy_target.exporter

[edgeexport.runtimes]
toy = toy_target.runtime
"""


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sys.path folder holding the toy package and its distribution metadata (as pip would install it)."""
    root = tmp_path_factory.mktemp("site")
    (root / "toy_target").mkdir()
    (root / "toy_target" / "__init__.py").write_text("")
    (root / "toy_target" / "exporter.py").write_text(EXPORTER)
    (root / "toy_target" / "runtime.py").write_text(RUNTIME)
    info = root / "toy_target-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-target\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


def edgeexport(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "edgeexport", *args], capture_output=True, text=True, timeout=600,
                          env=environment)


def test_a_target_in_two_files_lists_converts_and_validates(toy_path: Path, tmp_path: Path) -> None:
    listed = edgeexport(toy_path, "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("│ toy "))
    assert [cell.strip() for cell in row.split("│")[1:-1]] == ["toy", "toy", "fp32, loose", "yes", "yes"]

    artifact = tmp_path / "toy"
    converted = edgeexport(toy_path, "convert", "bert", "--target", "toy", "--level", "9", "-o", str(artifact))
    assert converted.returncode == 0, converted.stderr
    assert f"wrote {artifact} (toy, fp32, exporter toy/dynamo; tiny preset, random weights)" in converted.stderr
    assert "parity: toy (fp32) on toy vs PyTorch" in converted.stdout and converted.stdout.count("PASS") == 4
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["runtime"] == "toy" and manifest["exporter"]["level"] == 9
    assert set(manifest["tool_versions"]) == {"edgeexport", "numpy", "torch", "onnxruntime"}
    model = onnx.load_from_string(zlib.decompress((artifact / "model.toy").read_bytes()))
    assert [i.name for i in model.graph.input] == [i["name"] for i in manifest["inputs"]]

    validated = edgeexport(toy_path, "validate", str(artifact), "--json")
    assert validated.returncode == 0, validated.stderr
    report = json.loads(validated.stdout)
    assert report["passed"] and report["runtime"] == "toy" and len(report["cases"]) == 2

    # Its option is checked from its declaration, and other targets refuse it.
    bad = edgeexport(toy_path, "convert", "bert", "--target", "toy", "--level", "12", "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --level 12 is not a zlib level; choose 0 to 9"
    other = edgeexport(toy_path, "convert", "bert", "--level", "1", "-o", str(tmp_path / "onnx"))
    assert other.returncode == 2 and other.stderr.strip() == "error: target 'onnx' has no option level; it takes fusions"
    assert not (tmp_path / "bad").exists() and not (tmp_path / "onnx").exists()


def test_without_the_package_the_target_is_unknown(tmp_path: Path) -> None:
    """The planted failure: the same command line without the toy's metadata on the path."""
    result = edgeexport(tmp_path, "convert", "bert", "--target", "toy", "-o", str(tmp_path / "toy"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: unknown target 'toy'; choose one of: coreml, onnx, openvino")
