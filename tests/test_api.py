"""The Python API on a user nn.Module, and the runner's input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edgeexport
from edgeexport.errors import InputSpecError, UsageError


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.proj = torch.nn.Linear(16, 4)

    def forward(self, tokens: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.embed(tokens) * scale[:, None, None]
        return {"scores": self.proj(hidden), "pooled": hidden.mean(dim=1)}


@pytest.fixture(scope="module")
def module_artifact(tmp_path_factory: pytest.TempPathFactory) -> edgeexport.conversion.ConversionResult:
    torch.manual_seed(0)
    example = {"tokens": torch.randint(0, 50, (2, 7)), "scale": torch.rand(2)}
    return edgeexport.convert(TwoHeads(), example, output_dir=tmp_path_factory.mktemp("m") / "two-heads",
                              dynamic_axes={"tokens": {0: "batch", 1: "sequence"}, "scale": {0: "batch"}})


def test_custom_module_converts_with_named_outputs_and_dynamic_axes(module_artifact) -> None:
    manifest = module_artifact.manifest
    assert manifest.model["source"] == "module" and manifest.model["name"] == "TwoHeads"
    assert manifest.output_names == ["scores", "pooled"]
    assert manifest.inputs[0].shape == ("batch", "sequence")
    assert manifest.outputs[0].shape == ("batch", "sequence", 4)
    assert module_artifact.report.passed, module_artifact.report.failures()
    assert [c.axes for c in module_artifact.report.cases][:2] == [{"batch": 2, "sequence": 7}, {"batch": 3, "sequence": 8}]


def test_loaded_runner_matches_module_at_a_new_shape(module_artifact) -> None:
    runner = edgeexport.load(module_artifact.artifact)
    inputs = {"tokens": np.random.default_rng(1).integers(0, 50, (5, 11)), "scale": np.ones(5, dtype=np.float32)}
    outputs = runner(inputs)
    expected = module_artifact.reference.run(inputs)
    np.testing.assert_allclose(outputs["scores"], expected["scores"], atol=1e-5, rtol=1e-4)
    assert runner.last_inference_time > 0


@pytest.mark.parametrize(("inputs", "message"), [
    ({"tokens": np.zeros((2, 3), np.int64)}, r"inputs do not match the model: missing \['scale'\], unexpected \[\]"),
    ({"tokens": np.zeros((2, 3), np.int32), "scale": np.ones(2, np.float32)},
     "input 'tokens' has dtype int32, the model expects int64"),
    ({"tokens": np.zeros((2, 3, 1), np.int64), "scale": np.ones(2, np.float32)},
     r"input 'tokens' has rank 3 \(shape \[2, 3, 1\]\), the model expects rank 2"),
])
def test_runner_rejects_bad_inputs(module_artifact, inputs: dict, message: str) -> None:
    with pytest.raises(InputSpecError, match=message):
        edgeexport.load(module_artifact.artifact)(inputs)


def test_wrong_example_input_name(tmp_path: Path) -> None:
    with pytest.raises(InputSpecError, match=r"example input 'ids' is not a parameter of TwoHeads.forward\(tokens, scale\)"):
        edgeexport.convert(TwoHeads(), {"ids": torch.zeros(1, 2, dtype=torch.long)}, output_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_module_needs_example_inputs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="converting a TwoHeads module needs example_inputs"):
        edgeexport.convert(TwoHeads(), output_dir=tmp_path / "x")


@torch.library.custom_op("edgeexport_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _mystery_shape(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Block(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mystery(x) + 1


class UsesMystery(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Identity(), Block())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def test_unsupported_op_names_the_op_and_module_and_writes_nothing(tmp_path: Path) -> None:
    from edgeexport.errors import ConversionError

    with pytest.raises(ConversionError) as info:
        edgeexport.convert(UsesMystery(), {"x": torch.randn(2, 8)}, output_dir=tmp_path / "out")
    message = str(info.value)
    assert "stage 2/4 (translate to ONNX) failed for UsesMystery: no ONNX translation for op " \
           "edgeexport_test.mystery.default, produced by module 'encoder.1' (" in message
    assert "Block) at File" in message and "test_api.py" in message
    assert list(tmp_path.iterdir()) == []
