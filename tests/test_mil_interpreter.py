"""The MIL reference interpreter's numpy ops against PyTorch/numpy semantics, on one-op ML Programs.

Each test builds a tiny MIL program with coremltools' builder, saves it as an ``.mlpackage``
and runs it with :class:`MilInterpreter`; fp32 programs must match PyTorch to float rounding,
fp16 programs must round every intermediate value to fp16.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ct = pytest.importorskip("coremltools")

from coremltools.converters.mil import Builder as mb  # noqa: E402

from edgeexport.errors import MissingBackendError  # noqa: E402
from edgeexport.mil.interpreter import NUMPY_OPS, MilInterpreter, supported_ops  # noqa: E402

RNG = np.random.default_rng(0)


def run_program(tmp_path: Path, body: Callable[..., Any], inputs: dict[str, np.ndarray], *,
                precision: Any = None) -> np.ndarray:
    """Convert a MIL program ``body(*inputs)`` to an ML Program, run it with the interpreter, return its output."""
    specs = [mb.TensorSpec(shape=v.shape, dtype=ct.converters.mil.mil.types.fp32 if v.dtype == np.float32
                           else ct.converters.mil.mil.types.int32) for v in inputs.values()]
    program = mb.program(input_specs=specs, opset_version=ct.target.iOS16)(body)
    model = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                       compute_precision=precision or ct.precision.FLOAT32)
    path = tmp_path / "op.mlpackage"
    model.save(str(path))
    interpreter = MilInterpreter(path)
    feed = dict(zip(interpreter.function.inputs, inputs.values()))
    (output,) = interpreter(feed).values()
    return output


def normal(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def test_numpy_ops_are_supported_and_control_flow_is_not() -> None:
    assert set(NUMPY_OPS) <= supported_ops()
    assert {"cond", "conv", "linear", "constexpr_affine_dequantize"} & supported_ops() == {
        "conv", "linear", "constexpr_affine_dequantize"}


@pytest.mark.parametrize(("pad_type", "groups", "strides", "dilations"), [
    ("valid", 1, [1, 1], [1, 1]), ("custom", 2, [2, 1], [1, 2]), ("same", 1, [2, 2], [1, 1]),
    ("same_lower", 4, [1, 2], [2, 1])])
def test_conv2d_matches_torch(tmp_path: Path, pad_type: str, groups: int, strides: list[int],
                              dilations: list[int]) -> None:
    x, weight, bias = normal(2, 4, 9, 8), normal(6 if groups != 4 else 8, 4 // groups, 3, 2), None
    bias = normal(weight.shape[0])
    pad = [1, 2, 0, 1] if pad_type == "custom" else [0, 0, 0, 0]

    def body(x: Any) -> Any:
        return mb.conv(x=x, weight=weight, bias=bias, strides=strides, dilations=dilations, groups=groups,
                       pad_type=pad_type, pad=pad)

    begin_end = _same_padding(x.shape[2:], weight.shape[2:], strides, dilations, pad_type, pad)
    padded = F.pad(torch.from_numpy(x), [p for axis in reversed(begin_end) for p in axis])
    expected = F.conv2d(padded, torch.from_numpy(weight), torch.from_numpy(bias), stride=strides,
                        dilation=dilations, groups=groups).numpy()
    np.testing.assert_allclose(run_program(tmp_path, body, {"x": x}), expected, rtol=1e-5, atol=1e-5)


def _same_padding(sizes: tuple[int, ...], kernel: tuple[int, ...], strides: list[int], dilations: list[int],
                  pad_type: str, pad: list[int]) -> list[tuple[int, int]]:
    """Reference (begin, end) padding per spatial dim, written out from the MIL spec."""
    if pad_type == "custom":
        return [(pad[0], pad[1]), (pad[2], pad[3])]
    if pad_type == "valid":
        return [(0, 0), (0, 0)]
    result = []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((int(np.ceil(size / s)) - 1) * s + d * (k - 1) + 1 - size, 0)
        result.append((total // 2, total - total // 2) if pad_type == "same" else (total - total // 2, total // 2))
    return result


def test_conv1d_with_bias_broadcast_matches_torch(tmp_path: Path) -> None:
    x, weight, bias = normal(3, 2, 20), normal(4, 1, 5), normal(4)

    def body(x: Any) -> Any:
        return mb.conv(x=x, weight=weight, bias=bias, strides=[3], groups=2, pad_type="custom", pad=[2, 2])

    expected = F.conv1d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), stride=3, padding=2,
                        groups=2).numpy()
    np.testing.assert_allclose(run_program(tmp_path, body, {"x": x}), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("size", "kernel", "stride", "ceil_mode"), [
    (11, 3, 2, False), (11, 3, 2, True), (4, 2, 3, True)])  # the last: ceil mode's window in padding is dropped
def test_max_pool_matches_torch(tmp_path: Path, size: int, kernel: int, stride: int, ceil_mode: bool) -> None:
    x = normal(2, 3, size, size - 1)

    def body(x: Any) -> Any:
        return mb.max_pool(x=x, kernel_sizes=[kernel, kernel], strides=[stride, stride], pad_type="custom",
                           pad=[1, 1, 1, 1], ceil_mode=ceil_mode)

    expected = F.max_pool2d(torch.from_numpy(x), kernel, stride, padding=1, ceil_mode=ceil_mode).numpy()
    np.testing.assert_allclose(run_program(tmp_path, body, {"x": x}), expected)


@pytest.mark.parametrize("exclude_padding", [False, True])
def test_avg_pool_matches_torch(tmp_path: Path, exclude_padding: bool) -> None:
    x = normal(1, 2, 9, 7)

    def body(x: Any) -> Any:
        return mb.avg_pool(x=x, kernel_sizes=[3, 2], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1],
                           exclude_padding_from_average=exclude_padding)

    expected = F.avg_pool2d(torch.from_numpy(x), (3, 2), 2, padding=1, count_include_pad=not exclude_padding).numpy()
    np.testing.assert_allclose(run_program(tmp_path, body, {"x": x}), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_gather_nd_matches_numpy(tmp_path: Path, batch_dims: int) -> None:
    x = normal(3, 4, 5)
    indices = np.stack([RNG.integers(0, 4, (3, 2)), RNG.integers(0, 5, (3, 2))], axis=-1).astype(np.int32)
    if batch_dims == 0:
        indices = indices % 3
        expected = np.array([[x[tuple(i)] for i in row] for row in indices])
    else:
        expected = np.array([[x[b][tuple(i)] for i in row] for b, row in enumerate(indices)])

    def body(x: Any) -> Any:
        return mb.gather_nd(x=x, indices=indices, batch_dims=batch_dims)

    np.testing.assert_array_equal(run_program(tmp_path, body, {"x": x}), expected)


@pytest.mark.parametrize("align_corners", [True, False])
def test_upsample_bilinear_matches_torch(tmp_path: Path, align_corners: bool) -> None:
    x = normal(2, 3, 5, 4)

    def body(x: Any) -> Any:
        return mb.upsample_bilinear(x=x, scale_factor_height=2.0, scale_factor_width=3.0, align_corners=align_corners)

    expected = F.interpolate(torch.from_numpy(x), size=(10, 12), mode="bilinear", align_corners=align_corners).numpy()
    np.testing.assert_allclose(run_program(tmp_path, body, {"x": x}), expected, rtol=1e-5, atol=1e-6)


def test_upsample_bilinear_without_half_pixel_centers_samples_at_i_times_spacing(tmp_path: Path) -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4)

    def body(x: Any) -> Any:
        return mb.upsample_bilinear(x=x, scale_factor_height=1.0, scale_factor_width=2.0, align_corners=False,
                                    half_pixel_centers=False)

    expected = np.array([0, 0.5, 1, 1.5, 2, 2.5, 3, 3], dtype=np.float32).reshape(1, 1, 1, 8)
    np.testing.assert_allclose(run_program(tmp_path, body, {"x": x}), expected)


@pytest.mark.parametrize(("scale_h", "scale_w"), [(2, 3), (1.5, 2.5)])
def test_upsample_nearest_matches_torch(tmp_path: Path, scale_h: float, scale_w: float) -> None:
    x = normal(1, 2, 4, 6)

    def body(x: Any) -> Any:
        return mb.upsample_nearest_neighbor(x=x, scale_factor_height=scale_h, scale_factor_width=scale_w)

    size = (int(4 * scale_h), int(6 * scale_w))
    expected = F.interpolate(torch.from_numpy(x), size=size, mode="nearest").numpy()
    np.testing.assert_array_equal(run_program(tmp_path, body, {"x": x}), expected)


@pytest.mark.parametrize(("sampling", "padding", "align_corners"), [
    ("bilinear", "zeros", False), ("bilinear", "zeros", True), ("bilinear", "border", False),
    ("bilinear", "reflection", False), ("bilinear", "reflection", True), ("nearest", "zeros", False),
    ("nearest", "border", True)])
def test_resample_matches_torch_grid_sample(tmp_path: Path, sampling: str, padding: str, align_corners: bool) -> None:
    """coremltools converts ``grid_sample`` (Mask2Former's deformable attention) to ``resample``; points
    beyond the image (|coordinate| up to 1.4) exercise each padding mode."""
    x, grid = normal(2, 3, 5, 7), RNG.uniform(-1.4, 1.4, (2, 4, 6, 2)).astype(np.float32)
    mil_padding = {"zeros": "constant", "border": "border",
                   "reflection": "reflection" if align_corners else "symmetric"}[padding]  # as coremltools maps it

    def body(x: Any, grid: Any) -> Any:
        return mb.resample(x=x, coordinates=grid, sampling_mode=sampling, padding_mode=mil_padding,
                           padding_value=np.float32(0), coordinates_mode="normalized_minus_one_to_one",
                           align_corners=align_corners)

    expected = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode=sampling, padding_mode=padding,
                             align_corners=align_corners).numpy()
    np.testing.assert_allclose(run_program(tmp_path, body, {"x": x, "grid": grid}), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("coordinates_mode", ["normalized_zero_to_one", "unnormalized"])
def test_resample_reads_every_coordinate_mode(tmp_path: Path, coordinates_mode: str) -> None:
    """The same points as normalized [-1, 1] coordinates, given in [0, 1] or in pixels, sample the same values."""
    x, grid = normal(1, 2, 5, 7), RNG.uniform(-1.2, 1.2, (1, 3, 4, 2)).astype(np.float32)
    sizes = np.array([7, 5], dtype=np.float32)  # (width, height): coordinates are (x, y)
    given = (grid + 1) / 2 if coordinates_mode == "normalized_zero_to_one" else ((grid + 1) * sizes - 1) / 2

    def body(x: Any, points: Any) -> Any:
        return mb.resample(x=x, coordinates=points, sampling_mode="bilinear", padding_mode="constant",
                           padding_value=np.float32(0.5), coordinates_mode=coordinates_mode, align_corners=False)

    inside = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), align_corners=False)
    outside = F.grid_sample(torch.ones(1, 2, 5, 7), torch.from_numpy(grid), align_corners=False)
    expected = (inside + 0.5 * (1 - outside)).numpy()  # the padding value where a point reads outside the image
    np.testing.assert_allclose(run_program(tmp_path, body, {"x": x, "points": given.astype(np.float32)}), expected,
                               rtol=1e-5, atol=1e-5)


def test_coremltools_value_inference_ops_broadcast_like_numpy(tmp_path: Path) -> None:
    x, y = normal(2, 1, 3), normal(4, 1)

    def body(x: Any, y: Any) -> Any:
        return mb.mul(x=mb.add(x=x, y=y), y=np.float32(0.5))

    np.testing.assert_allclose(run_program(tmp_path, body, {"x": x, "y": y}), (x + y) * 0.5, rtol=1e-7)


def test_fp16_programs_round_every_intermediate_to_fp16(tmp_path: Path) -> None:
    x = normal(64) * 100
    weight = normal(2, 64, 1) / 7

    def body(x: Any) -> Any:
        hidden = mb.add(x=mb.mul(x=x, y=np.float32(1 / 3)), y=np.float32(1e-3))
        return mb.conv(x=mb.reshape(x=hidden, shape=[1, 64, 1]), weight=weight)

    half = np.float16
    hidden = ((x.astype(half) * half(1 / 3)).astype(half) + half(1e-3)).astype(half).astype(np.float32)
    expected = np.einsum("c,oc->o", hidden, weight[:, :, 0].astype(half).astype(np.float32)).astype(half)
    result = run_program(tmp_path, body, {"x": x}, precision=ct.precision.FLOAT16)
    np.testing.assert_allclose(result.reshape(-1), expected.astype(np.float32), rtol=1e-3)
    exact = np.einsum("c,oc->o", x / 3 + 1e-3, weight[:, :, 0])
    assert not np.allclose(result.reshape(-1), exact, rtol=1e-6), "fp16 rounding is visible"


def test_an_op_outside_the_implemented_set_is_named(tmp_path: Path) -> None:
    def body(x: Any) -> Any:
        return mb.silu(x=x)

    with pytest.raises(MissingBackendError, match="does not implement op\\(s\\) silu"):
        run_program(tmp_path, body, {"x": normal(2, 3)})
