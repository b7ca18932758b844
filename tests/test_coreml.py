"""Core ML target: converted ML Programs say how they were made and match PyTorch through the MIL
reference interpreter (fp16 by default); compressed precisions pass their own criteria; flexible
shapes, names, the CLI and conversion failures (naming the op and the module) behave as documented;
decoders with a cache are refused.

Every zoo pair's parity at every precision is re-proved by tests/test_support_matrix.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgeexport.artifact import Artifact
from edgeexport.conversion import convert
from edgeexport.errors import ArtifactError, ConversionError, InputSpecError, UnsupportedError, UsageError
from edgeexport.pipeline import bench
from edgeexport.zoo import FP32_TOLERANCE, SPECS

ct = pytest.importorskip("coremltools")

from edgeexport.cli import app  # noqa: E402 - after the skip
from edgeexport.exporters import coreml as coreml_target  # noqa: E402
from edgeexport.runner import load  # noqa: E402
from edgeexport.runtimes.coreml import describe  # noqa: E402

cli = CliRunner()


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny BERT sequence classification, converted by the CLI at the target's default precision."""
    folder = tmp_path_factory.mktemp("coreml") / "bert"
    result = cli.invoke(app, ["convert", "bert", "--target", "coreml", "-o", str(folder)])
    assert result.exit_code == 0, result.stderr
    assert "wrote" in result.stderr and "(coreml, fp16, exporter coremltools/torch.jit.trace; tiny preset, random " \
                                        "weights)" in result.stderr
    return folder


@pytest.mark.parametrize(("name", "task"), [pytest.param("gpt2", "causal-lm"),
                                            pytest.param("mask2former", "segmentation", marks=pytest.mark.slow)])
def test_a_converted_package_says_how_it_was_made(name: str, task: str, tmp_path: Path) -> None:
    """Every pair's parity at every precision is re-proved by tests/test_support_matrix.py; this checks the
    manifest, and Mask2Former's rank-5 patches and fixed size, at the default precision (fp16; Mask2Former's
    mask threshold in fp32, see test_fp16_keeps_the_threshold_and_its_feeders_in_fp32)."""
    result = convert(name, task=task, target="coreml", output_dir=tmp_path / "artifact")

    assert result.report is not None and result.report.passed, result.report.failures()
    assert {c.source for c in result.report.cases} == {"golden", "reference"}
    manifest = result.manifest
    assert manifest.precision == "fp16" and manifest.model_file == "model.mlpackage"
    assert manifest.exporter["strategy"] == "torch.jit.trace" and manifest.exporter["compute_precision"] == "fp16"
    assert manifest.output_names == [spec.name for spec in manifest.outputs]
    assert result.manifest.tolerance == coreml_target.EXPORTER.precisions["fp16"]
    if name == "mask2former":  # Swin's windows and the deformable attention, rewritten to rank <= 5
        assert len(manifest.exporter["module_patches"]) == 3
        assert manifest.model["fixed_shape"] == SPECS[name].fixed_shape_reason  # inspect says why the size is fixed
        shown = cli.invoke(app, ["inspect", str(tmp_path / "artifact")]).stdout
        assert re.search(r"fixed shape\s+│ height and width are fixed", shown)


@pytest.mark.parametrize(("name", "task", "base"), [("gpt2", "causal-lm-with-past", "causal-lm"),
                                                   ("t5", "seq2seq-lm-with-past", "seq2seq-lm")])
def test_a_decoder_with_a_cache_is_refused_before_any_work(name: str, task: str, base: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Its first step feeds an empty cache, and Core ML has no zero-size tensors."""
    monkeypatch.setattr(coreml_target.EXPORTER, "export", lambda *_a, **_k: pytest.fail("exported before the refusal"))
    with pytest.raises(UnsupportedError) as error:
        convert(name, task=task, target="coreml", output_dir=tmp_path / "artifact")
    assert str(error.value) == (f"Core ML cannot take the empty cache of the first decoding step (no zero-size "
                                f"tensors), so {name!r} with a cache does not convert to coreml; use --task {base} "
                                "for Core ML, or --target onnx or openvino")
    assert not (tmp_path / "artifact").exists()


class Rank6Windows(torch.nn.Module):
    """Windows of a (B, 4, 4, C) map as transformers' Swin makes them: through a rank-6 view."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windows = x.view(x.shape[0], 2, 2, 2, 2, x.shape[-1]).transpose(2, 3)
        return torch.softmax(windows, dim=-1).reshape(-1, 2, 2, x.shape[-1])


class Rank6Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.windows = Rank6Windows()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.windows(x) * 2


def test_a_rank_6_tensor_fails_naming_the_op_and_the_module(tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as error:
        convert(Rank6Model(), {"x": torch.randn(2, 4, 4, 3)}, target="coreml", output_dir=tmp_path / "artifact")
    message = str(error.value)
    assert "rank <= 5" in message and "\n" not in message
    assert "op view" in message and "module 'windows' (Rank6Windows)" in message and "test_coreml.py" in message
    assert not (tmp_path / "artifact").exists()


def test_default_precision_is_fp16_and_the_package_is_hashed(bert: Path) -> None:
    manifest = Artifact.open(bert).manifest
    assert manifest.precision == "fp16" and manifest.runtime == "coreml"
    assert (bert / manifest.model_file).is_dir()
    package_files = [f for f in manifest.files if f.startswith("model.mlpackage/")]
    assert any(f.endswith("model.mlmodel") for f in package_files)
    assert any("/weights/" in f for f in package_files)
    assert manifest.exporter["shapes"] == "range" and manifest.exporter["deployment_target"] == "iOS16"
    assert [s.name for s in manifest.inputs] == ["input_ids", "attention_mask", "token_type_ids"]


def test_a_modified_weight_file_fails_verification(bert: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bert, copy)
    weights = next((copy / "model.mlpackage").rglob("weight.bin"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weight.bin"):
        load(copy)


def test_validate_inspect_and_bench_on_linux_say_interpreter(bert: Path) -> None:
    result = cli.invoke(app, ["validate", str(bert), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["passed"]
    result = cli.invoke(app, ["inspect", str(bert), "--json"])
    assert result.exit_code == 0, result.stderr
    details = json.loads(result.stdout)
    assert details["ops"]["linear"] > 0 and details["parameters"] > 30_000
    assert details["flexible_shapes"] == {"input_ids": "shapeRange", "attention_mask": "shapeRange",
                                          "token_type_ids": "shapeRange"}
    assert details["shape_ranges"]["input_ids"] == [[1, 16 * 3], [1, 16 * 13]]  # 16x the largest declared size
    if sys.platform != "darwin":
        (row,) = bench(bert, iterations=2, warmup=1)
        assert row.label == "coreml (MIL reference interpreter, fp16)"


def test_validate_runs_without_torch(bert: Path,
                                     cli_without_torch: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """The device side needs coremltools, not torch."""
    result = cli_without_torch("validate", str(bert))
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stdout


def test_runner_casts_int64_ids_and_keeps_manifest_dtypes(bert: Path) -> None:
    runner = load(bert)
    inputs, expected = runner.artifact.load_golden(runner.artifact.manifest.golden[0])
    assert inputs["input_ids"].dtype == np.int64
    outputs = runner(inputs)
    assert outputs["logits"].dtype == np.float32
    np.testing.assert_allclose(outputs["logits"], expected["logits"], atol=1e-2, rtol=1e-2)


def test_image_models_get_enumerated_shapes_and_other_shapes_are_refused(tmp_path: Path) -> None:
    result = convert("convnext", target="coreml", output_dir=tmp_path / "c", validate=False)
    assert result.manifest.exporter["shapes"] == "enumerated"
    shapes = result.manifest.runtime_options["enumerated_shapes"]["pixel_values"]
    assert [2, 3, 64, 64] in shapes and [3, 3, 96, 128] in shapes and len(shapes) == 8
    assert describe(Artifact.open(result.artifact))["flexible_shapes"] == {"pixel_values": "enumeratedShapes"}
    runner = load(result.artifact)
    with pytest.raises(InputSpecError, match="enumerated shapes"):
        runner({"pixel_values": np.zeros((1, 3, 64, 64), dtype=np.float32)})


@pytest.mark.parametrize("precision", ["int8", "palettize6", "palettize4"])
def test_compressed_weights_pass_their_criteria(precision: str, tmp_path: Path) -> None:
    result = convert("vit", target="coreml", precision=precision, output_dir=tmp_path / precision)
    assert result.report is not None and result.report.passed, result.report.failures()
    ops = describe(Artifact.open(result.artifact))["ops"]
    expected = "constexpr_affine_dequantize" if precision == "int8" else "constexpr_lut_to_dense"
    assert ops.get(expected, 0) > 0, ops
    assert result.manifest.exporter["compression"]["method"] in ("linear_quantize_weights", "palettize_weights")
    assert result.manifest.tolerance == coreml_target.EXPORTER.precisions[precision]


def test_fp32_matches_pytorch_closely_and_the_deployment_target_is_honoured(tmp_path: Path) -> None:
    result = convert("vit", target="coreml", precision="fp32", output_dir=tmp_path / "v",
                     target_options={"deployment_target": "iOS17"})
    assert result.report is not None and result.report.passed, result.report.failures()
    assert result.manifest.tolerance == FP32_TOLERANCE
    assert result.manifest.exporter["deployment_target"] == "iOS17"
    assert describe(Artifact.open(result.artifact))["specification_version"] == 8


@pytest.mark.parametrize("kept", [True, False], ids=["thresholds-fp32", "all-fp16"])
def test_fp16_keeps_the_threshold_and_its_feeders_in_fp32(kept: bool, tmp_path: Path) -> None:
    """sigmoid(-1e-4) = 0.499975 is below 0.5 in fp32 but rounds to 0.5 in fp16 (Mask2Former's masked attention
    flipped so): the sigmoid and the comparison after the matmul stay fp32, the rest of the program is fp16
    (planted: plain fp16 flips the gate)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    from edgeexport.mil.interpreter import MilInterpreter

    ones = np.ones((2, 1), np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2), dtype=types.fp32)], opset_version=ct.target.iOS16)
    def program(x: Any) -> Any:
        below = mb.less(x=mb.sigmoid(x=mb.matmul(x=x, y=ones)), y=np.float32(0.5))
        return (mb.select(cond=below, a=np.float32(1.0), b=np.float32(-1.0)),
                mb.mul(x=mb.matmul(x=x, y=ones), y=np.float32(3.0)))

    precision = coreml_target.fp16_compute() if kept else ct.precision.FLOAT16
    ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
               compute_precision=precision).save(str(tmp_path / "t.mlpackage"))
    interpreter = MilInterpreter(tmp_path / "t.mlpackage")
    gated, plain = interpreter({next(iter(interpreter.function.inputs)): np.array([[-1e-4, 0.0]], np.float32)}).values()
    dtypes = {op.op_type: op.outputs[0].dtype for op in interpreter.function.operations}
    assert dtypes["mul"] == types.fp16 and dtypes["sigmoid"] == (types.fp32 if kept else types.fp16)
    if kept:
        assert gated.item() == 1.0
    else:
        assert gated.item() == -1.0  # the flip this guards against


def test_unknown_deployment_target_and_option_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="iOS16, iOS17, iOS18"):
        convert("vit", target="coreml", output_dir=tmp_path / "a", target_options={"deployment_target": "iOS12"})
    with pytest.raises(UsageError, match="no option deployment_target"):
        convert("vit", target="onnx", output_dir=tmp_path / "b", target_options={"deployment_target": "iOS16"})


def test_translation_failure_names_op_module_and_source_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    monkeypatch.delitem(_TORCH_OPS_REGISTRY.name_to_func_mapping, "gelu")
    monkeypatch.setattr(coreml_target, "STRATEGIES", (coreml_target.TraceStrategy,))
    with pytest.raises(ConversionError) as error:
        convert("bert", target="coreml", output_dir=tmp_path / "g")
    message = str(error.value)
    assert "op gelu" in message and "(GELUActivation)" in message and "activations.py" in message
    assert "register_torch_op" in message


def test_torch_export_is_the_fallback_and_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(coreml_target.TraceStrategy):
        def _trace(self, reference, args):  # noqa: ANN001, ANN202
            raise RuntimeError("trace refused on purpose")

    monkeypatch.setattr(coreml_target, "STRATEGIES", (Broken, coreml_target.ExportStrategy))
    result = convert("vit", target="coreml", output_dir=tmp_path / "e")
    assert result.manifest.exporter["strategy"] == "torch.export"
    assert result.manifest.exporter["fallback_reason"] == "RuntimeError: trace refused on purpose"
    assert result.report is not None and result.report.passed, result.report.failures()
