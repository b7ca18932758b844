"""Each converter fix in ``edgeexport.mil.converter_fixes`` on the smallest module that needs it:
it converts, and the MIL reference interpreter matches PyTorch at both shape cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgeexport.conversion import convert

pytest.importorskip("coremltools")


class NewOnes(torch.nn.Module):
    """transformers 5's masks: ``new_ones`` of a constant (bool scalar) and of a run-time size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = x.new_ones((), dtype=torch.bool)
        return torch.where(keep, x, -x) + x.new_ones(x.shape[0], 3)


class SizeArithmeticToInt(torch.nn.Module):
    """Swin's padding to whole windows while tracing (its window size is then a tensor): ``int()``
    of size arithmetic that coremltools folds to a one-element array, which numpy 2.4 refuses to
    convert to a Python int."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        window = torch.min(torch.tensor([width, 4]))
        return F.pad(x, (0, (window - width % window) % window))


class Linspace(torch.nn.Module):
    """Mask2Former's reference points: ``linspace`` between bounds derived from a traced size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[-1]
        return x + torch.linspace(0.5, height - 0.5, height)


class GroupNorm(torch.nn.Module):
    """Wav2Vec2's first conv layer: group norm with a dynamic batch and length."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.GroupNorm(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class NearestToRuntimeSize(torch.nn.Module):
    """DETR's pixel mask: nearest interpolation to a feature map's size (not a multiple of the input's)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, stride=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        return features + F.interpolate(x, size=features.shape[-2:])


class BicubicToRuntimeSize(torch.nn.Module):
    """ViT's position table: bicubic interpolation of a learned 5x5 grid to the input's size (larger
    and smaller than the grid along the two axes)."""

    align_corners = False

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(1, 3, 5, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.interpolate(self.table, size=x.shape[-2:], mode="bicubic", align_corners=self.align_corners)


class BicubicAlignCorners(BicubicToRuntimeSize):
    align_corners = True


class FloorDivOfSize(torch.nn.Module):
    """ViT's patch grid under torch.export: Python's ``//`` of a dynamic size (a SymInt) sizes a reshape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = x.shape[-1] // 4
        return x[:, :grid * 4].reshape(x.shape[0], grid, 4).sum(-1) + x.new_ones(x.shape[0], grid)


CASES = [
    (NewOnes(), {"x": torch.randn(2, 3)}, {"x": {0: "batch"}}),
    (SizeArithmeticToInt(), {"x": torch.randn(2, 3)}, {"x": {0: "batch"}}),
    (Linspace(), {"x": torch.randn(2, 5)}, {"x": {0: "batch"}}),
    (GroupNorm(), {"x": torch.randn(2, 4, 7)}, {"x": {0: "batch", 2: "length"}}),
    (NearestToRuntimeSize(), {"x": torch.randn(2, 1, 10, 11)}, {"x": {0: "batch", 2: "rows", 3: "columns"}}),
    (BicubicToRuntimeSize(), {"x": torch.randn(1, 3, 8, 3)}, {"x": {2: "rows", 3: "columns"}}),
    (BicubicAlignCorners(), {"x": torch.randn(1, 3, 8, 3)}, {"x": {2: "rows", 3: "columns"}}),
]


@pytest.mark.parametrize(("module", "inputs", "axes"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_fix_converts_and_matches_pytorch(module: torch.nn.Module, inputs: dict[str, torch.Tensor],
                                          axes: dict[str, dict[int, str]], tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = convert(module, inputs, target="coreml", precision="fp32", dynamic_axes=axes, output_dir=tmp_path / "a")
    assert result.report is not None and result.report.passed, result.report.failures()
    assert {c.case for c in result.report.cases} >= {"example", "alternate"}


def test_floordiv_of_sizes_converts_under_torch_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeexport.exporters import coreml as coreml_target

    monkeypatch.setattr(coreml_target, "STRATEGIES", (coreml_target.ExportStrategy,))
    result = convert(FloorDivOfSize(), {"x": torch.randn(2, 12)}, target="coreml", precision="fp32",
                     dynamic_axes={"x": {0: "batch", 1: "length"}}, output_dir=tmp_path / "a")
    assert result.manifest.exporter["strategy"] == "torch.export"
    assert result.report is not None and result.report.passed, result.report.failures()
    assert {c.case for c in result.report.cases} >= {"example", "alternate"}
